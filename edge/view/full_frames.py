"""Full camera frames of rejects for the operator's screen, kept by the preprocess stage.

The reject strip shows what the model saw (the ROI at the model's size, 224 px). An operator who
opens a reject wants the part as the camera saw it. Only the preprocess stage ever holds that frame
(it reads it out of capture's ring and lets go), and only the alert stage knows, later, that it was
a reject. So, while a view is watching, preprocess keeps a copy of each camera's newest frames, and
the view asks for the ones that became rejects:

    preprocess  --XPUB  full/<camera> records-->  view (ViewFeed)
    preprocess  <--PULL request {camera, frame_seq}--  view, on each NotOK it receives

Costs, all bounded (docs/view.md):
* no view watching (no subscriber on the XPUB): nothing is kept, nothing encoded;
* a view watching: one copy of every frame into a reused buffer (a 1080p colour frame is 6.2 MB:
  about 1 ms on the project's 2-core machine; a 300x300 grey cell, microseconds), at most
  KEEP_PER_CAMERA frames per camera and KEEP_BYTES in all (older ones are dropped first);
* one JPEG per requested reject, at most ENCODES_PER_S per camera (a 1080p frame: ~10 ms);
  refused requests are answered "not kept" and counted.
A request for a frame no longer held (the line ran ahead of the view, or a burst of rejects) is
answered with the reason, so the page says why it shows the model's view instead.

numpy, OpenCV and pyzmq only (edge/ imports no torch).
"""
from __future__ import annotations

import collections
import time

import cv2
import msgpack
import numpy as np
import zmq

FULL_VERSION = 1
KEEP_PER_CAMERA = 16          # newest frames kept per camera (covers the frames between preprocess and the verdict)
KEEP_BYTES = 128 << 20        # all cameras together
ENCODES_PER_S = 2.0           # full-frame JPEGs per camera per second (and burst)
JPEG_QUALITY = 90
SEND_HWM = 8                  # full frames queued for a slow view before the XPUB drops them
REQUEST_BYTES = 1024          # a request is a small msgpack map
SUBSCRIPTION_POLL_S = 0.2


def full_frame_addrs(folder: str) -> tuple[str, str]:
    """(records out, requests in) ipc:// endpoints in edge-run's private folder."""
    return f"ipc://{folder}/full-frames", f"ipc://{folder}/full-requests"


def encode_request(camera: str, frame_seq: int) -> bytes:
    return msgpack.packb({"v": FULL_VERSION, "camera": camera, "frame_seq": int(frame_seq)}, use_bin_type=True)


def decode_full(frames: list) -> dict:
    """A received full-frame record -> its body; ValueError for anything that is not one."""
    if len(frames) != 2:
        raise ValueError(f"a full-frame record has 2 frames, got {len(frames)}")
    body = msgpack.unpackb(bytes(frames[1]), raw=False, strict_map_key=True)
    if not isinstance(body, dict) or body.get("v") != FULL_VERSION or body.get("kind") != "full" \
            or not isinstance(body.get("camera"), str) or not isinstance(body.get("frame_seq"), int):
        raise ValueError("not a full-frame record of this version")
    return body


class FullFrameKeeper:
    """Owned by the preprocess stage (one thread): :meth:`keep` per frame, :meth:`serve` per loop."""

    def __init__(self, ctx: zmq.Context, out_addr: str, request_addr: str, clock=time.monotonic,
                 keep_per_camera: int = KEEP_PER_CAMERA, keep_bytes: int = KEEP_BYTES) -> None:
        self.clock, self.keep_per_camera, self.keep_bytes = clock, int(keep_per_camera), int(keep_bytes)
        self.pub = ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.pub.setsockopt(zmq.MAXMSGSIZE, 4096)    # inbound: subscriptions only
        self.pub.bind(out_addr)
        self.requests = ctx.socket(zmq.PULL)
        self.requests.setsockopt(zmq.LINGER, 0)
        self.requests.setsockopt(zmq.RCVHWM, 64)
        self.requests.setsockopt(zmq.MAXMSGSIZE, REQUEST_BYTES)
        self.requests.bind(request_addr)
        self.subscribers = 0
        self._next_poll = 0.0
        # camera -> OrderedDict frame_seq -> (frame copy, pixel format); oldest first
        self.kept: dict[str, collections.OrderedDict] = {}
        self.bytes = 0
        self._spare: dict[tuple, list[np.ndarray]] = {}   # (shape, dtype) -> buffers to reuse
        self._bucket: dict[str, tuple[float, float]] = {}
        self.counts = collections.Counter()   # sent, not_kept, rate_limited, bad_requests, dropped

    @property
    def watched(self) -> bool:
        """A view subscribes (polled at most every SUBSCRIPTION_POLL_S)."""
        now = self.clock()
        if now >= self._next_poll:
            self._next_poll = now + SUBSCRIPTION_POLL_S
            while True:
                try:
                    msg = self.pub.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if msg[:1] == b"\x01":
                    self.subscribers += 1
                elif msg[:1] == b"\x00":
                    self.subscribers = max(0, self.subscribers - 1)
            if self.subscribers == 0 and self.kept:
                self._forget_all()   # nobody watches: give the memory back
        return self.subscribers > 0

    # -- per frame ----------------------------------------------------------------------------------
    def keep(self, camera: str, frame_seq: int, frame: np.ndarray, pixel_format: str) -> None:
        """Copy one frame (it is a view on capture's ring: the slot is reused soon after)."""
        if not self.watched or frame.nbytes > self.keep_bytes:
            return
        frames = self.kept.setdefault(camera, collections.OrderedDict())
        if frame_seq in frames:
            self._drop(camera, frame_seq)
        while len(frames) >= self.keep_per_camera:
            self._drop(camera, next(iter(frames)))
        while self.bytes + frame.nbytes > self.keep_bytes:
            self._drop_oldest_anywhere()
        spare = self._spare.get((frame.shape, frame.dtype.str))
        buf = spare.pop() if spare else np.empty(frame.shape, frame.dtype)
        np.copyto(buf, frame)
        frames[frame_seq] = (buf, pixel_format)
        self.bytes += buf.nbytes

    def forget(self, camera: str, frame_seq: int) -> None:
        """The copy turned out torn (the ring slot was overwritten while read): not this frame."""
        if frame_seq in self.kept.get(camera, ()):
            self._drop(camera, frame_seq)

    def _drop(self, camera: str, frame_seq: int) -> None:
        buf, _ = self.kept[camera].pop(frame_seq)
        self.bytes -= buf.nbytes
        spare = self._spare.setdefault((buf.shape, buf.dtype.str), [])
        if len(spare) < 2:   # a couple per shape: enough to avoid fresh pages, not a second store
            spare.append(buf)

    def _drop_oldest_anywhere(self) -> None:
        camera = max(self.kept, key=lambda c: len(self.kept[c]))   # the camera holding the most frames
        self._drop(camera, next(iter(self.kept[camera])))

    def _forget_all(self) -> None:
        self.kept.clear()
        self._spare.clear()
        self.bytes = 0

    # -- per loop -----------------------------------------------------------------------------------
    def serve(self, limit: int = 16) -> None:
        """Answer the view's pending requests (never waits)."""
        for _ in range(limit):
            try:
                raw = self.requests.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                req = msgpack.unpackb(raw, raw=False, strict_map_key=True)
                if not isinstance(req, dict) or req.get("v") != FULL_VERSION:
                    raise ValueError
                camera, seq = req["camera"], req["frame_seq"]
                if not (isinstance(camera, str) and isinstance(seq, int) and not isinstance(seq, bool)):
                    raise ValueError
            except (ValueError, TypeError, KeyError, msgpack.UnpackException):
                self.counts["bad_requests"] += 1
                continue
            self._answer(camera, seq)

    def _allowed(self, camera: str) -> bool:
        now = self.clock()
        tokens, when = self._bucket.get(camera, (ENCODES_PER_S, now))
        tokens = min(ENCODES_PER_S, tokens + (now - when) * ENCODES_PER_S)
        ok = tokens >= 1.0
        self._bucket[camera] = (tokens - 1.0 if ok else tokens, now)
        return ok

    def _answer(self, camera: str, seq: int) -> None:
        held = self.kept.get(camera, {}).get(seq)
        body = {"v": FULL_VERSION, "kind": "full", "camera": camera, "frame_seq": seq, "jpeg": None,
                "shape": None, "reason": None}
        if held is None:
            body["reason"] = "no longer held: the line ran ahead of the screen"
            self.counts["not_kept"] += 1
        elif not self._allowed(camera):
            body["reason"] = f"not encoded: over {ENCODES_PER_S:g} full frames a second for this camera"
            self.counts["rate_limited"] += 1
        else:
            frame, pixel_format = held
            ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])   # BGR8 or Mono8
            if ok:
                body["jpeg"], body["shape"] = jpeg.tobytes(), list(frame.shape[:2])
            else:
                body["reason"] = f"could not encode a {pixel_format} frame of shape {frame.shape}"
        try:
            self.pub.send_multipart([f"full/{camera}".encode(), msgpack.packb(body, use_bin_type=True)],
                                    flags=zmq.NOBLOCK)
            self.counts["sent"] += 1
        except zmq.Again:
            self.counts["dropped"] += 1

    def close(self) -> None:
        self.pub.close(linger=0)
        self.requests.close(linger=0)
        self._forget_all()
