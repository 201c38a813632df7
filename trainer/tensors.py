"""Samples on disk -> float tensors at model resolution (through edge.preprocess)."""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from edge.preprocess import to_model_input
from trainer.data import Sample, read_image, read_mask


def load_images(samples: Sequence[Sample], size: int, channels: int) -> torch.Tensor:
    """(N, C, size, size) float32 in [0, 1]; the same preprocessing the edge runs."""
    out = np.empty((len(samples), channels, size, size), dtype=np.float32)
    for i, s in enumerate(samples):
        out[i] = to_model_input(read_image(s.path, channels), size, channels)
    return torch.from_numpy(out)


def load_masks(samples: Sequence[Sample], size: int, channels: int) -> np.ndarray | None:
    """(N, size, size) bool defect masks at model resolution, or None when a
    defective sample has no mask (pixel metrics then cannot be computed).
    Good samples without a mask get an all-false mask."""
    masks = np.zeros((len(samples), size, size), dtype=bool)
    for i, s in enumerate(samples):
        if s.mask_path is None:
            if s.label == 1:
                return None
            continue
        h, w = read_image(s.path, channels).shape[:2]
        m = read_mask(s.mask_path, (h, w), image_path=s.path).astype(np.uint8)
        # nearest keeps the mask binary; the maps are compared at model resolution
        masks[i] = cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST) > 0
    return masks
