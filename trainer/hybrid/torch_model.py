"""The hybrid detector: members fused into one score and one heatmap (arXiv 2310.00797).

Members (each a plain module returning ``score`` (B,) and ``anomaly_map`` (B, 1, H, W)):

* ``patch_knn``: familiarity, the distance to the nearest normal patch features in the
  ImageNet-pretrained embedding (trainer/familiarity; no labels);
* ``lamp``: input-space novelty, the LAMP autoencoder's residual (trainer/lamp);
* ``patch_head``: a patch classifier on the same frozen features, taught by the k labelled
  defects (trainer/patchhead);
* ``two_head``: the supervised two-head scorer with SaliencyCut (trainer/twohead).

Members whose frozen feature extractors are alike (same stages, pooling, standardisation and
weights: patch_knn and patch_head) share one: the backbone runs once per image for all of them
and the exported graph holds its weights once. A patch head that re-trained the deeper stages
(``tune_from_stage``) shares the frozen shallow stages and runs only its own deeper blocks.

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

from trainer.familiarity.patch_features import PatchFeatureExtractor

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
        self.feature_source = self._share_features()

    def _share_features(self) -> dict[str, str]:
        """member -> the member whose feature extractor it uses (alike extractors become one module)."""
        source, first = {}, {}
        for name in self.names:
            member = self.members[name]
            extractor = getattr(member, "features", None)
            if not (isinstance(extractor, PatchFeatureExtractor) and hasattr(member, "scores_from_maps")):
                continue
            owner = first.setdefault(extractor.sharing_key(), name)
            if owner != name:
                if not same_weights(self.members[owner].features, extractor):
                    continue  # differently trained backbones: keep both
                member.features = self.members[owner].features
            source[name] = owner
        return source

    def _combine(self, z: torch.Tensor, dim: int) -> torch.Tensor:
        return z.sum(dim) if self.rule == "sum" else z.amax(dim)

    def forward(self, images: torch.Tensor) -> HybridOutput:
        maps: dict[str, list[torch.Tensor]] = {}
        outs = []
        for n in self.names:
            member, owner = self.members[n], self.feature_source.get(n)
            if owner is None:
                outs.append(member(images))
                continue
            if owner not in maps:
                maps[owner] = member.features.stage_maps(images)
            outs.append(member.scores_from_maps(maps[owner], images.shape[-2:]))
        z = (torch.stack([o.score for o in outs], 1) - self.score_center) / self.score_scale
        maps = torch.stack([o.anomaly_map[:, 0] for o in outs], 1)  # (B, M, H, W)
        zmap = (maps - self.map_center.view(1, -1, 1, 1)) / self.map_scale.view(1, -1, 1, 1)
        return HybridOutput(score=self._combine(z, 1), anomaly_map=self._combine(zmap, 1).unsqueeze(1),
                            member_scores=z)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
