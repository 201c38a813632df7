"""Pseudo defects for the two-head scorer: SaliencyCut and the DRA-style CutPaste baseline.

SaliencyCut (Ye et al., arXiv 2306.08366; Pattern Recognition 153, 2024), as
its public code behaves (the paper's method text was not retrievable here):

1. saliency of an image = the input gradient of the training loss,
   S = sqrt(mean over channels of (dL/dx)^2);
2. smoothed: adaptive average pooling to a ``grid`` x ``grid`` map (18 at
   448 px), upsampled by a transposed convolution with a quadratic B-spline
   kernel (stride = image size // grid), resized to the image, and min-max
   scaled to [0, 1] per image;
3. cut and paste: for each pseudo-defect candidate p a random good donor d of
   the batch is drawn, M = [S_d > 0.4], and the new image is M * x_p + (1 - M) * x_d:
   the donor keeps everything except its own salient region, filled with the
   candidate's pixels at the same place. No rectangle, no translation.

CutPaste (Li et al., CVPR 2021), the plain cut/paste that DRA's pseudo
anomalies use: a random rectangle of the image (area 2-15%, aspect ratio
log-uniform in [0.3, 3.3]) is pasted at another random place of the same image.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-20


def bspline_kernel(spacing: int, order: int = 2) -> torch.Tensor:
    """(1, 1, K, K) uniform B-spline kernel of ``order`` with knot spacing ``spacing``.

    A box of width s convolved with itself ``order`` times (full convolution) is
    the B-spline of that order: K = (order + 1) * (s - 1) + 1, i.e. 3s - 2 for the
    quadratic. Each convolution is divided by s*s, so the kernel sums to s*s:
    a transposed convolution with stride s then turns a constant grid into the
    same constant (every output pixel gathers one tap per phase, s*s phases).
    """
    if spacing < 1 or order < 0:
        raise ValueError(f"spacing must be >= 1 and order >= 0, got {spacing}, {order}")
    box = torch.ones(1, 1, spacing, spacing)
    kernel = box
    for _ in range(order):
        kernel = F.conv2d(kernel, box, padding=spacing - 1) / (spacing * spacing)
    return kernel


def smooth_saliency(grad: torch.Tensor, grid: int = 18, order: int = 2) -> torch.Tensor:
    """Input gradients (B, C, H, W) -> smoothed saliency (B, 1, H, W) in [0, 1]."""
    b, _, h, w = grad.shape
    s = grad.detach().pow(2).mean(dim=1, keepdim=True).sqrt()
    pooled = F.adaptive_avg_pool2d(s, grid)
    spacing = max(1, min(h, w) // grid)
    kernel = bspline_kernel(spacing, order).to(grad.dtype)
    up = F.conv_transpose2d(pooled, kernel, stride=spacing, padding=(kernel.shape[-1] - 1) // 2)
    up = F.interpolate(up, size=(h, w), mode="bilinear", align_corners=False)
    flat = up.view(b, -1)
    lo, hi = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return ((flat - lo + EPS) / (hi - lo + EPS)).clamp(0, 1).view(b, 1, h, w)


def saliency_cut(images: torch.Tensor, saliency: torch.Tensor, candidates: torch.Tensor, donors: torch.Tensor,
                 threshold: float = 0.4) -> tuple[torch.Tensor, torch.Tensor]:
    """New images (P, C, H, W) and masks (P, 1, H, W): the donor with its salient region
    (saliency > threshold) replaced by the candidate's pixels at the same place."""
    masks = saliency[donors] > threshold
    return torch.where(masks, images[candidates], images[donors]), masks


def pick_donors(is_normal: torch.Tensor, candidates: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random good batch item per candidate, never the candidate itself when another exists."""
    normals = torch.nonzero(is_normal).squeeze(1)
    if len(normals) == 0:
        raise ValueError("no good image in the batch to donate a background for SaliencyCut")
    donors = []
    for c in candidates.tolist():
        pool = normals[normals != c] if len(normals) > 1 else normals
        donors.append(pool[torch.randint(len(pool), (1,), generator=generator)].item())
    return torch.tensor(donors, dtype=torch.long)


def _rectangle(h: int, w: int, g: torch.Generator) -> tuple[int, int]:
    area = (0.02 + 0.13 * torch.rand(1, generator=g).item()) * h * w
    aspect = math.exp(math.log(0.3) + (math.log(3.3) - math.log(0.3)) * torch.rand(1, generator=g).item())
    rh = min(h - 1, max(1, round(math.sqrt(area / aspect))))
    rw = min(w - 1, max(1, round(math.sqrt(area * aspect))))
    return rh, rw


def cut_paste(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One rectangle per image pasted at another place of the same image.
    Returns the new images (P, C, H, W) and masks of the pasted rectangles (P, 1, H, W)."""
    p, _, h, w = images.shape
    out = images.clone()
    masks = torch.zeros(p, 1, h, w, dtype=torch.bool)
    for i in range(p):
        rh, rw = _rectangle(h, w, generator)
        sy, sx, dy, dx = (torch.randint(n, (1,), generator=generator).item()
                          for n in (h - rh + 1, w - rw + 1, h - rh + 1, w - rw + 1))
        if (dy, dx) == (sy, sx):  # the rectangle must move: shift along the freer axis
            if w - rw > 0:
                dx = (dx + max(1, rw // 2)) % (w - rw + 1)
            else:
                dy = (dy + max(1, rh // 2)) % (h - rh + 1)
        out[i, :, dy:dy + rh, dx:dx + rw] = images[i, :, sy:sy + rh, sx:sx + rw]
        masks[i, :, dy:dy + rh, dx:dx + rw] = True
    return out, masks
