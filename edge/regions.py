"""Heatmap -> defect regions (boxes, areas) an operator or a PLC can act on.

numpy + OpenCV only: this runs on the line machine and in calibration.
"""
from __future__ import annotations

import cv2
import numpy as np


def find_regions(heatmap: np.ndarray, threshold: float, min_area: int = 1, max_regions: int = 16) -> list[dict]:
    """Connected regions (8-connectivity) of ``heatmap > threshold`` with at least ``min_area``
    pixels, largest peak first: ``{"box": [x, y, w, h], "area": pixels, "peak": max value}``
    in heatmap pixel coordinates. At most ``max_regions`` (a bounded message size on the wire)."""
    m = np.asarray(heatmap)
    if m.ndim != 2:
        raise ValueError(f"heatmap must be 2-D, got shape {m.shape}")
    mask = (m > threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    regions = []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area >= min_area:
            regions.append({"box": [x, y, w, h], "area": area, "peak": float(m[labels == i].max())})
    regions.sort(key=lambda r: -r["peak"])
    return regions[:max_regions]
