"""Fitting the hybrid's fusion constants on validation good images (no labels)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trainer.evaluate import predict
from trainer.robust import robust_center_scale  # one definition (re-exported by trainer.hybrid)


def fit_fusion(members: dict[str, nn.Module], val_good: torch.Tensor, rule: str = "sum") -> dict:
    """Per member: median and scaled MAD of its image scores and of all its map pixels."""
    stats = {}
    for name, member in members.items():
        scores, maps = predict(member, val_good)
        stats[name] = {part: dict(zip(("center", "scale"), robust_center_scale(v)))
                       for part, v in (("score", scores), ("map", maps))}
    combine = "sum" if rule == "sum" else "max"
    return {"members": stats, "order": list(members), "rule_name": rule, "n_validation_good": len(val_good),
            "rule": f"score = {combine}_i z_i; z_i = (s_i - median) / (1.4826 MAD) over the validation good images"}
