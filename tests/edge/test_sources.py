"""edge.sources with real OpenCV: files written here, a real image folder, and a live
MJPEG-over-HTTP camera served from a stdlib http.server thread on 127.0.0.1 that is
stopped, stalled and restarted under the reader."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest

from edge.sources import (CameraReader, SourceError, SourceSpec, gstreamer_available, natural_key,
                          parse_source, parse_sources)

pytestmark = pytest.mark.timeout(30)

W, H = 64, 48


# ------------------------------------------------------------------ helpers

class Recorder:
    """on_frame / on_event sink that tests can wait on."""

    def __init__(self, on_frame_hook=None):
        self.cond = threading.Condition()
        self.frames: list[tuple] = []   # (camera, seq, frame, pixel_format, mono, wall, thread, part_id)
        self.events: list[tuple] = []   # (camera, event, detail, mono, thread, part_id)
        self.hook = on_frame_hook

    def on_frame(self, camera, seq, frame, pixel_format, mono, wall, part_id):
        if self.hook:
            self.hook(seq)
        with self.cond:
            self.frames.append((camera, seq, frame, pixel_format, mono, wall, threading.get_ident(), part_id))
            self.cond.notify_all()

    def on_event(self, camera, event, detail, part_id):
        with self.cond:
            self.events.append((camera, event, detail, time.monotonic(), threading.get_ident(), part_id))
            self.cond.notify_all()

    def names(self) -> list[str]:
        with self.cond:
            return [e[1] for e in self.events]

    def seqs(self) -> list[int]:
        with self.cond:
            return [f[1] for f in self.frames]

    def count(self, event: str) -> int:
        return self.names().count(event)

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; "
                                     f"events={[(e[1], e[2]) for e in self.events]} frames={len(self.frames)}")


def write_video(path, n: int) -> None:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (W, H))
    assert w.isOpened(), "this OpenCV cannot write MJPG .avi"
    for i in range(n):
        w.write(np.full((H, W, 3), (i * 20) % 250, np.uint8))
    w.release()


def jpeg(i: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.full((H, W, 3), (i * 10) % 250, np.uint8))
    assert ok
    return buf.tobytes()


class MjpegCamera:
    """A live 'IP camera': multipart/x-mixed-replace JPEG stream over HTTP (what FFmpeg's mpjpeg reads).

    ``stall_after``: on each connection, send that many frames and then go silent while
    keeping the connection open (a camera that hangs mid-stream).
    """

    FPS = 50

    def __init__(self, port: int = 0, stall_after: int | None = None):
        self.stopping = threading.Event()
        self.stall_after = stall_after
        cam = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                try:
                    while not cam.stopping.is_set():
                        if cam.stall_after is not None and i >= cam.stall_after:
                            cam.stopping.wait()
                            return
                        b = jpeg(i)
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                         % len(b) + b + b"\r\n")
                        self.wfile.flush()
                        i += 1
                        time.sleep(1.0 / cam.FPS)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/stream.mjpg"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """The camera goes away: listening socket closed, open streams cut."""
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def camera_server():
    servers: list[MjpegCamera] = []

    def make(**kw) -> MjpegCamera:
        s = MjpegCamera(**kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        if not s.stopping.is_set():
            s.stop()


def live_reader(url: str, rec: Recorder, **kw) -> CameraReader:
    kw = {"stall_timeout_s": 1.0, "backoff_initial_s": 0.1, "backoff_max_s": 0.4, "open_timeout_s": 2.0} | kw
    return CameraReader(parse_source(f"line1={url}", 0), rec.on_frame, rec.on_event, **kw)


# ------------------------------------------------------------------ parse_source

@pytest.mark.parametrize("text, expected", [
    ("clip.avi", SourceSpec("cam3", "file", "clip.avi", False)),
    ("top=/data/run 3/clip.mp4", SourceSpec("top", "file", "/data/run 3/clip.mp4", False)),
    ("images/", SourceSpec("cam3", "folder", "images/", False)),
    ("0", SourceSpec("cam3", "device", "0", True)),
    ("side=2@10,20,300,200", SourceSpec("side", "device", "2", True, (10, 20, 300, 200))),
    ("/dev/video1", SourceSpec("cam3", "device", "/dev/video1", True)),
    ("rtsp://admin:pw@10.0.0.7:554/Streaming/101",
     SourceSpec("cam3", "url", "rtsp://admin:pw@10.0.0.7:554/Streaming/101", True)),
    ("gate=rtsp://u:p@cam.local/s1@0,0,640,480", SourceSpec("gate", "url", "rtsp://u:p@cam.local/s1", True,
                                                            (0, 0, 640, 480))),
    ("http://10.0.0.8/video.cgi?res=full&fps=30",
     SourceSpec("cam3", "url", "http://10.0.0.8/video.cgi?res=full&fps=30", True)),
    ("https://cam/stream.mjpg", SourceSpec("cam3", "url", "https://cam/stream.mjpg", True)),
    ("v4l2src device=/dev/video0 ! videoconvert ! appsink",
     SourceSpec("cam3", "gstreamer", "v4l2src device=/dev/video0 ! videoconvert ! appsink", True)),
    ("csi=gst:nvarguscamerasrc sensor-id=0 ! nvvidconv ! appsink",
     SourceSpec("csi", "gstreamer", "nvarguscamerasrc sensor-id=0 ! nvvidconv ! appsink", True)),
    ("  cam_B-2 = clip.avi @ 1, 2, 3, 4 ", SourceSpec("cam_B-2", "file", "clip.avi", False, (1, 2, 3, 4))),
])
def test_parse_source_forms(text, expected):
    assert parse_source(text, 3) == expected


def test_parse_source_existing_directory_is_a_folder(tmp_path):
    spec = parse_source(f"shelf={tmp_path}", 0)
    assert (spec.camera, spec.kind, spec.target, spec.live) == ("shelf", "folder", str(tmp_path), False)


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("   ", "empty"),
    ("=clip.avi", "empty camera name"),
    ("cam1=", "no source"),
    ("clip.avi@1,2,3", "not four non-negative integers"),
    ("clip.avi@1,2,-3,4", "not four non-negative integers"),
    ("clip.avi@0,0,0,10", "zero width or height"),
    ("@1,2,3,4", "no source"),
    ("ftp://host/clip.avi", "unsupported URL scheme 'ftp'"),
    ("file:///data/clip.avi", "plain path"),
    ("rtsp://", "no host"),
    ("gst:", "empty GStreamer pipeline"),
])
def test_parse_source_rejects_bad_text(text, reason):
    with pytest.raises(ValueError) as e:
        parse_source(text, 0)
    msg = str(e.value)
    assert repr(text) in msg and reason in msg and "Accepted forms" in msg


def test_url_passwords_are_masked_in_messages():
    assert parse_source("rtsp://admin:s3cr@t@10.0.0.7/s1", 0).shown == "rtsp://admin:***@10.0.0.7/s1"
    assert parse_source("http://10.0.0.8/v?a=b@c", 0).shown == "http://10.0.0.8/v?a=b@c"
    rec = Recorder()
    r = CameraReader(parse_source("rtsp://admin:hunter2@127.0.0.1:1/s1", 0), rec.on_frame, rec.on_event,
                     backoff_initial_s=0.05)
    r.start()
    rec.wait_for(lambda: len(rec.events) >= 1, 5, "open_failed")
    r.stop(timeout=1.0)
    assert rec.events[0][1] == "open_failed" and "admin:***@" in rec.events[0][2]
    assert "hunter2" not in " ".join(e[2] for e in rec.events)


def test_parse_sources_refuses_duplicate_camera_ids():
    assert [s.camera for s in parse_sources(["a.avi", "0", "x=b.avi"])] == ["cam0", "cam1", "x"]
    with pytest.raises(ValueError, match="'x' is used twice"):
        parse_sources(["x=a.avi", "x=0"])


def test_natural_order():
    assert sorted(["img10.png", "img2.png", "img1.png"], key=natural_key) == ["img1.png", "img2.png", "img10.png"]


# ------------------------------------------------------------------ video file

def test_video_file_delivers_every_frame_then_ends(tmp_path):
    path = tmp_path / "clip.avi"
    write_video(path, 12)
    rec = Recorder()
    r = CameraReader(parse_source(f"line1={path}", 0), rec.on_frame, rec.on_event)
    r.start()
    assert r.wait(10) and r.finished
    assert rec.seqs() == list(range(12))
    assert {f[0] for f in rec.frames} == {"line1"}
    assert all(f[3] == "BGR8" and f[2].shape == (H, W, 3) and f[2].dtype == np.uint8 for f in rec.frames)
    # the content is the clip's, in order (MJPG is lossy: compare loosely)
    assert [round(float(f[2].mean()) / 20) for f in rec.frames] == list(range(12))
    monos = [f[4] for f in rec.frames]
    assert monos == sorted(monos) and all(abs(f[5] - time.time()) < 60 for f in rec.frames)
    assert rec.names() == ["opened", "ended"]
    assert "12 frames" in rec.events[-1][2]
    # every callback came from one thread, not the test's
    assert len({f[6] for f in rec.frames} | {e[4] for e in rec.events}) == 1
    assert threading.get_ident() not in {f[6] for f in rec.frames}
    assert r.stats["frames"] == 12 and r.stats["bad_frames"] == 0
    assert {f[7] for f in rec.frames} == {None}       # a clip's frames are not parts: no part id


def test_video_file_loop_starts_over_with_seq_continuing(tmp_path):
    path = tmp_path / "clip.avi"
    write_video(path, 5)
    rec = Recorder()
    r = CameraReader(parse_source(str(path), 0), rec.on_frame, rec.on_event, loop=True)
    r.start()
    rec.wait_for(lambda: len(rec.frames) >= 13, 10, "three passes")
    assert not r.finished
    r.stop()
    assert r.finished and r.wait(1)
    seqs = rec.seqs()
    assert seqs == list(range(len(seqs)))
    assert [round(float(f[2].mean()) / 20) for f in rec.frames[:13]] == [0, 1, 2, 3, 4] * 2 + [0, 1, 2]
    assert "ended" not in rec.names() and rec.names().count("opened") == 1
    assert r.stats["passes"] >= 3


def test_fps_limit_paces_a_file_by_sleeping(tmp_path):
    path = tmp_path / "clip.avi"
    write_video(path, 6)
    rec = Recorder()
    r = CameraReader(parse_source(str(path), 0), rec.on_frame, rec.on_event, fps_limit=20)
    t0 = time.process_time()
    r.start()
    assert r.wait(5)
    monos = [f[4] for f in rec.frames]
    assert len(monos) == 6
    # Due times lie on a 50 ms grid (a late frame does not push the later ones back), so
    # single gaps jitter with the machine's load but the span is at least ~5 periods.
    assert monos[-1] - monos[0] >= 0.2 and np.diff(monos).min() > 0.01
    assert time.process_time() - t0 < 0.2  # slept, no busy loop


def test_missing_or_unreadable_file_is_an_error_from_start(tmp_path):
    rec = Recorder()
    for text, match in [(str(tmp_path / "clpi.avi"), "does not exist"),
                        (str(tmp_path / "nope") + "/", "image folder .* does not exist")]:
        r = CameraReader(parse_source(text, 0), rec.on_frame, rec.on_event)
        with pytest.raises(SourceError, match=match) as e:
            r.start()
        assert isinstance(e.value, ValueError) and text.rstrip("/") in str(e.value)
    not_video = tmp_path / "notes.avi"
    not_video.write_text("not a video")
    with pytest.raises(ValueError, match=f"cannot open video file {not_video}"):
        CameraReader(parse_source(str(not_video), 0), rec.on_frame, rec.on_event).start()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="holds no image files"):
        CameraReader(parse_source(str(empty), 0), rec.on_frame, rec.on_event).start()
    assert rec.frames == [] and rec.events == []


def test_roi_outside_the_frame_is_a_bad_frame_not_a_crash(tmp_path):
    path = tmp_path / "clip.avi"
    write_video(path, 4)
    rec = Recorder()
    r = CameraReader(parse_source(f"{path}@50,40,20,20", 0), rec.on_frame, rec.on_event)
    r.start()
    assert r.wait(5)
    assert rec.frames == [] and r.stats["bad_frames"] == 4
    assert rec.names() == ["opened", "bad_frame", "ended"]   # repeats on a stream are rate-limited
    assert "outside the 64x48 frame" in rec.events[1][2]


def test_gstreamer_is_refused_with_advice_when_opencv_lacks_it():
    if gstreamer_available():
        pytest.skip("this OpenCV has GStreamer (system build): nothing to refuse")
    r = CameraReader(parse_source("gst:videotestsrc ! videoconvert ! appsink", 0), print, print)
    with pytest.raises(SourceError, match="without GStreamer.*system OpenCV"):
        r.start()


# ------------------------------------------------------------------ image folder

def test_image_folder_delivers_good_images_and_reports_bad_ones(tmp_path):
    grey = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    colour = np.zeros((H, W, 3), np.uint8)
    colour[..., 2] = 200  # red in BGR
    bgra = np.dstack([colour, np.full((H, W), 128, np.uint8)])
    assert cv2.imwrite(str(tmp_path / "img1_grey.png"), grey)
    assert cv2.imwrite(str(tmp_path / "img2_colour.png"), colour)
    (tmp_path / "img3_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    assert cv2.imwrite(str(tmp_path / "img4_deep.png"), np.full((H, W), 40000, np.uint16))
    assert cv2.imwrite(str(tmp_path / "img10_alpha.png"), bgra)
    (tmp_path / "notes.txt").write_text("ignored: not an image file")
    rec = Recorder()
    r = CameraReader(parse_source(str(tmp_path), 0), rec.on_frame, rec.on_event)
    r.start()
    assert r.wait(5) and r.finished
    got = [(f[1], f[3], f[2].shape) for f in rec.frames]
    assert got == [(0, "Mono8", (H, W)), (1, "BGR8", (H, W, 3)), (2, "BGR8", (H, W, 3))]
    assert np.array_equal(rec.frames[0][2], grey)
    assert np.array_equal(rec.frames[1][2], colour) and np.array_equal(rec.frames[2][2], colour)
    assert rec.names() == ["opened", "bad_frame", "bad_frame", "ended"]
    assert "img3_corrupt.png" in rec.events[1][2] and "unreadable" in rec.events[1][2]
    assert "img4_deep.png" in rec.events[2][2] and "uint16" in rec.events[2][2]
    assert r.stats["frames"] == 3 and r.stats["bad_frames"] == 2
    # each image is a part: its file name is the part id, also of the images that could not be used
    assert [f[7] for f in rec.frames] == ["img1_grey.png", "img2_colour.png", "img10_alpha.png"]
    assert [e[5] for e in rec.events] == [None, "img3_corrupt.png", "img4_deep.png", None]


def test_a_single_image_file_is_one_part_named_by_its_file(tmp_path):
    assert cv2.imwrite(str(tmp_path / "part0042.png"), np.full((H, W), 90, np.uint8))
    rec = Recorder()
    r = CameraReader(parse_source(f"line1={tmp_path / 'part0042.png'}", 0), rec.on_frame, rec.on_event)
    r.start()
    assert r.wait(5) and r.finished
    assert [(f[1], f[7]) for f in rec.frames] == [(0, "part0042.png")]


# ------------------------------------------------------------------ live

def test_live_http_camera_dies_and_is_reconnected(camera_server):
    server = camera_server()
    port = server.port
    rec = Recorder()
    r = live_reader(server.url, rec)
    t_start = time.monotonic()
    r.start()
    rec.wait_for(lambda: len(rec.frames) >= 10, 5, "first frames")
    assert rec.names()[0] == "opened" and "FFMPEG" in rec.events[0][2]

    server.stop()   # the camera dies mid-stream
    rec.wait_for(lambda: "blind" in [e[1] for e in rec.events], 3, "blind")
    n_blind = len(rec.frames)
    time.sleep(0.5)  # reconnect attempts meet a closed port
    assert len(rec.frames) == n_blind
    assert rec.count("open_failed") >= 1 and not r.finished

    server = camera_server(port=port)   # the camera comes back on the same address
    rec.wait_for(lambda: "reconnected" in [e[1] for e in rec.events], 3, "reconnected")
    rec.wait_for(lambda: len(rec.frames) >= n_blind + 10, 3, "frames after reconnecting")

    names = rec.names()
    assert names.index("opened") < names.index("blind") < names.index("reconnected")
    assert set(names) <= {"opened", "blind", "open_failed", "reconnected"}
    assert rec.count("blind") == 1 and rec.count("reconnected") == 1
    seqs = rec.seqs()
    assert seqs == list(range(len(seqs)))       # seq continues across the reconnect
    assert r.stats["reconnects"] == 1 and r.stats["blind_events"] == 1
    assert not r.finished
    # one camera thread makes every call, before and after the reconnect
    assert len({f[6] for f in rec.frames} | {e[4] for e in rec.events}) == 1

    t0 = time.monotonic()
    r.stop(timeout=2.0)
    assert time.monotonic() - t0 < 2.0 and r.finished and r.wait(0)
    assert time.monotonic() - t_start < 12


def test_live_stall_is_caught_by_the_watchdog_and_stop_does_not_hang(camera_server):
    # Each connection sends 15 frames and then hangs with the socket open: read() blocks
    # (FFmpeg would only give up after its own read timeout, set past the watchdog's).
    server = camera_server(stall_after=15)
    rec = Recorder()
    r = live_reader(server.url, rec, stall_timeout_s=0.6)
    r.start()
    rec.wait_for(lambda: len(rec.frames) >= 15, 5, "first connection's frames")
    t_last = rec.frames[-1][4]
    rec.wait_for(lambda: "blind" in [e[1] for e in rec.events], 3, "blind after a stall")
    blind = next(e for e in rec.events if e[1] == "blind")
    assert "no frame for" in blind[2] and 0.55 < blind[3] - t_last < 1.5
    # the stuck capture was abandoned, a new one opened beside it
    rec.wait_for(lambda: "reconnected" in [e[1] for e in rec.events], 3, "reconnected")
    rec.wait_for(lambda: len(rec.frames) >= 30, 3, "second connection's frames")
    assert r.stats["abandoned_captures"] >= 1
    assert rec.seqs() == list(range(len(rec.frames)))
    # stop() while the current capture is stuck inside read()
    t0 = time.monotonic()
    r.stop(timeout=1.0)
    assert time.monotonic() - t0 < 1.0 and r.finished


def test_a_slow_consumer_is_not_mistaken_for_a_stalled_camera(camera_server):
    server = camera_server()
    rec = Recorder(on_frame_hook=lambda seq: time.sleep(1.5) if seq == 3 else None)
    r = live_reader(server.url, rec, stall_timeout_s=0.5)
    r.start()
    rec.wait_for(lambda: len(rec.frames) >= 20, 6, "frames around a 1.5 s on_frame")
    r.stop(timeout=2.0)
    assert "blind" not in rec.names() and r.stats["blind_events"] == 0


def test_fps_limit_decimates_a_live_camera_instead_of_sleeping(camera_server):
    server = camera_server()   # 50 fps
    rec = Recorder()
    r = live_reader(server.url, rec, fps_limit=10)
    r.start()
    rec.wait_for(lambda: len(rec.frames) >= 1, 5, "first frame")
    time.sleep(1.0)
    r.stop(timeout=1.0)
    monos = [f[4] for f in rec.frames]
    rate = (len(monos) - 1) / (monos[-1] - monos[0])
    assert 7 <= rate <= 11.5 and r.stats["skipped_fps"] >= 20
    assert rec.seqs() == list(range(len(monos)))   # seq counts delivered frames only


def test_live_device_that_is_absent_keeps_retrying_with_backoff():
    rec = Recorder()
    r = CameraReader(parse_source("/dev/video63", 0), rec.on_frame, rec.on_event,
                     backoff_initial_s=0.05, backoff_max_s=0.2, stall_timeout_s=1.0)
    r.start()   # a live source does not raise: the camera may come up later
    rec.wait_for(lambda: len(rec.events) >= 4, 5, "repeated open_failed")
    assert not r.finished
    t0 = time.monotonic()
    r.stop(timeout=1.0)
    assert time.monotonic() - t0 < 1.0
    assert set(rec.names()) == {"open_failed"} and rec.frames == []
    gaps = np.diff([e[3] for e in rec.events[:4]])
    assert (gaps > 0.04).all() and gaps[-1] > 0.15   # 0.05, 0.1, 0.2 s: exponential, capped


def test_stop_returns_while_on_frame_holds_a_file_reader_back(tmp_path):
    path = tmp_path / "clip.avi"
    write_video(path, 5)
    release = threading.Event()
    rec = Recorder(on_frame_hook=lambda seq: release.wait(10) if seq == 1 else None)
    r = CameraReader(parse_source(str(path), 0), rec.on_frame, rec.on_event)
    r.start()
    rec.wait_for(lambda: len(rec.frames) == 1, 5, "first frame")
    time.sleep(0.1)   # frame 1 is now blocked in on_frame (no-drop backpressure)
    t0 = time.monotonic()
    r.stop(timeout=0.3)
    assert time.monotonic() - t0 < 0.5 and r.finished
    release.set()
    assert r.wait(2)
    assert rec.seqs() == [0, 1] and "ended" not in rec.names()


def test_a_raising_callback_stops_the_reader_loudly(tmp_path):
    path = tmp_path / "clip.avi"
    write_video(path, 5)

    def on_frame(*args):
        raise RuntimeError("downstream bug")

    r = CameraReader(parse_source(str(path), 0), on_frame, lambda *a: None)
    r.start()
    assert r.wait(5) and r.finished
    assert isinstance(r.error, RuntimeError) and r.stats["frames"] == 0


def test_constructor_rejects_bad_timing_options():
    spec = parse_source("0", 0)
    for kw in ({"stall_timeout_s": 0}, {"backoff_initial_s": -1}, {"backoff_initial_s": 2, "backoff_max_s": 1},
               {"fps_limit": 0}):
        with pytest.raises(ValueError):
            CameraReader(spec, print, print, **kw)
