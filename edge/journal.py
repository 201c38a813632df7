"""The alert journal: every alert a node publishes, on the node's own disk, before it is sent.

One SQLite file per publisher (node + alert socket), in WAL mode with ``synchronous=FULL``:
an alert the line has been told about survives a crash of ``edge-run`` and a power cut.
It is what makes ``alert_seq`` durable and gap-free, and what the replay endpoint
(edge/replay.py) serves to a subscriber that missed alerts.

    meta    (key TEXT PRIMARY KEY, value TEXT)   node, journal_id (random, made once), created_wall
    alerts  (seq INTEGER PRIMARY KEY,            the alert's alert_seq
             published_wall REAL, camera TEXT, verdict TEXT,   (replay filters on camera and verdict)
             body BLOB)                           the exact msgpack body published; NULL = a tombstone

Gap-free by construction: :meth:`AlertJournal.append` refuses an alert_seq that is not
last + 1. The one exception is explicit: alerts that were published while the journal
could not be written and were then lost from memory become tombstones (``body`` NULL),
which the replay reports as missing rather than leaving a hole nobody can explain.

Epochs: ``journal_id`` names one numbering of ``alert_seq`` (an epoch). A seq, once
published, is never published again under the same journal_id. The one way that could
happen is alerts published while the journal could not be written (disk full) that are
still unjournaled when the process ends: the next start would hand out their numbers
again. So, before the first such alert is published, the alert stage drops an empty marker
file beside the journal (:func:`unjournaled_marker`; creating an empty file needs no data
blocks, so it works on a full disk), and removes it once the backlog is journaled. An
:class:`AlertJournal` opened while the marker exists starts a new epoch: the old file is
renamed aside (``<name>.epoch-<old journal_id>``, kept for forensics), a new file gets a new
journal_id and numbering starts at 1. Subscribers key alerts by (node, journal_id,
alert_seq) and read a new journal_id from its start (docs/reliability.md).

Retention (:meth:`AlertJournal.prune`, at open and every ``prune_every`` appends) deletes the
oldest alerts beyond ``max_alerts``, older than ``max_age_s`` or beyond ``max_bytes`` of bodies;
it never deletes the newest row, so ``last_seq`` (and with it the numbering) survives any
retention setting.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Iterable, NamedTuple

JOURNAL_FORMAT_VERSION = 1      # PRAGMA user_version of the file
DEFAULT_MAX_ALERTS = 100_000
DEFAULT_MAX_AGE_S = 7 * 86400.0
DEFAULT_MAX_BYTES = 1 << 30     # of alert bodies (thumbnails included): bounds the file on a small eMMC
log = logging.getLogger("edge")

PRUNE_EVERY = 256               # retention is enforced every this many appends (and at open)
WAL_SIZE_LIMIT = 64 << 20       # the -wal file is truncated back to this after a checkpoint

DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (
    seq            INTEGER PRIMARY KEY,   -- the alert's alert_seq
    published_wall REAL    NOT NULL,      -- Unix seconds
    camera         TEXT    NOT NULL,
    verdict        TEXT    NOT NULL,
    body           BLOB                   -- the msgpack body as published (NULL: published, not journaled)
);
"""


class JournalError(RuntimeError):
    """The journal cannot be opened or written (disk full, unwritable, another node's file...)."""


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open. SQLite rolls back by itself after some errors
    (SQLITE_FULL, SQLITE_IOERR): a second ROLLBACK then fails with "cannot rollback - no
    transaction is active", which would replace the real cause ("database or disk is full")."""
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error as e:   # the original error is the one worth reporting
            log.debug("alert journal: rollback after an error failed too: %s", e)


def unjournaled_marker(path: str | os.PathLike) -> Path:
    """The file that says "alerts were published that this journal does not have" (module doc)."""
    return Path(str(path) + ".unjournaled")


EPOCH_SIDECARS = ("-wal", "-shm")   # SQLite's files beside the journal, renamed or removed with it


class JournalEntry(NamedTuple):
    seq: int
    published_wall: float
    camera: str
    verdict: str
    body: bytes


class SinceResult(NamedTuple):
    """What :meth:`AlertJournal.since` found after ``after``.

    ``alerts``: bodies in seq order. ``missing``: ``[lo, hi]`` ranges the journal no longer
    has (pruned, or tombstones). ``upto``: every seq in ``(after, upto]`` is in ``alerts``,
    in ``missing``, or was filtered out; ask again with ``after=upto`` for more."""
    alerts: list
    missing: list
    upto: int
    first_seq: int | None
    last_seq: int


def _merge(ranges: list, lo: int, hi: int) -> None:
    if ranges and ranges[-1][1] + 1 >= lo:
        ranges[-1][1] = max(ranges[-1][1], hi)
    else:
        ranges.append([lo, hi])


class AlertJournal:
    """The alerts of one node, in a SQLite file at ``path`` (created with its folder).

    Single-threaded (the alert stage's loop); not for use from several processes at once:
    two publishers must have two journals (the default path carries node and port)."""

    def __init__(self, path: str | os.PathLike, node: str, *, max_alerts: int = DEFAULT_MAX_ALERTS,
                 max_age_s: float = DEFAULT_MAX_AGE_S, max_bytes: int = DEFAULT_MAX_BYTES,
                 prune_every: int = PRUNE_EVERY, clock=time.time):
        if max_alerts < 1 or max_age_s <= 0 or max_bytes < 1:
            raise ValueError("journal retention must keep at least one alert for a positive time")
        self.path = Path(path)
        self.node = node
        self.max_alerts, self.max_age_s, self.max_bytes = int(max_alerts), float(max_age_s), int(max_bytes)
        self.prune_every, self.clock = int(prune_every), clock
        self.pruned = 0
        self.prune_errors = 0
        self._appends_since_prune = 0
        self._db: sqlite3.Connection | None = None
        # set when this open started a new epoch: the journal_id it replaced and where that file went
        self.previous_journal_id: str | None = None
        self.previous_path: Path | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            marker = unjournaled_marker(self.path)
            if marker.exists():
                self._set_aside()
            # autocommit mode: every write below is an explicit BEGIN IMMEDIATE ... COMMIT
            self._db = sqlite3.connect(str(self.path), isolation_level=None, timeout=5.0)
            self._open()
        except (OSError, sqlite3.Error) as e:
            self.close()
            raise JournalError(f"cannot open the alert journal {self.path}: {e}") from e
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        db = self._db
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and version != JOURNAL_FORMAT_VERSION:
            raise JournalError(f"{self.path} is not an alert journal of format {JOURNAL_FORMAT_VERSION} "
                               f"(user_version {version}, tables {sorted(tables)}): give --journal another file")
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":   # e.g. a network file system: no shared memory for the WAL index
            raise JournalError(f"{self.path}: SQLite refused WAL mode (got {mode!r}); put the journal on a local disk")
        db.execute("PRAGMA synchronous=FULL")   # fsync the WAL at every commit: survives a power cut
        db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in DDL.split(";"):
                if statement.strip():
                    db.execute(statement)
            meta = dict(db.execute("SELECT key, value FROM meta"))
            if "journal_id" not in meta:
                meta = {"node": self.node, "journal_id": uuid.uuid4().hex, "created_wall": repr(self.clock())}
                if self.previous_journal_id is not None:
                    meta["previous_journal_id"] = self.previous_journal_id
                db.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
                db.execute(f"PRAGMA user_version={JOURNAL_FORMAT_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        if meta["node"] != self.node:
            raise JournalError(f"the alert journal {self.path} belongs to node {meta['node']!r}, not {self.node!r}: "
                               f"give --node-id {meta['node']} or another --journal file")
        self.journal_id: str = meta["journal_id"]
        self.created_wall = float(meta["created_wall"])
        if self.previous_journal_id is not None:   # the new epoch is committed: the old numbers are safe
            unjournaled_marker(self.path).unlink(missing_ok=True)
        self._last = db.execute("SELECT coalesce(max(seq), 0) FROM alerts").fetchone()[0]
        self._bytes = int(db.execute("SELECT total(length(body)) FROM alerts").fetchone()[0])
        self.prune()

    def _set_aside(self) -> None:
        """Start a new epoch: rename the journal (and its WAL) aside; the open that follows
        creates a new file with a new journal_id. The marker goes only once that is committed."""
        if self.path.exists() and self.path.stat().st_size == 0:
            self.path.unlink()       # a new epoch's file that a full disk left empty: nothing to keep
        if not self.path.exists():   # nothing to set aside: the new file gets a new journal_id anyway
            self.previous_journal_id = "(no journal file)"
            return
        try:   # a read-only look at the old identity, for the log and the new file's meta
            old = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=1.0)
            try:
                row = old.execute("SELECT value FROM meta WHERE key = 'journal_id'").fetchone()
            finally:
                old.close()
            self.previous_journal_id = row[0] if row else "(unknown)"
        except sqlite3.Error as e:
            log.warning("alert journal: cannot read the identity of %s before setting it aside: %s", self.path, e)
            self.previous_journal_id = "(unreadable)"
        suffix = self.previous_journal_id if self.previous_journal_id.isalnum() else f"{time.time():.0f}"
        aside = self.path.with_name(f"{self.path.name}.epoch-{suffix}")
        for extra in ("",) + EPOCH_SIDECARS:
            src = Path(str(self.path) + extra)
            if not src.exists():
                continue
            if extra == "-shm":
                src.unlink()              # only an index of the WAL: SQLite rebuilds it
            else:
                os.replace(src, Path(str(aside) + extra))
        self.previous_path = aside

    # -- the marker of published-but-unjournaled alerts (module doc: epochs) ---------------------
    def mark_unjournaled(self, first_seq: int, last_seq: int) -> bool:
        """Say on disk, before they are published, that alerts from ``first_seq`` on are not
        journaled. True when the marker exists now. The range is written into it when the disk
        takes it (for a reader); the file's existence alone is what counts."""
        marker = unjournaled_marker(self.path)
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as e:
            log.critical("alert journal: cannot create %s (%s): if this process ends before the journal "
                         "recovers, the next start would reuse alert_seq from %d", marker, e, first_seq)
            return False
        try:
            os.write(fd, f"alert_seq {first_seq}..{last_seq} published, not journaled\n".encode())
            os.fsync(fd)
        except OSError:
            pass   # a full disk: the empty file is enough
        finally:
            os.close(fd)
        return True

    def clear_unjournaled(self) -> None:
        """Every published alert is journaled (or a tombstone) again: the numbering is safe."""
        try:
            unjournaled_marker(self.path).unlink(missing_ok=True)
        except OSError as e:   # harmless: the next start begins an epoch it did not need
            log.warning("alert journal: cannot remove %s: %s", unjournaled_marker(self.path), e)

    # -- reading -----------------------------------------------------------------------------
    def last_seq(self) -> int:
        """The newest alert_seq journaled; 0 for a new journal."""
        return self._last

    def first_seq(self) -> int | None:
        """The oldest alert_seq still kept (a tombstone counts); None for a new journal."""
        return self._conn().execute("SELECT min(seq) FROM alerts").fetchone()[0]

    def count(self) -> int:
        return self._conn().execute("SELECT count(*) FROM alerts").fetchone()[0]

    def body_bytes(self) -> int:
        return self._bytes

    def since(self, after: int, limit: int, *, cameras: Iterable[str] = (), verdicts: Iterable[str] = (),
              max_bytes: int | None = None) -> SinceResult:
        """Up to ``limit`` alert bodies with seq > ``after`` (and at most ``max_bytes`` of them, but
        always at least one), oldest first, only of ``cameras`` / ``verdicts`` when given."""
        db = self._conn()
        last, first = self._last, self.first_seq()
        if after >= last or first is None:
            return SinceResult([], [], max(after, last), first, last)
        missing: list = []
        if after + 1 < first:                      # pruned by retention
            _merge(missing, after + 1, first - 1)
        where, args = ["seq > ?"], [after]
        for column, values in (("camera", sorted(set(cameras))), ("verdict", sorted(set(verdicts)))):
            if values:
                where.append(f"{column} IN ({', '.join('?' * len(values))})")
                args += values
        # a tombstone is reported whatever the filter: nobody knows what it would have matched
        sql = (f"SELECT seq, body FROM alerts WHERE seq > ? AND (body IS NULL OR ({' AND '.join(where[1:]) or '1'})) "
               "ORDER BY seq LIMIT ?")
        alerts, size, upto, n = [], 0, last, 0
        for seq, body in db.execute(sql, [after] + args[1:] + [int(limit)]):
            if body is not None and max_bytes is not None and alerts and size + len(body) > max_bytes:
                upto = seq - 1
                break
            n += 1
            upto = seq
            if body is None:
                _merge(missing, seq, seq)
            else:
                alerts.append(bytes(body))
                size += len(body)
        else:
            if n < limit:
                upto = last                         # nothing else after the rows we read
        return SinceResult(alerts, missing, upto, first, last)

    # -- writing -----------------------------------------------------------------------------
    def append(self, seq: int, published_wall: float, body: bytes, camera: str = "", verdict: str = "") -> None:
        """Journal one alert (committed and fsynced when this returns); ``seq`` must be last + 1."""
        self.append_many([JournalEntry(seq, published_wall, camera, verdict, body)])

    def append_many(self, entries: list[JournalEntry], *, lost_before: bool = False) -> None:
        """Journal consecutive alerts in one transaction (one fsync). The first must be last + 1;
        with ``lost_before``, seqs between last + 1 and the first become tombstones (alerts that
        were published but could not be journaled and are no longer in memory)."""
        if not entries:
            return
        first = entries[0].seq
        for a, b in zip(entries, entries[1:]):
            if b.seq != a.seq + 1:
                raise JournalError(f"alert_seq {b.seq} does not follow {a.seq}: the journal is gap-free")
        if first <= self._last or (first != self._last + 1 and not lost_before):
            raise JournalError(f"alert_seq {first} does not follow the journal's last alert_seq {self._last}")
        db = self._conn()
        tombstones = [(s, entries[0].published_wall, "", "", None) for s in range(self._last + 1, first)]
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT INTO alerts VALUES (?, ?, ?, ?, ?)",
                               tombstones + [tuple(e) for e in entries])
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
        except sqlite3.Error as e:
            raise JournalError(f"cannot write the alert journal {self.path}: {e}") from e
        self._last = entries[-1].seq
        self._bytes += sum(len(e.body) for e in entries)
        self._appends_since_prune += len(entries)
        if self._appends_since_prune >= self.prune_every:
            try:   # the alerts are journaled: a retention that fails now is retried at the next round
                self.prune()
            except JournalError as e:
                self.prune_errors += 1
                log.warning("alert journal: retention not applied this time: %s", e)

    def prune(self) -> int:
        """Apply retention now; returns how many alerts were deleted. Never deletes the newest."""
        self._appends_since_prune = 0
        if self._last == 0:
            return 0
        db = self._conn()
        cut = self._last - self.max_alerts                      # delete seq <= cut
        row = db.execute("SELECT seq FROM alerts WHERE published_wall >= ? ORDER BY seq LIMIT 1",
                         (self.clock() - self.max_age_s,)).fetchone()
        cut = max(cut, (row[0] - 1) if row else self._last - 1)  # everything older than max_age_s
        if self._bytes > self.max_bytes:
            excess = self._bytes - self.max_bytes
            for seq, size in db.execute("SELECT seq, coalesce(length(body), 0) FROM alerts ORDER BY seq"):
                cut = max(cut, seq)
                excess -= size
                if excess <= 0:
                    break
        cut = min(cut, self._last - 1)
        n, size = db.execute("SELECT count(*), total(length(body)) FROM alerts WHERE seq <= ?", (cut,)).fetchone()
        if not n:
            return 0
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM alerts WHERE seq <= ?", (cut,))
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
        except sqlite3.Error as e:
            raise JournalError(f"cannot prune the alert journal {self.path}: {e}") from e
        self._bytes -= int(size)
        self.pruned += n
        return n

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise JournalError(f"the alert journal {self.path} is closed")
        return self._db

    def close(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            finally:
                self._db = None

    def __enter__(self) -> "AlertJournal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def default_journal_path(node: str, alerts_addr: str) -> Path:
    """Where ``edge-run`` keeps the journal when ``--journal`` is not given.

    In the service's state directory: ``$STATE_DIRECTORY`` (systemd ``StateDirectory=``), else
    ``$XDG_STATE_HOME/edge-inspect``, else ``~/.local/state/edge-inspect``; not the working
    directory, which is ``/`` for a systemd service and a source tree in development. The name
    carries the node and the alert socket (``alerts-<node>-<port>.sqlite``): two pipelines on
    one host never share a journal."""
    base = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if not base:
        base = os.path.join(os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"),
                            "edge-inspect")
    addr = alerts_addr.split("://", 1)[-1]
    where = addr.rsplit(":", 1)[1] if alerts_addr.startswith("tcp://") and ":" in addr else addr
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in f"{node}-{where}").strip("._") or "node"
    return Path(base) / f"alerts-{safe}.sqlite"
