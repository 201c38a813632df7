"""A camera that sees nothing is never silence (issue 13, item 4): blind reports at the first
failed open and again every blind_repeat_s while the camera stays blind."""
import socket
import threading
import time

import pytest
import zmq

from edge.config import PipelineConfig
from edge.stages.capture import BlindCameras, CaptureStage
from edge.wire import unpack

pytestmark = pytest.mark.timeout(30)


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_blind_spells_start_at_the_first_failed_open_repeat_and_end_when_frames_flow():
    clock = Clock()
    b = BlindCameras(repeat_s=10, clock=clock)
    assert "cannot open the camera: refused" == b.on_event("top", "open_failed", "refused")   # never opened
    assert b.on_event("top", "open_failed", "refused again") is None      # the same spell: no flood
    clock.t += 9.9
    assert b.due() == []
    clock.t += 0.2
    assert b.due() == [("top", "still blind after 10 s: refused again")]
    assert b.due() == []                                                   # once per interval
    assert b.on_event("top", "opened", "ffmpeg 640x480") is None and b.blind() == []
    clock.t += 30
    assert b.due() == []
    assert b.on_event("top", "blind", "no frame for 5 s") == "no frame for 5 s"   # lost after delivering
    assert b.on_event("top", "open_failed", "reopen refused") is None
    clock.t += 10
    assert b.due() == [("top", "still blind after 10 s: reopen refused")]     # failed reopens: reminded
    assert b.on_event("top", "reconnected", "") is None and b.blind() == []
    with pytest.raises(ValueError):
        BlindCameras(repeat_s=0)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                      # nothing listens there: RTSP connection refused
    return port


def test_a_camera_that_never_opens_is_reported_blind_at_start_and_again_while_blind(tmp_path):
    cfg = PipelineConfig(sources=[f"dead=rtsp://127.0.0.1:{closed_port()}/stream"], frames_addr=f"ipc://{tmp_path}/f",
                         blind_repeat_s=0.5)
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.bind(cfg.frames_addr)
    stage = CaptureStage(cfg)
    t = threading.Thread(target=stage.run, daemon=True)
    t.start()
    events, t0 = [], time.monotonic()
    try:
        while len(events) < 3 and time.monotonic() - t0 < 20:
            if pull.poll(200):
                header, _ = unpack(pull.recv_multipart(copy=False))
                if header["kind"] == "event":
                    events.append((time.monotonic() - t0, header))
    finally:
        stage.stopping = True
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:           # read on to its end-of-stream, then hang up:
            if pull.poll(200) and unpack(pull.recv_multipart(copy=False))[0]["kind"] == "eos":
                break                                # our disconnect is the acknowledgement it waits for
        pull.close()
        t.join(10)
    assert len(events) >= 3, events
    assert all(h["event"] == "blind" and h["camera"] == "dead" for _, h in events)
    assert "cannot open the camera" in events[0][1]["detail"]
    assert "still blind after" in events[1][1]["detail"]
    assert events[0][0] < 8                              # at start: the first failed open, not a timeout later
    assert stage.metrics.counter("blind_reports", "dead") >= 3
