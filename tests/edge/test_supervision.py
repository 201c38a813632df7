"""edge-run restarts a stage that dies or hangs, and accounts for every frame (real processes)."""
import os
import signal
import time
from pathlib import Path

from tests.edge.test_pipeline import IMAGES, Run, _children


def stage_pid(run: Run, stage: str, timeout: float = 30) -> int:
    """The pid of a stage process, found by the name edge-run gives it (/proc/PID/comm)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in _children(run.proc.pid):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == f"edge-{stage}":
                    return pid
            except OSError:
                pass
        time.sleep(0.1)
    raise AssertionError(f"no edge-{stage} process under {run.proc.pid}:\n{run.tail()}")


def test_a_killed_score_stage_is_restarted_and_every_frame_is_accounted_for(tmp_path):
    run = Run(tmp_path, "--source", str(IMAGES), "--loop", "--fps", "25", "--threshold", "1e9",
              "--duration", "14")
    run.collect_until(lambda r: len(r.alerts) >= 30, 40)
    first = stage_pid(run, "score")
    os.kill(first, signal.SIGKILL)
    killed_at = max(a["frame_seq"] for a in run.alerts)
    run.collect_until(lambda r: max(a["frame_seq"] for a in r.alerts) > killed_at + 40, 30)
    second = stage_pid(run, "score")
    summary = run.finish()
    assert second != first and summary["restarts"] == {"score": 1}
    assert "score stage died" in run.output and "restarting" in run.output
    assert max(a["frame_seq"] for a in run.alerts) > killed_at + 40, "the run went on after the restart"
    # every captured frame is judged, or dropped and counted, or was lost inside the dead stage
    dropped = sum(summary["dropped"].values())
    lost = summary["frames_lost_in_restarts"]
    assert summary["frames_judged"] + summary["frames_not_decidable"] + dropped + lost == summary["frames_captured"]
    for cam, c in summary["cameras"].items():   # and per camera
        assert c["judged"] + c["not_decidable"] + c["dropped"] + c["lost_in_restarts"] == c["captured"], cam
    assert 0 <= lost <= 64                      # at most what a stage holds: its queue and one batch
    print(f"\nscore killed: captured {summary['frames_captured']}, judged {summary['frames_judged']}, "
          f"dropped {dropped} (counted), lost in the dead stage {lost}")


def test_a_hung_stage_is_found_by_heartbeat_killed_and_restarted(tmp_path):
    run = Run(tmp_path, "--source", str(IMAGES), "--loop", "--fps", "25", "--threshold", "1e9",
              "--duration", "16", "--heartbeat-timeout", "2")
    run.collect_until(lambda r: len(r.alerts) >= 20, 40)
    hung = stage_pid(run, "preprocess")
    os.kill(hung, signal.SIGSTOP)                # alive, but silent: a hang
    before = len(run.alerts)
    run.collect_until(lambda r: len(r.alerts) >= before + 40, 30)
    summary = run.finish()
    assert "silent for" in run.output and summary["restarts"] == {"preprocess": 1}
    assert len(run.alerts) >= before + 40
    assert not Path(f"/proc/{hung}").exists() or "Z" in Path(f"/proc/{hung}/stat").read_text().split()[2]
