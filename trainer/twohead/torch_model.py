"""The two-head scorer (DRA, Ding et al. CVPR 2022; SaliencyCut, Ye et al. arXiv 2306.08366).

A backbone feeds two heads at each input scale. Backbones (``backbone=``):

* ``"lite0"`` (default): the ImageNet-pretrained EfficientNet-Lite0 of
  ``trainer.backbones``, fine-tuned whole as the papers fine-tune their ResNet-18.
  Input [0, 1] with 1 or 3 channels -> ``to_three_channels`` (grey becomes three equal
  channels) -> ``normalize_for_lite``, (255 x - 127) / 128, the scale the released
  weights were trained with (not ImageNet mean/std).
  The heads read stage 4 (``stage=4``, 0-based): stride 16, 112 channels, the last
  stage at stride 16. Why this one: the patch-wise residual module needs a feature
  map of at least 7x7 (four distinct block offsets), and a 2-core CPU cannot afford
  the papers' 448 px. At the CPU default of 160 px (docs/twohead.md: 224 px costs
  2.3-2.8 times as much per step) stride 16 gives a 10x10 map (blocks of 6, five
  offsets); the stride-32 stages (5: 192 channels, 6: 320) would give 5x5, which the
  module cannot use, and need at least 193 px for a bare 7x7 (386 px with the papers'
  second scale 0.5). At 224 px stride 16 gives 14x14, the papers' own map size (448 px at
  stride 32). Stride-16 features are also the mid-level ones that describe local
  texture, which is what a crack or a scratch changes (PatchCore takes mid-level
  stages for the same reason; ``trainer.familiarity`` reads stages 2 and 4 of the
  same network), and stopping there keeps 0.70 M of the backbone's 3.0 M feature
  weights (stages 5-6 hold the rest). The blocks after the chosen stage are not
  built. ``stage=5`` or ``6`` suit a GPU at 448 px.
* ``"resnet18"``: ResNet-18 (``trainer.twohead.backbone``), from scratch or from a
  torchvision-layout state dict on disk, with ``width`` and ``output_stride``;
  ImageNet mean/std normalisation (grey: their mean).

The two heads:

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

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from trainer.backbones import normalize_for_lite, to_three_channels
from trainer.twohead.backbone import LITE0_STAGE, Lite0Features, ResNet18Features

# ImageNet statistics (the papers' normalisation); grayscale uses their mean.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
N_BLOCKS = 4
BACKBONES = ("lite0", "resnet18")


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
                             f"residual module (needs >= {min_feature_size()}): raise the input size")
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
    """Input: images (B, C, H, W) in [0, 1]; the backbone's normalisation happens inside.

    ``width``/``output_stride`` are ResNet-18 options (default 64/32), ``stage`` a Lite0
    one (default 4); passing one to the other backbone is an error. The constructor never
    reads weight files: training loads ImageNet weights into ``backbone`` afterwards
    (``trainer.twohead.backbone.load_lite0_imagenet``), a checkpoint's state dict
    supplies its own."""

    def __init__(self, in_channels: int = 1, width: int | None = None, output_stride: int | None = None,
                 scales: tuple[float, ...] = (1.0, 0.5), topk_fraction: float = 0.1,
                 backbone: str = "lite0", stage: int | None = None) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        if not scales or any(not 0 < s <= 1 for s in scales):
            raise ValueError(f"scales must be in (0, 1], got {scales}")
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose {' or '.join(BACKBONES)}")
        self.scales, self.backbone_name = tuple(scales), backbone
        if backbone == "lite0":
            if width is not None or output_stride is not None:
                raise ValueError("width and output_stride are ResNet-18 options: the lite0 backbone has "
                                 "fixed widths and takes its stride from the stage")
            self.backbone = Lite0Features(LITE0_STAGE if stage is None else stage)
            self.stride = self.backbone.stride
        else:
            if stage is not None:
                raise ValueError("stage is an EfficientNet-Lite0 option, not a ResNet-18 one")
            self.backbone = ResNet18Features(in_channels, 64 if width is None else width,
                                             32 if output_stride is None else output_stride)
            self.stride = 32 if output_stride is None else output_stride
            mean = IMAGENET_MEAN if in_channels == 3 else (sum(IMAGENET_MEAN) / 3,)
            std = IMAGENET_STD if in_channels == 3 else (sum(IMAGENET_STD) / 3,)
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.in_channels = in_channels
        self.normal_head = NormalHead(self.backbone.out_channels)
        self.anomaly_head = PatchResidualHead(self.backbone.out_channels, topk_fraction)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] != self.in_channels:
            raise ValueError(f"the scorer takes {self.in_channels}-channel images, got {images.shape[1]}")
        if self.backbone_name == "lite0":
            return normalize_for_lite(to_three_channels(images))
        return (images - self.mean) / self.std

    def min_input_size(self) -> int:
        """Smallest square input whose feature map at every scale is at least 7x7 (both
        backbones pad so that a map side is ceil(input / stride))."""
        need = (min_feature_size() - 1) * self.stride + 1
        return max(math.ceil(need / s) for s in self.scales)

    def _stride_hint(self) -> str:
        if self.stride < 32:
            return ""
        return " or --output-stride 16" if self.backbone_name == "resnet18" else " or --stage 4 (stride 16)"

    def forward(self, images: torch.Tensor) -> TwoHeadOutput:
        x = self.normalize(images)
        normal, anomaly, maps = [], [], []
        for scale in self.scales:
            xs = x if scale == 1.0 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            features = self.backbone(xs)
            if min(features.shape[-2:]) < min_feature_size():
                raise ValueError(
                    f"input {tuple(images.shape[-2:])} at scale {scale} gives a {features.shape[-2]}x"
                    f"{features.shape[-1]} feature map (stride {self.stride}): too small for the patch-wise "
                    f"residual module (needs >= {min_feature_size()}): use a size of at least "
                    f"{self.min_input_size()} px" + self._stride_hint())
            normal.append(self.normal_head(features))
            score, patch_map = self.anomaly_head(features)
            anomaly.append(score)
            if patch_map is not None:
                maps.append(F.interpolate(patch_map, size=images.shape[-2:], mode="bilinear", align_corners=False))
        normal_score, anomaly_score = torch.stack(normal).mean(0), torch.stack(anomaly).mean(0)
        anomaly_map = torch.stack(maps).mean(0) if maps else images.new_zeros(images.shape[0], 1, *images.shape[-2:])
        return TwoHeadOutput(score=anomaly_score - normal_score, anomaly_map=anomaly_map,
                             normal_score=normal_score, anomaly_score=anomaly_score)
