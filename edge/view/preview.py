"""The alert stage's side of the operator's screen: a rate-limited preview stream, never in the way.

Records go out on a ZeroMQ XPUB socket bound to a private ipc:// endpoint (edge-run's temporary
folder: the view lives in the supervisor on the same host). Two frames per message::

    [topic, body]   topic = b"frame/<camera>" | b"alert/<camera>"
                    body  = msgpack map (PREVIEW_VERSION), see :func:`record`

``frame``: the newest judged frame of a camera, with its heatmap thumbnail (the alert's JPEG when the
alert carries one, else encoded here), sent at most ``fps`` times a second per camera.
``alert``: NotOK and NotDecidable verdicts (the reject strip), at most REJECTS_PER_S per camera a
second with a burst of as many (a reject storm must not make the view cost more: the operator cannot
follow more anyway, and the counters come from the metrics, exact); those left out are counted
(``rejects_skipped``, cumulative per camera, in every record). Camera alerts ("camera blind",
frame_seq -1) always go. Each carries the alert's own fields (alert_seq, part_id, published_wall)
so the screen shows what the PLC got.

What it costs the line (docs/view.md, bench/view_bench.py): nothing while no view has subscribed
(the XPUB tells; no JPEG is encoded for nobody); with a view, one JPEG of the model-size overlay
(224 px: well under a millisecond) per camera per 1/fps s, and a non-blocking send of a few kB.
A slow view never backs anything up: the sends never wait, and the XPUB drops at its high-water
mark (the view reads latest-wins anyway). Alerts to the PLC/MES do not pass through here.
"""
from __future__ import annotations

import time

import msgpack
import zmq

PREVIEW_VERSION = 1
SEND_HWM = 64                 # records queued for a slow view before the XPUB drops (a view wants the newest)
SUBSCRIPTION_POLL_S = 0.2     # how often the stage looks for a view joining or leaving
REJECTS_PER_S = 5.0           # NotOK / NotDecidable frames sent to the view per camera per second (and burst)


def record(kind: str, alert: dict, jpeg: bytes | None, item: dict | None, skipped: int = 0) -> dict:
    """The body of one preview record: the alert's fields (alert_seq None for an OK verdict that
    ``--publish defects`` does not publish), the thumbnail, and where the model's input came from in
    the camera frame (``roi`` [x, y, w, h] and ``frame_shape`` [h, w]) so regions can be drawn on it."""
    out = {k: alert.get(k) for k in ("camera", "frame_seq", "alert_seq", "capture_wall", "published_wall",
                                     "latency_ms", "verdict", "score", "normalised_score", "threshold",
                                     "model_version", "regions", "reason", "part_id", "node")}
    out.update(v=PREVIEW_VERSION, kind=kind, jpeg=jpeg, rejects_skipped=int(skipped),
               roi=list(item["roi"]) if item and item.get("roi") else None,
               frame_shape=list(item["frame_shape"]) if item and item.get("frame_shape") else None)
    return out


class PreviewFeed:
    """Owned by the alert stage (one thread): :meth:`due` says whether a camera's frame is wanted now,
    :meth:`send` puts a record out without ever waiting."""

    def __init__(self, ctx: zmq.Context, addr: str, fps: float, clock=time.monotonic) -> None:
        if not fps > 0:
            raise ValueError(f"the preview rate must be > 0 frames/s per camera, got {fps}")
        self.period, self.clock = 1.0 / fps, clock
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)          # a view that went away is owed nothing
        self.sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.sock.setsockopt(zmq.MAXMSGSIZE, 4096)   # inbound: subscriptions only
        self.sock.bind(addr)
        self.subscribers = 0
        self._next_poll = 0.0
        self._last: dict[str, float] = {}
        self._bucket: dict[str, tuple[float, float]] = {}   # camera -> (tokens, when)
        self.skipped: dict[str, int] = {}
        self.sent = self.dropped = 0

    @property
    def active(self) -> bool:
        """A view is subscribed (polled at most every SUBSCRIPTION_POLL_S: cheap per frame)."""
        now = self.clock()
        if now >= self._next_poll:
            self._next_poll = now + SUBSCRIPTION_POLL_S
            while True:
                try:
                    msg = self.sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if msg[:1] == b"\x01":
                    self.subscribers += 1
                elif msg[:1] == b"\x00":
                    self.subscribers = max(0, self.subscribers - 1)
        return self.subscribers > 0

    def due(self, camera: str) -> bool:
        """Whether this camera's frame should go to the view now (and if so, counts it as sent)."""
        if not self.active:
            return False
        now = self.clock()
        if now - self._last.get(camera, -1e18) < self.period:
            return False
        self._last[camera] = now
        return True

    def wants(self, camera: str, verdict: str) -> bool:
        """Whether this judged frame goes to the view: an OK one when the camera's picture is due; a NotOK or
        NotDecidable one within REJECTS_PER_S (else counted as skipped), or when the picture is due anyway."""
        if not self.active:
            return False
        if verdict == "OK":
            return self.due(camera)
        now = self.clock()
        tokens, when = self._bucket.get(camera, (REJECTS_PER_S, now))
        tokens = min(REJECTS_PER_S, tokens + (now - when) * REJECTS_PER_S)
        if tokens >= 1.0:
            self._bucket[camera] = (tokens - 1.0, now)
            self._last[camera] = now   # it is the camera's newest picture too
            return True
        self._bucket[camera] = (tokens, now)
        if self.due(camera):
            return True
        self.skipped[camera] = self.skipped.get(camera, 0) + 1
        return False

    def send(self, kind: str, alert: dict, jpeg: bytes | None, item: dict | None) -> None:
        if not self.active:
            return
        body = msgpack.packb(record(kind, alert, jpeg, item, self.skipped.get(alert["camera"], 0)),
                             use_bin_type=True)
        try:
            self.sock.send_multipart([f"{kind}/{alert['camera']}".encode(), body], flags=zmq.NOBLOCK)
            self.sent += 1
        except zmq.Again:   # XPUB drops silently at its HWM; this is the odd case where it refuses
            self.dropped += 1

    def close(self) -> None:
        self.sock.close(linger=0)


def decode_record(frames: list) -> dict:
    """A received preview message -> its body; ValueError for anything that is not one."""
    if len(frames) != 2:
        raise ValueError(f"a preview record has 2 frames, got {len(frames)}")
    body = msgpack.unpackb(bytes(frames[1]), raw=False, strict_map_key=True)
    if not isinstance(body, dict) or body.get("v") != PREVIEW_VERSION or body.get("kind") not in ("frame", "alert") \
            or not isinstance(body.get("camera"), str):
        raise ValueError("not a preview record of this version")
    return body
