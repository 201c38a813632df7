"""Reading images and pixel masks for the data layer (numpy + OpenCV only).

Every bad-input problem raises :class:`ImageError` (a ``ValueError``) whose
message names the offending file and says what to do about it.  Nothing is
converted silently: a colour image is never turned into grayscale (or the other
way round), 16-bit data is never rescaled, an alpha channel is never dropped.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

__all__ = ["IMAGE_EXTENSIONS", "ImageError", "is_image_file", "read_image", "read_mask"]

#: File name extensions (lower case) treated as images everywhere in the data layer.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


class ImageError(ValueError):
    """A bad input of the data layer (unreadable image, wrong layout, ...).

    The message always names the file or folder concerned and says what to do.
    """


def is_image_file(path: str | os.PathLike) -> bool:
    """True when ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _imread(path: Path, what: str) -> np.ndarray:
    if not path.exists():
        raise ImageError(f"{what} {path} does not exist; check the path or remove the entry that names it")
    if not path.is_file():
        raise ImageError(f"{what} {path} is not a regular file")
    try:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # pragma: no cover - depends on the OpenCV build
        raise ImageError(
            f"{what} {path} cannot be decoded ({exc}); the file is corrupt or not an image: "
            "re-export it or remove it from the data set"
        ) from exc
    if img is None or img.size == 0:
        raise ImageError(
            f"{what} {path} cannot be decoded: the file is corrupt, truncated, empty or not really a "
            f"{path.suffix or 'image'} file; re-export it or remove it from the data set"
        )
    return img


def _bit_depth(dtype: np.dtype) -> str:
    dtype = np.dtype(dtype)
    kind = {"u": "unsigned int", "i": "signed int", "f": "float"}.get(dtype.kind, dtype.kind)
    return f"{dtype.itemsize * 8}-bit {kind} ({dtype.name})"


def read_image(path: str | os.PathLike, channels: int) -> np.ndarray:
    """Read an 8-bit image as a ``uint8`` array of shape ``H x W x channels``.

    ``channels`` is 1 (grayscale) or 3 (colour, returned in RGB order).  The file
    is read with ``cv2.imread(IMREAD_UNCHANGED)``; a file whose channel count
    differs from ``channels`` is an error (no silent gray<->colour conversion),
    as are 4-channel (alpha) images and anything that is not 8-bit.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (colour), got {channels!r}")
    path = Path(path)
    img = _imread(path, "image")

    if img.ndim == 2:
        n = 1
    elif img.ndim == 3:
        n = int(img.shape[2])
    else:  # pragma: no cover - imread never returns this for 2-D formats
        raise ImageError(f"image {path} has unsupported shape {img.shape}; save it as a 2-D 8-bit image")

    if img.dtype != np.uint8:
        raise ImageError(
            f"image {path} is {_bit_depth(img.dtype)}, not 8-bit; convert it to 8-bit "
            "(e.g. scale to 0..255 and save as uint8) before training, the data layer does not rescale"
        )
    if n == 4:
        raise ImageError(
            f"image {path} has 4 channels (colour + alpha); save it without the alpha channel "
            "(3-channel RGB, or 1-channel grayscale)"
        )
    if n not in (1, 3):
        raise ImageError(f"image {path} has {n} channels; only 1 (grayscale) or 3 (colour) are supported")
    if n != channels:
        kind = "grayscale" if n == 1 else "colour"
        raise ImageError(
            f"image {path} has {n} channel{'s' if n != 1 else ''} ({kind}) but {channels} were requested; "
            f"use --channels {n} (or convert every image of the data set to {channels} channel"
            f"{'s' if channels != 1 else ''}: images are never converted silently)"
        )

    if n == 1:
        out = img if img.ndim == 3 else img[:, :, None]
    else:
        out = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(out)


def read_mask(
    path: str | os.PathLike,
    shape_hw: Sequence[int],
    image_path: str | os.PathLike | None = None,
) -> np.ndarray:
    """Read a pixel mask as a ``bool`` array of shape ``H x W`` (nonzero = defect).

    ``shape_hw`` is the size of the image the mask belongs to (``(H, W)``; a longer
    shape such as ``image.shape`` is accepted and its first two entries used).  A
    mask of a different size is an error naming both sizes and, when
    ``image_path`` is given, both files.  Colour masks count a pixel as defective
    when any colour channel is nonzero (an alpha channel is ignored).
    """
    path = Path(path)
    if len(shape_hw) < 2:
        raise ValueError(f"shape_hw must be (H, W), got {tuple(shape_hw)!r}")
    h, w = int(shape_hw[0]), int(shape_hw[1])
    m = _imread(path, "mask")
    if m.ndim == 3:
        m = m[:, :, :3] if m.shape[2] == 4 else m
        mask = np.any(m != 0, axis=2)
    else:
        mask = m != 0
    mh, mw = mask.shape
    if (mh, mw) != (h, w):
        img_txt = f"its image {image_path}" if image_path is not None else "its image"
        raise ImageError(
            f"mask {path} is {mw}x{mh} (WxH) but {img_txt} is {w}x{h}; the mask must have exactly the "
            "image's size: re-export the mask (do not resize it) or fix the pairing"
        )
    return np.ascontiguousarray(mask)
