"""`edge-alerts`: the command line of the reference PLC/MES subscriber (edge.subscriber)."""
from __future__ import annotations

import argparse
import collections
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

from edge.alerts import ALERT_SCHEMA_VERSION, VERDICTS
from edge.security import CurveConfig, SecurityError, add_curve_arguments, insecure_warning
from edge.subscriber.client import REPLAY_TIMEOUT_S, AlertSubscriber, log
from edge.subscriber.output import alert_to_json, format_alert, format_summary, save_thumbnail
from edge.subscriber.ratelimit import RateLimitedLog
from edge.subscriber.store import AlertStore, StoreWriteError

EXIT_NOT_STORED = 3    # with --db: at least one alert could not be written (each one logged at ERROR)

EPILOG = f"""\
examples:
  # watch one line's alerts as they come (Ctrl-C stops; add --summary for the counts)
  edge-alerts --connect tcp://line1-edge:5560
  #   ...published by: edge-run --engine model.plan --source top=0 --alerts-addr tcp://0.0.0.0:5560

  # two edge nodes, only defects and undecided parts of camera top, stored for the MES
  edge-alerts --connect tcp://line1-edge:5560 --connect tcp://line2-edge:5560 \\
      --camera top --verdict NotOK --verdict NotDecidable --db alerts.sqlite --thumbnails thumbs/

  # JSON lines for another program (thumbnail_jpeg becomes thumbnail_jpeg_bytes: its length)
  edge-alerts --connect tcp://127.0.0.1:5560 --json | jq .verdict

  # a smoke test: expect 10 alerts, give up after 30 s of silence (exit 1), print the counts
  edge-alerts --connect tcp://127.0.0.1:5560 --count 10 --timeout 30 --summary

  # the MES store, exactly once: after a restart it fetches what it missed from each node's
  # replay endpoint (default: the alert port + 1; give it after a comma when it differs)
  edge-alerts --connect tcp://line1-edge:5560 --connect tcp://line2-edge:5560,tcp://line2-edge:6000 \
      --db alerts.sqlite -q

  # everything a node still has in its journal, then live
  edge-alerts --connect tcp://line1-edge:5560 --since-start

exit status: 0 after --count alerts, on --timeout without --count, or on SIGINT/SIGTERM;
1 when --timeout ends the run before --count alerts arrived; 2 for bad options; 3 when
--db could not store at least one alert (each failed write is logged at ERROR and counted:
a failed write is never taken for a duplicate).

Topics are b"<verdict>/<camera>"; --verdict and --camera become SUB prefixes, so the node
does not even send what is filtered out. Every alert once, in order: alerts this program
missed (not running, slow joiner, network cut) are fetched from the node's journal through
its replay endpoint; what the node no longer has is counted as lost (gaps_lost) and logged.
Where to start: with --db, after the last alert stored per node; else --replay-from N or
--since-start; else with the first alert after connecting. --no-replay: at most once.
Alert schema version read: {ALERT_SCHEMA_VERSION}. Malformed messages are counted and
logged (at most one log line per --log-interval seconds), never fatal.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-alerts", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Subscribe to edge-inspect alerts of one or more edge nodes (ZeroMQ SUB) and print, "
                    "store or save them: the reference PLC/MES subscriber.")
    p.add_argument("--connect", action="append", required=True, metavar="ALERTS[,REPLAY]",
                   help="an edge node's alert endpoint, e.g. tcp://line1-edge:5560, and after a comma its replay "
                        "endpoint when it is not the alert port + 1 (repeat for more nodes)")
    p.add_argument("--camera", action="append", default=[], metavar="ID",
                   help="only alerts of this camera (exact id; repeatable)")
    p.add_argument("--verdict", action="append", default=[], choices=VERDICTS,
                   help="only alerts with this verdict (repeatable)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true",
                     help="print JSON lines (thumbnail_jpeg replaced by thumbnail_jpeg_bytes, its length)")
    out.add_argument("-q", "--quiet", action="store_true", help="print no alert lines (use with --db / --summary)")
    p.add_argument("--db", metavar="FILE", help="append every alert to table 'alerts' of this SQLite file")
    p.add_argument("--thumbnails", metavar="DIR",
                   help="save thumbnails as DIR/<node>_<camera>_<frame_seq>.jpg (DIR is created)")
    p.add_argument("--count", type=int, metavar="N", help="exit after N alerts (those that pass the filters)")
    p.add_argument("--timeout", type=float, metavar="S", help="exit after S seconds without an alert")
    p.add_argument("--summary", action="store_true",
                   help="print alerts per verdict/camera/node at exit (to stderr with --json)")
    p.add_argument("--log-interval", type=float, default=10.0, metavar="S",
                   help="at most one malformed-message log line per S seconds (default 10)")
    p.add_argument("-v", "--verbose", action="store_true", help="log connections too")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--since-start", action="store_true",
                       help="first fetch every alert the nodes still have in their journals (unless --db has some)")
    start.add_argument("--replay-from", type=int, metavar="SEQ",
                       help="first fetch each node's alerts from alert_seq SEQ on (unless --db has some)")
    start.add_argument("--no-replay", action="store_true",
                       help="never fetch missed alerts (plain PUB/SUB: at most once)")
    p.add_argument("--replay-timeout", type=float, default=REPLAY_TIMEOUT_S, metavar="S",
                   help=f"a replay request unanswered for S seconds counts as failed (default {REPLAY_TIMEOUT_S:g})")
    add_curve_arguments(p, server=False, client=True)
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.count is not None and args.count < 1:
        p.error("--count must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        p.error("--timeout must be positive (seconds)")
    if args.replay_from is not None and args.replay_from < 1:
        p.error("--replay-from is an alert_seq: 1 or more")
    if args.replay_timeout <= 0:
        p.error("--replay-timeout must be positive (seconds)")
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, format="%(asctime)s edge-alerts %(levelname)s %(message)s")
    log.setLevel(logging.INFO if args.verbose else logging.WARNING)
    curve_config = CurveConfig.from_args(args)
    try:
        curve = (curve_config.secret, curve_config.server_key) if curve_config.check(client=True) else None
    except SecurityError as e:
        p.error(str(e))
    if curve is None:
        insecure_warning(log, "the alert and replay connections run")

    stop = threading.Event()
    restore = {}
    if threading.current_thread() is threading.main_thread():
        def on_signal(signum, _frame):
            stop.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            restore[sig] = signal.signal(sig, on_signal)

    extra: collections.Counter = collections.Counter()
    store = sub = None
    status = 0
    started = time.monotonic()
    summary_out = sys.stderr if args.json else sys.stdout
    try:
        try:
            store = AlertStore(args.db) if args.db else None
            sub = AlertSubscriber(args.connect, cameras=args.camera, verdicts=args.verdict,
                                  log_interval_s=args.log_interval, replay=not args.no_replay, resume=store,
                                  since_start=args.since_start, replay_from=args.replay_from,
                                  replay_timeout_s=args.replay_timeout, curve=curve)
        except (ValueError, sqlite3.Error) as e:
            p.error(str(e))
        thumbs = Path(args.thumbnails) if args.thumbnails else None
        if thumbs is not None:
            thumbs.mkdir(parents=True, exist_ok=True)
        log_io = RateLimitedLog(log, args.log_interval)
        last_alert = time.monotonic()
        n = 0
        while not stop.is_set():
            # short slices so a signal is acted on within 0.2 s
            alert = sub.recv(timeout=0.2)
            if alert is None:
                if args.timeout is not None and time.monotonic() - last_alert >= args.timeout:
                    if args.count is not None:
                        log.warning("no alert for %g s: %d of %d alerts received", args.timeout, n, args.count)
                        status = 1
                    break
                continue
            last_alert = time.monotonic()
            received_wall = time.time()
            n += 1
            info = {}
            if store is not None:
                try:
                    if not store.add(alert, received_wall):
                        log_io("alert %d of node %s received twice (stored once)", alert["alert_seq"], alert["node"])
                except StoreWriteError as e:   # every one at ERROR: each is a verdict the MES does not have
                    log.error("%s (%d alert(s) not stored so far)", e, store.write_errors)
            if thumbs is not None:
                try:
                    path = save_thumbnail(alert, thumbs)
                    if path is not None:
                        extra["thumbnails written"] += 1
                        info["thumbnail_path"] = str(path)
                except (OSError, ValueError) as e:
                    extra["thumbnail errors"] += 1
                    log_io("thumbnail not saved: %s", e)
            if args.json:
                print(alert_to_json(alert, received_wall=received_wall, **info), flush=True)
            elif not args.quiet:
                print(format_alert(alert), flush=True)
            if args.count is not None and n >= args.count:
                break
        if args.summary:
            if store is not None:
                extra["db rows written"] = store.rows_written
                extra["db duplicates ignored"] = store.duplicates
                extra["db failed writes"] = store.write_errors
                extra["db conflicts (alert_seq reused, kept in table conflicts)"] = store.conflicts
            print(format_summary(sub, time.monotonic() - started, dict(extra)), file=summary_out, flush=True)
        if store is not None and store.write_errors:
            log.error("%d alert(s) could not be stored in %s (see above)", store.write_errors, args.db)
            status = EXIT_NOT_STORED
    except BrokenPipeError:  # `edge-alerts ... | head`: the reader left, not an error of ours
        try:  # and keep the interpreter's final flush from raising it again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
    finally:
        if store is not None:
            store.close()
        if sub is not None:
            sub.close()
        for sig, handler in restore.items():
            signal.signal(sig, handler)
    return status


if __name__ == "__main__":
    sys.exit(main())
