"""The bridge's durable state: every alert it received once, in arrival order, and what each
downstream has acknowledged (one SQLite file, ``edge-bridge --state``).

Two tables carry the delivery guarantee:

- ``outbox``: one row per alert, ``id`` = the order the bridge received them (autoincrement:
  never reused, even after rows are pruned), the alert as published (msgpack). It is also the
  subscriber's resume point: :class:`Outbox` speaks the interface ``AlertSubscriber(resume=...)``
  expects (``last_seq``, ``knows_node``, ``open_gaps``, ``add_gap``, ``close_gap``), so a
  restarted bridge asks the node only for what it had not stored;
- ``cursors``: per downstream (``modbus``, ``mqtt``, ``opcua``) the outbox ``id`` of the last
  alert it acknowledged (the PLC's ack register, the broker's PUBACK, written to the OPC UA
  address space). A restarted bridge hands each downstream what follows its cursor.

The intake thread writes ``outbox`` through one :class:`Outbox`; the asyncio side reads it and
moves cursors through another (a SQLite connection belongs to one thread). WAL, so neither
waits on the other for long.
"""
from __future__ import annotations

import logging
import math
import os
import sqlite3
import time
from pathlib import Path

import msgpack

log = logging.getLogger("edge.bridge")

STATE_FORMAT_VERSION = 1          # PRAGMA user_version
DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order at the bridge
    node           TEXT    NOT NULL,
    journal_id     TEXT,                               -- NULL: a node without a journal
    alert_seq      INTEGER NOT NULL,
    published_wall REAL    NOT NULL,
    camera         TEXT    NOT NULL,
    verdict        TEXT    NOT NULL,
    received_wall  REAL    NOT NULL,
    body           BLOB    NOT NULL                    -- the alert map, msgpack
);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_once ON outbox (node, journal_id, alert_seq, published_wall);
CREATE INDEX IF NOT EXISTS outbox_seq ON outbox (node, journal_id, alert_seq);
CREATE TABLE IF NOT EXISTS gaps (
    node TEXT NOT NULL, journal_id TEXT NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    PRIMARY KEY (journal_id, first_seq)
);
CREATE TABLE IF NOT EXISTS cursors (
    downstream TEXT PRIMARY KEY,
    acked      INTEGER NOT NULL,     -- outbox id of the last alert this downstream acknowledged
    updated    REAL    NOT NULL
);
"""


class StateError(RuntimeError):
    """The state file cannot be opened or written (named in the message, with what to do)."""


def _clean(x):
    """msgpack cannot hold a NaN inside JSON later; keep numbers as they are, bytes as bytes."""
    return None if isinstance(x, float) and not math.isfinite(x) else x


class Outbox:
    """One connection to the state file. ``synchronous``: ``NORMAL`` for the intake (a commit
    survives a crash of the bridge; after a power cut the node's replay brings the last alerts
    again), ``FULL`` where an acknowledgement is recorded (a PLC's ack must survive a power
    cut, or the result would be presented twice)."""

    def __init__(self, path: str | os.PathLike, synchronous: str = "NORMAL"):
        self.path = Path(path)
        self.duplicates = 0
        self.conflicts = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise StateError(f"cannot open the bridge state file {self.path}: {e} "
                             "(give --state a file in a writable folder)") from e
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and (version != STATE_FORMAT_VERSION or "outbox" not in tables):
                raise StateError(f"{self.path} is not an edge-bridge state file of format {STATE_FORMAT_VERSION} "
                                 f"(user_version {version}, tables {sorted(tables)}): give --state another file")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("BEGIN IMMEDIATE")
            for statement in (s for s in DDL.split(";") if s.strip()):
                self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={STATE_FORMAT_VERSION}")
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            self._db.close()
            raise StateError(f"cannot use the bridge state file {self.path}: {e} "
                             "(is it a SQLite file of edge-bridge? is its disk full or read-only?)") from e
        except BaseException:
            self._db.close()
            raise

    # -- intake ---------------------------------------------------------------------------
    def add(self, alert: dict, received_wall: float | None = None) -> int | None:
        """Store one alert; its outbox id, or None for a duplicate (the same message twice).
        A number already stored with other content (a node that reused alert_seq) is stored
        too, as a new result, and logged: a verdict is never dropped as a duplicate."""
        key = (alert["node"], alert.get("journal_id"), int(alert["alert_seq"]))
        body = msgpack.packb({k: _clean(v) for k, v in alert.items()}, use_bin_type=True)
        with self._tx():
            same = self._db.execute(
                "SELECT published_wall FROM outbox WHERE node = ? AND journal_id IS ? AND alert_seq = ?", key).fetchall()
            if any(float(r[0]) == float(alert["published_wall"]) for r in same):
                self.duplicates += 1
                return None
            cur = self._db.execute(
                "INSERT INTO outbox (node, journal_id, alert_seq, published_wall, camera, verdict, received_wall, body) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*key, float(alert["published_wall"]), alert["camera"], alert["verdict"],
                 time.time() if received_wall is None else received_wall, body))
            if key[1] is not None:
                self._subtract_gap(key[1], key[2], key[2])
        if same:
            self.conflicts += 1
            log.error("alert_seq %d of node %s (journal %s) arrived again with other content: the node reused the "
                      "number; passed on as a new result", key[2], key[0], key[1])
        return cur.lastrowid

    # -- AlertSubscriber(resume=...) -------------------------------------------------------
    def last_seq(self, node: str, journal_id: str) -> int | None:
        return self._db.execute("SELECT max(alert_seq) FROM outbox WHERE node = ? AND journal_id = ?",
                                (node, journal_id)).fetchone()[0]

    def knows_node(self, node: str) -> bool:
        return self._db.execute("SELECT 1 FROM outbox WHERE node = ? LIMIT 1", (node,)).fetchone() is not None

    def open_gaps(self, node: str, journal_id: str) -> list[tuple[int, int]]:
        return [tuple(r) for r in self._db.execute(
            "SELECT first_seq, last_seq FROM gaps WHERE node = ? AND journal_id = ? ORDER BY first_seq",
            (node, journal_id))]

    def add_gap(self, node: str, journal_id: str, lo: int, hi: int) -> None:
        with self._tx():
            for _, first, last in self._overlapping(journal_id, lo - 1, hi + 1):
                self._db.execute("DELETE FROM gaps WHERE journal_id = ? AND first_seq = ?", (journal_id, first))
                lo, hi = min(lo, first), max(hi, last)
            self._db.execute("INSERT INTO gaps VALUES (?, ?, ?, ?)", (node, journal_id, int(lo), int(hi)))

    def close_gap(self, journal_id: str, lo: int, hi: int) -> None:
        with self._tx():
            self._subtract_gap(journal_id, lo, hi)

    def _overlapping(self, journal_id: str, lo: int, hi: int) -> list:
        return self._db.execute("SELECT node, first_seq, last_seq FROM gaps WHERE journal_id = ? AND last_seq >= ? "
                                "AND first_seq <= ?", (journal_id, lo, hi)).fetchall()

    def _subtract_gap(self, journal_id: str, lo: int, hi: int) -> None:
        for node, first, last in self._overlapping(journal_id, lo, hi):
            self._db.execute("DELETE FROM gaps WHERE journal_id = ? AND first_seq = ?", (journal_id, first))
            for a, b in ((first, lo - 1), (hi + 1, last)):
                if a <= b:
                    self._db.execute("INSERT INTO gaps VALUES (?, ?, ?, ?)", (node, journal_id, a, b))

    # -- downstreams -----------------------------------------------------------------------
    def after(self, outbox_id: int, limit: int = 200) -> list[tuple[int, dict]]:
        """Up to ``limit`` alerts with an outbox id above ``outbox_id``, oldest first: (id, alert)."""
        rows = self._db.execute("SELECT id, body FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                                (int(outbox_id), int(limit))).fetchall()
        return [(i, msgpack.unpackb(b, raw=False)) for i, b in rows]

    def get(self, outbox_id: int) -> dict | None:
        row = self._db.execute("SELECT body FROM outbox WHERE id = ?", (int(outbox_id),)).fetchone()
        return None if row is None else msgpack.unpackb(row[0], raw=False)

    def last_id(self) -> int:
        return self._db.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()[0]

    def cursor(self, downstream: str) -> int | None:
        """The outbox id of the last alert ``downstream`` acknowledged; None: it never ran."""
        row = self._db.execute("SELECT acked FROM cursors WHERE downstream = ?", (downstream,)).fetchone()
        return None if row is None else row[0]

    def set_cursor(self, downstream: str, acked: int) -> None:
        with self._tx():
            self._db.execute("INSERT INTO cursors VALUES (?, ?, ?) ON CONFLICT(downstream) DO UPDATE SET "
                             "acked = excluded.acked, updated = excluded.updated", (downstream, int(acked), time.time()))

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def set_meta(self, **values: str) -> None:
        with self._tx():
            for k, v in values.items():
                self._db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                                 (k, str(v)))

    def execute(self, sql: str, args=()):
        """For a downstream's own tables (edge.bridge.modbus keeps its queue here)."""
        return self._db.execute(sql, args)

    def transaction(self):
        return self._tx()

    def _tx(self):
        return _Tx(self._db, self.path)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> "Outbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error); nested use joins the outer transaction.
    A failed write becomes a StateError naming the file."""

    def __init__(self, db: sqlite3.Connection, path: Path):
        self.db, self.path, self.outer = db, path, False

    def __enter__(self):
        self.outer = not self.db.in_transaction
        if self.outer:
            try:
                self.db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StateError(f"cannot write the bridge state file {self.path}: {e}") from e
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.outer:
            return False
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
                return False
            except sqlite3.Error as e:
                exc = e
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        if isinstance(exc, sqlite3.Error):
            raise StateError(f"cannot write the bridge state file {self.path}: {exc} "
                             "(disk full or read-only? the alert stays with the node and is fetched again)") from exc
        return False
