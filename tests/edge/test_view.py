"""The operator's screen without a pipeline (issue 16): the preview feed on a real ZeroMQ socket, the
view state, and the HTTP server's safety rules over real HTTP on loopback; edge-run's refusals."""
import json
import subprocess
import sys
import time

import pytest
import zmq

from edge.view.cameras import CameraApiError, source_text
from edge.view.preview import PreviewFeed, decode_record, record
from edge.view.server import ViewServer, read_token
from edge.view.state import REJECTS_KEPT, STALE_AFTER_S, ViewState, _boxes
from tests.edge.view_line import ENGINE, IMAGES, ROOT, free_port, request

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def alert(camera="top", verdict="NotOK", frame_seq=7, **kw) -> dict:
    return {"camera": camera, "frame_seq": frame_seq, "alert_seq": 3, "capture_wall": time.time(),
            "published_wall": time.time(), "latency_ms": 12.0, "verdict": verdict, "score": 5.0,
            "normalised_score": 0.7, "threshold": 4.2, "model_version": "m1", "regions": [], "reason": None,
            "part_id": "p7", "node": "n", **kw}


def test_the_preview_costs_nothing_unwatched_and_is_rate_limited_per_camera(tmp_path):
    ctx = zmq.Context()
    clock = Clock()
    feed = PreviewFeed(ctx, f"ipc://{tmp_path}/preview", fps=2, clock=clock)
    try:
        assert not feed.due("top")            # nobody subscribed: no frame is even encoded
        feed.send("alert", alert(), b"jpeg", None)
        assert feed.sent == 0
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(f"ipc://{tmp_path}/preview")
        deadline = time.monotonic() + 10
        while not feed.active and time.monotonic() < deadline:
            clock.t += 1
            time.sleep(0.02)
        assert feed.active
        assert feed.due("top") and not feed.due("top")          # once per 0.5 s per camera
        assert feed.due("side")
        clock.t += 0.49
        assert not feed.due("top")
        clock.t += 0.02
        assert feed.due("top")
        # a reject storm: 5 go at once (the burst), then 5 a second; the rest are counted, not sent
        storm = [feed.wants("side", "NotOK") for _ in range(20)]
        assert storm.count(True) == 5 and feed.skipped["side"] == 15
        clock.t += 0.2
        assert feed.wants("side", "NotOK") and not feed.wants("side", "NotOK")
        feed.send("frame", alert(verdict="OK"), b"\xff\xd8jpeg", {"roi": (1, 2, 3, 4), "frame_shape": [10, 20]})
        assert sub.poll(5000)
        rec = decode_record(sub.recv_multipart())
        assert rec["kind"] == "frame" and rec["jpeg"] == b"\xff\xd8jpeg" and rec["roi"] == [1, 2, 3, 4]
        assert rec["rejects_skipped"] == 0        # top's count; side's 16 travel with side's records
        with pytest.raises(ValueError):
            decode_record([b"frame/top", b"\x91\x01"])
        sub.close(0)
    finally:
        feed.close()
        ctx.term()


def test_state_blind_until_frames_flow_again_stale_and_a_bounded_reject_strip():
    clock = Clock()
    cams = [{"id": "top", "source": "x", "kind": "url", "live": True}]
    st = ViewState(lambda: cams, lambda: {}, clock=clock)
    assert json.loads(st.payload()[1])["cameras"][0]["state"] == "waiting"
    st.on_record(record("frame", alert(verdict="OK", capture_wall=100.0), b"j1", None))
    tile = json.loads(st.payload()[1])["cameras"][0]
    assert tile["state"] == "live" and tile["img"].startswith("/frame/top.jpg?v=") and st.frame_jpeg("top") == b"j1"
    st.on_record(record("alert", alert(verdict="NotDecidable", frame_seq=-1, capture_wall=101.0,
                                       reason="camera blind: read() failed"), None, None))
    tile = json.loads(st.payload()[1])["cameras"][0]
    assert tile["state"] == "blind" and tile["blind_reason"] == "read() failed"
    st.on_record(record("frame", alert(verdict="OK", capture_wall=100.5), b"j2", None))   # captured before: still blind
    assert json.loads(st.payload()[1])["cameras"][0]["state"] == "blind"
    st.on_record(record("frame", alert(verdict="OK", capture_wall=102.0), b"j3", None))
    assert json.loads(st.payload()[1])["cameras"][0]["state"] == "live"
    clock.t += STALE_AFTER_S + 0.1
    st.tick()
    assert json.loads(st.payload()[1])["cameras"][0]["state"] == "stale"
    for i in range(REJECTS_KEPT + 5):
        st.on_record(record("alert", alert(alert_seq=i), b"r%d" % i, None))
    doc = json.loads(st.payload()[1])
    assert len(doc["rejects"]) == REJECTS_KEPT and doc["rejects"][0]["alert_seq"] == REJECTS_KEPT + 4   # newest first
    assert len(st.reject_images) == REJECTS_KEPT and st.reject_jpeg(1) is None


def test_counters_fps_p99_and_drops_come_from_the_stage_metrics():
    clock = Clock()
    st = ViewState(lambda: [{"id": "top", "source": "x", "kind": "url", "live": True}], lambda: {}, clock=clock)

    def snaps(ok, bad):
        return {"alert": {"counters": {"verdict_OK": {"top": ok}, "verdict_NotOK": {"top": bad}},
                          "latency_ms": {"latency_ms": {"top": {"p99": 41.26}}}},
                "capture": {"counters": {"dropped": {"top": 3}}}, "score": {"counters": {"dropped": {"top": 2}}}}
    st.on_snapshots(snaps(10, 2))
    clock.t += 2
    st.on_snapshots(snaps(30, 2))
    tile = json.loads(st.payload()[1])["cameras"][0]
    assert tile["counts"] == {"OK": 30, "NotOK": 2, "NotDecidable": 0}
    assert tile["fps"] == 10.0 and tile["p99_ms"] == 41.3 and tile["dropped"] == 5


def test_regions_are_drawn_where_they_are_in_the_roi():
    # a 100x50 box at (300, 200) of a frame whose ROI is (200, 100, 400, 400): a quarter in, a quarter down
    assert _boxes([{"box": [300, 200, 100, 50]}], [200, 100, 400, 400], [1080, 1920]) == [[0.25, 0.25, 0.25, 0.125]]
    assert _boxes([{"box": [0, 0, 960, 540]}], None, [1080, 1920]) == [[0.0, 0.0, 0.5, 0.5]]


def test_api_requests_are_checked_like_source():
    assert source_text("side", "rtsp://cam/s", [1, 2, 3, 4]) == "side=rtsp://cam/s@1,2,3,4"
    for bad in [(None, "x", None), ("side", "", None), ("side", "x", [1, 2]), ("side", "x", "a,b,c,d")]:
        with pytest.raises(CameraApiError):
            source_text(*bad)


@pytest.fixture
def server(tmp_path):
    cams = [{"id": "top", "source": "x", "kind": "url", "live": True}]
    st = ViewState(lambda: cams, lambda: {})
    st.on_record(record("frame", alert(verdict="OK"), b"\xff\xd8jpeg", None))
    servers = []

    def make(token=None, host="127.0.0.1"):
        s = ViewServer(host, 0, st, None, token)
        s.start()
        servers.append(s)
        return f"http://127.0.0.1:{s.port}"
    yield make
    for s in servers:
        s.close()


def test_loopback_without_a_token_serves_the_page_refuses_the_api_and_foreign_hosts(server):
    url = server()
    status, page = request(url + "/")
    assert status == 200 and "EventSource" in page
    assert request(url + "/frame/top.jpg")[0] == 200
    assert request(url + "/frame/nope.jpg")[0] == 404
    status, body = request(url + "/api/v1/cameras")
    assert status == 403 and "--view-token-file" in body["error"]
    assert request(url + "/", headers={"Host": "attacker.example:80"})[0] == 403   # DNS rebinding
    assert request(url + "/", method="POST", body={})[0] == 405
    assert request(url + "/", method="DELETE")[0] == 405


def test_with_a_token_everything_needs_it_the_page_by_cookie_the_api_by_header(server):
    token = "0123456789abcdefXYZ"
    url = server(token=token)
    assert request(url + "/")[0] == 401
    assert request(url + "/state.json")[0] == 401
    assert request(url + "/?token=wrong-one-0123456789")[0] == 401
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=10)
    conn.request("GET", f"/?token={token}")
    r = conn.getresponse()
    r.read()
    cookie = r.getheader("Set-Cookie")
    assert r.status == 303 and r.getheader("Location") == "/" and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert request(url + "/state.json", headers={"Cookie": cookie.split(";")[0]})[0] == 200
    assert request(url + "/state.json", token=token)[0] == 200
    assert request(url + "/api/v1/cameras", headers={"Cookie": cookie.split(";")[0]})[0] == 401   # no cookie for the API
    assert request(url + "/api/v1/cameras", token=token)[0] == 503    # token right; no capture control here


def test_binding_beyond_loopback_needs_a_token_and_tokens_are_checked(tmp_path):
    st = ViewState(lambda: [], lambda: {})
    with pytest.raises(ValueError, match="not loopback"):
        ViewServer("0.0.0.0", 0, st, None, None)
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ValueError, match="16 to 256"):
        read_token(str(tmp_path / "short"))
    (tmp_path / "ok").write_text("a" * 20 + "\nsecond line ignored\n")
    assert read_token(str(tmp_path / "ok")) == "a" * 20


@pytest.mark.parametrize("args, says", [
    (["--view-port", "0", "--view-bind", "0.0.0.0"], "--view-token-file"),
    (["--view-token-file", "/nonexistent"], "need --view-port"),
    (["--preview-fps", "nan"], "need --view-port"),
    (["--view-port", "0", "--preview-fps", "0"], "--preview-fps"),
    (["--view-port", "0", "--stages", "capture,preprocess,score"], "alert stage"),
])
def test_edge_run_refuses_unsafe_or_impossible_view_options(args, says):
    out = subprocess.run([sys.executable, "-m", "edge.run", "--insecure", "--engine", str(ENGINE), "--source",
                          str(IMAGES), "--alerts-addr", f"tcp://127.0.0.1:{free_port()}", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and says in out.stderr, out.stderr[-2000:]
