"""Reconstruction residual -> pixel novelty map -> image score.

Metric: per-pixel squared error averaged over colour channels (L2), then a
Gaussian blur. The blur suppresses the one-pixel speckle an autoencoder leaves
on fine texture, so that a defect (a connected region) outranks noise; the same
role the Gaussian smoothing plays in anomalib's anomaly-map generators.

Image score: mean of the top ``topk_fraction`` of map values. The maximum alone
is one pixel's opinion and jumps with noise; the global mean dilutes a small
defect into the background. The top 1% of a 256x256 map is 655 pixels: about
a 26x26 patch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

POOLINGS = ("topk_mean", "max", "mean")


@dataclass(frozen=True)
class AnomalyMapConfig:
    blur_sigma: float = 4.0        # Gaussian sigma in pixels at model resolution; 0 disables
    pooling: str = "topk_mean"
    topk_fraction: float = 0.01    # for topk_mean

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose one of {', '.join(POOLINGS)}")
        if not 0 < self.topk_fraction <= 1:
            raise ValueError(f"topk_fraction must be in (0, 1], got {self.topk_fraction}")
        if self.blur_sigma < 0:
            raise ValueError(f"blur_sigma must be >= 0, got {self.blur_sigma}")


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian, truncated at 3 sigma (odd length)."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class AnomalyMapGenerator(nn.Module):
    def __init__(self, config: AnomalyMapConfig) -> None:
        super().__init__()
        self.config = config
        kernel = gaussian_kernel1d(config.blur_sigma) if config.blur_sigma > 0 else torch.ones(1)
        # derived from the config, so not saved in checkpoints
        self.register_buffer("kernel", kernel, persistent=False)

    def residual(self, image: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Unblurred per-pixel squared error, averaged over channels: (B, 1, H, W)."""
        return (image - reconstruction).pow(2).mean(dim=1, keepdim=True)

    def blur(self, m: torch.Tensor) -> torch.Tensor:
        if self.config.blur_sigma <= 0:
            return m
        r = self.kernel.numel() // 2
        # separable blur; reflect padding keeps borders from reading as dark (low error)
        m = F.conv2d(F.pad(m, (r, r, 0, 0), mode="reflect"), self.kernel.view(1, 1, 1, -1))
        return F.conv2d(F.pad(m, (0, 0, r, r), mode="reflect"), self.kernel.view(1, 1, -1, 1))

    def forward(self, image: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        return self.blur(self.residual(image, reconstruction))

    def pool(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        flat = anomaly_map.flatten(1)
        if self.config.pooling == "max":
            return flat.amax(dim=1)
        if self.config.pooling == "mean":
            return flat.mean(dim=1)
        k = max(1, round(self.config.topk_fraction * int(flat.shape[1])))  # a constant in the exported graph
        return flat.topk(k, dim=1).values.mean(dim=1)
