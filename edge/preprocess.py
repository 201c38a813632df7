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


def to_engine_input(pixels: np.ndarray) -> np.ndarray:
    """uint8 model pixels (B, C, H, W) -> the float32 [0, 1] batch the engine takes. The score
    stage and calibration both call this, so a threshold is fitted on the very numbers the
    line computes."""
    return pixels.astype(np.float32) * np.float32(1 / 255)


# Camera pixel formats (GenICam PFNC names) -> the conversion to each model colour order.
_CONVERSIONS = {
    ("BGR8", "RGB"): cv2.COLOR_BGR2RGB, ("BGR8", "GRAY"): cv2.COLOR_BGR2GRAY,
    ("Mono8", "RGB"): cv2.COLOR_GRAY2RGB, ("Mono8", "GRAY"): None,
}


def frame_to_model_pixels(frame: np.ndarray, pixel_format: str, size: int, color_order: str,
                          roi: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A camera frame -> uint8 (C, size, size) in the model's colour order: ROI crop, colour
    conversion, INTER_AREA resize. ``to_model_input`` of the result / 255 is what the model
    saw in training, so the pipeline sends 1 byte per pixel and scales just before the engine."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        raise PreprocessError(f"frame must be uint8, got {getattr(frame, 'dtype', type(frame).__name__)}")
    if (pixel_format, color_order) not in _CONVERSIONS:
        raise PreprocessError(f"cannot turn {pixel_format} frames into {color_order} model input")
    want_ndim = 3 if pixel_format == "BGR8" else 2
    if frame.ndim != want_ndim or (want_ndim == 3 and frame.shape[2] != 3) or 0 in frame.shape:
        raise PreprocessError(f"a {pixel_format} frame cannot have shape {frame.shape}")
    if roi is not None:
        x, y, w, h = roi
        if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > frame.shape[1] or y + h > frame.shape[0]:
            raise PreprocessError(f"ROI {roi} lies outside the {frame.shape[1]}x{frame.shape[0]} frame")
        frame = frame[y:y + h, x:x + w]
    code = _CONVERSIONS[(pixel_format, color_order)]
    # Convert, then resize: the order training used (read_image converts, to_model_input resizes).
    out = cv2.cvtColor(frame, code) if code is not None else frame
    out = cv2.resize(out, (size, size), interpolation=RESIZE_INTERPOLATION)
    if out.ndim == 2:
        out = out[None]
    else:
        out = out.transpose(2, 0, 1)
    return np.ascontiguousarray(out)
