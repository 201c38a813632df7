"""edge-run end to end on loopback: real processes, real ZeroMQ, real ONNX Runtime, the bundled model.

Each run is the real CLI in a subprocess; alerts are read with the reference
subscriber (edge.alerts_cli.AlertSubscriber). Expected verdicts come from the bare
backend on the same images, so the test checks that the pipeline adds nothing
and loses nothing. Tests that take ``stage_mode`` run twice: stages as processes
(the default) and as threads of one process joined by inproc:// (--stage-mode threads).
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import msgpack
import numpy as np
import pytest
import zmq

from edge.alerts_cli import AlertSubscriber
from edge.backends import open_backend
from edge.frame_ring import SHM_DIR
from edge.preprocess import frame_to_model_pixels
from edge.sources import list_images
from edge.wire import WIRE_VERSION, pack
from tests.edge.test_sources import MjpegCamera

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "edge" / "bundled" / "model.onnx"
IMAGES = ROOT / "trainer" / "sample_data" / "elpv_mini" / "images"


STAGE_MODES = ["processes", "threads"]


@pytest.fixture(params=STAGE_MODES)
def stage_mode(request) -> str:
    """edge-run's --stage-mode: every test that takes it runs in both."""
    return request.param


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reference():
    """Score of every sample image from the bare backend, and a threshold that splits them."""
    backend = open_backend(ENGINE)
    size = backend.input_shape[1]
    files = list_images(str(IMAGES))
    pixels = np.stack([frame_to_model_pixels(cv2.imread(f, cv2.IMREAD_UNCHANGED), "Mono8", size, "GRAY")
                       for f in files])
    scores = np.concatenate([backend.infer(pixels[i:i + 16].astype(np.float32) * np.float32(1 / 255))["score"]
                             for i in range(0, len(files), 16)])
    threshold = float(np.median(scores))   # half the cells flagged: both verdicts exercised
    return {"files": files, "scores": scores, "threshold": threshold}


class Run:
    """edge-run in a subprocess plus a subscriber that collects every alert it publishes."""

    def __init__(self, tmp_path: Path, *args: str, subscribe: bool = True, mode: str = "processes"):
        self.mode = mode
        self.alerts_addr = f"tcp://127.0.0.1:{free_port()}"
        self.summary_path = tmp_path / f"summary-{time.monotonic_ns()}.json"
        cmd = [sys.executable, "-m", "edge.run", "--insecure", "--engine", str(ENGINE), "--alerts-addr", self.alerts_addr,
               "--summary-json", str(self.summary_path), "--print-every", "1",
               "--journal", str(tmp_path / f"journal-{time.monotonic_ns()}.sqlite"),
               # its own free port: the default (alerts port + 1) may be another test's free port
               "--replay-addr", f"tcp://127.0.0.1:{free_port()}", "--stage-mode", mode, *args]
        if subscribe:
            cmd += ["--wait-subscribers", "1"]
        self.log = tmp_path / f"edge-run-{time.monotonic_ns()}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.sub = AlertSubscriber([self.alerts_addr]) if subscribe else None
        self.alerts: list[dict] = []

    def collect_until(self, done, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done(self):
            alert = self.sub.recv(timeout=0.2)
            if alert is not None:
                self.alerts.append(alert)

    def tail(self) -> str:
        return "\n".join(l for l in self.log.read_text().splitlines() if "INFO" in l or "WARN" in l
                         or "ERROR" in l or "edge-run" in l)[-4000:]

    def finish(self, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            if self.sub is not None:
                self.collect_until(lambda r: False, 0.2)
            else:
                time.sleep(0.1)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            pytest.fail(f"edge-run did not end within {timeout} s:\n{self.tail()}")
        if self.sub is not None:
            self.collect_until(lambda r: False, 0.5)   # the last alerts after the process ended
            self.sub.close()
        self.output = self.log.read_text()
        assert self.proc.returncode == 0, self.tail()
        return json.loads(self.summary_path.read_text())


def verdicts_by_seq(alerts, camera="cam0"):
    return {a["frame_seq"]: a["verdict"] for a in alerts if a["camera"] == camera and a["frame_seq"] >= 0}


def test_every_frame_gets_the_bare_backends_verdict_and_none_is_lost(tmp_path, reference, stage_mode):
    run = Run(tmp_path, "--source", str(IMAGES), "--no-drop", "--threshold", str(reference["threshold"]),
              "--thumbnails", "defects", mode=stage_mode)
    summary = run.finish()
    expected = {i: "NotOK" if s > reference["threshold"] else "OK" for i, s in enumerate(reference["scores"])}
    assert verdicts_by_seq(run.alerts) == expected
    seqs = sorted(a["alert_seq"] for a in run.alerts)
    assert seqs == list(range(seqs[0], seqs[0] + len(expected)))   # gap-free
    flagged = [a for a in run.alerts if a["verdict"] == "NotOK"]
    assert flagged and all(a["thumbnail_jpeg"][:3] == b"\xff\xd8\xff" for a in flagged)
    assert all(a["thumbnail_jpeg"] is None for a in run.alerts if a["verdict"] == "OK")
    for a in run.alerts:   # the score on the wire is the backend's score for that frame
        assert a["score"] == pytest.approx(float(reference["scores"][a["frame_seq"]]), rel=1e-5, abs=1e-5)
    assert summary["frames_captured"] == summary["frames_judged"] == len(expected)
    assert summary["dropped"] == {} and summary["malformed"] == {}
    assert summary["latency_ms_p99"] > 0 and "frames judged" in run.output
    # where the latency goes: every frame passes the points in order, so each quantile of its age grows
    ages = summary["latency_breakdown_ms"]
    assert list(ages) == ["arrived in preprocess", "arrived in score", "engine call started", "engine call ended",
                          "arrived in alert", "alert published"]
    for q in ("p50", "p99"):
        seq = [ages[p][q] for p in ages]
        assert all(0 < a <= b for a, b in zip(seq, seq[1:])), (q, ages)
    assert ages["alert published"] == {"p50": summary["latency_ms_p50"], "p99": summary["latency_ms_p99"]}
    assert summary["stage_mode"] == stage_mode
    assert len(set(summary["stage_pids"].values())) == (4 if stage_mode == "processes" else 1)
    assert not list(SHM_DIR.glob(f"edge-inspect-{summary['stage_pids']['capture']}-*")), "frame rings left behind"


def test_two_cameras_at_once_each_get_their_own_verdicts(tmp_path, reference, stage_mode):
    picks = {"left": [0, 3, 5, 7, 11, 13], "right": [20, 22, 24, 40, 41]}
    for cam, idx in picks.items():
        (tmp_path / cam).mkdir()
        for j, i in enumerate(idx):
            shutil.copy(reference["files"][i], tmp_path / cam / f"{j:03d}.png")
    run = Run(tmp_path, "--source", f"left={tmp_path / 'left'}", "--source", f"right={tmp_path / 'right'}",
              "--no-drop", "--threshold", str(reference["threshold"]), "--max-batch", "4", mode=stage_mode)
    summary = run.finish()
    for cam, idx in picks.items():
        expected = {j: "NotOK" if reference["scores"][i] > reference["threshold"] else "OK" for j, i in enumerate(idx)}
        assert verdicts_by_seq(run.alerts, cam) == expected
    assert summary["frames_judged"] == 11


def malformed_on_metrics(port: int) -> dict[str, float]:
    """stage -> malformed messages counted, read from edge-run's /metrics ({} while not serving)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return {}
    counted: dict[str, float] = {}
    for stage, value in re.findall(r'^edge_malformed_total\{[^}]*stage="(\w+)"[^}]*\} (\S+)$', text, re.M):
        counted[stage] = counted.get(stage, 0) + float(value)
    return counted


def test_malformed_messages_into_every_stage_are_counted_and_the_run_goes_on(tmp_path, reference, stage_mode):
    ports = {hop: free_port() for hop in ("frames", "batches", "scored")}
    args = [f"--{hop}-addr=tcp://127.0.0.1:{p}" for hop, p in ports.items()]
    metrics_port = free_port()
    run = Run(tmp_path, "--source", str(IMAGES), "--no-drop", "--threshold", str(reference["threshold"]), *args,
              "--metrics-port", str(metrics_port), "--wait-subscribers", "1",
              subscribe=False, mode=stage_mode)   # held until we listen: garbage first
    ctx = zmq.Context()
    bad = [
        [b"\x00garbage"],
        [msgpack.packb({"v": WIRE_VERSION + 1, "kind": "frame"})],
        [msgpack.packb({"v": WIRE_VERSION, "kind": "frame", "camera": 3})],
        pack({"kind": "batch", "items": [{"camera": "x"}], "rejects": []}, np.zeros((1, 1, 5, 5), np.uint8)),
        pack({"kind": "scored", "items": [{"camera": "x", "seq": 0, "mono": 0.0, "wall": 0.0}], "rejects": []},
             np.zeros((2, 1, 4, 4), np.uint8)),
        [msgpack.packb({"v": WIRE_VERSION, "kind": "batch", "arrays": [[[9], "uint8"]]}), b"short"],
    ]
    pushes = []
    for p in ports.values():
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.LINGER, 2000)
        s.connect(f"tcp://127.0.0.1:{p}")
        pushes.append(s)
    for s in pushes:
        for _ in range(5):
            for msg in bad:
                s.send_multipart(msg)
    # until preprocess and score have counted their garbage (a stage still loading binds late; under
    # load 0.5 s was not always enough; the alert stage reads nothing until it has a subscriber),
    # then listen, which releases the frames
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and run.proc.poll() is None:
        counted = malformed_on_metrics(metrics_port)
        if all(counted.get(stage, 0) >= 5 * len(bad) for stage in ("preprocess", "score")):
            break
        time.sleep(0.2)
    sub = AlertSubscriber([run.alerts_addr])
    run.sub = sub
    summary = run.finish()
    ctx.destroy(linger=0)
    # every stage counted what it was sent and still judged every frame
    for stage in ("preprocess", "score", "alert"):
        assert summary["malformed"].get(stage, 0) >= 5 * len(bad) - 5, summary["malformed"]
    assert summary["frames_judged"] == summary["frames_captured"] == len(reference["files"])


def test_a_live_camera_that_dies_is_reported_blind_and_reconnected(tmp_path, stage_mode):
    cam = MjpegCamera()
    port = cam.port
    run = Run(tmp_path, "--source", f"line={cam.url}", "--stall-timeout", "1", "--threshold", "1e9",
              "--duration", "25", mode=stage_mode)
    try:
        run.collect_until(lambda r: len(r.alerts) >= 20, 30)
        assert len(run.alerts) >= 20, f"no frames from the live camera:\n{run.tail()}"
        cam.stop()                                   # the camera goes away mid-stream
        run.collect_until(lambda r: any(a["verdict"] == "NotDecidable" for a in r.alerts), 15)
        blind = [a for a in run.alerts if a["verdict"] == "NotDecidable"]
        assert blind and "blind" in blind[0]["reason"] and blind[0]["frame_seq"] == -1, run.tail()
        n_before = max(a["frame_seq"] for a in run.alerts)
        cam = MjpegCamera(port=port)                 # it comes back on the same address
        run.collect_until(lambda r: max(a["frame_seq"] for a in r.alerts) >= n_before + 10, 30)
        assert max(a["frame_seq"] for a in run.alerts) >= n_before + 10, f"frames did not flow again:\n{run.tail()}"
    finally:
        os.kill(run.proc.pid, signal.SIGTERM)
        run.finish()
        cam.stop()


def _threads(pid: int) -> set[str]:
    """The names of a process's threads (/proc/PID/task/TID/comm)."""
    names = set()
    for comm in Path(f"/proc/{pid}/task").glob("*/comm"):
        try:
            names.add(comm.read_text().strip())
        except OSError:
            pass
    return names


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_sigterm_finishes_frames_in_flight_and_leaves_nothing_behind(tmp_path, reference, stage_mode):
    run = Run(tmp_path, "--source", str(IMAGES), "--loop", "--no-drop", "--fps", "40",
              "--threshold", str(reference["threshold"]), mode=stage_mode)
    run.collect_until(lambda r: len(r.alerts) >= 60, 60)
    children = _children(run.proc.pid)
    if stage_mode == "processes":
        assert len(children) >= 4, "the four stage processes"
    else:   # one stage process (beside multiprocessing's resource tracker), a named thread per stage
        stages = [c for c in children if Path(f"/proc/{c}/comm").read_text().startswith("edge-")]
        assert len(stages) == 1 and {f"edge-{s}" for s in ("capture", "preprocess", "score", "alert")} <= \
            _threads(stages[0]), [_threads(c) for c in children]
    os.kill(run.proc.pid, signal.SIGTERM)
    t0 = time.monotonic()
    summary = run.finish(timeout=30)
    assert time.monotonic() - t0 < 25
    assert summary["frames_judged"] == summary["frames_captured"] > 50     # looped, and nothing in flight lost
    assert verdicts_by_seq(run.alerts).keys() == set(range(summary["frames_captured"]))
    time.sleep(0.5)
    assert not [c for c in children if Path(f"/proc/{c}").exists() and
                "Z" not in Path(f"/proc/{c}/stat").read_text().rsplit(")", 1)[1].split()[0]]
    assert not list(SHM_DIR.glob(f"edge-inspect-{summary['stage_pids']['capture']}-*"))


def test_bad_engine_or_source_is_a_clear_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "edge.run", "--insecure", "--engine", str(tmp_path / "none.onnx"),
                          "--source", str(IMAGES)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "does not exist" in out.stderr
    out = subprocess.run([sys.executable, "-m", "edge.run", "--insecure", "--engine", str(ENGINE), "--source",
                          str(tmp_path / "nothing_here.avi")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "nothing_here.avi" in out.stderr


def test_capture_alone_as_a_thread_sends_every_frame_to_a_remote_preprocess(tmp_path):
    """--stages capture --stage-mode threads (the camera box of a two-host line): the one stage
    thread starts reading without waiting for stages it does not run, and sends every frame inline."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    proc = subprocess.Popen([sys.executable, "-m", "edge.run", "--insecure", "--engine", str(ENGINE), "--stages",
                             "capture", "--stage-mode", "threads", "--frames-inline", "--frames-addr",
                             f"tcp://127.0.0.1:{port}", "--source", str(IMAGES), "--no-drop", "--quiet"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        from edge.wire import unpack
        seqs, eos = [], False
        while not eos and pull.poll(60_000):
            header, arrays = unpack(pull.recv_multipart(copy=False))
            if header["kind"] == "frame":
                assert len(arrays) == 1 and list(arrays[0].shape) == header["shape"]
                seqs.append(header["seq"])
            eos = header["kind"] == "eos"
        pull.close(linger=0)   # as preprocess does after end-of-stream: capture's acknowledgement to exit
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        ctx.destroy(linger=0)
    assert eos and seqs == list(range(50)), (len(seqs), out[-2000:])
    assert proc.returncode == 0, out[-2000:]
