"""Fitting the hybrid's fusion constants on validation good images (no labels)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trainer.hybrid.looks import fit_looks, member_constants
from trainer.hybrid.torch_model import HybridDetector, descriptor_of, look_maps, look_source
from trainer.robust import robust_center_scale  # one definition (re-exported by trainer.hybrid)


def fit_fusion(members: dict[str, nn.Module], val_good: torch.Tensor, rule: str = "sum",
               looks: int | str = 1, seed: int = 0) -> dict:
    """Per member: median and scaled MAD of its image scores and of all its map pixels; with ``looks``
    (a number > 1 or "auto") also per look of the validation good images (trainer/hybrid/looks.py)."""
    outputs, descriptors = member_outputs(members, val_good, rule)
    stats = {name: member_constants(scores, maps) for name, (scores, maps) in outputs.items()}
    combine = "sum" if rule == "sum" else "max"
    doc = {"members": stats, "order": list(members), "rule_name": rule, "n_validation_good": len(val_good),
           "rule": f"score = {combine}_i z_i; z_i = (s_i - median) / (1.4826 MAD) over the validation good images"}
    if looks == 1:
        return doc
    source = look_source(members)
    if source is None:
        if looks != "auto":
            raise ValueError(f"--looks {looks} needs a member with pretrained patch features (patch_knn or "
                             f"patch_head) to describe a part's look; these members have none: {list(members)}")
        doc["looks_choice"] = {"asked": "auto", "chosen": 1, "why": "no member with pretrained patch features"}
        return doc
    entry, doc["looks_choice"] = fit_looks(descriptors, outputs, looks, seed)
    if entry is not None:
        doc["looks"] = {"source": source, **entry}
    return doc


@torch.no_grad()
def member_outputs(members: dict[str, nn.Module], images: torch.Tensor, rule: str = "sum",
                   batch_size: int = 32) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray | None]:
    """(member -> (raw image scores (N,), maps (N, H, W)); the look descriptors (N, D) of the look source, or
    None) in one pass of the hybrid itself: the members that share a backbone run it once for their scores and
    the look, as at the edge. The hybrid is built with neutral constants, which its raw outputs do not use."""
    neutral = {"rule_name": rule, "members": {n: {part: {"center": 0.0, "scale": 1.0} for part in ("score", "map")}
                                              for n in members}}
    hybrid = HybridDetector(members, neutral).eval()
    source = look_source(members)
    scores, maps, descriptors = [], [], []
    for i in range(0, len(images), batch_size):
        s, m, stage_maps = hybrid.member_outputs(images[i:i + batch_size])
        scores.append(s.numpy())
        maps.append(m.numpy())
        if source is not None:
            descriptors.append(descriptor_of(look_maps(hybrid.members[source], stage_maps[source])).double().numpy())
    scores, maps = np.concatenate(scores), np.concatenate(maps)
    outputs = {name: (scores[:, j], maps[:, j]) for j, name in enumerate(hybrid.names)}
    return outputs, (np.concatenate(descriptors) if descriptors else None)


def describe_choice(fusion: dict) -> str:
    """One line for the user: how many looks the fusion uses and why."""
    choice = fusion.get("looks_choice")
    if choice is None:
        return "fusion constants: one set (--looks 1)"
    n = fusion.get("looks", {}).get("n_validation_good")
    sil = choice.get("silhouette") or {}
    sil_text = ", ".join(f"{c} looks {s:.2f}" for c, s in sil.items())
    return (f"fusion constants: {choice['chosen']} look(s)" + (f" of {n} validation good images" if n else "")
            + (f"; silhouette {sil_text}" if sil_text else "") + (f"; {choice['why']}" if "why" in choice else ""))
