"""ONNX Runtime backend: the CPU path everywhere (and CI), CUDA where onnxruntime-gpu is installed."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edge.backends import BackendError, check_batch


class OnnxRuntimeBackend:
    def __init__(self, path: Path, manifest: dict, providers: list[str] | None = None) -> None:
        import onnxruntime as ort
        available = ort.get_available_providers()
        wanted = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            options = ort.SessionOptions()
            # ONNX Runtime's worker threads spin between calls by default. At camera pace that
            # burnt ~45 CPU ms per frame doing nothing, and under load it stole the cores the
            # other stages need (docs/benchmarks.md, pipeline): the edge turns it off.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            before = thread_ids()
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=wanted)
        except Exception as e:  # onnxruntime raises its own exception types for a bad file
            raise BackendError(f"{path} is not a loadable ONNX model: {e}") from e
        self.manifest = manifest
        spec = manifest["input"]
        self.input_name = spec["name"]
        self.input_shape = tuple(spec["shape"][1:])
        self.max_batch = int(spec["max_batch"])
        self.output_names = list(manifest["outputs"])
        got_in = [i.name for i in self.session.get_inputs()]
        got_out = [o.name for o in self.session.get_outputs()]
        if got_in != [self.input_name] or got_out != self.output_names:
            raise BackendError(f"{path} has inputs {got_in} and outputs {got_out}, its manifest says "
                               f"[{self.input_name}] and {self.output_names}: re-export the model")
        self.providers = self.session.get_providers()
        self.caller_cpus = cpus_left_to_caller(before)
        self._last_end = self._last_call_s = 0.0

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        x = check_batch(batch, self.input_shape, self.max_batch)
        start = time.perf_counter()
        # Only an engine that rested at least as long as its last call keeps its caller off the
        # workers' cores: on a busy machine (8 cameras) a caller held to one core waits behind
        # whatever else runs there (docs/benchmarks.md, pipeline_reading, session 20).
        rested = start - self._last_end >= self._last_call_s
        with caller_kept_to(self.caller_cpus if rested else None):
            out = self.session.run(self.output_names, {self.input_name: x})
        self._last_end = time.perf_counter()
        self._last_call_s = self._last_end - start
        return dict(zip(self.output_names, out))


# ONNX Runtime at its default thread count pins each intra-op worker to one core and leaves the
# calling thread, which does a share of every parallel loop, free to run anywhere. In a busy
# process the kernel sometimes runs the caller on a worker's core: the worker then waits for
# that core while another idles, and the call takes the two shares one after the other
# (perf sched in docs/benchmarks.md, pipeline_reading, session 20: ~1 such wait per paced call
# inside edge-run, 3 in a whole bare run). So the thread that calls the engine keeps to the
# cores no worker is pinned to, which is the layout ONNX Runtime's pinning assumes, for the call
# only: a thread left pinned would hand its mask to every thread and process it starts later.

def thread_ids() -> set[int]:
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:   # not Linux: nothing is pinned
        return set()


def cpus_left_to_caller(before: set[int]) -> set[int] | None:
    """The cores left to the calling thread once the threads started since ``before`` (ONNX
    Runtime's workers) took theirs; None when none of them is pinned or no core would be left."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    allowed = os.sched_getaffinity(0)
    taken: set[int] = set()
    for tid in thread_ids() - before:
        try:
            cpus = os.sched_getaffinity(tid)
        except OSError:   # the thread already ended
            continue
        if cpus < allowed:
            taken |= cpus
    left = allowed - taken
    return left if taken and left else None


@contextmanager
def caller_kept_to(cpus: set[int] | None):
    """Run the block with the calling thread on ``cpus`` (within its own mask), then put its mask back."""
    own = os.sched_getaffinity(0) if cpus is not None else None
    keep = cpus & own if own else None
    pinned = bool(keep) and keep != own and set_thread_affinity(keep)
    try:
        yield
    finally:
        if pinned:
            set_thread_affinity(own)


def set_thread_affinity(cpus: set[int]) -> bool:
    try:
        os.sched_setaffinity(0, cpus)   # 0: the calling thread only, on Linux
        return True
    except OSError:   # a container's cpuset changed under us: run unpinned rather than fail
        return False
