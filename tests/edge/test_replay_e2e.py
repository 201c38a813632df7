"""Exactly once, end to end: edge-run (real processes, the bundled model, its alert journal and
replay endpoint) and edge-alerts on loopback; subscribers are killed, restarted, or join late,
and every alert must arrive exactly once (counted in the subscriber's SQLite store)."""
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.alerts_cli import AlertStore, AlertSubscriber

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "edge" / "bundled" / "model.onnx"
IMAGES = ROOT / "trainer" / "sample_data" / "elpv_mini" / "images"
N_IMAGES = 50


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EdgeRun:
    """edge-run in a subprocess with its own journal, alert and replay endpoints."""

    def __init__(self, tmp_path: Path, *args: str, journal: Path | None = None, ports=None):
        ports = ports or (free_port(), free_port())
        self.alerts, self.replay = (f"tcp://127.0.0.1:{p}" for p in ports)
        self.ports = ports
        self.connect = f"{self.alerts},{self.replay}"
        self.journal = journal or tmp_path / "node-state" / "alerts.sqlite"
        self.summary_path = tmp_path / f"summary-{time.monotonic_ns()}.json"
        self.log = tmp_path / f"edge-run-{time.monotonic_ns()}.log"
        cmd = [sys.executable, "-m", "edge.run", "--insecure", "--engine", str(ENGINE), "--alerts-addr", self.alerts,
               "--replay-addr", self.replay, "--journal", str(self.journal), "--summary-json", str(self.summary_path),
               "--quiet", "--node-id", "line1", *args]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float = 90) -> dict:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            pytest.fail(f"edge-run did not end within {timeout} s:\n{self.log.read_text()[-3000:]}")
        assert self.proc.returncode == 0, self.log.read_text()[-3000:]
        return json.loads(self.summary_path.read_text())

    def journal_seqs(self) -> list[int]:
        """The alert_seqs in the node's journal ([] while the alert stage is still creating it)."""
        try:
            with sqlite3.connect(f"file:{self.journal}?mode=ro", uri=True, timeout=1) as con:
                return [r[0] for r in con.execute("SELECT seq FROM alerts ORDER BY seq")]
        except sqlite3.OperationalError:
            return []


def count_rows(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("SELECT count(*) FROM alerts").fetchone()[0]
    except sqlite3.OperationalError:   # not created yet
        return 0


def edge_alerts(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edge.alerts_cli", "--insecure", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_kill_the_subscriber_mid_stream_and_restart_it_every_alert_arrives_exactly_once(tmp_path):
    db = tmp_path / "mes" / "alerts.sqlite"
    db.parent.mkdir()
    node = EdgeRun(tmp_path, "--source", str(IMAGES), "--no-drop", "--fps", "10", "--publish", "all",
                   "--wait-subscribers", "1")
    cmd = ["--connect", node.connect, "--db", str(db), "-q", "--summary", "--timeout", "4"]
    # The first one is killed mid-stream: its silence timeout must outlast edge-run's start (its
    # stages' interpreters and the engine), which on a loaded 2-core machine took more than 4 s.
    first, second = edge_alerts(*cmd[:-1], "60"), None
    try:
        deadline = time.monotonic() + 60
        while count_rows(db) < 10 and time.monotonic() < deadline and node.proc.poll() is None:
            time.sleep(0.05)
        at_kill = count_rows(db)
        assert 10 <= at_kill < N_IMAGES, f"{at_kill} rows before the kill:\n{node.log.read_text()[-3000:]}"
        first.send_signal(signal.SIGKILL)                  # mid-stream, no chance to clean up
        first.communicate(timeout=10)
        time.sleep(1.0)                                    # alerts are published while nobody listens
        second = edge_alerts(*cmd)
        summary = node.wait()
        out, err = second.communicate(timeout=60)          # ends 4 s after the last alert
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
    assert second.returncode == 0, err
    assert summary["alerts_published"] == summary["frames_judged"] == N_IMAGES
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT node, journal_id, alert_seq FROM alerts ORDER BY alert_seq").fetchall()
    journal = node.journal_seqs()
    # every alert exactly once: as many rows as the node journaled, the same alert_seqs, no repeats
    assert len(rows) == len(journal) == N_IMAGES
    assert [r[2] for r in rows] == journal == list(range(1, N_IMAGES + 1))
    assert len({(r[0], r[1]) for r in rows}) == 1 and rows[0][0] == "line1"
    replayed = int(out.split(" replayed")[0].rsplit(" ", 1)[1])
    print(f"\n{at_kill} rows stored when the subscriber was killed; the restarted one stored "
          f"{len(rows) - at_kill} ({replayed} fetched by replay); the store holds {len(rows)} alerts, "
          f"alert_seq {rows[0][2]}..{rows[-1][2]}; the node journaled {len(journal)}\n{out}")
    assert replayed > 0, out                               # the restarted one fetched what it had missed
    assert "0 lost" in out and "0 still missing" in out, out


def test_a_late_subscriber_gets_the_earlier_alerts_in_order_then_the_live_ones(tmp_path):
    node = EdgeRun(tmp_path, "--source", str(IMAGES), "--no-drop", "--fps", "20", "--publish", "all")
    got = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and node.proc.poll() is None:   # nobody listens for a while
            if len(node.journal_seqs()) >= 10:
                break
            time.sleep(0.05)
        with AlertSubscriber([node.connect], since_start=True) as sub:
            deadline = time.monotonic() + 60
            while len(got) < N_IMAGES and time.monotonic() < deadline:
                alert = sub.recv(timeout=0.5)
                if alert is not None:
                    got.append(alert)
            assert sub.recv(timeout=0.5) is None
            counters = dict(sub.counters)
    finally:
        summary = node.wait()
    assert [a["alert_seq"] for a in got] == list(range(1, N_IMAGES + 1))     # in order, each once
    assert sorted(a["frame_seq"] for a in got) == list(range(N_IMAGES))
    assert counters["replayed"] >= 10 and counters.get("gaps_lost", 0) == 0
    assert summary["alerts_published"] == N_IMAGES


def test_edge_run_restarted_continues_the_numbering_and_the_store_stays_exact(tmp_path):
    few = tmp_path / "few"
    few.mkdir()
    for f in sorted(IMAGES.iterdir())[:4]:
        shutil.copy(f, few / f.name)
    journal = tmp_path / "state" / "journal.sqlite"
    ports = (free_port(), free_port())
    with AlertStore(tmp_path / "alerts.sqlite") as store:
        for run in range(2):
            node = EdgeRun(tmp_path, "--source", str(few), "--no-drop", "--wait-subscribers", "1",
                           journal=journal, ports=ports)
            with AlertSubscriber([node.connect], resume=store) as sub:
                deadline = time.monotonic() + 60
                while store.rows_written < 4 * (run + 1) and time.monotonic() < deadline:
                    alert = sub.recv(timeout=0.2)
                    if alert is not None:
                        store.add(alert)
                node.wait()
        assert store.duplicates == 0
    with sqlite3.connect(tmp_path / "alerts.sqlite") as con:
        rows = con.execute("SELECT alert_seq, journal_id FROM alerts ORDER BY alert_seq").fetchall()
    assert [r[0] for r in rows] == list(range(1, 9)) and len({r[1] for r in rows}) == 1
