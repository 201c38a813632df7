"""Pictures a person looks at: test images beside their anomaly heatmaps."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.overlay import heatmap_overlay


def overlay(image: np.ndarray, heatmap: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """image (C, H, W) in [0, 1], heatmap (H, W) -> BGR uint8 with the heatmap (JET) blended in:
    the edge's own blend (edge/overlay.py), so reports look like the operator's thumbnails."""
    return heatmap_overlay(image, heatmap, lo, hi)


def save_examples(path: Path, images: np.ndarray, maps: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                  per_class: int = 4) -> None:
    """A PNG grid: the highest- and lowest-scored good and defective test images, each as
    (image | heatmap overlay), captioned with label and score. One colour scale for all
    tiles (the 1st-99th percentile of the shown maps), so tiles compare."""
    order = np.argsort(-scores)
    picks = []
    for label in (1, 0):
        idx = [i for i in order if labels[i] == label]
        picks += idx[:per_class // 2] + idx[-(per_class - per_class // 2):] if len(idx) > per_class else idx
    if not picks:
        return
    lo, hi = np.percentile(maps[picks], [1, 99])
    tiles = []
    for i in picks:
        img = images[i]
        left = cv2.cvtColor((np.clip(img.mean(axis=0), 0, 1) * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
        tile = np.concatenate([left, overlay(img, maps[i], lo, hi)], axis=1)
        tile = cv2.resize(tile, (256, 128), interpolation=cv2.INTER_AREA)
        caption = f"{'DEFECT' if labels[i] else 'good'}  score {scores[i]:.3g}"
        cv2.rectangle(tile, (0, 0), (256, 16), (0, 0, 0), -1)
        cv2.putText(tile, caption, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    cols = 2
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.concatenate([np.concatenate(tiles[r:r + cols], axis=1) for r in range(0, len(tiles), cols)], axis=0)
    if not cv2.imwrite(str(path), grid):
        raise OSError(f"could not write {path}")
