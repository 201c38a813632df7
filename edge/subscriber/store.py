"""The SQLite store of ``edge-alerts --db``: one row per alert, and where a restarted subscriber resumes."""
from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import time
from pathlib import Path

from edge.subscriber.output import json_default

log = logging.getLogger("edge.alerts")

STORE_SCHEMA_VERSION = 4  # PRAGMA user_version of the file; docs/alerts.md shows the tables
READABLE_VERSIONS = (1, 2, 3, STORE_SCHEMA_VERSION)   # older files are upgraded in place
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
    journal_id       TEXT,              -- the node's alert journal (NULL from a node without one)
    part_id          TEXT               -- the part the frame showed (an image file name), NULL when unknown
);
"""
# One row per alert. A journaled node numbers its alerts durably: (node, journal_id, alert_seq)
# names one. A node without a journal (older edge-run) starts alert_seq at 1 again when it
# restarts: for its alerts published_wall tells a restart from the same message received twice.
STORE_INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS alerts_once ON alerts (node, journal_id, alert_seq);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_once_unjournaled ON alerts (node, alert_seq, published_wall)
    WHERE journal_id IS NULL;
CREATE INDEX IF NOT EXISTS alerts_node_seq ON alerts (node, alert_seq);
CREATE INDEX IF NOT EXISTS alerts_camera_time ON alerts (camera, capture_wall);
CREATE INDEX IF NOT EXISTS alerts_verdict_time ON alerts (verdict, capture_wall);
CREATE INDEX IF NOT EXISTS alerts_part ON alerts (part_id) WHERE part_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS gaps (       -- alerts edge-alerts knows it has not got yet (it retries them)
    node       TEXT    NOT NULL,
    journal_id TEXT    NOT NULL,
    first_seq  INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL,
    PRIMARY KEY (journal_id, first_seq)
);
-- An alert whose (node, journal_id, alert_seq) is already stored with other content: the node
-- reused a number (never done by an edge-run with journal epochs). Kept, not thrown away.
CREATE TABLE IF NOT EXISTS conflicts AS SELECT * FROM alerts WHERE 0;
"""
_COLUMNS = ("node", "alert_seq", "camera", "frame_seq", "capture_wall", "published_wall", "received_wall",
            "latency_ms", "verdict", "score", "normalised_score", "threshold", "model_version", "n_regions",
            "regions_json", "reason", "thumbnail_jpeg", "is_simulated", "schema_v", "journal_id", "part_id")
# A plain INSERT: "OR IGNORE" would also swallow NOT NULL and CHECK failures as if they were
# duplicates. Duplicates are found by looking the alert up first (AlertStore.add).
_VALUES = f"({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_INSERT = f"INSERT INTO alerts {_VALUES}"
_INSERT_CONFLICT = f"INSERT INTO conflicts {_VALUES}"
_REQUIRED_FINITE = ("capture_wall", "published_wall", "latency_ms", "threshold")   # REAL NOT NULL columns


class StoreWriteError(RuntimeError):
    """An alert could not be stored: not a duplicate, a failed write (disk full, a value the
    table refuses such as a non-finite threshold, a locked or read-only file)."""


class StoreConflict(RuntimeError):
    """Reserved name for callers that want to raise on a reused alert_seq (the store itself keeps
    such an alert in table ``conflicts`` and counts it)."""


def _finite_or_none(x):
    return x if x is None or math.isfinite(x) else None


def _statements(script: str):
    return [s for s in script.split(";") if s.strip()]


class AlertStore:
    """One row per alert in table ``alerts`` of a SQLite file (schema: STORE_DDL, docs/alerts.md).

    ``add`` returns False for an alert already stored (the same node journal and alert_seq,
    and the same content: e.g. two --connect to one node, or a live copy of an alert already
    replayed), counted in ``duplicates``: the first copy wins. An alert whose number is stored
    with *other* content (published at another time, another frame) is not a duplicate: it is
    kept in table ``conflicts``, counted in ``conflicts`` and logged at ERROR. An alert that
    cannot be written raises :class:`StoreWriteError` and is counted in ``write_errors``: a
    failed write is never taken for a duplicate. ``last_seq`` / ``open_gaps`` tell a restarted
    edge-alerts where to resume, so that every alert is stored exactly once. WAL journal so
    that an MES can read while we write; each alert is committed at once (synchronous=NORMAL:
    durable across a crash of this process, the last alerts may be lost on power loss, and
    are then fetched again from the node's replay at the next start).

    A file of store version 1 (before journals), 2 or 3 is upgraded in place to version 4: column
    ``journal_id`` (NULL for the rows it had; version 1), tables ``gaps`` and ``conflicts``,
    column ``part_id`` (NULL for the rows it had; versions 1-3)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.duplicates = 0
        self.rows_written = 0
        self.conflicts = 0
        self.write_errors = 0
        self._db = sqlite3.connect(str(self.path))
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            has_table = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='alerts'").fetchone()
            if has_table and version not in READABLE_VERSIONS:
                raise ValueError(f"{self.path} holds an alerts table of store version {version}; this "
                                 f"edge-alerts writes version {STORE_SCHEMA_VERSION}: use a new file")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._db:   # one transaction: a file is upgraded completely or not at all
                self._db.execute("BEGIN")
                if has_table and version == 1:
                    self._db.execute("ALTER TABLE alerts ADD COLUMN journal_id TEXT")
                if has_table and version < 4:
                    for table in ("alerts", "conflicts"):   # conflicts: since version 2, same columns as alerts
                        if self._db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                                            (table,)).fetchone():
                            self._db.execute(f"ALTER TABLE {table} ADD COLUMN part_id TEXT")
                if has_table and version < STORE_SCHEMA_VERSION:
                    log.warning("%s: alert store upgraded from version %d to %d", self.path, version,
                                STORE_SCHEMA_VERSION)
                for statement in _statements(STORE_DDL) + _statements(STORE_INDEXES):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={STORE_SCHEMA_VERSION}")
        except BaseException:
            self._db.close()
            raise

    @staticmethod
    def row(alert: dict, received_wall: float | None = None) -> tuple:
        """The column values of one alert, in the order of ``_COLUMNS``. StoreWriteError for a
        value the table cannot hold (SQLite would store a NaN as NULL)."""
        try:
            for key in _REQUIRED_FINITE:
                if not math.isfinite(float(alert[key])):
                    raise StoreWriteError(f"alert field {key!r} is {alert[key]!r}, not a finite number")
            return AlertStore._row(alert, received_wall)
        except (KeyError, TypeError, ValueError) as e:
            raise StoreWriteError(f"not an alert the store can hold: {type(e).__name__}: {e}") from e

    @staticmethod
    def _row(alert: dict, received_wall: float | None) -> tuple:
        return (alert["node"], alert["alert_seq"], alert["camera"], alert["frame_seq"],
                float(alert["capture_wall"]), float(alert["published_wall"]),
                time.time() if received_wall is None else received_wall, float(alert["latency_ms"]),
                alert["verdict"], _finite_or_none(alert["score"]), _finite_or_none(alert["normalised_score"]),
                float(alert["threshold"]), alert["model_version"], len(alert["regions"]),
                json.dumps(alert["regions"], default=json_default, allow_nan=False),
                alert["reason"], alert["thumbnail_jpeg"], int(bool(alert["is_simulated"])), alert["v"],
                alert.get("journal_id"), alert.get("part_id"))

    def add(self, alert: dict, received_wall: float | None = None) -> bool:
        """Store one alert (committed when this returns). True when it was new (in ``alerts``, or
        in ``conflicts`` for a reused number), False for a duplicate. StoreWriteError when it
        could not be written. An alert that fills an open gap (table ``gaps``) leaves it in the
        same transaction."""
        try:
            row = self.row(alert, received_wall)
            with self._db:
                stored = self._stored_as(alert)
                if stored is None:
                    self._db.execute(_INSERT, row)
                    if alert.get("journal_id") is not None:
                        self._subtract_gap(alert["journal_id"], alert["alert_seq"], alert["alert_seq"])
                elif stored != self._identity(alert):
                    self._db.execute(_INSERT_CONFLICT, row)
        except (StoreWriteError, sqlite3.Error) as e:
            self.write_errors += 1
            raise StoreWriteError(f"alert_seq {alert.get('alert_seq')} of node {alert.get('node')} "
                                  f"(journal {alert.get('journal_id')}) NOT stored in {self.path}: {e}") from e
        if stored is None:
            self.rows_written += 1
            return True
        if stored == self._identity(alert):
            self.duplicates += 1
            return False
        self.conflicts += 1
        log.error("%s: alert_seq %d of node %s (journal %s) is already stored with other content (frame %s of %s "
                  "published at %.3f; this one: frame %s of %s at %.3f): the node reused the number; kept in "
                  "table conflicts", self.path, alert["alert_seq"], alert["node"], alert.get("journal_id"),
                  stored[1], stored[0], stored[2], alert["frame_seq"], alert["camera"], alert["published_wall"])
        return True

    @staticmethod
    def _identity(alert: dict) -> tuple:
        """What tells two alerts of one number apart: a duplicate is the same message twice."""
        return (alert["camera"], alert["frame_seq"], float(alert["published_wall"]))

    def _stored_as(self, alert: dict) -> tuple | None:
        """The identity of the stored alert with this alert's name, or None."""
        if alert.get("journal_id") is None:   # numbers restart with such a node: its name includes the time
            sql, args = ("SELECT camera, frame_seq, published_wall FROM alerts WHERE node = ? AND alert_seq = ? "
                         "AND published_wall = ? AND journal_id IS NULL",
                         (alert["node"], alert["alert_seq"], float(alert["published_wall"])))
        else:
            sql, args = ("SELECT camera, frame_seq, published_wall FROM alerts WHERE node = ? AND journal_id = ? "
                         "AND alert_seq = ?", (alert["node"], alert["journal_id"], alert["alert_seq"]))
        row = self._db.execute(sql, args).fetchone()
        return None if row is None else (row[0], row[1], float(row[2]))

    # -- where a restarted subscriber resumes (AlertSubscriber(resume=store)) -------------------
    def last_seq(self, node: str, journal_id: str) -> int | None:
        """The highest alert_seq stored of this node journal; None when none is."""
        return self._db.execute("SELECT max(alert_seq) FROM alerts WHERE node = ? AND journal_id = ?",
                                (node, journal_id)).fetchone()[0]

    def knows_node(self, node: str) -> bool:
        return self._db.execute("SELECT 1 FROM alerts WHERE node = ? LIMIT 1", (node,)).fetchone() is not None

    def open_gaps(self, node: str, journal_id: str) -> list[tuple[int, int]]:
        """The alert_seq ranges of this node journal still missing: neither stored nor known lost."""
        return [tuple(r) for r in self._db.execute(
            "SELECT first_seq, last_seq FROM gaps WHERE node = ? AND journal_id = ? ORDER BY first_seq",
            (node, journal_id))]

    def add_gap(self, node: str, journal_id: str, lo: int, hi: int) -> None:
        """Record lo..hi as missing (merged with the ranges it touches)."""
        with self._db:
            rows = self._overlapping(journal_id, lo - 1, hi + 1)
            for _, first, last in rows:
                self._db.execute("DELETE FROM gaps WHERE journal_id = ? AND first_seq = ?", (journal_id, first))
                lo, hi = min(lo, first), max(hi, last)
            self._db.execute("INSERT INTO gaps VALUES (?, ?, ?, ?)", (node, journal_id, int(lo), int(hi)))

    def close_gap(self, journal_id: str, lo: int, hi: int) -> None:
        """lo..hi are no longer missing: not stored, but known lost or filtered out."""
        with self._db:
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

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> "AlertStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
