"""``edge-alerts`` and the names its users import, kept where they have always been.

The code lives in the package :mod:`edge.subscriber` (client, store, output, cli); this module
re-exports it so that ``from edge.alerts_cli import AlertSubscriber, AlertStore``, the
``edge-alerts`` entry point (``edge.alerts_cli:main``) and ``python -m edge.alerts_cli`` keep
working.
"""
import sys

from edge.subscriber.cli import EPILOG, build_parser, main
from edge.subscriber.client import (GAP_RETRY_MAX_S, GAP_RETRY_MIN_S, HEARTBEAT_IVL_MS, HEARTBEAT_TIMEOUT_MS,
                                    HELD_MAX, HELLO_BACKOFF_MAX_S, HELLO_EVERY_S, KEPT_FRAMES, MAX_GAPS,
                                    MAXMSGSIZE, PAGE, RCVHWM, RECONNECT_IVL_MAX_MS, RECONNECT_IVL_MS,
                                    REDIAL_AFTER_S, REPLAY_TIMEOUT_S, AlertSubscriber, log, parse_connect,
                                    subscription_prefixes)
from edge.subscriber.output import (JPEG_MAGIC, alert_to_json, format_alert, format_summary, save_thumbnail,
                                    thumbnail_name)
from edge.subscriber.ratelimit import RateLimitedLog
from edge.subscriber.store import (STORE_DDL, STORE_INDEXES, STORE_SCHEMA_VERSION, AlertStore, StoreConflict,
                                   StoreWriteError)

__all__ = ["AlertStore", "AlertSubscriber", "EPILOG", "GAP_RETRY_MAX_S", "GAP_RETRY_MIN_S", "HEARTBEAT_IVL_MS",
           "HEARTBEAT_TIMEOUT_MS", "HELD_MAX", "HELLO_BACKOFF_MAX_S", "HELLO_EVERY_S", "JPEG_MAGIC", "KEPT_FRAMES",
           "MAXMSGSIZE", "MAX_GAPS", "PAGE", "RCVHWM", "RECONNECT_IVL_MAX_MS", "RECONNECT_IVL_MS", "REDIAL_AFTER_S",
           "REPLAY_TIMEOUT_S", "RateLimitedLog", "STORE_DDL", "STORE_INDEXES", "STORE_SCHEMA_VERSION",
           "StoreConflict", "StoreWriteError", "alert_to_json", "build_parser", "format_alert", "format_summary",
           "log", "main", "parse_connect", "save_thumbnail", "subscription_prefixes", "thumbnail_name"]

if __name__ == "__main__":
    sys.exit(main())
