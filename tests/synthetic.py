"""Synthetic data sets for tests: small, deterministic (by seed), fast (< 0.2 s for the defaults).

Good images are a smooth random texture (low-frequency blobs + slightly tilted stripes
+ mild noise); defective images are good-like images with a bright or dark blob
("blob") or a thin line ("scratch"), and a pixel mask (255 inside the defect).

    from tests.synthetic import make_mvtec_tree, make_folders_tree, make_elpv_tree
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

__all__ = ["DEFECT_TYPES", "good_image", "defective_image", "write_image",
           "make_mvtec_tree", "make_folders_tree", "make_elpv_tree"]

DEFECT_TYPES = ("blob", "scratch")


def good_image(rng: np.random.Generator, size: int = 64, channels: int = 1) -> np.ndarray:
    """A textured good image, uint8 size x size x channels (RGB when channels == 3)."""
    low = rng.normal(0.0, 1.0, (6, 6)).astype(np.float32)
    blobs = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(-0.15, 0.15)
    period = size / 6.0
    stripes = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + rng.uniform(0, 2 * np.pi))
    base = 128.0 + 12.0 * blobs + 25.0 * stripes
    if channels == 1:
        img = base[:, :, None] + rng.normal(0.0, 3.0, (size, size, 1))
    elif channels == 3:
        tint = np.array([1.05, 1.0, 0.9], dtype=np.float32)
        img = base[:, :, None] * tint + rng.normal(0.0, 3.0, (size, size, 3))
    else:
        raise ValueError("channels must be 1 or 3")
    return np.clip(img, 0, 255).astype(np.uint8)


def defective_image(rng: np.random.Generator, kind: str, size: int = 64,
                    channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A good-like image with one synthetic defect, and its mask (uint8 H x W, 255 = defect)."""
    img = good_image(rng, size, channels)
    mask = np.zeros((size, size), np.uint8)
    margin = max(2, size // 8)
    if kind == "blob":
        c = (int(rng.integers(margin, size - margin)), int(rng.integers(margin, size - margin)))
        axes = (int(rng.integers(max(2, size // 16), max(3, size // 6))),
                int(rng.integers(max(2, size // 16), max(3, size // 6))))
        cv2.ellipse(mask, c, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    elif kind == "scratch":
        p1 = (int(rng.integers(margin, size - margin)), int(rng.integers(margin, size - margin)))
        ang = rng.uniform(0, np.pi)
        length = rng.uniform(size / 4, size / 2)
        p2 = (int(np.clip(p1[0] + length * np.cos(ang), 0, size - 1)),
              int(np.clip(p1[1] + length * np.sin(ang), 0, size - 1)))
        cv2.line(mask, p1, p2, 255, max(1, size // 32))
    else:
        raise ValueError(f"unknown defect kind {kind!r}; use one of {DEFECT_TYPES}")
    delta = 90.0 if rng.random() < 0.5 else -90.0
    out = img.astype(np.float32)
    out[mask > 0] += delta
    return np.clip(out, 0, 255).astype(np.uint8), mask


def write_image(path: Path, img: np.ndarray) -> Path:
    """Write an RGB / gray uint8 array (H x W or H x W x C) with OpenCV (colour stored as BGR)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if not cv2.imwrite(str(path), img):
        raise OSError(f"cannot write {path}")
    return path


def _defects(rng, root: Path, img_dir, mask_dir, n_defect, size, channels, mask_name):
    for i in range(n_defect):
        kind = DEFECT_TYPES[i % len(DEFECT_TYPES)]
        stem = f"{i // len(DEFECT_TYPES):03d}"
        img, mask = defective_image(rng, kind, size, channels)
        write_image(img_dir(kind) / f"{stem}.png", img)
        if mask_dir is not None:
            write_image(mask_dir(kind) / mask_name(stem), mask)


def make_mvtec_tree(root, n_train_good: int = 12, n_test_good: int = 6, n_defect: int = 6,
                    size: int = 64, channels: int = 1, seed: int = 0, masks: bool = True) -> Path:
    """MVTec-AD style tree: train/good, test/good, test/{blob,scratch}, ground_truth/<defect>/<stem>_mask.png.

    ``n_defect`` defective images in total, alternating blob / scratch.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(n_train_good):
        write_image(root / "train" / "good" / f"{i:03d}.png", good_image(rng, size, channels))
    for i in range(n_test_good):
        write_image(root / "test" / "good" / f"{i:03d}.png", good_image(rng, size, channels))
    _defects(rng, root, lambda k: root / "test" / k,
             (lambda k: root / "ground_truth" / k) if masks else None,
             n_defect, size, channels, lambda stem: f"{stem}_mask.png")
    return root


def make_folders_tree(root, n_good: int = 16, n_defect: int = 6, size: int = 64, channels: int = 1,
                      seed: int = 0, masks: bool = True) -> Path:
    """"folders" layout: good/, {blob,scratch}/ and masks/<defect>/<stem>_mask.png."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(n_good):
        write_image(root / "good" / f"{i:03d}.png", good_image(rng, size, channels))
    _defects(rng, root, lambda k: root / k, (lambda k: root / "masks" / k) if masks else None,
             n_defect, size, channels, lambda stem: f"{stem}_mask.png")
    return root


def make_elpv_tree(root, n_good: int = 8, n_defect: int = 4, n_uncertain: int = 3, size: int = 32,
                   seed: int = 0) -> Path:
    """A tiny fake ELPV tree: images/cellNNNN.png (gray) + labels.csv with grades 0, 1, 1/3, 2/3."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    grades = (["0.0"] * n_good + ["1.0"] * n_defect
              + ["0.3333333333333333" if i % 2 == 0 else "0.6666666666666666" for i in range(n_uncertain)])
    order = rng.permutation(len(grades))  # interleave grades like the real labels.csv
    rows = []
    for n, gi in enumerate(order, 1):
        g = grades[gi]
        name = f"images/cell{n:04d}.png"
        if g == "1.0":
            img, _ = defective_image(rng, DEFECT_TYPES[n % 2], size, 1)
        else:
            img = good_image(rng, size, 1)
        write_image(root / name, img)
        rows.append(f"{name}  {g:<20s}{'mono' if n % 2 else 'poly'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def export_tiny_autoencoder(root: Path, run: Path, onnx: Path) -> None:
    """Train a 32 px LAMP autoencoder for one epoch on a generated tree and export it to ONNX
    (with its manifest): the smallest real model the deploy and edge tests can load."""
    from deploy.export import main as export
    from trainer.cli import main as train
    data = make_mvtec_tree(root / "parts", n_train_good=12, n_test_good=4, n_defect=4, size=32, seed=1)
    assert train(["ae", "--data", str(data), "--size", "32", "--depth", "2", "--base-channels", "4",
                  "--latent-channels", "4", "--epochs", "1", "--quiet", "--out", str(run)]) == 0
    assert export(["--run", str(run), "--out", str(onnx)]) == 0
