"""Preprocess stage: frame messages -> model-size uint8 batches across cameras.

Per frame: take the pixels (shared-memory ring or inline), crop the camera's ROI,
convert colour and resize to the manifest's input (edge.preprocess), 1 byte per
pixel; the score stage scales to [0, 1] right before the engine. Frames that
cannot be used (bad shape, ROI outside, ring gone) become ``rejects``: they travel
on to the alert stage and come out as NotDecidable verdicts, never silently.

Backlog: every wake-up takes all queued frames. In drop mode a camera keeps only
its newest ``max_batch`` frames (older ones counted as dropped); batches go out
without waiting for the score stage, and a full score queue counts as drops.
"""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import zmq

from edge.config import PipelineConfig
from edge.frame_ring import FrameRing, RingError
from edge.manifest import load_manifest
from edge.preprocess import PreprocessError, frame_to_model_pixels
from edge.stages.base import Stage, log
from edge.view.full_frames import FullFrameKeeper
from edge.wire import MessageError, field, make_socket, pack

RECV_HWM = 64          # ring headers (ipc://: capture on this host)
# Over tcp:// (capture on another host, --frames-inline) and inproc:// (threads mode) frames come inline: a
# queue of whole frames (edge/stages/capture.py INLINE_SEND_HWM; over inproc libzmq adds both sides' HWMs).
INLINE_RECV_HWM = 4
SEND_HWM = 2


def source_roi(header: dict) -> tuple[int, int, int, int] | None:
    """The ROI a frame's source names (``--source NAME=SRC@x,y,w,h``, or a camera added through the
    camera API): capture puts it in the header; MessageError for one that is not x, y >= 0, w, h > 0."""
    roi = header.get("roi")
    if roi is None:
        return None
    if not (isinstance(roi, list) and len(roi) == 4 and all(isinstance(v, int) and not isinstance(v, bool)
                                                             for v in roi)
            and roi[0] >= 0 and roi[1] >= 0 and roi[2] > 0 and roi[3] > 0):
        raise MessageError(f"bad roi {str(roi)[:40]} in a frame header")
    return tuple(roi)


class PreprocessStage(Stage):
    name = "preprocess"

    def __init__(self, cfg: PipelineConfig, ctx: zmq.Context | None = None, on_ready=None) -> None:
        super().__init__(cfg, ctx, on_ready)
        manifest = load_manifest(cfg.engine, verify_checksum=False)  # the score stage verifies the engine
        spec = manifest["input"]
        self.size, self.channels = int(spec["preprocess"]["size"]), int(spec["preprocess"]["channels"])
        self.color_order = spec["preprocess"]["color_order"]
        self.max_batch = min(int(cfg.max_batch or spec["max_batch"]), int(spec["max_batch"]))
        self.rois = {cam: tuple(int(v) for v in roi) for cam, roi in cfg.rois.items()}
        self.rings: dict[str, FrameRing] = {}
        self.ring_of_camera: dict[str, str] = {}   # camera -> the ring path its latest frame came in
        self.warned_conversion: set[tuple[str, str]] = set()
        self.inp = make_socket(self.ctx, zmq.PULL, hwm=INLINE_RECV_HWM
                               if cfg.frames_addr.startswith(("inproc://", "tcp://")) else RECV_HWM)
        self.bind(self.inp, cfg.frames_addr)
        self.out = make_socket(self.ctx, zmq.PUSH, hwm=SEND_HWM)
        self.connect(self.out, cfg.batches_addr)
        self.eos_seen = 0
        # the operator's screen asks for the full frames of rejects (edge/view/full_frames.py); off without a view
        self.full = FullFrameKeeper(self.ctx, cfg.full_frames_addr, cfg.full_requests_addr) \
            if cfg.full_frames_addr else None

    # -- one frame ----------------------------------------------------------------------------------
    def pixels(self, header: dict, arrays: list) -> tuple[np.ndarray | None, tuple | None]:
        """The frame's pixels as a view (inline array or ring slot) and the ring slot to release."""
        shape = tuple(int(n) for n in field(header, "shape", list))
        if arrays:
            if len(arrays) != 1 or arrays[0].shape != shape:
                raise MessageError(f"inline frame does not match its header shape {shape}")
            return arrays[0], None
        path, slot, gen = field(header, "ring", str), field(header, "slot", int), field(header, "gen", int)
        ring = self.rings.get(path)
        if ring is None:
            ring = self.rings[path] = FrameRing.attach(path)
        camera = field(header, "camera", str)
        old = self.ring_of_camera.get(camera)
        if old != path:
            # One capture process sends a camera's frames in order on one socket: once a frame of
            # its new ring arrives, no frame of the old one is still to come. Unmap it.
            self.ring_of_camera[camera] = path
            if old is not None and old in self.rings:
                self.rings.pop(old).close()
        return ring.view(slot, gen, shape), (ring, slot, gen)

    def prepare(self, header: dict, arrays: list) -> tuple[dict, np.ndarray | None, str | None]:
        """(item, model pixels or None, reason it cannot be used)."""
        camera, seq = field(header, "camera", str), field(header, "seq", int)
        item = {"camera": camera, "seq": seq, "mono": float(field(header, "mono", (int, float))),
                "wall": float(field(header, "wall", (int, float))), "roi": source_roi(header) or self.rois.get(camera),
                "part_id": field(header, "part_id", (str, type(None)))}   # travels on to the alert
        self.metrics.observe("age_preprocess_ms", (time.monotonic() - item["mono"]) * 1e3)
        pixel_format = field(header, "pixel_format", str)
        try:
            frame, ring_slot = self.pixels(header, arrays)
        except RingError as e:
            return item, None, f"frame not readable: {e}"
        if frame is None:  # overwritten before we got to it: the capture stage counted that drop
            self.metrics.inc("stale", camera)
            return item, None, None
        try:
            if (pixel_format, self.color_order) not in self.warned_conversion and \
                    (pixel_format == "BGR8") != (self.color_order == "RGB"):
                self.warned_conversion.add((pixel_format, self.color_order))
                log.warning("camera %s sends %s frames; converting them to the model's %s",
                            camera, pixel_format, self.color_order)
            pixels = frame_to_model_pixels(frame, pixel_format, self.size, self.color_order, item["roi"])
            if self.full is not None:   # copied before the slot is released
                self.full.keep(camera, seq, frame, pixel_format)
        except PreprocessError as e:
            return item, None, str(e)
        finally:
            if ring_slot is not None:
                ring, slot, gen = ring_slot
                valid = ring.still_valid(slot, gen)
                ring.release(slot, gen)
        if ring_slot is not None and not valid:  # seqlock: overwritten while we read it
            self.metrics.inc("stale", camera)
            if self.full is not None:
                self.full.forget(camera, seq)
            return item, None, None
        item["frame_shape"] = list(frame.shape[:2])
        return item, pixels, None

    # -- the loop -----------------------------------------------------------------------------------
    def handle(self, messages: list) -> None:
        items, pixels, rejects, controls = [], [], [], []
        for header, arrays in messages:
            kind = header["kind"]
            if kind == "frame":
                try:
                    item, px, reason = self.prepare(header, arrays)
                except MessageError as e:
                    self.malformed(e)
                    continue
                self.metrics.inc("frames_in", item["camera"])
                if px is not None:
                    items.append(item)
                    pixels.append(px)
                elif reason is not None:
                    self.metrics.inc("rejected", item["camera"])
                    rejects.append({**item, "reason": reason})
            elif kind in ("event", "eos"):
                controls.append(header)
            else:
                self.malformed(MessageError(f"unexpected {kind} message"))
        if not self.cfg.no_drop:
            items, pixels = self.keep_newest(items, pixels)
        for start in range(0, max(len(items), 1), self.max_batch):
            chunk = slice(start, start + self.max_batch)
            self.send_batch(items[chunk], pixels[chunk], rejects if start == 0 else [])
        for header in controls:
            if header["kind"] == "eos":
                self.eos_seen += 1
            else:
                self.send_control(self.out, header)

    def keep_newest(self, items: list, pixels: list) -> tuple[list, list]:
        per_camera = defaultdict(int)
        keep = [False] * len(items)
        for i in range(len(items) - 1, -1, -1):
            per_camera[items[i]["camera"]] += 1
            keep[i] = per_camera[items[i]["camera"]] <= self.max_batch
        for item, k in zip(items, keep):
            if not k:
                self.metrics.inc("dropped", item["camera"])
        return [x for x, k in zip(items, keep) if k], [p for p, k in zip(pixels, keep) if k]

    def send_batch(self, items: list, pixels: list, rejects: list) -> None:
        if not items and not rejects:
            return
        batch = np.stack(pixels) if pixels else np.zeros((0, self.channels, self.size, self.size), np.uint8)
        frames = pack({"kind": "batch", "items": items, "rejects": rejects}, batch)
        if self.send(self.out, frames, blocking=self.cfg.no_drop or not items):
            for item in items:
                self.metrics.inc("frames_out", item["camera"])
        else:
            for item in items:
                self.metrics.inc("dropped", item["camera"])
            if rejects:  # rejects must reach the alert stage: resend them alone, waiting for room
                self.send_batch([], [], rejects)

    def run(self) -> None:
        self.report(force=True, ready=True)
        try:
            while self.eos_seen < self.cfg.upstreams and not self.orphaned():
                if self.stopping:
                    break
                messages = self.receive_all(self.inp, timeout_ms=100, limit=4 * RECV_HWM)
                t0 = time.perf_counter()
                if messages:
                    self.handle(messages)
                    self.metrics.observe("preprocess_ms", (time.perf_counter() - t0) * 1e3)
                if self.full is not None:
                    self.full.serve()
                self.report()
            self.end_stream(self.out)
        finally:
            for ring in self.rings.values():
                ring.close()
            if self.full is not None:
                self.full.close()
            self.close()


def run(cfg: PipelineConfig) -> None:
    stage = PreprocessStage(cfg)
    stage.install_signal_handlers()
    stage.run()
