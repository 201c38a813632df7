"""Held-out images -> the uint8 model pixels the edge's score stage sees (numpy + OpenCV, no torch).

Calibration must judge an image exactly as the line will: the file is read as the data
layer reads it (``trainer.data.read_image``: no silent channel conversion), resized with the
edge's filter, and sent as uint8 (C, size, size): the score stage's input. The scaling to
[0, 1] happens in ``calibration.engine_scores``, with the score stage's own function.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from edge.preprocess import RESIZE_INTERPOLATION
from trainer.data import Sample, is_image_file, read_image


def model_pixels(samples: Sequence[Sample], size: int, channels: int) -> np.ndarray:
    """(N, C, size, size) uint8: each image read, resized like the edge resizes frames."""
    out = np.empty((len(samples), channels, size, size), dtype=np.uint8)
    for i, s in enumerate(samples):
        img = cv2.resize(read_image(s.path, channels), (size, size), interpolation=RESIZE_INTERPOLATION)
        out[i] = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
    return out


def folder_samples(folder: Path, label: int) -> list[Sample]:
    """Every image under ``folder`` (recursively, sorted), all with one label: ``--good DIR`` /
    ``--defective DIR`` are folders the operator filled, not a data set layout."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of images")
    paths = sorted(Path(root) / name for root, _, names in os.walk(folder) for name in names
                   if is_image_file(name) and not name.startswith("."))
    if not paths:
        raise FileNotFoundError(f"{folder} holds no images")
    kind = "good" if label == 0 else "defect"
    return [Sample(path=p.resolve(), label=label, defect_type=kind) for p in paths]
