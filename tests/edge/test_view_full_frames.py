"""The full camera frame of a reject on the operator's screen (issue 16: "opens the full image"):
the preprocess stage's keeper on real ZeroMQ sockets, the view state, and a real edge-run whose
camera frames are larger than the ROI the model sees."""
import json
import time

import cv2
import numpy as np
import pytest
import zmq

from edge.view.full_frames import (ENCODES_PER_S, FullFrameKeeper, decode_full, encode_request,
                                   full_frame_addrs)
from edge.view.preview import record
from edge.view.state import ViewState
from tests.edge.test_view import Clock, alert
from tests.edge.view_line import IMAGES, ROOT, ViewLine, request

pytestmark = pytest.mark.timeout(120)


def watch(ctx, keeper, clock, out_addr):
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(out_addr)
    deadline = time.monotonic() + 10
    while not keeper.watched and time.monotonic() < deadline:
        clock.t += 1
        time.sleep(0.02)
    assert keeper.watched
    return sub


def ask(ctx, keeper, sub, request_addr, camera, seq):
    push = ctx.socket(zmq.PUSH)
    push.connect(request_addr)
    push.send(encode_request(camera, seq))
    deadline = time.monotonic() + 10
    while not sub.poll(50) and time.monotonic() < deadline:
        keeper.serve()
    push.close(0)
    assert sub.poll(1000), "no answer to a full-frame request"
    return decode_full(sub.recv_multipart())


def test_keeper_holds_nothing_unwatched_bounded_frames_when_watched_and_answers_requests(tmp_path):
    ctx, clock = zmq.Context(), Clock()
    out_addr, request_addr = full_frame_addrs(str(tmp_path))
    ramp = np.linspace(0, 150, 480).astype(np.uint8)   # smooth: JPEG keeps it close
    frame = np.ascontiguousarray(np.broadcast_to(ramp[None, :, None], (360, 480, 3)))
    keeper = FullFrameKeeper(ctx, out_addr, request_addr, clock=clock, keep_per_camera=4,
                             keep_bytes=6 * frame.nbytes)
    try:
        keeper.keep("top", 1, frame, "BGR8")
        assert keeper.kept == {} and keeper.bytes == 0        # nobody watches: nothing copied
        sub = watch(ctx, keeper, clock, out_addr)
        for seq in range(10):
            keeper.keep("top", seq, frame + np.uint8(10 * seq), "BGR8")
        assert list(keeper.kept["top"]) == [6, 7, 8, 9]       # the newest, per camera
        for seq in range(3):
            keeper.keep("side", seq, frame, "BGR8")
        assert keeper.bytes <= 6 * frame.nbytes               # all cameras together stay under the cap
        got = ask(ctx, keeper, sub, request_addr, "top", 8)
        img = cv2.imdecode(np.frombuffer(got["jpeg"], np.uint8), cv2.IMREAD_COLOR)
        assert got["shape"] == [360, 480] and img.shape == (360, 480, 3)
        assert np.abs(img.astype(int) - (frame + 80)).mean() < 3   # that frame, not its neighbours (10 apart)
        frame[:] = 0                                          # the ring slot is reused: the copy is not
        assert keeper.kept["top"][8][0].any()
        gone = ask(ctx, keeper, sub, request_addr, "top", 2)
        assert gone["jpeg"] is None and "no longer held" in gone["reason"]
        answers = [ask(ctx, keeper, sub, request_addr, "top", 9) for _ in range(int(ENCODES_PER_S) + 1)]
        assert answers[-1]["jpeg"] is None and "a second" in answers[-1]["reason"]   # rate-limited, said so
        push = ctx.socket(zmq.PUSH)
        push.connect(request_addr)
        push.send(b"\x91\x01")                                 # not a request: counted, not fatal
        time.sleep(0.2)
        keeper.serve()
        assert keeper.counts["bad_requests"] == 1
        push.close(0)
        sub.close(0)
        deadline = time.monotonic() + 10
        while keeper.kept and time.monotonic() < deadline:    # the view left: the memory goes back
            clock.t += 1
            keeper.watched
            time.sleep(0.02)
        assert keeper.kept == {} and keeper.bytes == 0
    finally:
        keeper.close()
        ctx.destroy(linger=0)


def test_state_attaches_the_full_frame_to_its_reject_or_says_why_not():
    st = ViewState(lambda: [], lambda: {}, full_frames=True)
    shape = {"frame_shape": [360, 480], "roi": [90, 30, 300, 300]}
    st.on_record(record("alert", alert(frame_seq=5, regions=[{"box": [120, 60, 60, 30]}]), b"m5", shape))
    st.on_record(record("alert", alert(frame_seq=6), b"m6", shape))
    rej = {r["frame_seq"]: r for r in json.loads(st.payload()[1])["rejects"]}
    assert rej[5]["full"] is None and rej[5]["full_note"] == "asked for"
    assert rej[5]["boxes"] == [[0.1, 0.1, 0.2, 0.1]] and rej[5]["full_boxes"] == [[0.25, 0.1667, 0.125, 0.0833]]
    st.on_full({"camera": "top", "frame_seq": 5, "jpeg": b"full5", "shape": [360, 480]})
    st.on_full({"camera": "top", "frame_seq": 6, "jpeg": None, "reason": "no longer held: x"})
    rej = {r["frame_seq"]: r for r in json.loads(st.payload()[1])["rejects"]}
    assert rej[5]["full"] == f"/reject/{rej[5]['key']}/full.jpg" and rej[5]["full_note"] == "camera frame 480x360"
    assert st.reject_full_jpeg(rej[5]["key"]) == b"full5"
    assert rej[6]["full"] is None and rej[6]["full_note"] == "no longer held: x" and st.full_missing == 1


@pytest.mark.timeout(300)
def test_edge_run_view_serves_the_whole_camera_frame_of_a_reject(tmp_path):
    """Cells pasted into 480x360 frames, the model sees the 300x300 ROI: the reject strip's picture is
    the model's 224 px view, its full image the camera's 480x360 frame with the cell where it was."""
    frames = tmp_path / "frames"
    frames.mkdir()
    labels = dict(line.split()[:2] for line in (ROOT / "trainer/sample_data/elpv_mini/labels.csv").read_text().splitlines())
    cells = [p for p in sorted(IMAGES.iterdir()) if float(labels.get(f"images/{p.name}", 0)) > 0][:8]
    for p in cells:
        canvas = np.full((360, 480), 40, np.uint8)
        canvas[30:330, 90:390] = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(frames / p.name), canvas)
    run = ViewLine(tmp_path, "--source", f"cells={frames}@90,30,300,300", "--loop", "--fps", "4")
    try:
        state = run.wait(lambda s: any(r.get("full") for r in s["rejects"]), 120, "a reject with its full frame")
        r = next(r for r in state["rejects"] if r.get("full"))
        status, _ = request(run.url + r["img"])
        assert status == 200
        import urllib.request
        with urllib.request.urlopen(run.url + r["img"], timeout=10) as resp:
            model_view = cv2.imdecode(np.frombuffer(resp.read(), np.uint8), cv2.IMREAD_COLOR)
        with urllib.request.urlopen(run.url + r["full"], timeout=10) as resp:
            full = cv2.imdecode(np.frombuffer(resp.read(), np.uint8), cv2.IMREAD_GRAYSCALE)
        assert model_view.shape[:2] == (224, 224) and full.shape == (360, 480)
        assert r["full_note"] == "camera frame 480x360" and r["frame_shape"] == [360, 480]
        assert abs(float(full[:30].mean()) - 40) < 3 and full[30:330, 90:390].std() > 5   # the border, then the cell
        status, text = request(run.url + "/reject/999999/full.jpg")
        assert status == 404 and "no full frame" in text
    finally:
        run.stop()
