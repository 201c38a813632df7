"""Fitting the hybrid's fusion constants on validation good images (no labels)."""
from __future__ import annotations

import torch
from torch import nn

from trainer.evaluate import predict
from trainer.hybrid.looks import fit_looks, member_constants
from trainer.hybrid.torch_model import look_descriptors, look_source
from trainer.robust import robust_center_scale  # one definition (re-exported by trainer.hybrid)


def fit_fusion(members: dict[str, nn.Module], val_good: torch.Tensor, rule: str = "sum",
               looks: int | str = 1, seed: int = 0) -> dict:
    """Per member: median and scaled MAD of its image scores and of all its map pixels; with ``looks``
    (a number > 1 or "auto") also per look of the validation good images (trainer/hybrid/looks.py)."""
    outputs = {name: predict(member, val_good) for name, member in members.items()}
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
    descriptors = look_descriptors(members[source], val_good)
    entry, doc["looks_choice"] = fit_looks(descriptors, outputs, looks, seed)
    if entry is not None:
        doc["looks"] = {"source": source, **entry}
    return doc


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
