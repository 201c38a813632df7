"""Chaos tests (issue 13): edge-run as real processes on loopback, probed the way a hostile
plant and a careless operator would. Each test counts: the frame invariant (captured = judged
+ not decidable + dropped + lost in restarts, per camera) and, where alerts are stored,
exactly-once delivery. No mocks of ZeroMQ or of the file system.

Slow by nature (each starts a pipeline): the data is tiny and each run lasts seconds."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.frame_ring import SHM_DIR
from tests.edge.test_pipeline import IMAGES, ROOT, Run, free_port

pytestmark = pytest.mark.timeout(120)


def assert_frames_balance(summary: dict) -> None:
    """captured = judged + not decidable + dropped + lost in restarts, per camera and in total."""
    assert summary["cameras"], summary
    for cam, c in summary["cameras"].items():
        assert c["judged"] + c["not_decidable"] + c["dropped"] + c["lost_in_restarts"] == c["captured"], (cam, c)
        assert c["lost_in_restarts"] >= 0, (cam, c)
    assert summary["frames_judged"] + summary["frames_not_decidable"] + summary["frames_dropped"] + \
        summary["frames_lost_in_restarts"] == summary["frames_captured"], summary


def mixed_folder(tmp_path: Path, sizes, broken: int = 0) -> Path:
    """Real cells at mixed sizes (growing and shrinking, as a folder of a real data set is), and
    ``broken`` files that are not images."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    cells = sorted(IMAGES.iterdir())
    for i, (w, h) in enumerate(sizes):
        img = cv2.imread(str(cells[i % len(cells)]), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.resize(img, (w, h)))
    for j in range(broken):
        (folder / f"{len(sizes) + j:03d}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated" * 10)
    return folder


SIZES = [(222, 103), (403, 632), (60, 60), (300, 200), (640, 480), (120, 400), (800, 600), (100, 100),
         (1024, 768), (222, 103), (403, 632), (50, 900), (1280, 720), (64, 64), (900, 50), (1600, 1200)]


def test_mixed_frame_sizes_lose_no_verdict_and_unreadable_files_count_as_not_decidable(tmp_path):
    folder = mixed_folder(tmp_path, SIZES * 2, broken=2)
    run = Run(tmp_path, "--source", f"cam0={folder}", "--no-drop", "--threshold", "1e9")
    run.collect_until(lambda r: False, 0)
    summary = run.finish(timeout=90)
    frames = [a for a in run.alerts if a["frame_seq"] >= 0]
    unreadable = [a for a in run.alerts if a["frame_seq"] < 0]
    assert len(frames) == len(SIZES) * 2 and all(a["verdict"] == "OK" for a in frames), \
        [a["reason"] for a in frames if a["verdict"] != "OK"][:3]
    assert len(unreadable) == 2 and all(a["verdict"] == "NotDecidable" for a in unreadable)
    c = summary["cameras"]["cam0"]
    assert (c["captured"], c["judged"], c["not_decidable"], c["dropped"]) == (len(SIZES) * 2 + 2, len(SIZES) * 2, 2, 0)
    assert_frames_balance(summary)
    assert f"{len(SIZES) * 2 + 2} frames captured" in run.output and "2 not decidable" in run.output


@pytest.mark.parametrize("stage", ["capture", "preprocess", "alert"])
def test_kill_9_of_a_stage_keeps_the_frame_invariant(tmp_path, stage):
    """SIGKILL (an OOM kill) of one stage mid-run: it is restarted, and every captured frame is
    still judged, not decidable, dropped, or counted as lost inside the dead stage; never a
    negative remainder (the dead capture stage's last report lags what it sent)."""
    from tests.edge.test_supervision import stage_pid
    run = Run(tmp_path, "--source", str(IMAGES), "--loop", "--fps", "25", "--threshold", "1e9", "--duration", "9")
    run.collect_until(lambda r: len(r.alerts) >= 25, 40)
    killed = stage_pid(run, stage)
    os.kill(killed, signal.SIGKILL)
    summary = run.finish(timeout=90)
    assert summary["restarts"] == {stage: 1}, run.tail()
    assert_frames_balance(summary)
    c = summary["cameras"]["cam0"]
    assert c["judged"] > 25 and c["lost_in_restarts"] <= 64, c     # at most a stage's queue and one batch
    for pid in (killed, summary["stage_pids"]["capture"]):   # the dead incarnation's rings too
        assert not list(SHM_DIR.glob(f"edge-inspect-{pid}-*")), pid


def test_kill_9_of_the_whole_group_leaves_nothing_after_the_next_start(tmp_path):
    """SIGKILL of every process at once (an OOM kill of the cgroup, systemctl kill): nobody cleans
    up, so the next start removes the dead run's frame rings and ipc folder."""
    import tempfile
    from tests.edge.test_supervision import stage_pid
    run = Run(tmp_path, "--source", str(IMAGES), "--loop", "--fps", "25", "--threshold", "1e9")
    run.collect_until(lambda r: len(r.alerts) >= 10, 40)
    capture, supervisor = stage_pid(run, "capture"), run.proc.pid
    assert list(SHM_DIR.glob(f"edge-inspect-{capture}-*"))
    os.killpg(run.proc.pid, signal.SIGKILL)
    run.proc.wait(10)
    run.sub.close()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{capture}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(SHM_DIR.glob(f"edge-inspect-{capture}-*")) and \
        list(Path(tempfile.gettempdir()).glob(f"edge-run-{supervisor}-*")), "the kill left them (the test's premise)"
    again = Run(tmp_path, "--source", str(IMAGES), "--no-drop", "--threshold", "1e9")
    summary = again.finish(timeout=90)
    assert not list(SHM_DIR.glob(f"edge-inspect-{capture}-*"))
    assert not list(Path(tempfile.gettempdir()).glob(f"edge-run-{supervisor}-*"))
    assert "removed what dead pipelines left behind" in again.output
    assert_frames_balance(summary)
