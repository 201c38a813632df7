"""Camera sources for the capture stage: parse ``--source`` values and read frames in a thread.

One :class:`CameraReader` per camera turns a :class:`SourceSpec` into a stream of
``on_frame`` calls plus a few ``on_event`` calls, always from the same thread
(the camera's thread), so the callbacks never run concurrently for one camera.
OpenCV does all the reading; numpy + OpenCV + stdlib only (this runs on the line).

``--source`` syntax (:func:`parse_source`)::

    [NAME=]SOURCE[@x,y,w,h]

    NAME      camera id (letters, digits, '_', '-'; starts with a letter or '_');
              default "cam<index>" (index = position of the --source option)
    SOURCE    clip.avi                  video file                      kind "file"
              images/  (or an existing  image folder, sorted naturally  kind "folder"
                        directory)      (img2 before img10)
              0, /dev/video0            USB / V4L2 camera               kind "device"
              rtsp://..., rtsps://...,  network camera or stream        kind "url"
              http://..., https://...
              gst:PIPELINE, or any text GStreamer pipeline ending in    kind "gstreamer"
              containing " ! "          appsink (system OpenCV only)
    @x,y,w,h  optional region of interest in pixels (x, y >= 0; w, h > 0). Only
              parsed and checked against each frame's size here; the crop is the
              preprocess stage's. An '@' not followed by four comma-separated
              integers is left alone ("rtsp://user:pw@host/" keeps working).

Examples: ``0``, ``line1=rtsp://10.0.0.7/stream1@100,50,640,480``,
``top=/data/clips/run3.avi``, ``cam2=gst:nvarguscamerasrc ! nvvidconv ! ... ! appsink``.

Part identity: each frame comes with a ``part_id`` where the source knows which part it shows:
the image's file name (``cell0004.png``) for a folder, or for a file source that is a single
image; None for a video file (its frames are positions in a clip, ``seq`` says which) and for
every live source (a camera does not know the part in front of it). A PLC trigger that hands
over its part counter does not exist yet: that is where such a source would set it.

Events (``on_event(camera, event, detail, part_id)``; ``part_id`` as above for a ``bad_frame``
of an image that could not be used, else None):

``opened``       once, before any frame: a file/folder was opened; a live source
                 delivered its first frame (detail: backend, size, fps)
``open_failed``  an attempt to open a live source got no frame (refused, no device,
                 open or first read timed out); retried with back-off. A camera that
                 never came up reports only this: treat it as blind too.
``blind``        a live source that was delivering stopped (read failed or no frame
                 for ``stall_timeout_s``): the camera sees nothing until ``reconnected``
``reconnected``  frames flow again after ``blind``
``bad_frame``    a frame or image that cannot be delivered (unreadable or corrupt
                 image, 16-bit or other non-uint8 data, odd channel count, ROI outside
                 the frame); it is skipped and counted. Repeats of a per-frame
                 problem on a stream are reported at most every few seconds.
``ended``        a file or folder reached its end (without ``loop``)

Live sources (device, url, gstreamer) never end by themselves; only
:meth:`CameraReader.stop` ends them. ``read()`` on a live capture can block forever
(a camera reset mid-frame, a V4L2 driver that stops answering), so each capture
object lives in its own short-lived *grabber* thread that opens, reads and
releases it; the camera thread watches the time that thread has spent inside
``open()``/``read()`` and, past the limit, *abandons* it: the stuck thread
releases its capture itself if its call ever returns, and a fresh capture is
opened beside it after the back-off. No other thread ever touches a capture
object (release() concurrently with read() is undefined behaviour in OpenCV).
"""
from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

log = logging.getLogger(__name__)

KINDS = ("file", "folder", "device", "url", "gstreamer")
LIVE_KINDS = frozenset({"device", "url", "gstreamer"})
URL_SCHEMES = ("rtsp", "rtsps", "http", "https")
# What cv2.imread can decode in the registry wheels; other files in a folder are ignored.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".dib", ".tif", ".tiff", ".webp",
                              ".pbm", ".pgm", ".ppm", ".pnm", ".pxm", ".jp2", ".sr", ".ras"})

# A live read may fail once without the stream being lost (a V4L2 select() timeout,
# one damaged packet); this many failures in a row, without a frame between, is lost.
MAX_CONSECUTIVE_READ_FAILURES = 3
READ_RETRY_PAUSE_S = 0.05
# Abandoned (stuck) captures still alive at once; past this, no new capture is opened
# until one of them returns, so a camera that hangs every read cannot leak threads.
MAX_ABANDONED_CAPTURES = 4
# Repeats of a per-frame bad_frame reason on a stream are reported at most this often.
BAD_FRAME_REPORT_INTERVAL_S = 5.0
POLL_S = 0.05  # how often the camera thread looks at the watchdog and at stop()

ACCEPTED_FORMS = (
    "[NAME=]SOURCE[@x,y,w,h] where SOURCE is a video file path, an image folder (an existing "
    "directory or a path ending in '/'), a device index (0) or /dev/videoN, an rtsp://, rtsps://, "
    "http:// or https:// URL, or a GStreamer pipeline (gst:PIPELINE, or text containing ' ! '); "
    "NAME is letters, digits, '_' or '-', starting with a letter or '_'")

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_ROI_LIKE_RE = re.compile(r"[\d\s+-]*,[\d\s,+-]*")  # digits and commas only: meant as an ROI
_ROI_RE = re.compile(r"\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*")
_GST_RE = re.compile(r"\s!\s")
_DEVICE_PATH_RE = re.compile(r"/dev/video\d+")

OnFrame = Callable[[str, int, np.ndarray, str, float, float, "str | None"], None]
OnEvent = Callable[[str, str, str, "str | None"], None]


class SourceError(ValueError):
    """A source that cannot work at all: a missing file or folder, GStreamer in a build without it."""


@dataclass(frozen=True)
class SourceSpec:
    camera: str          # camera id ("cam0", or the NAME in "NAME=..."), unique per run
    kind: str            # one of KINDS
    target: str          # path, device index as a string or /dev/videoN, URL, or GStreamer pipeline
    live: bool           # device/url/gstreamer are live; file/folder are not
    roi: tuple[int, int, int, int] | None = None  # x, y, w, h in pixels

    @property
    def shown(self) -> str:
        """``target`` for messages and events, with any URL password masked (events reach the wire)."""
        if self.kind != "url":
            return self.target
        scheme, sep, rest = self.target.partition("://")
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        userinfo, at, host = authority.rpartition("@")
        if not at or ":" not in userinfo:
            return self.target
        return f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{host}{rest[len(authority):]}"

    def roi_fits(self, shape: tuple[int, ...]) -> bool:
        """Whether the ROI (if any) lies inside a frame of ``shape`` (H, W[, C])."""
        if self.roi is None:
            return True
        x, y, w, h = self.roi
        return x + w <= shape[1] and y + h <= shape[0]


def parse_source(text: str, index: int) -> SourceSpec:
    """Parse one ``--source`` value (syntax in the module docstring); ``index`` names an unnamed camera."""
    if not isinstance(text, str):
        raise ValueError(f"bad --source {text!r}: not a string. Accepted forms: {ACCEPTED_FORMS}")

    def bad(reason: str) -> ValueError:
        return ValueError(f"bad --source {text!r}: {reason}. Accepted forms: {ACCEPTED_FORMS}")

    rest = text.strip()
    if not rest:
        raise bad("empty")
    camera = f"cam{index}"
    if rest.startswith("="):
        raise bad("empty camera name before '='")
    head, eq, tail = rest.partition("=")
    if eq and _NAME_RE.fullmatch(head.strip()):
        camera, rest = head.strip(), tail.strip()
    # '=' in a URL query or a GStreamer property leaves `head` with characters a name cannot
    # have ('/', ':', ' ', '!'), so those are not mistaken for a camera name.

    roi = None
    body, at, suffix = rest.rpartition("@")
    if at and _ROI_LIKE_RE.fullmatch(suffix):
        m = _ROI_RE.fullmatch(suffix)
        if m is None:
            raise bad(f"ROI {suffix.strip()!r} is not four non-negative integers x,y,w,h")
        roi = tuple(int(v) for v in m.groups())
        if roi[2] == 0 or roi[3] == 0:
            raise bad(f"ROI {suffix.strip()!r} has zero width or height")
        rest = body.strip()
    if not rest:
        raise bad("no source" + (f" for camera {camera!r}" if eq else ""))

    scheme = _SCHEME_RE.match(rest)
    if rest[:4].lower() == "gst:":
        kind, target = "gstreamer", rest[4:].strip()
        if not target:
            raise bad("empty GStreamer pipeline after 'gst:'")
    elif scheme:
        if scheme.group(1).lower() not in URL_SCHEMES:
            hint = " (give a file as a plain path)" if scheme.group(1).lower() == "file" else ""
            raise bad(f"unsupported URL scheme {scheme.group(1)!r}{hint}")
        if len(rest) == scheme.end():
            raise bad("URL has no host")
        kind, target = "url", rest
    elif _GST_RE.search(rest):
        kind, target = "gstreamer", rest
    elif rest.isdigit():
        kind, target = "device", str(int(rest))
    elif _DEVICE_PATH_RE.fullmatch(rest):
        kind, target = "device", rest
    elif rest.endswith(("/", os.sep)) or os.path.isdir(rest):
        kind, target = "folder", rest
    else:
        # A path that does not exist yet is a file: start() says so, with the path.
        kind, target = "file", rest
    return SourceSpec(camera=camera, kind=kind, target=target, live=kind in LIVE_KINDS, roi=roi)


def parse_sources(texts: list[str]) -> list[SourceSpec]:
    """Parse every ``--source`` value and refuse two sources with the same camera id."""
    specs = [parse_source(t, i) for i, t in enumerate(texts)]
    seen: dict[str, str] = {}
    for t, s in zip(texts, specs):
        if s.camera in seen:
            raise ValueError(f"camera id {s.camera!r} is used twice (--source {seen[s.camera]!r} and "
                             f"--source {t!r}): name them, e.g. --source left=... --source right=...")
        seen[s.camera] = t
    return specs


def _build_has(feature: str) -> bool:
    m = re.search(rf"^\s*{feature}:\s*(\w+)", cv2.getBuildInformation(), re.M)
    return bool(m) and m.group(1).upper() == "YES"


def gstreamer_available() -> bool:
    """Whether this OpenCV was built with GStreamer (never true for the registry's opencv-python wheels)."""
    return _build_has("GStreamer")


def ffmpeg_available() -> bool:
    return _build_has("FFMPEG")


def natural_key(name: str) -> list:
    """Sort key that puts img2 before img10."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p]


def is_image_file(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def list_images(folder: str) -> list[str]:
    """The image files directly in ``folder`` (by extension, no recursion), sorted naturally."""
    with os.scandir(folder) as it:
        names = [e.name for e in it if e.is_file() and not e.name.startswith(".")
                 and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS]
    return [os.path.join(folder, n) for n in sorted(names, key=natural_key)]


class BadFrame(ValueError):
    """A decoded image or frame that the pipeline cannot take."""


def as_pipeline_frame(image: np.ndarray) -> tuple[np.ndarray, str]:
    """(frame, pixel_format) for a decoded image: uint8 HxW "Mono8" or HxWx3 "BGR8".

    Grey stays grey (a mono camera must not triple its bytes), BGRA loses alpha;
    16-bit and float data are refused rather than scaled by a guess.
    """
    if image.dtype != np.uint8:
        raise BadFrame(f"{image.dtype} pixels (only 8-bit is supported; convert 16-bit images to 8-bit)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        fmt = "Mono8"
    elif image.ndim == 3 and image.shape[2] == 3:
        fmt = "BGR8"
    elif image.ndim == 3 and image.shape[2] == 4:
        image, fmt = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR), "BGR8"
    else:
        raise BadFrame(f"shape {image.shape} (expected HxW, HxWx3 or HxWx4)")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise BadFrame(f"empty image, shape {image.shape}")
    return np.ascontiguousarray(image), fmt


def open_capture(spec: SourceSpec, open_timeout_s: float, read_timeout_s: float) -> cv2.VideoCapture:
    """A cv2.VideoCapture for ``spec`` (may be not opened; the caller checks isOpened())."""
    if spec.kind == "file":
        return cv2.VideoCapture(spec.target)
    if spec.kind == "device":
        if spec.target.isdigit():
            return cv2.VideoCapture(int(spec.target))
        return cv2.VideoCapture(spec.target, cv2.CAP_V4L2)
    if spec.kind == "url":
        # The timeouts work only with the FFmpeg backend named explicitly (PLATFORM-NOTES).
        return cv2.VideoCapture(spec.target, cv2.CAP_FFMPEG,
                                [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
                                 cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000)])
    if spec.kind == "gstreamer":
        return cv2.VideoCapture(spec.target, cv2.CAP_GSTREAMER)
    raise ValueError(f"no capture for kind {spec.kind!r}")


def describe_capture(cap: cv2.VideoCapture) -> str:
    try:
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        return f"{cap.getBackendName()} {w}x{h} @ {cap.get(cv2.CAP_PROP_FPS):g} fps"
    except cv2.error:
        return "opened"


class _Grabber:
    """One live capture object and the only thread that ever touches it.

    The thread opens, reads and finally releases the capture and hands results to
    the camera thread through a one-slot queue (so a slow ``on_frame`` holds it
    back without counting as a stall). ``busy_since`` is set only while the thread
    is inside ``open()`` or ``read()``: that is what the watchdog measures.
    """

    def __init__(self, spec: SourceSpec, open_timeout_s: float, read_timeout_s: float, attempt: int) -> None:
        self.spec = spec
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.abandoned = threading.Event()
        self.out: queue.Queue = queue.Queue(maxsize=1)
        self.busy_since: float | None = None
        self.busy_in = ""
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"capture-{spec.camera}-{attempt}")

    def start(self) -> None:
        self.busy_in, self.busy_since = "open", time.monotonic()
        self.thread.start()

    def abandon(self) -> None:
        self.abandoned.set()

    def _put(self, item: tuple) -> bool:
        while not self.abandoned.is_set():
            try:
                self.out.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        cap = None
        try:
            try:
                cap = open_capture(self.spec, self.open_timeout_s, self.read_timeout_s)
                opened = cap.isOpened()
                detail = describe_capture(cap) if opened else "the capture did not open"
            except (cv2.error, OSError, ValueError) as e:
                opened, detail = False, f"open raised {e}"
            self.busy_since = None
            if not opened:
                self._put(("open_failed", detail))
                return
            if not self._put(("opened", detail)):
                return
            failures = 0
            while not self.abandoned.is_set():
                self.busy_in, self.busy_since = "read", time.monotonic()
                try:
                    ok, frame = cap.read()
                    err = "read() returned no frame"
                except cv2.error as e:
                    ok, frame, err = False, None, f"read() raised {e}"
                mono, wall = time.monotonic(), time.time()
                self.busy_since = None
                if ok and frame is not None:
                    failures = 0
                    if not self._put(("frame", frame, mono, wall)):
                        return
                    continue
                failures += 1
                if failures >= MAX_CONSECUTIVE_READ_FAILURES:
                    self._put(("lost", f"{err} ({failures} times in a row)"))
                    return
                if not self._put(("read_failed", err)):
                    return
                self.abandoned.wait(READ_RETRY_PAUSE_S)
        finally:
            self.busy_since = None
            if cap is not None:
                try:
                    cap.release()
                except cv2.error:
                    pass


class CameraReader:
    """Reads one camera in its own thread and hands every frame to ``on_frame``.

    ``on_frame(camera, seq, frame, pixel_format, capture_mono, capture_wall, part_id)`` and
    ``on_event(camera, event, detail, part_id)`` are called from the camera's thread only
    (``part_id``: module doc);
    ``on_frame`` may block (no-drop backpressure slows a file source down; for a
    live source the grabber waits, holding at most one frame, and the watchdog does
    not count that wait as a stall). ``seq`` starts at 0 and grows by one per frame
    delivered, across reconnects and loop passes. A callback that raises stops the
    reader (``error`` holds the exception, ``finished`` becomes True) rather than
    dying silently.

    ``fps_limit`` paces a file or folder by sleeping; a live source is decimated to
    at most that rate instead (frames arriving early are skipped, counted in
    ``stats["skipped_fps"]``), because sleeping would only let the camera's buffer
    grow stale. ``open_timeout_s`` bounds opening a live source (FFmpeg's open
    timeout for URLs, and the watchdog on ``open()`` for every live kind). ``loop``
    applies to files and folders; a live source never ends, so it ignores it (one
    ``--loop`` can serve a run that mixes clips and cameras).
    """

    def __init__(self, spec: SourceSpec, on_frame: OnFrame, on_event: OnEvent, *, loop: bool = False,
                 stall_timeout_s: float = 5.0, backoff_initial_s: float = 0.5, backoff_max_s: float = 10.0,
                 fps_limit: float | None = None, open_timeout_s: float = 5.0) -> None:
        if spec.kind not in KINDS:
            raise ValueError(f"camera {spec.camera}: unknown source kind {spec.kind!r} (one of {', '.join(KINDS)})")
        for name, v in (("stall_timeout_s", stall_timeout_s), ("backoff_initial_s", backoff_initial_s),
                        ("open_timeout_s", open_timeout_s)):
            if not v > 0:
                raise ValueError(f"camera {spec.camera}: {name} must be > 0, got {v}")
        if not backoff_max_s >= backoff_initial_s:
            raise ValueError(f"camera {spec.camera}: backoff_max_s ({backoff_max_s}) must be >= "
                             f"backoff_initial_s ({backoff_initial_s})")
        if fps_limit is not None and not fps_limit > 0:
            raise ValueError(f"camera {spec.camera}: fps_limit must be > 0 or None, got {fps_limit}")
        self.spec = spec
        self.on_frame = on_frame
        self.on_event = on_event
        self.loop = loop
        self.stall_timeout_s = float(stall_timeout_s)
        self.backoff_initial_s = float(backoff_initial_s)
        self.backoff_max_s = float(backoff_max_s)
        self.fps_limit = fps_limit
        self.open_timeout_s = float(open_timeout_s)
        self.stats: dict = {"frames": 0, "reconnects": 0, "read_failures": 0, "blind_events": 0,
                            "open_failures": 0, "bad_frames": 0, "skipped_fps": 0, "passes": 0,
                            "abandoned_captures": 0}
        self.error: BaseException | None = None
        self._seq = 0
        self._stop = threading.Event()
        self._done = threading.Event()      # the camera thread has exited
        self._ended = False
        self._thread: threading.Thread | None = None
        self._first_cap: cv2.VideoCapture | None = None
        self._first_images: list[str] | None = None
        self._grabber: _Grabber | None = None
        self._abandoned: list[_Grabber] = []
        self._next_due: float | None = None
        self._bad_reported: dict[str, tuple[float, int]] = {}
        self._blind_since = 0.0

    # ---------------------------------------------------------------- control

    @property
    def camera(self) -> str:
        return self.spec.camera

    @property
    def finished(self) -> bool:
        """A file/folder reached its end (without loop), stop() was called, or a callback raised."""
        return self._ended or self._stop.is_set()

    def start(self) -> None:
        """Start the camera thread. Raises SourceError for a source that cannot work at all."""
        if self._thread is not None:
            raise RuntimeError(f"camera {self.camera}: start() called twice")
        spec = self.spec
        if spec.kind == "file":
            if not os.path.isfile(spec.target):
                what = "is a folder, not a video file" if os.path.isdir(spec.target) else "does not exist"
                raise SourceError(f"camera {spec.camera}: video file {spec.shown} {what}")
            cap = cv2.VideoCapture(spec.target)
            if not cap.isOpened():
                raise SourceError(f"camera {spec.camera}: OpenCV cannot open video file {spec.shown} "
                                  f"(not a video, or a codec this build lacks)")
            self._first_cap = cap
        elif spec.kind == "folder":
            if not os.path.isdir(spec.target):
                raise SourceError(f"camera {spec.camera}: image folder {spec.shown} does not exist")
            images = list_images(spec.target)
            if not images:
                raise SourceError(f"camera {spec.camera}: image folder {spec.shown} holds no image files "
                                  f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
            self._first_images = images
        elif spec.kind == "gstreamer" and not gstreamer_available():
            raise SourceError(
                f"camera {spec.camera}: this OpenCV ({cv2.__version__}, {os.path.dirname(cv2.__file__)}) was built "
                f"without GStreamer; the opencv-python wheels from PyPI never have it. On a Jetson use the system "
                f"OpenCV that JetPack installs (python3 with --system-site-packages, and no opencv-python from pip)")
        elif spec.kind == "url" and not ffmpeg_available():
            raise SourceError(f"camera {spec.camera}: this OpenCV was built without FFmpeg and cannot read "
                              f"{spec.shown}")
        target = self._run_live if spec.live else self._run_recorded
        self._thread = threading.Thread(target=self._main, args=(target,), daemon=True, name=f"camera-{spec.camera}")
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading; returns within ``timeout`` even if a capture (or a callback) is stuck."""
        self._stop.set()
        g = self._grabber
        if g is not None:
            g.abandon()
        if self._thread is None:
            return
        deadline = time.monotonic() + max(0.0, timeout)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.warning("camera %s: reader thread still busy (in a callback?) after stop(%.1f s); left behind",
                        self.camera, timeout)
            return
        # Let grabbers that are only releasing their capture finish (so a device can be reopened
        # at once); one still stuck inside open()/read() stays abandoned, not waited for.
        for g in list(self._abandoned):
            if g.busy_since is None:
                g.thread.join(max(0.0, deadline - time.monotonic()))

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the camera thread has exited (end of a file/folder, or stop()); True if it has."""
        return self._done.wait(timeout)

    # ---------------------------------------------------------------- delivery

    def _main(self, target: Callable[[], None]) -> None:
        try:
            target()
        except _CallbackFailed:
            pass
        except Exception as e:  # a bug here must be loud, not a camera that silently stops
            log.exception("camera %s: reader failed", self.camera)
            self.error = e
            self._stop.set()
        finally:
            if self._first_cap is not None:
                self._first_cap.release()
                self._first_cap = None
            if self._grabber is not None:
                self._grabber.abandon()
            self._done.set()

    def _event(self, event: str, detail: str, part_id: str | None = None) -> None:
        try:
            self.on_event(self.camera, event, detail, part_id)
        except Exception as e:
            self._callback_failed("on_event", e)

    def _callback_failed(self, which: str, e: Exception) -> None:
        log.exception("camera %s: %s raised; stopping this camera", self.camera, which)
        self.error = e
        self._stop.set()
        raise _CallbackFailed from e

    def _bad_frame(self, key: str, detail: str, rate_limited: bool, part_id: str | None = None) -> None:
        self.stats["bad_frames"] += 1
        if not rate_limited:
            self._event("bad_frame", detail, part_id)
            return
        now = time.monotonic()
        last, suppressed = self._bad_reported.get(key, (-1e18, 0))
        if now - last >= BAD_FRAME_REPORT_INTERVAL_S:
            more = f" ({suppressed} more since the last report)" if suppressed else ""
            self._bad_reported[key] = (now, 0)
            self._event("bad_frame", detail + more, part_id)
        else:
            self._bad_reported[key] = (last, suppressed + 1)

    def _deliver(self, image: np.ndarray, mono: float, wall: float, what: str, rate_limited: bool,
                 part_id: str | None = None) -> bool:
        """Check and hand one frame to on_frame; False if it was refused (bad_frame)."""
        try:
            frame, fmt = as_pipeline_frame(image)
        except BadFrame as e:
            self._bad_frame("format", f"{what}: {e}", rate_limited, part_id)
            return False
        if not self.spec.roi_fits(frame.shape):
            x, y, w, h = self.spec.roi
            self._bad_frame("roi", f"{what}: ROI x={x} y={y} w={w} h={h} lies outside the "
                                   f"{frame.shape[1]}x{frame.shape[0]} frame", rate_limited, part_id)
            return False
        seq = self._seq
        try:
            self.on_frame(self.camera, seq, frame, fmt, mono, wall, part_id)
        except Exception as e:
            self._callback_failed("on_frame", e)
        self._seq = seq + 1
        self.stats["frames"] += 1
        return True

    def _pace(self) -> bool:
        """Sleep until the next frame is due under fps_limit; False if stop() came first."""
        if self.fps_limit is None:
            return not self._stop.is_set()
        period = 1.0 / self.fps_limit
        now = time.monotonic()
        if self._next_due is None or now - self._next_due > period:  # first frame, or fell behind: no burst
            self._next_due = now
        if self._stop.wait(max(0.0, self._next_due - now)):
            return False
        self._next_due += period
        return True

    def _decimate(self, mono: float) -> bool:
        """For a live source under fps_limit: whether a frame captured at ``mono`` is due."""
        if self.fps_limit is None:
            return True
        period = 1.0 / self.fps_limit
        # A quarter period of tolerance, so a 30 fps camera limited to 30 fps does not lose
        # every other frame to jitter.
        if self._next_due is not None and mono < self._next_due - 0.25 * period:
            self.stats["skipped_fps"] += 1
            return False
        if self._next_due is None or mono - self._next_due > period:
            self._next_due = mono
        self._next_due += period
        return True

    # ---------------------------------------------------------------- file / folder

    def _run_recorded(self) -> None:
        announced = False
        while not self._stop.is_set():
            self.stats["passes"] += 1
            if self.spec.kind == "file":
                delivered, detail = self._play_file(announced)
            else:
                delivered, detail = self._play_folder(announced)
            announced = True
            if self._stop.is_set():
                return
            if not self.loop or delivered == 0:
                if self.loop:
                    detail += "; nothing was delivered in a whole pass, so looping stops"
                self._ended = True
                self._event("ended", detail)
                return

    def _play_file(self, announced: bool) -> tuple[int, str]:
        cap, self._first_cap = self._first_cap, None
        if cap is None:
            cap = cv2.VideoCapture(self.spec.target)
            if not cap.isOpened():
                self._event("open_failed", f"cannot reopen {self.spec.shown} for the next pass")
                return 0, f"{self.spec.shown} could no longer be opened"
        try:
            declared = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            if not announced:
                self._event("opened", f"{self.spec.shown}: {describe_capture(cap)}"
                                      + (f", {declared} frames" if declared > 0 else ""))
            delivered = read = 0
            # one image given as the file: that image is the part (a video's frames are not parts)
            part_id = os.path.basename(self.spec.target) if is_image_file(self.spec.target) else None
            while self._pace():
                try:
                    ok, image = cap.read()
                except cv2.error as e:
                    ok, image = False, None
                    log.warning("camera %s: read of %s raised %s; treating it as the end",
                                self.camera, self.spec.target, e)
                if not ok or image is None:
                    break
                read += 1
                if self._deliver(image, time.monotonic(), time.time(), f"{self.spec.shown} frame {read - 1}",
                                 rate_limited=True, part_id=part_id):
                    delivered += 1
            short = f" (the file declares {declared})" if 0 < declared != read and not self._stop.is_set() else ""
            return delivered, f"end of {self.spec.shown} after {read} frames{short}"
        finally:
            cap.release()

    def _play_folder(self, announced: bool) -> tuple[int, str]:
        images, self._first_images = self._first_images, None
        if images is None:
            try:
                images = list_images(self.spec.target)
            except OSError as e:
                return 0, f"image folder {self.spec.shown} can no longer be listed: {e}"
        if not announced:
            self._event("opened", f"{self.spec.shown}: {len(images)} image files")
        delivered = 0
        for path in images:
            if not self._pace():
                break
            image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            mono, wall = time.monotonic(), time.time()
            part_id = os.path.basename(path)   # the image is the part: the MES traces its verdict by name
            if image is None:
                self._bad_frame("read", f"{path}: unreadable or not an image", rate_limited=False, part_id=part_id)
                continue
            if self._deliver(image, mono, wall, path, rate_limited=False, part_id=part_id):
                delivered += 1
        return delivered, f"end of image folder {self.spec.shown} ({len(images)} files, {delivered} delivered)"

    # ---------------------------------------------------------------- live

    def _run_live(self) -> None:
        state = "starting"          # "live" only inside _pump; "blind" after losing a delivering source
        backoff = self.backoff_initial_s
        attempt = failed_attempts = 0
        while not self._stop.is_set():
            self._abandoned = [g for g in self._abandoned if g.thread.is_alive()]
            if len(self._abandoned) >= MAX_ABANDONED_CAPTURES:
                # Every capture opened lately hangs; opening more would only pile up stuck threads.
                if self._stop.wait(backoff):
                    return
                continue
            attempt += 1
            g = _Grabber(self.spec, self.open_timeout_s,
                         # FFmpeg's own read timeout a second past the watchdog: the watchdog
                         # decides, FFmpeg's timeout only frees a thread the watchdog abandoned.
                         self.stall_timeout_s + 1.0, attempt)
            self._grabber = g
            g.start()
            got_frame, reason = self._pump(g, state)
            g.abandon()  # its thread releases the capture, now or whenever its call returns
            self._grabber = None
            if g.thread.is_alive():
                self._abandoned.append(g)
                if g.busy_since is not None:
                    self.stats["abandoned_captures"] += 1
            if self._stop.is_set():
                return
            if got_frame:
                state, self._blind_since, failed_attempts = "blind", time.monotonic(), 0
                backoff = self.backoff_initial_s
                self.stats["blind_events"] += 1
                self._event("blind", f"{self.spec.shown}: {reason}; reopening in {backoff:g} s")
            else:
                failed_attempts += 1
                self.stats["open_failures"] += 1
                self._event("open_failed", f"{self.spec.shown}: {reason}; attempt {failed_attempts}, "
                                           f"retrying in {backoff:g} s")
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2.0, self.backoff_max_s)

    def _pump(self, g: _Grabber, state: str) -> tuple[bool, str]:
        """Deliver ``g``'s frames until it fails or stalls; (whether it delivered, why it ended)."""
        got_frame = False
        opened_detail = ""
        while not self._stop.is_set():
            try:
                item = g.out.get(timeout=POLL_S)
            except queue.Empty:
                since = g.busy_since
                if since is not None:
                    # open(): a second past FFmpeg's own open timeout, so a URL normally fails by
                    # itself (and releases cleanly); the watchdog catches what has no timeout.
                    limit = self.open_timeout_s + 1.0 if g.busy_in == "open" else self.stall_timeout_s
                    waited = time.monotonic() - since
                    if waited > limit:
                        return got_frame, (f"open() did not return within {limit:g} s" if g.busy_in == "open"
                                           else f"no frame for {waited:.1f} s (stall timeout {limit:g} s)")
                continue
            what = item[0]
            if what == "frame":
                _, image, mono, wall = item
                if not got_frame:
                    got_frame = True
                    if state == "starting":
                        self._event("opened", f"{self.spec.shown}: {opened_detail}")
                    elif state == "blind":
                        self.stats["reconnects"] += 1
                        self._event("reconnected", f"{self.spec.shown}: {opened_detail}; blind for "
                                                   f"{time.monotonic() - self._blind_since:.1f} s")
                    state = "live"
                if self._decimate(mono):
                    self._deliver(image, mono, wall, f"{self.spec.shown} frame", rate_limited=True)
            elif what == "opened":
                opened_detail = item[1]
            elif what == "read_failed":
                self.stats["read_failures"] += 1
            elif what == "lost":
                self.stats["read_failures"] += 1
                return got_frame, item[1]
            elif what == "open_failed":
                return False, item[1]
        return got_frame, "stopped"


class _CallbackFailed(Exception):
    """on_frame/on_event raised: the camera thread unwinds (error already recorded)."""
