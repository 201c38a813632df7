"""Deviation loss (DevNet, Pang et al. KDD 2019; used by DRA and SaliencyCut).

dev = (s - mu_R) / sigma_R with the reference scores R ~ N(0, 1);
L = mean[(1 - y) |dev| + y max(0, a - dev)], margin a = 5.

The reference implementations estimate mu_R and sigma_R from 5000 fresh draws
at every step; those estimates deviate from (0, 1) by about 0.014 (one
standard error) and only add noise, so the exact prior values are used.
"""
from __future__ import annotations

import torch

REFERENCE_MEAN, REFERENCE_STD, MARGIN = 0.0, 1.0, 5.0


def deviation_loss(scores: torch.Tensor, targets: torch.Tensor, margin: float = MARGIN) -> torch.Tensor:
    """``targets``: 1 where the head should score high, 0 where it should score near the reference mean."""
    dev = (scores - REFERENCE_MEAN) / REFERENCE_STD
    y = targets.to(scores.dtype)
    return ((1 - y) * dev.abs() + y * (margin - dev).clamp(min=0)).mean()


def two_head_loss(normal_score: torch.Tensor, anomaly_score: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """labels: 0 normal, 1 labelled defect, 2 pseudo defect. The normal head targets the
    normal images, the anomaly head every (real or pseudo) defect."""
    return deviation_loss(normal_score, labels == 0) + deviation_loss(anomaly_score, labels != 0)
