"""The hybrid detector: members fused into one score and one heatmap (arXiv 2310.00797).

Members (each a plain module returning ``score`` (B,) and ``anomaly_map`` (B, 1, H, W)):

* ``patch_knn``: familiarity, the distance to the nearest normal patch features in the
  ImageNet-pretrained embedding (trainer/familiarity; no labels);
* ``lamp``: input-space novelty, the LAMP autoencoder's residual (trainer/lamp);
* ``two_head``: the supervised two-head scorer with SaliencyCut (trainer/twohead).

Fusion, fitted on validation good images only (no defect label, trainer/hybrid/fusion.py):
each member's score and map is standardised to robust standard deviations of good parts,

    z_i = (s_i - median_val(s_i)) / (1.4826 MAD_val(s_i)),

and the image score is ``sum_i z_i`` (rule "sum") or ``max_i z_i`` (rule "max": a part is
flagged when any member finds it far from good parts; the novelty paper's argument that a
familiarity score alone misses truly novel defects). The heatmap is fused by the same rule
from the maps' own robust statistics.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

FUSION_RULES = ("sum", "max")


class HybridOutput(NamedTuple):
    score: torch.Tensor          # (B,) fused score, in robust standard deviations of good parts
    anomaly_map: torch.Tensor    # (B, 1, H, W) fused pixel heatmap
    member_scores: torch.Tensor  # (B, M) each member's standardised score, in the order of ``members``


class HybridDetector(nn.Module):
    def __init__(self, members: dict[str, nn.Module], fusion: dict) -> None:
        super().__init__()
        if not members:
            raise ValueError("a hybrid needs at least one member")
        rule = fusion.get("rule_name", "sum")
        if rule not in FUSION_RULES:
            raise ValueError(f"unknown fusion rule {rule!r}; choose {' or '.join(FUSION_RULES)}")
        self.rule, self.names = rule, tuple(members)
        self.members = nn.ModuleDict(members)
        stats = fusion["members"]
        for part in ("score", "map"):
            center = torch.tensor([float(stats[n][part]["center"]) for n in self.names])
            scale = torch.tensor([float(stats[n][part]["scale"]) for n in self.names])
            if not (torch.isfinite(center).all() and torch.isfinite(scale).all() and (scale > 0).all()):
                raise ValueError(f"fusion constants must be finite with scale > 0, got {center}, {scale}")
            # derived from the fusion document (saved in the checkpoint), so not in the state dict
            self.register_buffer(f"{part}_center", center, persistent=False)
            self.register_buffer(f"{part}_scale", scale, persistent=False)

    def _combine(self, z: torch.Tensor, dim: int) -> torch.Tensor:
        return z.sum(dim) if self.rule == "sum" else z.amax(dim)

    def forward(self, images: torch.Tensor) -> HybridOutput:
        outs = [self.members[n](images) for n in self.names]
        z = (torch.stack([o.score for o in outs], 1) - self.score_center) / self.score_scale
        maps = torch.stack([o.anomaly_map[:, 0] for o in outs], 1)  # (B, M, H, W)
        zmap = (maps - self.map_center.view(1, -1, 1, 1)) / self.map_scale.view(1, -1, 1, 1)
        return HybridOutput(score=self._combine(z, 1), anomaly_map=self._combine(zmap, 1).unsqueeze(1),
                            member_scores=z)
