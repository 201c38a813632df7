"""edge-run restarts a stage that dies or hangs, and accounts for every frame (real processes).

In threads mode (--stage-mode threads) the stages are threads of one process: killing or
stopping "the score stage" kills or stops that process, and the supervisor restarts it whole
(its restart count is the unit's, "pipeline")."""
import os
import signal
import time
from pathlib import Path

from tests.edge.test_pipeline import IMAGES, Run, _children, _threads, stage_mode  # noqa: F401 (fixture)


def stage_pid(run: Run, stage: str, timeout: float = 30) -> int:
    """The pid of the process that runs a stage, found by the name edge-run gives it
    (/proc/PID/comm for a stage process, /proc/PID/task/TID/comm for a stage thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in _children(run.proc.pid):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == f"edge-{stage}" or \
                        f"edge-{stage}" in _threads(pid):
                    return pid
            except OSError:
                pass
        time.sleep(0.1)
    raise AssertionError(f"no edge-{stage} process or thread under {run.proc.pid}:\n{run.tail()}")


def restarted_unit(mode: str, stage: str) -> str:
    """What the summary's restart count is keyed by when ``stage`` died."""
    return stage if mode == "processes" else "pipeline"


def test_a_killed_score_stage_is_restarted_and_every_frame_is_accounted_for(tmp_path, stage_mode):
    run = Run(tmp_path, "--source", str(IMAGES), "--loop", "--fps", "25", "--threshold", "1e9",
              "--duration", "14", mode=stage_mode)
    run.collect_until(lambda r: len(r.alerts) >= 30, 40)
    first = stage_pid(run, "score")
    os.kill(first, signal.SIGKILL)
    # counted in alerts, not frame numbers: a restarted capture (threads mode) numbers from 0 again
    at_kill = len(run.alerts)
    run.collect_until(lambda r: len(r.alerts) > at_kill + 40, 30)
    second = stage_pid(run, "score")
    summary = run.finish()
    unit = restarted_unit(stage_mode, "score")
    assert second != first and summary["restarts"] == {unit: 1}
    assert f"{unit} stage died" in run.output if stage_mode == "processes" else \
        "pipeline (capture, preprocess, score, alert: stage threads) died" in run.output
    assert "restarting" in run.output
    assert len(run.alerts) > at_kill + 40, "the run went on after the restart"
    # every captured frame is judged, or dropped and counted, or was lost inside the dead stage
    dropped = sum(summary["dropped"].values())
    lost = summary["frames_lost_in_restarts"]
    assert summary["frames_judged"] + summary["frames_not_decidable"] + dropped + lost == summary["frames_captured"]
    for cam, c in summary["cameras"].items():   # and per camera
        assert c["judged"] + c["not_decidable"] + c["dropped"] + c["lost_in_restarts"] == c["captured"], cam
    assert 0 <= lost <= 64                      # at most what a stage holds: its queue and one batch
    print(f"\nscore killed: captured {summary['frames_captured']}, judged {summary['frames_judged']}, "
          f"dropped {dropped} (counted), lost in the dead stage {lost}")


def test_a_hung_stage_is_found_by_heartbeat_killed_and_restarted(tmp_path, stage_mode):
    run = Run(tmp_path, "--source", str(IMAGES), "--loop", "--fps", "25", "--threshold", "1e9",
              "--duration", "16", "--heartbeat-timeout", "2", mode=stage_mode)
    run.collect_until(lambda r: len(r.alerts) >= 20, 40)
    hung = stage_pid(run, "preprocess")
    os.kill(hung, signal.SIGSTOP)                # alive, but silent: a hang
    before = len(run.alerts)
    run.collect_until(lambda r: len(r.alerts) >= before + 40, 30)
    summary = run.finish()
    assert "silent for" in run.output and summary["restarts"] == {restarted_unit(stage_mode, "preprocess"): 1}
    assert len(run.alerts) >= before + 40
    assert not Path(f"/proc/{hung}").exists() or "Z" in Path(f"/proc/{hung}/stat").read_text().split()[2]
