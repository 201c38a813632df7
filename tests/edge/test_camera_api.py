"""Cameras added and removed while the line runs (issue 16 item 4), through the view's HTTP API, on a
real edge-run: real HTTP, real ZeroMQ, the bundled model, every alert read by the reference subscriber.

The engine's calibration has entries for cameras a, b and c only (no '*'), each with its own
threshold, so "judged by its own rules" and "refused with the reason" are both visible.
"""
import json
import math
import socket
import time

import pytest

from edge.alerts_cli import AlertSubscriber
from tests.edge.test_camera_rules import engine_with, entry
from tests.edge.view_line import IMAGES, ViewLine, request

pytestmark = pytest.mark.timeout(300)
TOKEN = "test-token-0123456789abcdef"
THRESHOLDS = {"a": 4.2, "b": 5.0, "c": 2.0}


@pytest.fixture(scope="module")
def line(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("camera-api")
    engine = engine_with(tmp / "engine", {cam: entry(t) for cam, t in THRESHOLDS.items()})
    (tmp / "token").write_text(TOKEN + "\n")
    run = ViewLine(tmp, "--source", f"a={IMAGES}", "--source", f"b={IMAGES}", "--loop", "--no-drop", "--fps", "5",
                   "--view-token-file", str(tmp / "token"), "--wait-subscribers", "1", engine=engine, token=TOKEN)
    sub = AlertSubscriber([run.alerts_addr])
    alerts: list[dict] = []

    def collect(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            a = sub.recv(timeout=0.1)
            if a is not None:
                alerts.append(a)
    try:
        run.wait(lambda s: len(s["cameras"]) == 2 and all(c["state"] == "live" for c in s["cameras"]), 120,
                 "frames from both cameras")
        yield run, alerts, collect
    finally:
        run.kill()
        sub.close()


def api(run, method="GET", path="/api/v1/cameras", body=None, token=TOKEN, **kw):
    return request(run.url + path, method, body, token, **kw)


def test_requests_without_the_token_are_refused_and_the_page_stays_read_only(line):
    run, _, _ = line
    assert api(run, token=None)[0] == 401
    assert api(run, token="wrong-token-0123456789")[0] == 401
    assert api(run, "POST", body={"id": "x", "source": str(IMAGES)}, token=None)[0] == 401
    assert api(run, "DELETE", "/api/v1/cameras/a", token=None)[0] == 401
    # the token as a cookie opens the page, but the API takes only the Authorization header
    assert api(run, token=None, headers={"Cookie": f"edge_view_token={TOKEN}"})[0] == 401
    assert request(run.url + "/state.json")[0] == 401                     # with a token, the page needs it too
    assert request(run.url + "/state.json", headers={"Cookie": f"edge_view_token={TOKEN}"})[0] == 200
    status, body = request(run.url + "/state.json", method="POST", body={}, headers={
        "Cookie": f"edge_view_token={TOKEN}"})
    assert status == 405                                                    # nothing but the API takes a write
    status, body = api(run)
    assert status == 200 and [c["id"] for c in body["cameras"]] == ["a", "b"]


def test_an_add_is_checked_as_source_is_at_start_and_refused_with_the_reason(line, tmp_path):
    run, _, _ = line
    status, body = api(run, "POST", body={"id": "d", "source": str(IMAGES)})
    assert status == 422 and "no calibration entry" in body["error"] and "'d'" in body["error"], body
    status, body = api(run, "POST", body={"id": "c", "source": str(tmp_path / "nowhere")})
    assert status == 400 and "does not exist" in body["error"], body
    status, body = api(run, "POST", body={"id": "c", "source": "ftp://cam/stream"})
    assert status == 400 and "unsupported URL scheme" in body["error"], body
    status, body = api(run, "POST", body={"id": "c d", "source": str(IMAGES)})
    assert status == 400, body
    status, body = api(run, "POST", body={"id": "c", "source": str(IMAGES), "roi": [0, 0, 0, 10]})
    assert status == 400 and "zero width" in body["error"], body
    status, body = api(run, "POST", body={"id": "a", "source": str(IMAGES)})
    assert status == 409 and "already running" in body["error"], body
    status, body = api(run, "POST", body={"id": "c", "source": str(IMAGES), "colour": "red"})
    assert status == 400 and "unknown field" in body["error"], body
    assert api(run, "DELETE", "/api/v1/cameras/nope")[0] == 404
    assert [c["id"] for c in api(run)[1]["cameras"]] == ["a", "b"]          # nothing changed


def test_add_and_remove_while_frames_flow_every_frame_accounted_for_each_judged_by_its_own_rules(line):
    run, alerts, collect = line
    collect(2.0)
    status, body = api(run, "POST", body={"id": "c", "source": str(IMAGES), "roi": [10, 10, 200, 200]})
    assert status == 201 and body["added"]["id"] == "c" and body["added"]["roi"] == [10, 10, 200, 200], body
    assert [c["id"] for c in api(run)[1]["cameras"]] == ["a", "b", "c"]
    deadline = time.monotonic() + 60
    while sum(a["camera"] == "c" for a in alerts) < 10 and time.monotonic() < deadline:
        collect(0.5)
    assert sum(a["camera"] == "c" for a in alerts) >= 10, "the added camera's frames were not judged"

    status, body = api(run, "DELETE", "/api/v1/cameras/a")
    assert status == 200 and body["removed"] == "a", body
    captured_by_reader = body["frames_captured"]
    assert [c["id"] for c in api(run)[1]["cameras"]] == ["b", "c"]
    assert api(run, "DELETE", "/api/v1/cameras/a")[0] == 404
    collect(3.0)
    # the last camera cannot be removed (the pipeline would end): stop edge-run instead
    assert api(run, "DELETE", "/api/v1/cameras/b")[0] == 200
    status, body = api(run, "DELETE", "/api/v1/cameras/c")
    assert status == 409 and "last camera" in body["error"], body
    collect(2.0)
    summary = run.stop()
    collect(3.0)   # what was published while it stopped

    frames = [a for a in alerts if a["frame_seq"] >= 0]
    for cam, acc in summary["cameras"].items():
        assert acc["captured"] == acc["judged"] + acc["not_decidable"] + acc["dropped"], (cam, acc)
        assert acc["lost_in_restarts"] == 0 and acc["dropped"] == 0, (cam, acc)   # --no-drop
        seqs = sorted(a["frame_seq"] for a in frames if a["camera"] == cam)
        assert seqs == list(range(acc["captured"])), (cam, acc, seqs[:5], seqs[-5:])   # each frame once, in full
    assert summary["cameras"]["a"]["captured"] == captured_by_reader   # the removed camera's frames all judged
    for a in frames:   # each camera judged with its own entry (no '*' in this calibration)
        assert a["threshold"] == pytest.approx(THRESHOLDS[a["camera"]]), a
        assert a["verdict"] == ("NotOK" if a["score"] > a["threshold"] else "OK"), a
    c_scores = [a["score"] for a in frames if a["camera"] == "c"]
    b_scores = {a["part_id"]: a["score"] for a in frames if a["camera"] == "b"}
    c_parts = {a["part_id"]: a["score"] for a in frames if a["camera"] == "c"}
    # c's ROI (a 200 px crop of each 300 px cell) reached preprocess: its scores differ from b's on the same image
    same = [p for p in c_parts if p in b_scores]
    assert same and sum(not math.isclose(c_parts[p], b_scores[p], rel_tol=1e-4) for p in same) > len(same) // 2
    assert len(c_scores) >= 10


def test_a_frozen_browser_does_not_slow_the_line(tmp_path):
    """Event-stream clients that never read: the pipeline keeps its pace and a fresh client still gets
    live updates (each stream is its own thread; the state is latest-wins, never queued for a client)."""
    run = ViewLine(tmp_path, "--source", f"p={IMAGES}", "--loop", "--fps", "8", "--preview-fps", "8")
    frozen = []
    try:
        run.wait(lambda s: s["cameras"] and s["cameras"][0]["state"] == "live", 120, "frames")
        for _ in range(6):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # a tiny window: the server's writes back up
            s.connect(("127.0.0.1", run.port))
            s.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            frozen.append(s)   # and never read
        before = run.state()["cameras"][0]["counts"]
        t0 = time.monotonic()
        time.sleep(8)
        after = run.state()["cameras"][0]["counts"]
        rate = (sum(after.values()) - sum(before.values())) / (time.monotonic() - t0)
        assert rate > 8 * 0.8, f"{rate:.1f} frames/s judged with 6 frozen views (paced at 8)"
        fresh = socket.create_connection(("127.0.0.1", run.port), timeout=10)
        fresh.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        got = b""
        while got.count(b"data: ") < 2:
            chunk = fresh.recv(65536)
            assert chunk, "the server closed a fresh event stream"
            got += chunk
        doc = json.loads(got.split(b"data: ")[1].split(b"\n\n")[0])
        assert doc["cameras"][0]["id"] == "p"
        fresh.close()
    finally:
        for s in frozen:
            s.close()
        run.stop()
