"""Scores of held-out images from the engine that ships, through the edge's own backend.

``edge.backends.open_backend(engine).infer`` is what the score stage calls, on the input
``edge.preprocess.to_engine_input`` makes: a threshold fitted on these scores is fitted on
the numbers the line computes (DESIGN.md rule 5), for any engine the edge can run (``.onnx``
with ONNX Runtime, ``.plan`` with TensorRT on a GPU). No torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.backends import open_backend
from edge.manifest import sha256_file
from edge.preprocess import to_engine_input


@dataclass(frozen=True)
class EngineScores:
    scores: np.ndarray   # (N,) raw image scores
    maps: np.ndarray     # (N, H, W) pixel heatmaps at model resolution


def engine_precision(manifest: dict) -> str:
    """fp32, fp16 or int8: a TensorRT build says so; an ONNX graph is fp32 unless its
    manifest's build section (a converted graph) says otherwise."""
    return str((manifest["engine"].get("build") or {}).get("precision", "fp32"))


def engine_record(engine: Path, manifest: dict) -> dict:
    """What calibration.json keeps of the engine it was fitted on (edge-run compares it)."""
    return {"file": Path(engine).name, "sha256": sha256_file(engine), "format": manifest["engine"].get("format"),
            "precision": engine_precision(manifest), "model_version": manifest.get("model_version")}


class EngineScorer:
    """One open backend plus its input geometry, scoring uint8 model pixels in engine batches."""

    def __init__(self, engine: Path) -> None:
        self.engine = Path(engine)
        self.backend = open_backend(self.engine)
        self.manifest = self.backend.manifest
        self.channels, self.size = int(self.backend.input_shape[0]), int(self.backend.input_shape[1])

    def record(self) -> dict:
        return engine_record(self.engine, self.manifest)

    def score(self, pixels: np.ndarray) -> EngineScores:
        scores, maps = [], []
        for start in range(0, len(pixels), self.backend.max_batch):
            out = self.backend.infer(to_engine_input(pixels[start:start + self.backend.max_batch]))
            scores.append(np.asarray(out["score"], dtype=np.float64).reshape(-1))
            m = np.asarray(out["anomaly_map"], dtype=np.float32)
            maps.append(m.reshape(m.shape[0], *m.shape[-2:]))
        return EngineScores(np.concatenate(scores), np.concatenate(maps))
