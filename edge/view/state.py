"""What the operator's page shows, kept in the supervisor: latest wins, bounded memory.

Fed from two things the pipeline already has: the alert stage's preview records
(edge/view/preview.py: the newest frame of each camera with its heatmap, every NotOK and
NotDecidable alert) and the stage metrics the supervisor collects for --metrics-port
(verdict counters, capture->alert latency, drops). :class:`ViewFeed` is the thread that reads
the preview socket; :class:`ViewState` turns both into one JSON document (cached per version)
and the JPEGs it names. Readers (the HTTP threads) wait on :meth:`ViewState.wait_newer`: each
gets the newest state when it is ready for one, never a queue, so a slow browser skips
states instead of holding them.
"""
from __future__ import annotations

import collections
import json
import logging
import threading
import time
from typing import Callable

import zmq

from edge.view.full_frames import decode_full, encode_request
from edge.view.preview import decode_record

log = logging.getLogger("edge.view")

REJECTS_KEPT = 24          # the reject strip: the newest NotOK parts, with their pictures
FPS_WINDOW_S = 3.0         # frames/s per camera over this much of the recent past
METRICS_EVERY_S = 0.5
STALE_AFTER_S = 3.0        # a camera with no judged frame for this long (and not blind) shows "no frames"


def _boxes(regions: list, roi, frame_shape) -> list[list[float]]:
    """Defect regions (camera-frame pixels) as fractions [x, y, w, h] of the thumbnail, which shows the
    ROI (or the whole frame) at the model's size."""
    if not regions or not frame_shape:
        return []
    fh, fw = frame_shape
    x0, y0, cw, ch = roi or (0, 0, fw, fh)
    out = []
    for r in regions:
        try:
            x, y, w, h = (float(v) for v in r["box"])
        except (KeyError, TypeError, ValueError):
            continue
        fx, fy = min(max((x - x0) / cw, 0.0), 1.0), min(max((y - y0) / ch, 0.0), 1.0)
        out.append([round(fx, 4), round(fy, 4), round(min(w / cw, 1.0 - fx), 4), round(min(h / ch, 1.0 - fy), 4)])
    return out


def _per_camera(snap: dict | None, name: str) -> dict[str, int]:
    return {c: n for c, n in (snap or {}).get("counters", {}).get(name, {}).items() if c}


class ViewState:
    """``cameras()``: the cameras running now, as dicts with ``id``, ``source`` (shown form), ``kind``,
    ``live``; ``snapshots()``: the supervisor's merged stage snapshots (what /metrics serves)."""

    def __init__(self, cameras: Callable[[], list[dict]], snapshots: Callable[[], dict], node: str = "",
                 clock=time.monotonic, full_frames: bool = False) -> None:
        self.cameras, self.snapshots, self.node, self.clock = cameras, snapshots, node, clock
        self.cond = threading.Condition()
        self.version = 0
        self.frames: dict[str, dict] = {}                # camera -> its newest judged frame (fields for the tile)
        self.images: dict[str, tuple[int, bytes]] = {}   # camera -> (image version, JPEG)
        self.last_frame: dict[str, float] = {}           # camera -> clock() when its newest frame arrived
        self.blind: dict[str, dict] = {}                 # camera -> since (wall), reason
        self.rejects: collections.deque[dict] = collections.deque(maxlen=REJECTS_KEPT)
        self.reject_images: dict[int, bytes] = {}
        self.metrics: dict[str, dict] = {}
        self._totals: dict[str, collections.deque] = {}
        self._image_seq = 0
        self._reject_key = 0
        self._payload: tuple[int, bytes] = (-1, b"")
        self.rejects_skipped: dict[str, int] = {}   # camera -> NotOK / NotDecidable frames the preview left out
        self.records = self.malformed = 0
        self.full_frames = full_frames              # a local preprocess stage keeps full frames for rejects
        self.full_images: dict[int, bytes] = {}     # reject key -> the camera frame, JPEG
        self.full_missing = 0                       # rejects whose full frame was not to be had

    # -- inputs (the feed thread) --------------------------------------------------------------------
    def _changed(self) -> None:
        self.version += 1
        self.cond.notify_all()

    def on_record(self, rec: dict) -> None:
        camera, now = rec["camera"], self.clock()
        with self.cond:
            self.records += 1
            self.rejects_skipped[camera] = int(rec.get("rejects_skipped") or 0)
            if rec.get("frame_seq", -1) >= 0:
                tile = self.frames.setdefault(camera, {})
                tile.update({k: rec.get(k) for k in ("verdict", "score", "threshold", "normalised_score",
                                                     "model_version", "frame_seq", "part_id", "capture_wall",
                                                     "latency_ms", "reason")})
                if rec.get("jpeg"):
                    self._image_seq += 1
                    self.images[camera] = (self._image_seq, bytes(rec["jpeg"]))
                    tile["boxes"] = _boxes(rec.get("regions") or [], rec.get("roi"), rec.get("frame_shape"))
                self.last_frame[camera] = now
                spell = self.blind.get(camera)
                if spell is not None and (rec.get("capture_wall") or 0) > spell["since"]:
                    del self.blind[camera]   # frames flow again (captured after the camera went blind)
            elif (rec.get("reason") or "").startswith("camera blind"):
                spell = self.blind.setdefault(camera, {"since": rec.get("capture_wall") or time.time()})
                spell["reason"] = rec["reason"][len("camera blind:"):].strip() or "no frames"
            if rec.get("kind") == "alert" and rec.get("verdict") == "NotOK":
                self._reject_key += 1
                key = self._reject_key
                if len(self.rejects) == self.rejects.maxlen:
                    self.reject_images.pop(self.rejects[0]["key"], None)
                    self.full_images.pop(self.rejects[0]["key"], None)
                self.rejects.append({
                    "key": key, "camera": camera, "alert_seq": rec.get("alert_seq"), "frame_seq": rec.get("frame_seq"),
                    "time": rec.get("published_wall") or rec.get("capture_wall"), "part_id": rec.get("part_id"),
                    "score": rec.get("score"), "threshold": rec.get("threshold"),
                    "normalised_score": rec.get("normalised_score"), "model_version": rec.get("model_version"),
                    "boxes": _boxes(rec.get("regions") or [], rec.get("roi"), rec.get("frame_shape")),
                    "img": f"/reject/{key}.jpg" if rec.get("jpeg") else None,
                    # the camera's whole frame, once preprocess sends it (on_full); the regions on it
                    "full": None, "full_note": "asked for" if self.full_frames else "not available (no local preprocess stage)",
                    "full_boxes": _boxes(rec.get("regions") or [], None, rec.get("frame_shape")),
                    "frame_shape": rec.get("frame_shape")})
                if rec.get("jpeg"):
                    self.reject_images[key] = bytes(rec["jpeg"])
            self._changed()

    def on_full(self, rec: dict) -> None:
        """The preprocess stage's answer for a reject's full frame (edge/view/full_frames.py)."""
        with self.cond:
            for r in self.rejects:
                if r["camera"] == rec["camera"] and r["frame_seq"] == rec["frame_seq"] and r["full"] is None:
                    if rec.get("jpeg"):
                        self.full_images[r["key"]] = bytes(rec["jpeg"])
                        r["full"] = f"/reject/{r['key']}/full.jpg"
                        shape = rec.get("shape") or r.get("frame_shape") or ["?", "?"]
                        r["full_note"] = f"camera frame {shape[1]}x{shape[0]}"
                    else:
                        r["full_note"] = str(rec.get("reason") or "not available")
                        self.full_missing += 1
                    self._changed()
                    return

    def on_snapshots(self, snaps: dict) -> None:
        """Counters, frames/s, p99 and drops per camera from the stages' latest snapshots."""
        alert = snaps.get("alert")
        verdicts = {v: _per_camera(alert, f"verdict_{v}") for v in ("OK", "NotOK", "NotDecidable")}
        drops: dict[str, int] = {}
        for snap in snaps.values():
            for cam, n in _per_camera(snap, "dropped").items():
                drops[cam] = drops.get(cam, 0) + n
        latency = (alert or {}).get("latency_ms", {}).get("latency_ms", {})
        now = self.clock()
        out = {}
        for cam in set(drops) | {c for d in verdicts.values() for c in d} | set(self.metrics):
            counts = {v: verdicts[v].get(cam, 0) for v in verdicts}
            hist = self._totals.setdefault(cam, collections.deque())
            hist.append((now, sum(counts.values())))
            while len(hist) > 2 and now - hist[1][0] >= FPS_WINDOW_S:
                hist.popleft()
            (t0, n0), (t1, n1) = hist[0], hist[-1]
            fps = (n1 - n0) / (t1 - t0) if t1 > t0 and n1 >= n0 else None
            q = latency.get(cam) or {}
            out[cam] = {"counts": counts, "fps": None if fps is None else round(fps, 1),
                        "p99_ms": None if q.get("p99") is None else round(q["p99"], 1), "dropped": drops.get(cam, 0)}
        with self.cond:
            if out != self.metrics:
                self.metrics = out
                self._changed()

    # -- outputs (the HTTP threads) ------------------------------------------------------------------
    def payload(self) -> tuple[int, bytes]:
        """(version, the page's JSON document) for the current state; built once per version."""
        with self.cond:
            if self._payload[0] == self.version:
                return self._payload
            version, now = self.version, self.clock()
            tiles = []
            for cam in self.cameras():
                cid = cam["id"]
                frame = dict(self.frames.get(cid, {}))
                spell = self.blind.get(cid)
                if spell is not None:
                    state = "blind"
                elif cid not in self.last_frame:
                    state = "waiting"
                elif now - self.last_frame[cid] > STALE_AFTER_S:
                    state = "stale"
                else:
                    state = "live"
                img = self.images.get(cid)
                tiles.append({**cam, **frame, "state": state,
                              "blind_reason": spell and spell.get("reason"), "blind_since": spell and spell["since"],
                              "frame_age_s": round(now - self.last_frame[cid], 1) if cid in self.last_frame else None,
                              "img": f"/frame/{cid}.jpg?v={img[0]}" if img else None,
                              **self.metrics.get(cid, {"counts": {"OK": 0, "NotOK": 0, "NotDecidable": 0},
                                                       "fps": None, "p99_ms": None, "dropped": 0})})
            doc = {"version": version, "node": self.node, "time": time.time(), "cameras": tiles,
                   "rejects": list(reversed(self.rejects)), "rejects_skipped": sum(self.rejects_skipped.values())}
            self._payload = (version, json.dumps(doc, separators=(",", ":"), allow_nan=False).encode())
            return self._payload

    def wait_newer(self, version: int, timeout: float) -> tuple[int, bytes] | None:
        """The state once it is newer than ``version`` (None after ``timeout`` s without a change)."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.version != version, timeout):
                return None
        return self.payload()

    def frame_jpeg(self, camera: str) -> bytes | None:
        with self.cond:
            img = self.images.get(camera)
        return img[1] if img else None

    def reject_jpeg(self, key: int) -> bytes | None:
        with self.cond:
            return self.reject_images.get(key)

    def reject_full_jpeg(self, key: int) -> bytes | None:
        with self.cond:
            return self.full_images.get(key)

    def tick(self) -> None:
        """Time passes: "live" turns "stale" without any record, so the page must hear about it."""
        with self.cond:
            self._changed()


class ViewFeed:
    """The thread that reads the alert stage's preview socket into a :class:`ViewState` and refreshes
    the metrics twice a second. Owns its SUB socket (ZeroMQ sockets stay in one thread)."""

    def __init__(self, ctx: zmq.Context, preview_addr: str, state: ViewState, full_frames_addr: str = "",
                 full_requests_addr: str = "") -> None:
        self.ctx, self.addr, self.state = ctx, preview_addr, state
        self.full_addr, self.request_addr = full_frames_addr, full_requests_addr
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edge-view-feed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 64)
        sub.setsockopt(zmq.MAXMSGSIZE, 2 << 20)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(self.addr)
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        full = ask = None
        if self.full_addr and self.request_addr:   # full frames of rejects from the preprocess stage
            full = self.ctx.socket(zmq.SUB)
            full.setsockopt(zmq.LINGER, 0)
            full.setsockopt(zmq.RCVHWM, 8)
            full.setsockopt(zmq.MAXMSGSIZE, 64 << 20)
            full.setsockopt(zmq.SUBSCRIBE, b"")
            full.connect(self.full_addr)
            ask = self.ctx.socket(zmq.PUSH)
            ask.setsockopt(zmq.LINGER, 0)
            ask.setsockopt(zmq.SNDHWM, 64)
            ask.connect(self.request_addr)
            poller.register(full, zmq.POLLIN)
        next_metrics = 0.0
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(100))
                if sub in ready:
                    for _ in range(256):
                        try:
                            frames = sub.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        try:
                            rec = decode_record(frames)
                            self.state.on_record(rec)
                        except (ValueError, KeyError, TypeError) as e:
                            self.state.malformed += 1
                            if self.state.malformed <= 5:
                                log.warning("view: skipped a bad preview record: %s", e)
                            continue
                        if ask is not None and rec.get("kind") == "alert" and rec.get("verdict") == "NotOK" \
                                and isinstance(rec.get("frame_seq"), int) and rec["frame_seq"] >= 0:
                            try:   # never waits: a stalled preprocess stage must not stall the view
                                ask.send(encode_request(rec["camera"], rec["frame_seq"]), zmq.NOBLOCK)
                            except zmq.Again:
                                pass
                if full is not None and full in ready:
                    for _ in range(16):
                        try:
                            frames = full.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        try:
                            self.state.on_full(decode_full(frames))
                        except (ValueError, KeyError, TypeError) as e:
                            self.state.malformed += 1
                            if self.state.malformed <= 5:
                                log.warning("view: skipped a bad full-frame record: %s", e)
                now = time.monotonic()
                if now >= next_metrics:
                    next_metrics = now + METRICS_EVERY_S
                    try:
                        self.state.on_snapshots(self.state.snapshots())
                    except RuntimeError:   # the supervisor changed a dict while we read it: next time
                        pass
                    self.state.tick()
        finally:
            sub.close(linger=0)
            for sock in (full, ask):
                if sock is not None:
                    sock.close(linger=0)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
