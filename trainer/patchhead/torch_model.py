"""The patch head member: which patches look like the labelled defects, on frozen features.

The two-head scorer fine-tunes the whole backbone with k labelled defects and, at k = 10 on
ELPV, ends below the label-free patch kNN on the same features (docs/benchmarks.md): with ten
examples, fine-tuning forgets more of ImageNet than it learns of the defects. This member keeps
the backbone frozen (the familiarity member's ``PatchFeatureExtractor``: EfficientNet-Lite0
stages 2 + 4, 3x3 averaged, 152-d on the stride-8 grid) and learns only a per-patch classifier:

    logit(p) = W2 relu(W1 (f(p) - mu) / sigma + b1) + b2        (1x1 convolutions, 152 -> 64 -> 1)

with ``mu``, ``sigma`` the per-channel statistics of the training features. The image score is
the mean of the ``top_patches`` largest patch logits (multiple-instance pooling: a defective part
needs only some defective patches, and one noisy patch does not make a defect); the pixel map is
the patch logits resized bilinearly to the input and blurred (sigma 4 px), as the familiarity map.

``heads`` > 1 is an ensemble of such heads, each from its own random initialisation and trained on
its own loss (one grouped 1x1 convolution holds them all, so the graph is still two convolutions):
the image score is the mean of the heads' image scores, the pixel map the mean of their patch
logits. With ten labelled defects one head's ranking depends on its initialisation as much as on
the split (ELPV, one split: 0.82-0.89 AUROC over five initialisations); the mean of three is
steadier and, fused with the kNN, better (docs/familiarity.md, "Head ensemble").

Because the features are the familiarity member's, a hybrid with both runs the backbone once
(``scores_from_maps``; trainer/hybrid/torch_model.py).

``tune_from_stage`` (e.g. 3) re-trains a copy of the backbone's blocks from that stage to the
deepest stage taken, with the head, starting from the ImageNet weights; the shallower stages stay
frozen and shared. With every label a line has (hundreds of defects) this is worth it: ELPV, all
labels, 224 px, stages 3-4 re-trained: held-out AUROC 0.955 against 0.925 frozen, misses at 5 %
false alarms 0.18 against 0.26 (docs/benchmarks.md, section tuned_head_reading). The deeper stages
run at stride 16 on a 14 x 14 grid at 224 px, so re-training them costs seconds per epoch and
the edge runs them once more per image at a few percent of the backbone's cost.
"""
from __future__ import annotations

import copy
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from trainer.familiarity.patch_features import DEFAULT_STAGES, PatchFeatureExtractor
from trainer.lamp.anomaly_map import AnomalyMapConfig, AnomalyMapGenerator


class PatchHeadOutput(NamedTuple):
    score: torch.Tensor        # (B,) mean of the largest patch logits
    anomaly_map: torch.Tensor  # (B, 1, H, W) blurred patch logits at input resolution


class PatchHeadScorer(nn.Module):
    """Input: (B, in_channels, H, W) in [0, 1]. Only ``head`` (and ``tuned``, if any) is trained."""

    def __init__(self, in_channels: int = 1, stages: tuple[int, ...] = DEFAULT_STAGES, pool_size: int = 3,
                 standardize: bool = True, hidden: int = 64, top_patches: int = 8, blur_sigma: float = 4.0,
                 tune_from_stage: int | None = None, backbone: str = "lite0", heads: int = 1) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        if hidden < 1 or top_patches < 1 or heads < 1:
            raise ValueError(f"hidden, top_patches and heads must be >= 1, got {hidden}, {top_patches}, {heads}")
        self.in_channels, self.top_patches, self.heads = in_channels, top_patches, heads
        self.features = PatchFeatureExtractor(tuple(stages), pool_size, standardize, backbone)
        d = self.features.dim
        self.register_buffer("feature_mean", torch.zeros(1, d, 1, 1))
        self.register_buffer("feature_sd", torch.ones(1, d, 1, 1))
        # ``heads`` independent heads in one pair of convolutions: head i owns hidden channels
        # [i * hidden, (i + 1) * hidden) and, through the grouped second convolution, output i only
        self.head = nn.Sequential(nn.Conv2d(d, hidden * heads, 1), nn.ReLU(),
                                  nn.Conv2d(hidden * heads, heads, 1, groups=heads))
        self.blur = AnomalyMapGenerator(AnomalyMapConfig(blur_sigma=blur_sigma, pooling="max"))
        self.tune_from_stage = tune_from_stage
        self.tuned = nn.ModuleList()      # re-trained copies of the deeper blocks (empty: all frozen)
        self._tuned_outputs: dict[int, int] = {}
        if tune_from_stage is not None:
            stages = self.features.stages
            if tune_from_stage - 1 not in stages or tune_from_stage > stages[-1]:
                raise ValueError(f"tune_from_stage {tune_from_stage} needs stage {tune_from_stage - 1} among the "
                                 f"feature stages {stages} and a deeper one to re-train")
            ends = self.features.backbone.stage_ends
            first, last = ends[tune_from_stage - 1] + 1, ends[stages[-1]]
            self.tuned = nn.ModuleList(copy.deepcopy(self.features.backbone._blocks[first:last + 1]))
            self._tuned_outputs = {ends[s] - first: s for s in stages if s >= tune_from_stage}

    def start_tuning(self) -> None:
        """Copy the (ImageNet) backbone's deeper blocks into the re-trained ones."""
        ends = self.features.backbone.stage_ends
        first = ends[self.tune_from_stage - 1] + 1
        for i, block in enumerate(self.tuned):
            block.load_state_dict(self.features.backbone._blocks[first + i].state_dict())
        self.tuned.requires_grad_(True)

    def frozen_stages(self) -> tuple[int, ...]:
        """The stages whose maps come from the frozen backbone."""
        cut = self.tune_from_stage if self.tune_from_stage is not None else 1 << 30
        return tuple(s for s in self.features.stages if s < cut)

    def features_from_maps(self, frozen_maps: list[torch.Tensor]) -> torch.Tensor:
        """Maps of ``frozen_stages()`` -> patch features, running the re-trained blocks if any."""
        if not self._tuned_outputs:
            return self.features.combine(frozen_maps)
        out = dict(zip(self.frozen_stages(), frozen_maps))
        x = out[self.tune_from_stage - 1]
        for i, block in enumerate(self.tuned):
            x = block(x)
            if i in self._tuned_outputs:
                out[self._tuned_outputs[i]] = x
        return self.features.combine([out[s] for s in self.features.stages])

    def set_feature_statistics(self, features: torch.Tensor) -> None:
        """Per-channel mean and SD of training features (N, D, h, w)."""
        f = features.float()
        self.feature_mean = f.mean(dim=(0, 2, 3), keepdim=True)
        self.feature_sd = f.std(dim=(0, 2, 3), keepdim=True) + 1e-3

    def patch_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) features -> (B, heads, h, w) patch logits, one channel per head."""
        return self.head((features.float() - self.feature_mean) / self.feature_sd)

    def head_image_logits(self, patch_logits: torch.Tensor) -> torch.Tensor:
        """(B, heads, h, w) -> (B, heads): each head's mean of its ``top_patches`` largest patch logits."""
        flat = patch_logits.flatten(2)
        return flat.topk(min(self.top_patches, flat.shape[2]), dim=2).values.mean(dim=2)

    def image_logits(self, patch_logits: torch.Tensor) -> torch.Tensor:
        """(B, heads, h, w) -> (B,): the mean of the heads' image logits."""
        return self.head_image_logits(patch_logits).mean(dim=1)

    def scores_from_features(self, features: torch.Tensor, size) -> PatchHeadOutput:
        """``features``: ``self.features(images)``; ``size``: the images' (H, W)."""
        logits = self.patch_logits(features)
        mean = logits.mean(dim=1, keepdim=True)
        heatmap = self.blur.blur(F.interpolate(mean, size=size, mode="bilinear", align_corners=False))
        return PatchHeadOutput(score=self.image_logits(logits), anomaly_map=heatmap)

    def scores_from_maps(self, maps: list[torch.Tensor], size) -> PatchHeadOutput:
        """``maps``: ``self.features.stage_maps(images)`` (all feature stages, frozen)."""
        keep = self.frozen_stages()
        frozen = [m for s, m in zip(self.features.stages, maps) if s in keep]
        return self.scores_from_features(self.features_from_maps(frozen), size)

    def forward(self, images: torch.Tensor) -> PatchHeadOutput:
        return self.scores_from_maps(self.features.stage_maps(images), images.shape[-2:])
