"""Score stage: uint8 batches -> the engine (edge.backends, TensorRT or ONNX Runtime) -> scored batches.

Frames wait in a deadline batcher (edge.batcher): an engine call gets ``max_batch``
frames, or fewer once the oldest has waited ``max_queue_delay_ms`` (or at once when
the stream is sparse), so a saturated stream runs full batches and a camera's pace
is not held back. In drop mode only the newest ``max_batch`` frames are kept when
it falls behind (the older ones counted as dropped): a slow engine shows fewer
frames, never older ones. Rejects pass through at once; an event or end-of-stream
first sends the frames that arrived before it, so the order is kept.
"""
from __future__ import annotations

import math
import time

import numpy as np
import zmq

from edge.backends import BackendError, open_backend
from edge.batcher import DeadlineBatcher
from edge.config import PipelineConfig
from edge.preprocess import to_engine_input
from edge.stages.base import Stage
from edge.wire import MessageError, check_items, make_socket, pack

RECV_HWM = 4
SEND_HWM = 8


class ScoreStage(Stage):
    name = "score"

    def __init__(self, cfg: PipelineConfig, ctx: zmq.Context | None = None, on_ready=None) -> None:
        super().__init__(cfg, ctx, on_ready)
        self.backend = open_backend(cfg.engine)
        self.max_batch = min(int(cfg.max_batch or self.backend.max_batch), self.backend.max_batch)
        self.inp = make_socket(self.ctx, zmq.PULL, hwm=RECV_HWM)
        self.bind(self.inp, cfg.batches_addr)
        self.out = make_socket(self.ctx, zmq.PUSH, hwm=SEND_HWM)
        self.connect(self.out, cfg.scored_addr)
        self.eos_seen = 0
        self.batcher = DeadlineBatcher(self.max_batch, cfg.max_queue_delay_ms / 1e3)
        self.engine_ran = False   # the last loop called the engine: frames found queued now waited behind it

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

    def handle(self, messages: list, queued: bool) -> None:
        """Messages in arrival order: frames into the batcher, rejects on at once, and before an
        event or end-of-stream every frame that came before it. ``queued``: these messages were
        already waiting when the stage came back from the engine."""
        for message in messages:
            items, pixels, rejects, controls = self.collect([message])
            now = time.monotonic()
            for item in items:
                self.metrics.inc("frames_in", item["camera"])
                self.metrics.observe("age_score_ms", (now - item["mono"]) * 1e3)
            if rejects:
                self.send_control(self.out, {"kind": "scored", "items": [], "rejects": rejects})
            self.batcher.add(items, pixels, now, queued=queued)
            for header in controls:
                self.score_due(flush=True)
                if header["kind"] == "eos":
                    self.eos_seen += 1
                else:
                    self.send_control(self.out, header)
        if not self.cfg.no_drop:   # behind: score the newest max_batch frames, drop the older ones
            for item in self.batcher.drop_oldest(self.max_batch):
                self.metrics.inc("dropped", item["camera"])

    def score_due(self, flush: bool = False) -> None:
        """Run every batch that is due (all pending frames with ``flush``)."""
        now = time.monotonic()
        since = self.batcher.oldest_since
        for items, pixels in self.batcher.take(now, flush=flush):
            if since is not None:   # how long the batch's oldest frame waited for company
                self.metrics.observe("batch_wait_ms", (now - since) * 1e3)
                since = None
            self.score(items, pixels)
            self.engine_ran = True

    def score(self, items: list, pixels: list) -> None:
        inputs = np.stack(pixels)
        self.observe_ages("age_engine_start_ms", items)
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
        self.observe_ages("age_engine_end_ms", items)
        score = np.ascontiguousarray(out["score"], dtype=np.float32).reshape(len(items))
        heatmap = np.ascontiguousarray(out["anomaly_map"], dtype=np.float32)
        frames = pack({"kind": "scored", "items": items, "rejects": [], "infer_ms": infer_ms},
                      inputs, score, heatmap)
        # Scored frames are never dropped here: the engine's work is done, and the alert stage
        # is cheap; wait (bounded by the supervisor) rather than lose a verdict.
        self.send(self.out, frames, blocking=True)
        for item in items:
            self.metrics.inc("frames_out", item["camera"])

    def observe_ages(self, name: str, items: list) -> None:
        """Each frame's age since capture at this point (where the capture -> alert time goes)."""
        now = time.monotonic()
        for item in items:
            self.metrics.observe(name, (now - item["mono"]) * 1e3)

    def run(self) -> None:
        self.report(force=True, ready=True)
        try:
            while self.eos_seen < 1 and not self.orphaned() and not self.stopping:
                wait = self.batcher.wait_s(time.monotonic())
                timeout_ms = 100 if wait is None else math.ceil(wait * 1e3)
                # frames already waiting after an engine call arrived while it ran: a dense stream
                queued = self.engine_ran and bool(self.inp.poll(0))
                self.engine_ran = False
                messages = self.receive_all(self.inp, timeout_ms=timeout_ms, limit=64)
                if messages:
                    self.handle(messages, queued=queued)
                self.score_due()
                self.report()
            if not self.orphaned():   # stopped (end-of-stream or SIGTERM): what waits is scored first
                self.score_due(flush=True)
            self.end_stream(self.out)
        finally:
            self.close()


def run(cfg: PipelineConfig) -> None:
    stage = ScoreStage(cfg)
    stage.install_signal_handlers()
    stage.run()
