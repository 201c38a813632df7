"""Pseudo defects for the two-head scorer: SaliencyCut and the DRA-style CutPaste baseline.

SaliencyCut (Ye et al., "SaliencyCut: Augmenting plausible anomalies for
anomaly detection", arXiv 2306.08366; Pattern Recognition 153, 2024), built on
DRA (Ding et al., "Catching both gray and black swans: open-set supervised
anomaly detection", CVPR 2022), as its public code behaves (the paper's method
text was not retrievable here):

1. saliency of an image = the input gradient of the training loss,
   S = sqrt(mean over channels of (dL/dx)^2);
2. smoothed: adaptive average pooling to a ``grid`` x ``grid`` map (18 at
   448 px), upsampled by a transposed convolution with a quadratic B-spline
   kernel (stride = image size // grid), resized (bilinear) to the image, and
   min-max scaled to [0, 1] per image, (S - min + eps) / (max - min + eps);
3. cut and paste: for each pseudo-defect candidate p a random good donor d of
   the batch is drawn, M = [S_d > 0.4], and the new image is M * x_p + (1 - M) * x_d:
   the donor keeps everything except its own salient region, filled with the
   candidate's pixels at the same place. No rectangle, no translation.

CutPaste (Li et al., "CutPaste: self-supervised learning for anomaly detection
and localization", CVPR 2021), the plain cut/paste that DRA's pseudo anomalies
use: a random rectangle of the image (area 2-15 %, aspect ratio w/h
log-uniform in [0.3, 3.3]) is pasted at another random place of the same image.

All functions are pure (inputs are never modified) and device-agnostic.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-20
AREA_FRACTION = (0.02, 0.15)
ASPECT_RATIO = (0.3, 3.3)


def bspline_kernel(spacing: int, order: int = 2) -> torch.Tensor:
    """(1, 1, K, K) float32 uniform B-spline kernel of ``order`` with knot spacing ``spacing``.

    Iterated mean filtering (https://en.wikipedia.org/wiki/B-spline: fast B-spline
    interpolation on a uniform grid): a box of width s convolved with itself
    ``order`` times (full convolution) is the B-spline of that order, so
    K = (order + 1) * (s - 1) + 1, i.e. 3s - 2 for the quadratic.

    Normalisation: the box ones(s, s) sums to s*s, and each step (full
    convolution with the box, divided by s*s) keeps the sum, so the kernel sums
    to s*s. Each of the s*s phase classes of taps (i mod s, j mod s) sums to 1
    (partition of unity), hence a transposed convolution with stride s maps a
    constant grid to the same constant away from the borders.

    The code SaliencyCut builds on pads step i by i*s rather than s - 1; that
    only adds symmetric rings of zeros around the same taps and, with the
    transposed convolution's padding (K - 1) // 2, gives identical upsampled
    maps. This is the trimmed kernel.
    """
    if spacing < 1 or order < 0:
        raise ValueError(f"spacing must be >= 1 and order >= 0, got {spacing}, {order}")
    box = torch.ones(1, 1, spacing, spacing)
    kernel = box
    for _ in range(order):
        kernel = F.conv2d(kernel, box, padding=spacing - 1) / (spacing * spacing)
    return kernel


def smooth_saliency(grad: torch.Tensor, grid: int = 18, order: int = 2) -> torch.Tensor:
    """Input gradients (B, C, H, W) -> smoothed saliency (B, 1, H, W) in [0, 1].

    Spacing (= transposed-conv stride) is min(H, W) // grid, at least 1. The
    per-image min-max uses eps in numerator and denominator as the reference
    code does: a map with no variation (e.g. an all-zero gradient) becomes all
    ones, i.e. fully salient.
    """
    if grad.dim() != 4:
        raise ValueError(f"grad must be (B, C, H, W), got shape {tuple(grad.shape)}")
    b, _, h, w = grad.shape
    s = grad.detach().pow(2).mean(dim=1, keepdim=True).sqrt()
    pooled = F.adaptive_avg_pool2d(s, grid)
    spacing = max(1, min(h, w) // grid)
    kernel = bspline_kernel(spacing, order).to(dtype=s.dtype, device=s.device)
    up = F.conv_transpose2d(pooled, kernel, stride=spacing, padding=(kernel.shape[-1] - 1) // 2)
    up = F.interpolate(up, size=(h, w), mode="bilinear", align_corners=False)
    flat = up.reshape(b, -1)
    lo, hi = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return ((flat - lo + EPS) / (hi - lo + EPS)).clamp(0, 1).view(b, 1, h, w)


def saliency_cut(images: torch.Tensor, saliency: torch.Tensor, candidates: torch.Tensor, donors: torch.Tensor,
                 threshold: float = 0.4) -> tuple[torch.Tensor, torch.Tensor]:
    """New images (P, C, H, W) and bool masks (P, 1, H, W): the donor with its salient region
    (saliency[donor] > threshold) replaced by the candidate's pixels at the same place."""
    if candidates.shape != donors.shape or candidates.dim() != 1:
        raise ValueError(f"candidates and donors must be 1-D of equal length, got "
                         f"{tuple(candidates.shape)} and {tuple(donors.shape)}")
    if saliency.shape[0] != images.shape[0] or saliency.shape[1] != 1 or saliency.shape[2:] != images.shape[2:]:
        raise ValueError(f"saliency must be (B, 1, H, W) for images {tuple(images.shape)}, "
                         f"got {tuple(saliency.shape)}")
    masks = saliency[donors] > threshold
    return torch.where(masks, images[candidates], images[donors]), masks


def pick_donors(is_normal: torch.Tensor, candidates: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random good batch item per candidate, never the candidate itself when another exists.

    Returns a LongTensor (P,) on ``candidates``' device; ValueError if no item may donate.
    """
    normals = torch.nonzero(is_normal.cpu()).squeeze(1)
    if len(normals) == 0:
        raise ValueError("no good image in the batch to donate a background for SaliencyCut")
    donors = []
    for c in candidates.tolist():
        pool = normals[normals != c] if len(normals) > 1 else normals
        donors.append(pool[torch.randint(len(pool), (1,), generator=generator)].item())
    return torch.tensor(donors, dtype=torch.long, device=candidates.device)


def _rectangle(h: int, w: int, g: torch.Generator) -> tuple[int, int]:
    """(rh, rw) of a CutPaste rectangle, each at most one less than the image side."""
    lo, hi = AREA_FRACTION
    area = (lo + (hi - lo) * torch.rand(1, generator=g).item()) * h * w
    la, lb = math.log(ASPECT_RATIO[0]), math.log(ASPECT_RATIO[1])
    aspect = math.exp(la + (lb - la) * torch.rand(1, generator=g).item())  # rw / rh
    rh = min(h - 1, max(1, round(math.sqrt(area / aspect))))
    rw = min(w - 1, max(1, round(math.sqrt(area * aspect))))
    return rh, rw


def _shift_off(d: int, rw: int, w: int) -> int:
    """A destination column != d for a rectangle of width rw < w: shift by about half
    the rectangle's width modulo the w - rw + 1 (>= 2) valid columns, never by 0."""
    n = w - rw + 1
    step = max(1, rw // 2) % n or 1
    return (d + step) % n


def cut_paste(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One rectangle per image pasted at another place of the same image.

    Returns the new images (P, C, H, W) and bool masks of the pasted rectangles
    (P, 1, H, W). Source and destination corners are drawn uniformly; if they
    coincide the destination is shifted sideways (``_shift_off``). Deterministic
    for a given generator state. Needs H, W >= 2.
    """
    p, _, h, w = images.shape
    if h < 2 or w < 2:
        raise ValueError(f"cut_paste needs images of at least 2 x 2 pixels, got {h} x {w}")
    out = images.clone()
    masks = torch.zeros(p, 1, h, w, dtype=torch.bool, device=images.device)
    for i in range(p):
        rh, rw = _rectangle(h, w, generator)
        sy, sx, dy, dx = (torch.randint(n, (1,), generator=generator).item()
                          for n in (h - rh + 1, w - rw + 1, h - rh + 1, w - rw + 1))
        if (dy, dx) == (sy, sx):  # the rectangle must move
            dx = _shift_off(dx, rw, w)
        out[i, :, dy:dy + rh, dx:dx + rw] = images[i, :, sy:sy + rh, sx:sx + rw]
        masks[i, :, dy:dy + rh, dx:dx + rw] = True
    return out, masks
