"""The camera API's supervisor side: list, add and remove cameras while the line runs.

Reference point: DeepStream's nvmultiurisrcbin REST API (stream add / remove while the pipeline
plays). Here, on the view's HTTP server, behind its token (edge/view/server.py)::

    GET    /api/v1/cameras          the cameras running now
    POST   /api/v1/cameras          {"id": "side", "source": "rtsp://...", "roi": [x, y, w, h]}  (roi optional)
    DELETE /api/v1/cameras/<id>

An add is checked exactly as a ``--source`` is at start (edge.sources.parse_source, a file or
folder must exist, one camera id once) and against the calibration (edge.rules: the camera's own
entry, else ``*``, else refused with the reason). Then the capture stage starts the reader; the
supervisor's camera list (``cfg.sources``) changes only once capture has said yes, so a capture
stage that is restarted later comes back with the cameras the API left it.

A removed camera's reader stops; every frame it had already captured goes on through the pipeline
and is judged and published like any other (its ring is kept until preprocess has released it).
The channel to the capture stage is a DEALER pair on a private ipc:// endpoint: one request at a
time (a lock), each with an id, answered within CONTROL_TIMEOUT_S or reported as unanswered.
"""
from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import msgpack
import zmq

from edge.rules import CameraRules, RulesError, check_cameras
from edge.sources import parse_source

CONTROL_TIMEOUT_S = 10.0   # a reader stops within 5 s (CameraReader.stop); opening a file is quick


class CameraApiError(Exception):
    """A refused request: the HTTP status and the reason, in words an integrator can act on."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def describe(text: str, index: int) -> dict:
    spec = parse_source(text, index)
    return {"id": spec.camera, "source": spec.shown, "kind": spec.kind, "live": spec.live,
            "roi": list(spec.roi) if spec.roi else None}


def source_text(camera_id, source, roi) -> str:
    """The ``--source`` text of an API request (``ID=SOURCE[@x,y,w,h]``), or CameraApiError 400."""
    if not isinstance(camera_id, str) or not camera_id:
        raise CameraApiError(400, "give the camera's id: {\"id\": \"side\", \"source\": ..., \"roi\": [x, y, w, h]}")
    if not isinstance(source, str) or not source.strip():
        raise CameraApiError(400, f"give camera {camera_id!r} a source: a video file, image folder, device index "
                                  "or rtsp/http URL, as for --source")
    text = f"{camera_id}={source.strip()}"
    if roi is not None:
        if isinstance(roi, str):
            roi = roi.split(",")
        try:
            x, y, w, h = (int(v) for v in roi)
        except (TypeError, ValueError):
            raise CameraApiError(400, f"roi {roi!r}: expected [x, y, w, h] in pixels") from None
        text += f"@{x},{y},{w},{h}"
    return text


class CameraControl:
    """Owned by the supervisor; called from the view's HTTP threads. ``cfg`` is the supervisor's
    PipelineConfig: its ``sources`` list is the camera list (spawn() starts capture with it)."""

    def __init__(self, ctx: zmq.Context, cfg, rules: dict[str, CameraRules], capture_local: bool) -> None:
        self.cfg, self.rules = cfg, rules
        self.lock = threading.Lock()
        self.sock = None
        self._ids = itertools.count(1)
        if capture_local and cfg.control_addr:
            self.sock = ctx.socket(zmq.DEALER)
            self.sock.setsockopt(zmq.LINGER, 0)
            self.sock.setsockopt(zmq.SNDHWM, 4)
            self.sock.setsockopt(zmq.MAXMSGSIZE, 64 << 10)
            self.sock.bind(cfg.control_addr)

    def cameras(self) -> list[dict]:
        return [describe(t, i) for i, t in enumerate(list(self.cfg.sources))]

    def _ids_running(self) -> dict[str, str]:
        return {parse_source(t, i).camera: t for i, t in enumerate(list(self.cfg.sources))}

    def add(self, camera_id, source, roi=None) -> dict:
        text = source_text(camera_id, source, roi)
        try:
            spec = parse_source(text, len(self.cfg.sources))
        except ValueError as e:
            raise CameraApiError(400, str(e)) from None
        if spec.camera != camera_id:
            raise CameraApiError(400, f"camera id {camera_id!r}: letters, digits, '_' or '-', starting with a "
                                      "letter or '_' (at most 64)")
        if not spec.live and not Path(spec.target).exists():
            raise CameraApiError(400, f"source {source!r}: {spec.target} does not exist")
        try:
            check_cameras(self.rules, [spec.camera])
        except RulesError as e:
            raise CameraApiError(422, str(e)) from None
        with self.lock:
            if spec.camera in self._ids_running():
                raise CameraApiError(409, f"camera {spec.camera!r} is already running: remove it first, or choose "
                                          "another id")
            self._request({"op": "add", "source": text})
            self.cfg.sources = list(self.cfg.sources) + [text]
        return describe(text, 0)

    def remove(self, camera_id: str) -> dict:
        with self.lock:
            running = self._ids_running()
            if camera_id not in running:
                raise CameraApiError(404, f"no camera {camera_id!r} is running (cameras: "
                                          f"{', '.join(running) or 'none'})")
            if len(running) == 1:
                raise CameraApiError(409, f"{camera_id!r} is the last camera: a pipeline without cameras ends; "
                                          "stop edge-run instead")
            reply = self._request({"op": "remove", "camera": camera_id})
            self.cfg.sources = [t for t in self.cfg.sources if t != running[camera_id]]
        return {"removed": camera_id, "frames_captured": reply.get("frames"),
                "in_flight": "frames it had captured are still judged and published"}

    def _request(self, body: dict) -> dict:
        if self.sock is None:
            raise CameraApiError(503, "the capture stage does not run in this edge-run (--stages): add and remove "
                                      "cameras on the host that runs it")
        rid = next(self._ids)
        while True:   # answers to requests that timed out earlier: not ours
            try:
                self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        try:
            # capture drops a request it reads after this (it may be busy starting): no late surprise
            self.sock.send(msgpack.packb({**body, "id": rid, "deadline": time.monotonic() + CONTROL_TIMEOUT_S - 0.5}),
                           zmq.NOBLOCK)
        except zmq.Again:
            raise CameraApiError(503, "the capture stage is not running right now (starting or restarting): "
                                      "try again in a few seconds") from None
        deadline = time.monotonic() + CONTROL_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000) + 1):
                break
            try:
                reply = msgpack.unpackb(self.sock.recv(), raw=False)
            except (ValueError, msgpack.ExtraData):
                continue
            if not isinstance(reply, dict) or reply.get("id") != rid:
                continue
            if not reply.get("ok"):
                raise CameraApiError(400 if body["op"] == "add" else 409, str(reply.get("error")))
            return reply
        raise CameraApiError(504, f"the capture stage did not answer within {CONTROL_TIMEOUT_S:.0f} s; the camera "
                                  "list is unchanged")

    def close(self) -> None:
        with self.lock:   # not under a request another thread is making
            if self.sock is not None:
                self.sock.close(linger=0)
                self.sock = None


def serve_requests(sock: zmq.Socket, handle, timeout_ms: int) -> None:
    """The capture stage's side: wait up to ``timeout_ms`` for requests and answer each one.
    ``handle(request) -> dict`` (extra reply fields) raises ValueError/OSError for a refusal."""
    if not sock.poll(timeout_ms):
        return
    while True:
        try:
            raw = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        try:
            req = msgpack.unpackb(raw, raw=False)
            rid = req.get("id") if isinstance(req, dict) else None
        except (ValueError, msgpack.ExtraData):
            continue
        try:
            reply = {"ok": True, **handle(req)}
        except (ValueError, OSError, RuntimeError, KeyError, TypeError) as e:
            reply = {"ok": False, "error": str(e)}
        try:
            sock.send(msgpack.packb({**reply, "id": rid}), zmq.NOBLOCK)
        except zmq.Again:
            pass   # the supervisor went away; it times out and says so
