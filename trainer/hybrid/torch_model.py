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

With per-look constants (fusion "looks", trainer/hybrid/looks.py) each image is standardised against
the validation good images of its own look: its look descriptor (the spatial means of the shared frozen
stage maps) weighs each look's medians and MADs by the look's posterior (fusions from before the
weights: the nearest look center picks one set).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
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
        self.looks = int(fusion.get("looks", {}).get("count", 1))
        if self.looks > 1:
            self._set_looks(fusion["looks"])

    def _set_looks(self, looks: dict) -> None:
        self.look_source = looks["source"]
        if self.feature_source.get(self.look_source) != self.look_source:
            raise ValueError(f"the looks are described by member {self.look_source!r}, which does not own a shared "
                             f"feature extractor in this hybrid")
        try:
            table = {(part, kind): torch.tensor([[float(look[n][part][kind]) for n in self.names]
                                                 for look in looks["members"]])
                     for part in ("score", "map") for kind in ("center", "scale")}
            mean, sd = torch.tensor(looks["descriptor_mean"]), torch.tensor(looks["descriptor_sd"])
            centers = torch.tensor(looks["centers"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"the fusion's looks entry is incomplete or malformed ({e!r}): re-fuse the members "
                             f"with edge-train hybrid") from e
        if centers.shape[0] != self.looks or any(t.shape != (self.looks, len(self.names)) for t in table.values()):
            raise ValueError(f"the looks entry holds {centers.shape[0]} centers for {self.looks} looks, or "
                             f"constants of other members than {self.names}")
        # fusions from before the look weights have no variance: the nearest center picks the constants
        variance = torch.tensor(float(looks.get("posterior_variance", 1.0)))
        self.soft_looks = "posterior_variance" in looks
        finite = all(torch.isfinite(t).all() for t in (*table.values(), mean, sd, centers, variance))
        if not (finite and all((table[(p, "scale")] > 0).all() for p in ("score", "map")) and (sd > 0).all()
                and variance > 0):
            raise ValueError("per-look fusion constants must be finite with scales > 0 and a posterior variance > 0")
        self.register_buffer("look_variance", variance, persistent=False)
        for (part, kind), t in table.items():
            self.register_buffer(f"look_{part}_{kind}", t, persistent=False)  # (looks, members)
        self.register_buffer("look_mean", mean, persistent=False)
        self.register_buffer("look_sd", sd, persistent=False)
        self.register_buffer("look_centers", centers, persistent=False)

    def _center_distances(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """(B, looks) |d - c|^2 less |d|^2, the same for every center (a MatMul, no (B, looks, D) tensor)."""
        d = (descriptor_of(maps) - self.look_mean) / self.look_sd
        c = self.look_centers
        return (c * c).sum(1) - 2 * d @ c.t()

    def look_of(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """(B,) index of each image's nearest look center, from the look source's stage maps."""
        return self._center_distances(maps).argmin(1)

    def look_weights(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """(B, looks) each image's posterior weight of each look (rows sum to 1)."""
        return torch.softmax(-self._center_distances(maps) / (2 * self.look_variance), dim=1)

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

    def member_outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Each member's raw score (B, M) and map (B, M, H, W), before fusion, and the shared extractors'
        stage maps (owner -> maps): the backbone runs once for all members that share it."""
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
        scores = torch.stack([o.score for o in outs], 1)            # (B, M)
        member_maps = torch.stack([o.anomaly_map[:, 0] for o in outs], 1)  # (B, M, H, W)
        return scores, member_maps, maps

    def forward(self, images: torch.Tensor) -> HybridOutput:
        scores, member_maps, maps = self.member_outputs(images)
        if self.looks > 1 and self.soft_looks:
            w = self.look_weights(look_maps(self.members[self.look_source], maps[self.look_source]))  # (B, looks)
            # z under each look's constants, averaged with the look weights: (B, looks, M) -> (B, M)
            z = (w[:, :, None] * (scores[:, None] - self.look_score_center) / self.look_score_scale).sum(1)
            zmap = (w[:, :, None, None, None] * (member_maps[:, None] - self.look_map_center[:, :, None, None])
                    / self.look_map_scale[:, :, None, None]).sum(1)
        elif self.looks > 1:   # a fusion from before the look weights: the nearest center's constants
            look = self.look_of(look_maps(self.members[self.look_source], maps[self.look_source]))
            z = (scores - self.look_score_center[look]) / self.look_score_scale[look]
            zmap = ((member_maps - self.look_map_center[look][:, :, None, None])
                    / self.look_map_scale[look][:, :, None, None])
        else:
            z = (scores - self.score_center) / self.score_scale
            zmap = (member_maps - self.map_center.view(1, -1, 1, 1)) / self.map_scale.view(1, -1, 1, 1)
        return HybridOutput(score=self._combine(z, 1), anomaly_map=self._combine(zmap, 1).unsqueeze(1),
                            member_scores=z)


def look_source(members: dict[str, nn.Module]) -> str | None:
    """The member whose shared frozen feature extractor describes a part's look (the first one that has
    one, as in ``HybridDetector._share_features``), or None."""
    return next((name for name, m in members.items()
                 if isinstance(getattr(m, "features", None), PatchFeatureExtractor)
                 and hasattr(m, "scores_from_maps")), None)


def look_maps(member: nn.Module, maps: list[torch.Tensor]) -> list[torch.Tensor]:
    """The stage maps the member itself uses from the frozen backbone: a patch head that re-trains the deeper
    stages uses its own copies of them, and describing the look with the frozen deeper maps would keep
    those frozen blocks in the exported graph only for the look (the bundled model: 3.0 -> 5.6 MB)."""
    keep = member.frozen_stages() if hasattr(member, "frozen_stages") else member.features.stages
    return [m for s, m in zip(member.features.stages, maps) if s in keep]


def descriptor_of(maps: list[torch.Tensor]) -> torch.Tensor:
    """Stage maps [(B, C_s, h_s, w_s)] -> look descriptor (B, sum C_s): each map's spatial mean."""
    return torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=1)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
