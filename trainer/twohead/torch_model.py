"""The two-head scorer (DRA, Ding et al. CVPR 2022; SaliencyCut, Ye et al. arXiv 2306.08366).

A ResNet-18 backbone feeds two heads at each input scale:

* the *normal head*: global average pool -> Linear(C, 256) -> ReLU -> Linear(256, 1) -> |.|,
  trained to score *normal* images high;
* the *anomaly head* with the *patch-wise residual module*: on the SxS feature
  map take four diagonal blocks of size S//2 + 1 at distinct offsets o1..o4 and
  form R = B4 - B3 + B2 - B1; then Conv3x3 + BN + ReLU -> Conv1x1 -> |.| gives a
  patch score map whose top 10% mean is the head's score, trained to score
  anomalies high.

Each head's score is averaged over the scales; the image score is
anomaly-head score - normal-head score.

Inference is deterministic: the reference code draws the four offsets at
random in every forward pass, at test time too, so its scores change run to
run. Here training draws them at random (a form of augmentation), and
evaluation averages the head over a fixed set: the four offsets evenly spread
over the valid range and their four cyclic shifts, so every block position
plays every role once.

The patch score maps also give a coarse heatmap: each residual patch's score is
projected back onto the four feature-map cells it was computed from, averaged
where patches overlap, then resized to the input. Diagonal blocks alone never
cover the off-diagonal corners of the map, so for the heatmap the head is also
applied to blocks at off-diagonal positions (row and column offsets from the
same evenly spread set, in every combination); the convolutions are
translation-invariant, so this is the same module at other positions. The
score uses the diagonal blocks only, as the papers define it.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from trainer.twohead.backbone import ResNet18Features

# ImageNet statistics (the papers' normalisation); grayscale uses their mean.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
N_BLOCKS = 4


class TwoHeadOutput(NamedTuple):
    score: torch.Tensor          # (B,) anomaly - normal: higher = more anomalous
    anomaly_map: torch.Tensor    # (B, 1, H, W) coarse patch-level heatmap at input resolution (zeros in training)
    normal_score: torch.Tensor   # (B,) normal head, averaged over scales
    anomaly_score: torch.Tensor  # (B,) anomaly head, averaged over scales


def min_feature_size() -> int:
    """Smallest S with N_BLOCKS distinct block offsets: S - (S//2 + 1) + 1 >= 4 -> S >= 7."""
    s = 1
    while s - (s // 2 + 1) + 1 < N_BLOCKS:
        s += 1
    return s


def _spread_offsets(feature_size: int) -> list[int]:
    n = feature_size - (feature_size // 2 + 1) + 1
    return [round(i * (n - 1) / (N_BLOCKS - 1)) for i in range(N_BLOCKS)]


def evaluation_offsets(feature_size: int) -> list[tuple[int, ...]]:
    """Four evenly spread diagonal offsets and their cyclic shifts (deterministic): the score."""
    base = _spread_offsets(feature_size)
    return [tuple(base[(i + j) % N_BLOCKS] for j in range(N_BLOCKS)) for i in range(N_BLOCKS)]


def heatmap_positions(feature_size: int) -> list[tuple[tuple[int, int], ...]]:
    """Block (row, col) positions whose union covers every feature cell: block k of set j
    sits at row offset base[k] and column offset base[(k + j) % 4] (j = 0 is diagonal)."""
    base = _spread_offsets(feature_size)
    return [tuple((base[k], base[(k + j) % N_BLOCKS]) for k in range(N_BLOCKS)) for j in range(N_BLOCKS)]


class NormalHead(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(channels, 256), nn.Linear(256, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(features.mean(dim=(2, 3))))).abs().squeeze(1)


class PatchResidualHead(nn.Module):
    """Anomaly head with the patch-wise residual module."""

    def __init__(self, channels: int, topk_fraction: float = 0.1) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.scoring = nn.Conv2d(channels, 1, 1)
        self.topk_fraction = topk_fraction

    def patch_scores(self, features: torch.Tensor, offsets: tuple) -> torch.Tensor:
        """|score| map (B, 1, b, b) of the residual R = B4 - B3 + B2 - B1; ``offsets`` holds
        four diagonal offsets o, or four (row, col) block positions."""
        b = features.shape[-1] // 2 + 1
        positions = [o if isinstance(o, tuple) else (o, o) for o in offsets]
        blocks = [features[:, :, r:r + b, c:c + b] for r, c in positions]
        residual = blocks[3] - blocks[2] + blocks[1] - blocks[0]
        return self.scoring(self.conv(residual)).abs()

    def pool(self, patch_map: torch.Tensor) -> torch.Tensor:
        flat = patch_map.flatten(1)
        k = max(int(flat.shape[1] * self.topk_fraction), 1)
        return flat.topk(k, dim=1).values.mean(dim=1)

    def offsets(self, feature_size: int) -> list[tuple[int, ...]]:
        if feature_size < min_feature_size():
            raise ValueError(f"feature map {feature_size}x{feature_size} is too small for the patch-wise "
                             f"residual module (needs >= {min_feature_size()}): raise --size or use "
                             f"--output-stride 16")
        if self.training:
            n = feature_size - (feature_size // 2 + 1) + 1
            return [tuple(torch.randperm(n)[:N_BLOCKS].tolist())]
        return evaluation_offsets(feature_size)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Score (B,) and, in eval mode, the back-projected patch map (B, 1, S, S)."""
        s = features.shape[-1]
        score = torch.stack([self.pool(self.patch_scores(features, o)) for o in self.offsets(s)]).mean(dim=0)
        if self.training:
            return score, None  # the heatmap is for inference only
        b = s // 2 + 1
        total, count = features.new_zeros(features.shape[0], 1, s, s), features.new_zeros(1, 1, s, s)
        for positions in heatmap_positions(s):
            patch = self.patch_scores(features, positions)
            for r, c in positions:  # each patch cell came from these four feature cells
                pad = (c, s - b - c, r, s - b - r)
                total = total + F.pad(patch, pad)
                count = count + F.pad(torch.ones_like(patch[:1]), pad)
        return score, total / count


class TwoHeadScorer(nn.Module):
    """Input: images (B, C, H, W) in [0, 1]; ImageNet normalisation happens inside."""

    def __init__(self, in_channels: int = 1, width: int = 64, output_stride: int = 32,
                 scales: tuple[float, ...] = (1.0, 0.5), topk_fraction: float = 0.1) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        if not scales or any(not 0 < s <= 1 for s in scales):
            raise ValueError(f"scales must be in (0, 1], got {scales}")
        self.scales = tuple(scales)
        self.backbone = ResNet18Features(in_channels, width, output_stride)
        self.normal_head = NormalHead(self.backbone.out_channels)
        self.anomaly_head = PatchResidualHead(self.backbone.out_channels, topk_fraction)
        mean = IMAGENET_MEAN if in_channels == 3 else (sum(IMAGENET_MEAN) / 3,)
        std = IMAGENET_STD if in_channels == 3 else (sum(IMAGENET_STD) / 3,)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> TwoHeadOutput:
        x = (images - self.mean) / self.std
        normal, anomaly, maps = [], [], []
        for scale in self.scales:
            xs = x if scale == 1.0 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            features = self.backbone(xs)
            normal.append(self.normal_head(features))
            score, patch_map = self.anomaly_head(features)
            anomaly.append(score)
            if patch_map is not None:
                maps.append(F.interpolate(patch_map, size=images.shape[-2:], mode="bilinear", align_corners=False))
        normal_score, anomaly_score = torch.stack(normal).mean(0), torch.stack(anomaly).mean(0)
        anomaly_map = torch.stack(maps).mean(0) if maps else images.new_zeros(images.shape[0], 1, *images.shape[-2:])
        return TwoHeadOutput(score=anomaly_score - normal_score, anomaly_map=anomaly_map,
                             normal_score=normal_score, anomaly_score=anomaly_score)
