"""edge-run's command line fails fast and in one line (issue 13, items 10-12): nonsense options
refused by argparse, a port in use without a traceback, a stage that cannot start ends the run
in seconds with the cause, and what killed runs left on the host is removed at the next start."""
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from edge.frame_ring import SHM_DIR
from tests.edge.test_pipeline import ENGINE, IMAGES, ROOT, free_port

pytestmark = pytest.mark.timeout(60)


def edge_run(*args, timeout=45):
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "edge.run", "--insecure", "--engine", str(ENGINE), *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return r, time.monotonic() - t0


@pytest.mark.parametrize("option, value", [("--max-batch", "0"), ("--duration", "-1"), ("--wait-subscribers", "-1"),
                                           ("--heartbeat-timeout", "0"), ("--stall-timeout", "nan"),
                                           ("--fps", "0"), ("--print-every", "inf"), ("--metrics-port", "0"),
                                           ("--max-queue-delay-ms", "-1"), ("--max-queue-delay-ms", "nan")])
def test_nonsense_options_are_refused(option, value):
    r, _ = edge_run("--source", str(IMAGES), option, value, timeout=20)
    assert r.returncode == 2 and option in r.stderr and "must be" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_two_sources_with_one_camera_id_are_refused():
    r, _ = edge_run("--source", f"top={IMAGES}", "--source", f"top={IMAGES}", timeout=20)
    assert r.returncode != 0 and "camera id 'top' is used twice" in r.stderr, r.stderr


def test_a_metrics_port_in_use_is_one_line_and_nothing_is_left_behind(tmp_path):
    before = set(Path(tempfile.gettempdir()).glob("edge-run-*"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r, took = edge_run("--source", str(IMAGES), "--metrics-port", str(port), "--metrics-bind", "127.0.0.1",
                           "--journal", str(tmp_path / "j.sqlite"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.startswith("edge-run:")]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "--metrics-port" in lines[0], r.stderr
    assert took < 15 and set(Path(tempfile.gettempdir()).glob("edge-run-*")) <= before


def test_a_stage_that_cannot_start_ends_the_run_in_seconds_with_the_cause(tmp_path):
    (tmp_path / "journal-is-a-folder").mkdir()
    r, took = edge_run("--source", str(IMAGES), "--alerts-addr", f"tcp://127.0.0.1:{free_port()}",
                       "--replay-addr", f"tcp://127.0.0.1:{free_port()}", "--journal", str(tmp_path / "journal-is-a-folder"))
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "alert stage cannot run" in out and "cannot open the alert journal" in out
    assert "the pipeline did not start: the alert stage cannot run" in out and "0 frames" not in out
    assert took < 15, f"took {took:.1f} s"


def test_a_start_removes_what_killed_pipelines_left(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()                                     # a pid that no longer exists
    ring = SHM_DIR / f"edge-inspect-{dead.pid}-cam0-123"
    ipc = Path(tempfile.gettempdir()) / f"edge-run-{dead.pid}-abc"
    live_ring = SHM_DIR / f"edge-inspect-{os.getpid()}-cam0-456"   # a live owner's: kept
    ring.write_bytes(b"x")
    ipc.mkdir()
    (ipc / "frames").write_bytes(b"")
    live_ring.write_bytes(b"x")
    try:
        with socket.socket() as busy:   # a start that passes its configuration checks, then stops at once
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            r, _ = edge_run("--source", str(IMAGES), "--metrics-port", str(busy.getsockname()[1]),
                            "--metrics-bind", "127.0.0.1", "--journal", str(tmp_path / "j.sqlite"), timeout=20)
        assert r.returncode == 2 and "--metrics-port" in r.stderr, r.stderr
        assert not ring.exists() and not ipc.exists() and live_ring.exists()
    finally:
        for p in (ring, live_ring):
            p.unlink(missing_ok=True)


def test_a_signed_number_after_threshold_is_its_value_not_an_option():
    from edge.run import attach_signed_numbers
    assert attach_signed_numbers(["--threshold", "-inf", "--fps", "5"]) == ["--threshold=-inf", "--fps", "5"]
    assert attach_signed_numbers(["--threshold", "-1e-3"]) == ["--threshold=-1e-3"]
    assert attach_signed_numbers(["--threshold", "--fps", "5"]) == ["--threshold", "--fps", "5"]   # missing value: argparse says so
    assert attach_signed_numbers(["--threshold", "2.5", "--source", "-"]) == ["--threshold", "2.5", "--source", "-"]
