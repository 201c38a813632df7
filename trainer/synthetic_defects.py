"""Synthetic defects for validation on good images only.

Choosing a training option needs a signal without real defects (PAPERS.md:
"choose by validation on good images only"). We paint simple, known
defects onto held-out good images: a blob that brightens or darkens an
elliptical region, or a thin scratch. Their AUROC against the untouched
images says how well a model flags a *novel* local change. It is a proxy,
not a measurement of real defects, and is reported as such.
"""
from __future__ import annotations

import cv2
import numpy as np


def add_synthetic_defect(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``image``: (C, H, W) float32 in [0, 1]. Returns (defective image, bool mask HxW)."""
    c, h, w = image.shape
    mask = np.zeros((h, w), dtype=np.uint8)
    center = (int(rng.integers(w // 8, w - w // 8)), int(rng.integers(h // 8, h - h // 8)))
    if rng.random() < 0.5:
        axes = (int(rng.integers(max(2, w // 32), max(3, w // 8))),
                int(rng.integers(max(2, h // 32), max(3, h // 8))))
        cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    else:
        length, angle = rng.uniform(0.15, 0.4) * w, rng.uniform(0, np.pi)
        dx, dy = int(length * np.cos(angle) / 2), int(length * np.sin(angle) / 2)
        cv2.line(mask, (center[0] - dx, center[1] - dy), (center[0] + dx, center[1] + dy), 1,
                 max(1, w // 64))
    m = mask.astype(bool)
    delta = rng.uniform(0.25, 0.5) * (1 if rng.random() < 0.5 else -1)
    out = image.copy()
    out[:, m] = np.clip(out[:, m] + delta, 0.0, 1.0)
    return out, m
