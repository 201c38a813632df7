"""`edge-alerts`: the reference PLC/MES subscriber for the alerts `edge-run` publishes.

It subscribes (ZeroMQ SUB, connecting) to one or more edge nodes' alert PUB sockets,
decodes every message with :func:`edge.alerts.decode_alert`, and prints, stores
(SQLite), or saves thumbnails of the alerts. docs/alerts.md documents the wire
schema for integrators and the SQLite table written by ``--db``.

Reusable from Python::

    from edge.alerts_cli import AlertSubscriber, AlertStore
    with AlertSubscriber(["tcp://line1:5560"], verdicts=["NotOK", "NotDecidable"]) as sub, \\
            AlertStore("alerts.sqlite") as store:
        while (alert := sub.recv(timeout=5.0)) is not None:
            store.add(alert)

A message that is not a valid alert is counted and logged (rate-limited) and never
stops the subscriber: it reads alerts from a factory network, not from a friend.
"""
from __future__ import annotations

import argparse
import collections
import datetime as _dt
import json
import logging
import math
import os
import re
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Iterable

import zmq
from zmq.utils.monitor import recv_monitor_message

from edge.alerts import ALERT_SCHEMA_VERSION, MAX_ALERT_BYTES, VERDICTS, AlertError, decode_alert

log = logging.getLogger("edge.alerts")

# A frame above MAXMSGSIZE makes libzmq drop the whole connection (a protocol error, after
# which it does NOT reconnect by itself: see AlertSubscriber._redial_abandoned). The margin
# lets a body slightly above MAX_ALERT_BYTES through so decode_alert names and counts it.
MAXMSGSIZE = MAX_ALERT_BYTES + (64 << 10)
RCVHWM = 1000                 # alerts queued per connected node before ZeroMQ drops (bounded memory)
HEARTBEAT_IVL_MS = 1000       # ping each node every second...
HEARTBEAT_TIMEOUT_MS = 3000   # ...and drop + re-dial a node that stays silent for 3 s (pulled cable)
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 5000   # exponential back-off while a node is down
REDIAL_AFTER_S = 1.0          # a disconnect libzmq has not re-dialled within this is re-dialled by us
KEPT_FRAMES = 3               # a message with more frames is malformed: keep no more than this


class RateLimitedLog:
    """Log the first event at once, then at most one line per ``interval_s`` that says how
    many were suppressed in between: a node spewing garbage must not flood the log."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0, level: int = logging.WARNING,
                 clock=time.monotonic):
        self.logger, self.interval_s, self.level, self.clock = logger, interval_s, level, clock
        self._last: float | None = None
        self.suppressed = 0

    def __call__(self, msg: str, *args) -> bool:
        now = self.clock()
        if self._last is not None and now - self._last < self.interval_s:
            self.suppressed += 1
            return False
        if self.suppressed:
            msg = msg + f" ({self.suppressed} similar suppressed in the last {self.interval_s:g} s)"
        self.logger.log(self.level, msg, *args)
        self._last, self.suppressed = now, 0
        return True


def subscription_prefixes(cameras: Iterable[str] = (), verdicts: Iterable[str] = ()) -> list[bytes]:
    """SUB prefixes for the filters. The topic is ``b"<verdict>/<camera>"``, so the publisher
    (ZeroMQ >= 3 filters on the PUB side) sends only what can match: a verdict filter is
    ``b"NotOK/"``, a camera filter one prefix per verdict (``b"OK/cam0"``, ...). A prefix also
    matches longer camera names (``cam0`` matches ``cam01``): the exact test is done after decoding."""
    cameras, verdicts = sorted(set(cameras)), sorted(set(verdicts))
    for v in verdicts:
        if v not in VERDICTS:
            raise ValueError(f"unknown verdict {v!r}: use one of {', '.join(VERDICTS)}")
    for c in cameras:
        if not c:
            raise ValueError("an empty camera name filters nothing: leave --camera out to take all cameras")
    if not cameras:
        return [f"{v}/".encode() for v in verdicts] or [b""]
    return [f"{v}/{c}".encode() for v in (verdicts or VERDICTS) for c in cameras]


class AlertSubscriber:
    """SUB socket connected to every endpoint in ``connect``; :meth:`recv` returns the next
    valid alert that passes the filters, or None after ``timeout`` seconds.

    Counters (``self.counters``): ``received`` (alerts returned), ``malformed`` (messages
    decode_alert refused), ``filtered`` (valid alerts a topic prefix let through but the exact
    camera filter did not), ``connected`` / ``disconnected`` / ``redialed`` (connection events,
    from a ZeroMQ socket monitor). ``by_verdict``, ``by_camera``, ``by_node``: received alerts.
    ``last_error``: why the last malformed message was refused.

    Not thread-safe (a ZeroMQ socket belongs to one thread): use one subscriber per thread.
    """

    def __init__(self, connect: Iterable[str], *, cameras: Iterable[str] = (), verdicts: Iterable[str] = (),
                 context: zmq.Context | None = None, rcvhwm: int = RCVHWM,
                 heartbeat_ivl_ms: int = HEARTBEAT_IVL_MS, heartbeat_timeout_ms: int = HEARTBEAT_TIMEOUT_MS,
                 log_interval_s: float = 10.0):
        self.endpoints = list(dict.fromkeys(connect))
        if not self.endpoints:
            raise ValueError("give at least one endpoint to connect to, e.g. tcp://line1:5560")
        self.cameras = frozenset(cameras)
        self.verdicts = frozenset(verdicts)
        self.prefixes = subscription_prefixes(self.cameras, self.verdicts)
        self.counters: collections.Counter = collections.Counter()
        self.by_verdict: collections.Counter = collections.Counter()
        self.by_camera: collections.Counter = collections.Counter()
        self.by_node: collections.Counter = collections.Counter()
        self.last_error: str | None = None
        self._log_malformed = RateLimitedLog(log, log_interval_s)
        self._log_redial = RateLimitedLog(log, log_interval_s)
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        try:
            for opt, value in ((zmq.LINGER, 0), (zmq.RCVHWM, int(rcvhwm)), (zmq.MAXMSGSIZE, MAXMSGSIZE),
                               (zmq.HEARTBEAT_IVL, int(heartbeat_ivl_ms)),
                               (zmq.HEARTBEAT_TIMEOUT, int(heartbeat_timeout_ms)),
                               # asks the node to drop us too if we go silent (ZMTP 3.1 ping TTL)
                               (zmq.HEARTBEAT_TTL, int(heartbeat_timeout_ms)),
                               (zmq.RECONNECT_IVL, RECONNECT_IVL_MS),
                               (zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)):
                self._sock.setsockopt(opt, value)
            for p in self.prefixes:
                self._sock.setsockopt(zmq.SUBSCRIBE, p)
            self._monitor = self._sock.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED)
            self._monitor.setsockopt(zmq.LINGER, 0)
            for ep in self.endpoints:
                try:
                    self._sock.connect(ep)
                except zmq.ZMQError as e:
                    raise ValueError(f"cannot connect to {ep!r}: {e} (expected e.g. tcp://host:5560; "
                                     "connect takes a host name or address, not '*')") from e
        except BaseException:
            self._sock.close(linger=0)
            raise
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self.connected: set[str] = set()   # endpoints with a live ZMTP session
        self._closed = False
        self._silent_since: dict[str, float] = {}   # endpoint -> when it disconnected, until libzmq re-dials

    # -- receiving ---------------------------------------------------------------------
    def recv(self, timeout: float | None = None) -> dict | None:
        """The next valid alert that passes the filters, or None when ``timeout`` seconds
        (None: forever) pass without one. Malformed messages are counted, never raised."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            wait_ms = None if deadline is None else max(0, int(math.ceil((deadline - time.monotonic()) * 1000)))
            if self._silent_since:   # wake up to re-dial an abandoned endpoint in time
                wait_ms = min(wait_ms if wait_ms is not None else 1000, int(REDIAL_AFTER_S * 1000))
            events = dict(self._poller.poll(wait_ms))
            self._redial_abandoned()
            if self._monitor in events:
                self._drain_monitor()
            if self._sock in events:
                alert = self._recv_one()
                if alert is not None:
                    return alert
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _recv_one(self) -> dict | None:
        frames, n = [], 0
        while True:  # frame by frame, so a message with many frames cannot pile up in memory
            try:
                frame = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return None
            n += 1
            if len(frames) < KEPT_FRAMES:
                frames.append(frame)
            if not self._sock.getsockopt(zmq.RCVMORE):
                break
        try:
            if n != 2:
                raise AlertError(f"an alert has 2 frames [topic, body], got {n}")
            alert = decode_alert(frames)
        except AlertError as e:
            self.counters["malformed"] += 1
            self.last_error = str(e)
            self._log_malformed("malformed alert message refused (%d so far): %s", self.counters["malformed"], e)
            return None
        if (self.cameras and alert["camera"] not in self.cameras) or \
                (self.verdicts and alert["verdict"] not in self.verdicts):
            self.counters["filtered"] += 1
            return None
        self.counters["received"] += 1
        self.by_verdict[alert["verdict"]] += 1
        self.by_camera[alert["camera"]] += 1
        self.by_node[alert["node"]] += 1
        return alert

    def _drain_monitor(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            self._on_monitor_event(event["event"], event["endpoint"].decode(errors="replace"))

    def _on_monitor_event(self, event: int, endpoint: str) -> None:
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.counters["connected"] += 1
            self.connected.add(endpoint)
            log.info("connected to %s", endpoint)
        elif event == zmq.EVENT_DISCONNECTED:
            self.counters["disconnected"] += 1
            self.connected.discard(endpoint)
            if endpoint in self.endpoints:
                self._silent_since.setdefault(endpoint, time.monotonic())
        elif event == zmq.EVENT_CONNECT_RETRIED:
            self._silent_since.pop(endpoint, None)   # libzmq is re-dialling by itself

    def _redial_abandoned(self) -> None:
        """Re-dial endpoints libzmq gave up on. After a network error or a heartbeat timeout
        libzmq re-dials by itself (and says so: EVENT_CONNECT_RETRIED); after a protocol error (a
        frame above MAXMSGSIZE) it closes the session for good, and one oversized message would
        silence that node for the rest of our life. Only then do we disconnect and connect again.
        Never at the moment of a disconnect: zmq_disconnect() discards what the pipe still holds
        (the node's last alerts) and, mid-message, trips a libzmq assertion (fq.cpp '!_more')."""
        now = time.monotonic()
        for endpoint, since in list(self._silent_since.items()):
            if now - since >= REDIAL_AFTER_S:
                del self._silent_since[endpoint]
                try:
                    self._sock.disconnect(endpoint)
                except zmq.ZMQError:
                    pass  # the session is already gone
                self._sock.connect(endpoint)
                self.counters["redialed"] += 1
                self._log_redial("lost %s and libzmq gave up on it; re-dialling", endpoint)

    # -- wait helpers (tests, demos) -----------------------------------------------------
    def wait_connected(self, timeout: float = 5.0, endpoints: Iterable[str] | None = None) -> bool:
        """True once every endpoint (default: all) has a live session, False after ``timeout``.
        A live session does not yet mean the node has our subscription (ZeroMQ's slow joiner):
        a publisher that must not lose the first alerts has to wait for it (XPUB) or resend."""
        want = set(self.endpoints if endpoints is None else endpoints)
        deadline = time.monotonic() + timeout
        while not want <= self.connected:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._monitor.poll(int(left * 1000) + 1):
                self._drain_monitor()
        return True

    def summary(self) -> dict:
        return {"received": self.counters["received"], "malformed": self.counters["malformed"],
                "filtered": self.counters["filtered"], "disconnected": self.counters["disconnected"],
                "by_verdict": dict(self.by_verdict), "by_camera": dict(self.by_camera),
                "by_node": dict(self.by_node)}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)
        self._sock.close(linger=0)

    def __enter__(self) -> "AlertSubscriber":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- SQLite ----------------------------------------------------------------------------
STORE_SCHEMA_VERSION = 1  # PRAGMA user_version of the file; docs/alerts.md shows the table
STORE_DDL = """
CREATE TABLE IF NOT EXISTS alerts (
    node             TEXT    NOT NULL,
    alert_seq        INTEGER NOT NULL,
    camera           TEXT    NOT NULL,
    frame_seq        INTEGER NOT NULL,
    capture_wall     REAL    NOT NULL,  -- Unix seconds (UTC epoch)
    published_wall   REAL    NOT NULL,  -- Unix seconds
    received_wall    REAL    NOT NULL,  -- Unix seconds, this subscriber's clock
    latency_ms       REAL    NOT NULL,
    verdict          TEXT    NOT NULL CHECK (verdict IN ('OK', 'NotOK', 'NotDecidable')),
    score            REAL,              -- NULL when NotDecidable without a score
    normalised_score REAL,
    threshold        REAL    NOT NULL,
    model_version    TEXT    NOT NULL,
    n_regions        INTEGER NOT NULL,
    regions_json     TEXT    NOT NULL,  -- JSON array of {"box": [x, y, w, h], "area", "peak"}
    reason           TEXT,
    thumbnail_jpeg   BLOB,
    is_simulated     INTEGER NOT NULL,  -- 0 / 1
    schema_v         INTEGER NOT NULL,  -- the alert's "v"
    -- one row per alert: alert_seq restarts at 1 when edge-run restarts, so published_wall
    -- tells a restarted node's alert from the same message received twice
    UNIQUE (node, alert_seq, published_wall)
);
CREATE INDEX IF NOT EXISTS alerts_node_seq ON alerts (node, alert_seq);
CREATE INDEX IF NOT EXISTS alerts_camera_time ON alerts (camera, capture_wall);
CREATE INDEX IF NOT EXISTS alerts_verdict_time ON alerts (verdict, capture_wall);
"""
_COLUMNS = ("node", "alert_seq", "camera", "frame_seq", "capture_wall", "published_wall", "received_wall",
            "latency_ms", "verdict", "score", "normalised_score", "threshold", "model_version", "n_regions",
            "regions_json", "reason", "thumbnail_jpeg", "is_simulated", "schema_v")
_INSERT = f"INSERT OR IGNORE INTO alerts ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"


def _finite_or_none(x):
    return x if x is None or math.isfinite(x) else None


class AlertStore:
    """One row per alert in table ``alerts`` of a SQLite file (schema: STORE_DDL, docs/alerts.md).

    ``add`` returns False for an alert already stored (same node, alert_seq and published_wall:
    the same message received twice, e.g. two --connect to one node), counted in
    ``duplicates``: the first copy wins. alert_seq alone is not the key because edge-run
    starts it again at 1 when it restarts: keying on (node, alert_seq) would silently drop
    every alert of a restarted node. WAL journal so that an MES can read while we write;
    each alert is committed at once (synchronous=NORMAL: durable across a crash of this
    process, the last alerts may be lost on power loss)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.duplicates = 0
        self.rows_written = 0
        self._db = sqlite3.connect(str(self.path))
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            has_table = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='alerts'").fetchone()
            if has_table and version != STORE_SCHEMA_VERSION:
                raise ValueError(f"{self.path} holds an alerts table of store version {version}; this "
                                 f"edge-alerts writes version {STORE_SCHEMA_VERSION}: use a new file")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(STORE_DDL)
            self._db.execute(f"PRAGMA user_version={STORE_SCHEMA_VERSION}")
            self._db.commit()
        except BaseException:
            self._db.close()
            raise

    @staticmethod
    def row(alert: dict, received_wall: float | None = None) -> tuple:
        """The column values of one alert, in the order of ``_COLUMNS``."""
        return (alert["node"], alert["alert_seq"], alert["camera"], alert["frame_seq"],
                float(alert["capture_wall"]), float(alert["published_wall"]),
                time.time() if received_wall is None else received_wall, float(alert["latency_ms"]),
                alert["verdict"], _finite_or_none(alert["score"]), _finite_or_none(alert["normalised_score"]),
                float(alert["threshold"]), alert["model_version"], len(alert["regions"]),
                json.dumps(alert["regions"], default=_json_default, allow_nan=False),
                alert["reason"], alert["thumbnail_jpeg"], int(bool(alert["is_simulated"])), alert["v"])

    def add(self, alert: dict, received_wall: float | None = None) -> bool:
        cur = self._db.execute(_INSERT, self.row(alert, received_wall))
        self._db.commit()
        if cur.rowcount == 0:
            self.duplicates += 1
            return False
        self.rows_written += 1
        return True

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> "AlertStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- output ------------------------------------------------------------------------------
JPEG_MAGIC = b"\xff\xd8\xff"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _safe_name(s: str) -> str:
    s = _UNSAFE.sub("_", s)
    return "_" + s[1:] if s.startswith(".") else (s or "_")


def thumbnail_name(alert: dict) -> str:
    """``<node>_<camera>_<frame_seq>.jpg``, characters outside [A-Za-z0-9._-] replaced by '_'."""
    return f"{_safe_name(alert['node'])}_{_safe_name(alert['camera'])}_{alert['frame_seq']}.jpg"


def save_thumbnail(alert: dict, directory: str | os.PathLike) -> Path | None:
    """Write the alert's JPEG thumbnail into ``directory`` (atomically: tmp file + rename);
    None when the alert has none. ValueError for bytes that are not a JPEG."""
    data = alert.get("thumbnail_jpeg")
    if not data:
        return None
    if not data.startswith(JPEG_MAGIC):
        raise ValueError(f"thumbnail of {alert['node']}/{alert['camera']} frame {alert['frame_seq']} "
                         "is not a JPEG (no FF D8 FF start marker)")
    path = Path(directory) / thumbnail_name(alert)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def _json_default(o):
    if isinstance(o, (bytes, bytearray, memoryview)):
        return len(o)  # any bytes nested in a future field: its length, like thumbnail_jpeg
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _json_clean(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None  # JSON has no NaN / Infinity
    if isinstance(o, dict):
        return {k: _json_clean(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_json_clean(v) for v in o]
    return o


def alert_to_json(alert: dict, **extra) -> str:
    """One JSON line: the alert's fields, except ``thumbnail_jpeg`` (bytes) which becomes
    ``thumbnail_jpeg_bytes`` (its length, or null); non-finite numbers become null; ``extra``
    (e.g. ``thumbnail_path``, ``received_wall``) is appended."""
    d = {k: v for k, v in alert.items() if k != "thumbnail_jpeg"}
    thumb = alert.get("thumbnail_jpeg")
    d["thumbnail_jpeg_bytes"] = None if thumb is None else len(thumb)
    d.update(extra)
    return json.dumps(_json_clean(d), default=_json_default, allow_nan=False, separators=(",", ":"))


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t).astimezone().isoformat(timespec="milliseconds")


def format_alert(alert: dict) -> str:
    """One human line: capture time, node, camera, frame, verdict, score vs threshold, regions, latency."""
    score = alert["score"]
    if score is None or not math.isfinite(score):
        cmp = f"score=-/{alert['threshold']:.4g}"
    else:  # flagged when strictly above the threshold (edge/verdict.py)
        cmp = f"score={score:.4g}{'>' if score > alert['threshold'] else '<='}{alert['threshold']:.4g}"
    line = (f"{_iso(alert['capture_wall'])} node={alert['node']} cam={alert['camera']} "
            f"frame={alert['frame_seq']} {alert['verdict']:<12} {cmp} regions={len(alert['regions'])} "
            f"latency={alert['latency_ms']:.1f}ms")
    if alert["reason"]:
        line += f" reason={alert['reason']!r}"
    if alert["is_simulated"]:
        line += " SIMULATED"
    return line


def format_summary(sub: AlertSubscriber, elapsed_s: float, extra: dict | None = None) -> str:
    s = sub.summary()
    lines = [f"edge-alerts summary: {s['received']} alerts in {elapsed_s:.1f} s, {s['malformed']} malformed, "
             f"{s['filtered']} filtered, {s['disconnected']} disconnects"]
    for title, counts in (("verdict", s["by_verdict"]), ("camera", s["by_camera"]), ("node", s["by_node"])):
        if counts:
            lines.append(f"  per {title}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    for k, v in (extra or {}).items():
        lines.append(f"  {k}: {v}")
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------
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

exit status: 0 after --count alerts, on --timeout without --count, or on SIGINT/SIGTERM;
1 when --timeout ends the run before --count alerts arrived; 2 for bad options.

Topics are b"<verdict>/<camera>"; --verdict and --camera become SUB prefixes, so the node
does not even send what is filtered out. Alerts published while this program is not
connected are lost (PUB/SUB): watch the alert_seq of each node (docs/alerts.md).
Alert schema version read: {ALERT_SCHEMA_VERSION}. Malformed messages are counted and
logged (at most one log line per --log-interval seconds), never fatal.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-alerts", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Subscribe to edge-inspect alerts of one or more edge nodes (ZeroMQ SUB) and print, "
                    "store or save them: the reference PLC/MES subscriber.")
    p.add_argument("--connect", action="append", required=True, metavar="ENDPOINT",
                   help="an edge node's alert endpoint, e.g. tcp://line1-edge:5560 (repeat for more nodes)")
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
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.count is not None and args.count < 1:
        p.error("--count must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        p.error("--timeout must be positive (seconds)")
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, format="%(asctime)s edge-alerts %(levelname)s %(message)s")
    log.setLevel(logging.INFO if args.verbose else logging.WARNING)

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
            sub = AlertSubscriber(args.connect, cameras=args.camera, verdicts=args.verdict,
                                  log_interval_s=args.log_interval)
            store = AlertStore(args.db) if args.db else None
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
                except sqlite3.Error as e:
                    extra["db errors"] += 1
                    log_io("cannot store alert in %s: %s", args.db, e)
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
            print(format_summary(sub, time.monotonic() - started, dict(extra)), file=summary_out, flush=True)
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
