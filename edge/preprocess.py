"""Frame -> model input, shared by training, calibration and the edge.

One function turns a uint8 camera frame into the float tensor a model sees, so
that a model is scored at the line exactly as it was trained (the TensorRT
samples' rule: one preprocessing module for calibrator and inference).
numpy + OpenCV only: this module runs on the line machine.
"""
from __future__ import annotations

import cv2
import numpy as np

# INTER_AREA is the right filter for downscaling camera frames (no aliasing);
# for the rare upscale it behaves like bilinear.
RESIZE_INTERPOLATION = cv2.INTER_AREA


class PreprocessError(ValueError):
    """A frame that cannot be turned into model input (shape, dtype, channels)."""


def to_model_input(frame: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Resize a uint8 frame to ``size`` x ``size`` and scale it to float32 [0, 1].

    ``frame`` is HxW (mono) or HxWxC with C == ``channels`` (colour in RGB order).
    Returns a CxHxW float32 array. Channel counts are never converted silently:
    a colour frame for a mono model is an error, not a guess.
    """
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        got = getattr(frame, "dtype", type(frame).__name__)
        raise PreprocessError(f"frame must be a uint8 numpy array, got {got}")
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3 or frame.shape[0] == 0 or frame.shape[1] == 0:
        raise PreprocessError(f"frame must be HxW or HxWxC, got shape {frame.shape}")
    if frame.shape[2] != channels:
        raise PreprocessError(
            f"frame has {frame.shape[2]} channel(s) but the model expects {channels}")
    resized = cv2.resize(frame, (size, size), interpolation=RESIZE_INTERPOLATION)
    if resized.ndim == 2:  # cv2 drops a trailing channel axis of length 1
        resized = resized[:, :, None]
    return np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)
