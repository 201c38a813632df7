"""One heatmap overlay for every picture of a verdict: the operator's alert thumbnail
(edge/stages/alert.py) and the engineer's reports (trainer/visualize.py, calibration plots)
blend the same way, so a defect looks the same on the line screen and in the report.
numpy + OpenCV only: runs on the line.
"""
from __future__ import annotations

import cv2
import numpy as np

HEATMAP_WEIGHT = 0.45   # the JET heatmap's share of each pixel; the image keeps the rest


def image_to_bgr(image: np.ndarray) -> np.ndarray:
    """(C, H, W) uint8 or float in [0, 1], C = 1 (gray) or 3 (RGB) -> BGR uint8 (H, W, 3)."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    img = img.transpose(1, 2, 0)
    return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.shape[2] == 1 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)


def heatmap_overlay(image: np.ndarray, heatmap: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The image with its heatmap blended in (JET colours, ``lo`` blue .. ``hi`` red), BGR uint8,
    at the image's size (the heatmap is resized to it)."""
    base = image_to_bgr(image)
    scaled = np.clip((np.asarray(heatmap, np.float32) - lo) / max(hi - lo, 1e-12), 0, 1)
    level = cv2.resize((scaled * 255).astype(np.uint8), base.shape[1::-1])
    colour = cv2.applyColorMap(level, cv2.COLORMAP_JET)
    return cv2.addWeighted(base, 1 - HEATMAP_WEIGHT, colour, HEATMAP_WEIGHT, 0)
