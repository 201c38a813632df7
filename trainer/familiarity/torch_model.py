"""The familiarity member: nearest normal patch features (arXiv 2310.00797's familiarity
score; PatchCore's memory bank, Roth et al. CVPR 2022).

For each patch feature f of a test image, its familiarity distance is the Euclidean
distance to the nearest feature m of the memory bank M (patch features of good
training images, subsampled by ``coreset.k_center_greedy``):

    d(f) = min_{m in M} || f - m ||_2,   computed as  |f|^2 - 2 f.m + |m|^2

by one MatMul and a ReduceMin, so that the graph exports to ONNX and TensorRT (no
``cdist``); the bank is a buffer and becomes an initializer of the graph.

* pixel map: the patch distances (stride 8) resized bilinearly to the input, then a
  Gaussian blur of sigma 4 px (PatchCore, Sec. 3.3);
* image score: the mean of the ``top_patches`` largest patch distances (default 8; 1 is
  PatchCore's s*, the largest, without its re-weighting). A part is as bad as its worst few
  patches: one patch's distance is noisy, and a defect covers several patches. On ELPV and
  KolektorSDD the mean of 8 scored higher than the largest, alone and in the hybrid
  (docs/familiarity.md, "Image score"); checkpoints from before keep the largest.

``scores_from_maps`` takes the backbone's stage maps computed elsewhere, so that the hybrid runs the backbone
once for every member that shares it (trainer/hybrid/torch_model.py).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from trainer.familiarity.patch_features import DEFAULT_STAGES, PatchFeatureExtractor
from trainer.lamp.anomaly_map import AnomalyMapConfig, AnomalyMapGenerator


class FamiliarityOutput(NamedTuple):
    score: torch.Tensor        # (B,) mean of the largest patch distances to the nearest good patches
    anomaly_map: torch.Tensor  # (B, 1, H, W) blurred patch distances at input resolution


class PatchKnnFamiliarity(nn.Module):
    """Input: (B, in_channels, H, W) in [0, 1]."""

    def __init__(self, in_channels: int = 1, bank_size: int = 1, stages: tuple[int, ...] = DEFAULT_STAGES,
                 pool_size: int = 3, blur_sigma: float = 4.0, standardize: bool = False,
                 backbone: str = "lite0", top_patches: int = 8) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        if top_patches < 1:
            raise ValueError(f"top_patches must be >= 1 (1: the largest patch distance), got {top_patches}")
        self.in_channels, self.top_patches = in_channels, top_patches
        self.features = PatchFeatureExtractor(tuple(stages), pool_size, standardize, backbone)
        self.register_buffer("memory_bank", torch.zeros(bank_size, self.features.dim))
        self.blur = AnomalyMapGenerator(AnomalyMapConfig(blur_sigma=blur_sigma, pooling="max"))

    def set_memory_bank(self, bank: torch.Tensor) -> None:
        if bank.ndim != 2 or bank.shape[1] != self.features.dim:
            raise ValueError(f"memory bank must be (N, {self.features.dim}), got {tuple(bank.shape)}")
        self.memory_bank = bank.detach().float().contiguous()

    def patch_distances(self, images: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
        """(B, 1, h, w) distance of each patch to its nearest bank feature. ``eps`` > 0 (added under the
        square root) keeps the gradient finite where a patch equals a bank feature (flat regions do), for
        gradient-based explanations (bench/ens_probe.py); scoring and export use 0."""
        return self._distances(self.features(images), eps)

    def _distances(self, f: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
        b, d, h, w = f.shape
        flat = f.permute(0, 2, 3, 1).reshape(b, h * w, d)
        bank = self.memory_bank
        d2 = (flat * flat).sum(-1, keepdim=True) - 2 * flat @ bank.T + (bank * bank).sum(-1)
        d2 = d2.amin(dim=-1).clamp_min(0)
        return (d2 + eps if eps else d2).sqrt().reshape(b, 1, h, w)

    def scores_from_features(self, features: torch.Tensor, size) -> FamiliarityOutput:
        """``features``: this member's ``self.features(images)``; ``size``: the images' (H, W)."""
        dist = self._distances(features)
        flat = dist.flatten(1)
        score = flat.topk(min(self.top_patches, flat.shape[1]), dim=1).values.mean(dim=1)  # 1: the largest
        heatmap = self.blur.blur(F.interpolate(dist, size=size, mode="bilinear", align_corners=False))
        return FamiliarityOutput(score=score, anomaly_map=heatmap)

    def scores_from_maps(self, maps: list[torch.Tensor], size) -> FamiliarityOutput:
        """``maps``: this member's ``self.features.stage_maps(images)`` (computed once by the hybrid)."""
        return self.scores_from_features(self.features.combine(maps), size)

    def forward(self, images: torch.Tensor) -> FamiliarityOutput:
        return self.scores_from_features(self.features(images), images.shape[-2:])
