"""Scoring backends behind one small interface, chosen by the engine file's suffix.

    backend = open_backend(Path("model.onnx"))   # or model.plan
    outputs = backend.infer(batch)               # {"score": (B,), "anomaly_map": (B, 1, H, W), ...}

Heavy runtimes (onnxruntime, tensorrt, CUDA bindings) are imported lazily inside
their backend, so every other part of the edge imports on any machine.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from edge.manifest import load_manifest


class BackendError(RuntimeError):
    """The engine cannot be loaded or run (clear message, never a crash of the pipeline)."""


class Backend(Protocol):
    manifest: dict
    input_name: str
    input_shape: tuple[int, int, int]   # (C, H, W) of one image
    max_batch: int
    output_names: list[str]

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...


def _onnx(path: Path, manifest: dict) -> Backend:
    from edge.backends.onnxruntime_backend import OnnxRuntimeBackend
    return OnnxRuntimeBackend(path, manifest)


def _tensorrt(path: Path, manifest: dict) -> Backend:
    # The module imports tensorrt and cuda-python only when a backend is opened, so a missing
    # TensorRT is a BackendError saying what to install, not an ImportError at start-up.
    from edge.backends.tensorrt_backend import TensorRTBackend
    return TensorRTBackend(path, manifest)


BACKENDS = {".onnx": _onnx, ".plan": _tensorrt}


def open_backend(engine: Path) -> Backend:
    engine = Path(engine)
    opener = BACKENDS.get(engine.suffix)
    if opener is None:
        raise BackendError(f"no backend for {engine.name}: engines end in {' or '.join(BACKENDS)}")
    return opener(engine, load_manifest(engine))


def check_batch(batch: np.ndarray, shape: tuple[int, int, int], max_batch: int) -> np.ndarray:
    """Refuse, with the expected form, anything but float32 (B, C, H, W) in the engine's batch range."""
    if not isinstance(batch, np.ndarray) or batch.dtype != np.float32:
        raise BackendError(f"input must be a float32 array, got {getattr(batch, 'dtype', type(batch).__name__)}")
    if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(shape) or not 1 <= batch.shape[0] <= max_batch:
        raise BackendError(f"input must be (1..{max_batch}, {', '.join(map(str, shape))}), got {batch.shape}")
    return np.ascontiguousarray(batch)
