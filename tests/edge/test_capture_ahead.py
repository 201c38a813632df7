"""edge-run starts the capture process with the others (its start-up overlaps the engine's load) but
capture opens and reads nothing until every other stage is ready: real processes, real ZeroMQ."""
import time
from pathlib import Path

from edge.alerts_cli import AlertSubscriber
from edge.frame_ring import SHM_DIR
from tests.edge.test_pipeline import IMAGES, Run


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_capture_started_ahead_reads_nothing_until_the_pipeline_is_ready(tmp_path):
    # The alert stage waits (up to 10 s) for a subscriber that is not there yet: not ready.
    run = Run(tmp_path, "--source", str(IMAGES), "--no-drop", "--threshold", "1e9", "--wait-subscribers", "1",
              subscribe=False)
    deadline, capture = time.monotonic() + 20, None
    while capture is None and time.monotonic() < deadline and run.proc.poll() is None:
        capture = next((p for p in descendants(run.proc.pid) if comm(p) == "edge-capture"), None)
        time.sleep(0.1)
    assert capture is not None, run.tail()
    time.sleep(1.0)
    if "subscriber(s) after" not in run.log.read_text():   # still waiting (a very slow machine may not be)
        assert not list(SHM_DIR.glob(f"edge-inspect-{capture}-*")), "capture read frames before the pipeline was ready"
    run.sub = AlertSubscriber([run.alerts_addr])
    summary = run.finish(timeout=120)
    assert summary["frames_captured"] == summary["frames_judged"] == 50
    assert summary["stage_pids"]["capture"] == capture   # the process started ahead is the one that ran
    assert summary["elapsed_s"] > 0
