"""Fitting the hybrid's fusion constants on validation good images (no labels)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trainer.evaluate import predict

MAD_TO_STD = 1.4826  # MAD of a normal distribution x 1.4826 = its standard deviation


def robust_center_scale(values: np.ndarray) -> tuple[float, float]:
    """Median and 1.4826 * MAD; the standard deviation if the MAD is 0 (constant data)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(v).all():
        raise ValueError(f"cannot fit the fusion: {int((~np.isfinite(v)).sum())} validation scores are not finite")
    center = float(np.median(v))
    scale = MAD_TO_STD * float(np.median(np.abs(v - center)))
    if scale <= 0:
        scale = float(v.std())
    if not scale > 0:
        raise ValueError("cannot fit the fusion: the validation scores are all equal")
    return center, scale


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
