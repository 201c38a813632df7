"""Locally aware patch features from an ImageNet-pretrained EfficientNet-Lite (Lite0 by default).

Two stages of the backbone are taken, the last at stride 8 (Lite0: 40 channels) and the last
at stride 16 (Lite0: 112 channels): mid-level features, general enough to describe any
surface and fine enough to localise a crack; the deepest stages are biased to
ImageNet's classes (PatchCore, Roth et al. CVPR 2022, Sec. 3.1, takes ResNet's
layers 2 and 3 for the same reason). Each map is averaged over a 3x3 neighbourhood
(PatchCore's local aggregation, which makes a patch feature describe its
surroundings), the stride-16 map is resized bilinearly onto the stride-8 grid, and
the two are concatenated: (B, 152, H/8, W/8).

``standardize=True`` first sets each image to mean 0.5 and standard deviation 0.2 over all its
pixels (and channels): the brightness and contrast of one part, which vary with exposure and
with the part's batch, then do not count, only its pattern does. It is part of the graph, so the
edge needs no extra preprocessing (bench/frozen_head_demo.py measures what it does on the demo cells).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.backbones import EfficientNetLite, normalize_for_lite, to_three_channels

DEFAULT_STAGES = (2, 4)  # stride 8 and stride 16
STANDARD_MEAN, STANDARD_SD = 0.5, 0.2


def standardize_images(images: torch.Tensor) -> torch.Tensor:
    """Each image to mean 0.5, SD 0.2 over its pixels and channels; a flat image becomes 0.5."""
    centered = images - images.mean(dim=(1, 2, 3), keepdim=True)
    # a floor, not "+ eps": the ONNX exporter dropped a "+ 1e-8" and a flat frame (dead camera, lens cap)
    # became 0 / 0 = NaN in ONNX Runtime while torch gave 0.5 (tests/trainer/test_patch_head.py checks the graph)
    sd = (centered * centered).mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8).sqrt()
    return centered / sd * STANDARD_SD + STANDARD_MEAN


class PatchFeatureExtractor(nn.Module):
    def __init__(self, stages: tuple[int, ...] = DEFAULT_STAGES, pool_size: int = 3,
                 standardize: bool = False, backbone: str = "lite0") -> None:
        super().__init__()
        if not stages or sorted(set(stages)) != list(stages):
            raise ValueError(f"stages must be distinct and increasing, got {stages}")
        if pool_size < 1 or pool_size % 2 == 0:
            raise ValueError(f"pool_size must be odd and >= 1, got {pool_size}")
        self.stages, self.pool_size, self.standardize = tuple(stages), pool_size, bool(standardize)
        self.backbone = EfficientNetLite(backbone)
        self.dim = sum(self.backbone.stage_channels[s] for s in self.stages)

    def stage_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """[0, 1] images (B, 1|3, H, W) -> the raw maps of ``self.stages`` (members that re-train the
        deeper stages start from the frozen shallower ones; trainer/patchhead)."""
        if self.standardize:
            images = standardize_images(images)
        return self.backbone.features(normalize_for_lite(to_three_channels(images)), self.stages)

    def combine(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Stage maps -> patch features (B, D, h, w) on the finest stage's grid."""
        if self.pool_size > 1:
            p = self.pool_size
            # count_include_pad=False: border patches average their real neighbours only
            maps = [F.avg_pool2d(m, p, stride=1, padding=p // 2, count_include_pad=False) for m in maps]
        size = maps[0].shape[-2:]
        maps = [maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:]]
        return torch.cat(maps, dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (B, 1|3, H, W) -> patch features (B, D, h, w) on the finest stage's grid."""
        return self.combine(self.stage_maps(images))

    def sharing_key(self) -> tuple:
        """Two extractors with the same key and the same weights compute the same features."""
        return self.backbone.variant, self.stages, self.pool_size, self.standardize
