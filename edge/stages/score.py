"""Score stage: uint8 batches -> the engine (edge.backends, TensorRT or ONNX Runtime) -> scored batches.

Every wake-up takes all queued batches and runs them in chunks of the engine's
max batch. In drop mode only the newest ``max_batch`` frames are scored when it
falls behind (the older ones counted as dropped): a slow engine shows fewer
frames, never older ones. Rejects and events pass through in order.
"""
from __future__ import annotations

import time

import numpy as np
import zmq

from edge.backends import BackendError, open_backend
from edge.config import PipelineConfig
from edge.preprocess import to_engine_input
from edge.stages.base import Stage
from edge.wire import MessageError, check_items, make_socket, pack

RECV_HWM = 4
SEND_HWM = 8


class ScoreStage(Stage):
    name = "score"

    def __init__(self, cfg: PipelineConfig) -> None:
        super().__init__(cfg)
        self.backend = open_backend(cfg.engine)
        self.max_batch = min(int(cfg.max_batch or self.backend.max_batch), self.backend.max_batch)
        self.inp = make_socket(self.ctx, zmq.PULL, hwm=RECV_HWM)
        self.bind(self.inp, cfg.batches_addr)
        self.out = make_socket(self.ctx, zmq.PUSH, hwm=SEND_HWM)
        self.connect(self.out, cfg.scored_addr)
        self.eos_seen = 0

    def collect(self, messages: list) -> tuple[list, list, list, list]:
        items, pixels, rejects, controls = [], [], [], []
        for header, arrays in messages:
            kind = header["kind"]
            try:
                if kind == "batch":
                    batch_items = check_items(header.get("items"))
                    batch_rejects = check_items(header.get("rejects"))
                    if len(arrays) != 1 or arrays[0].shape[0] != len(batch_items) or \
                            tuple(arrays[0].shape[1:]) != self.backend.input_shape or arrays[0].dtype != np.uint8:
                        raise MessageError(f"batch pixels {arrays[0].shape if arrays else None} do not fit "
                                           f"{len(batch_items)} x {self.backend.input_shape} uint8")
                    items += batch_items
                    pixels += list(arrays[0])
                    rejects += batch_rejects
                elif kind in ("event", "eos"):
                    controls.append(header)
                else:
                    raise MessageError(f"unexpected {kind} message")
            except MessageError as e:
                self.malformed(e)
        return items, pixels, rejects, controls

    def handle(self, messages: list) -> None:
        items, pixels, rejects, controls = self.collect(messages)
        for item in items:
            self.metrics.inc("frames_in", item["camera"])
        if not self.cfg.no_drop and len(items) > self.max_batch:
            for item in items[:-self.max_batch]:
                self.metrics.inc("dropped", item["camera"])
            items, pixels = items[-self.max_batch:], pixels[-self.max_batch:]
        if rejects:
            self.send_control(self.out, {"kind": "scored", "items": [], "rejects": rejects})
        for start in range(0, len(items), self.max_batch):
            self.score(items[start:start + self.max_batch], pixels[start:start + self.max_batch])
        for header in controls:
            if header["kind"] == "eos":
                self.eos_seen += 1
            else:
                self.send_control(self.out, header)

    def score(self, items: list, pixels: list) -> None:
        inputs = np.stack(pixels)
        t0 = time.perf_counter()
        try:
            out = self.backend.infer(to_engine_input(inputs))
        except BackendError as e:  # the engine failed on this batch: NotDecidable, not silence
            reason = f"engine error: {e}"
            self.metrics.inc("engine_errors")
            self.send_control(self.out, {"kind": "scored", "items": [],
                                         "rejects": [{**i, "reason": reason} for i in items]})
            return
        infer_ms = (time.perf_counter() - t0) * 1e3
        self.metrics.observe("infer_ms", infer_ms)
        score = np.ascontiguousarray(out["score"], dtype=np.float32).reshape(len(items))
        heatmap = np.ascontiguousarray(out["anomaly_map"], dtype=np.float32)
        frames = pack({"kind": "scored", "items": items, "rejects": [], "infer_ms": infer_ms},
                      inputs, score, heatmap)
        # Scored frames are never dropped here: the engine's work is done, and the alert stage
        # is cheap; wait (bounded by the supervisor) rather than lose a verdict.
        self.send(self.out, frames, blocking=True)
        for item in items:
            self.metrics.inc("frames_out", item["camera"])

    def run(self) -> None:
        self.report(force=True, ready=True)
        try:
            while self.eos_seen < 1 and not self.orphaned() and not self.stopping:
                messages = self.receive_all(self.inp, timeout_ms=100, limit=64)
                if messages:
                    self.handle(messages)
                self.report()
            self.end_stream(self.out)
        finally:
            self.close()


def run(cfg: PipelineConfig) -> None:
    stage = ScoreStage(cfg)
    stage.install_signal_handlers()
    stage.run()
