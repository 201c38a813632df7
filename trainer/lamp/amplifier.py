"""Loss amplification functions for LAMP training.

LAMP (Park et al., "Neural Network Training Strategy to Enhance Anomaly
Detection Performance: A Perspective on Reconstruction Loss Amplification",
arXiv 2308.14595, ICASSP 2024) trains a reconstruction model on good data only
with its reconstruction loss passed through an amplifying function, so that the
loss landscape is steeper and unseen patterns reconstruct worse.

What we could verify of the paper (abstract and introduction; the method
section and its equation were not retrievable from this workplace): the
amplification is a training strategy only, applies to any reconstruction
metric, and the anomaly score stays the reconstruction error. We therefore
implement a documented family of monotone amplifiers ``A`` with

    A(0) = 0,  A'(l) >= 1,  A'' >= 0  (convex: large errors are amplified most),

with the identity as the plain-loss baseline, and choose the member on good
images only (see docs/lamp.md). One member, ``lmse``, is the log-MSE loss its first
author published before LAMP (arXiv 2201.05748), the closest candidate we could find. Should the paper's own function become
available it is added here as one more member; nothing else changes.

Why elementwise: the amplifier acts on each pixel's error before averaging.
Applied to the already-averaged batch loss, a monotone A only rescales the
gradient by A'(L), which Adam's per-parameter normalisation cancels almost
entirely; elementwise it changes which pixels drive the update.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

AMPLIFIERS = ("identity", "exp", "lmse")
# the name "lmse" had before it was identified as LMSE (accepted so old configs still read)
LEGACY_NAMES = {"neglog": "lmse"}


@dataclass(frozen=True)
class AmplifierConfig:
    """Which amplifier, and its steepness ``alpha`` (used by ``exp`` only)."""

    name: str = "exp"
    alpha: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", LEGACY_NAMES.get(self.name, self.name))
        if self.name not in AMPLIFIERS:
            raise ValueError(f"unknown amplifier {self.name!r}; choose one of {', '.join(AMPLIFIERS)}")
        if self.name == "exp" and not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(f"amplifier 'exp' needs alpha > 0, got {self.alpha}")


# Errors are clamped below 1 for -log(1 - l): a pixel error of exactly 1 would
# give an infinite loss. 1 - 1e-6 bounds the loss at about 13.8.
_NEGLOG_MAX = 1.0 - 1e-6


def amplify(loss: torch.Tensor, config: AmplifierConfig) -> torch.Tensor:
    """Apply the amplifier elementwise to a non-negative loss tensor.

    * ``identity``: A(l) = l (LAMP off).
    * ``exp``:      A(l) = (exp(alpha * l) - 1) / alpha; A'(l) = exp(alpha * l),
      so a pixel's gradient weight grows exponentially with its error. As
      alpha -> 0 it tends to the identity.
    * ``lmse``:     A(l) = -log(1 - l) for l in [0, 1); A'(l) = 1 / (1 - l). On the squared
      residual l = x^2 this is exactly LMSE, mean(-log(1 - x^2)), the log-MSE loss published by
      LAMP's first author (Park et al., arXiv 2201.05748; his ``white-box-layer`` code,
      ``loss_log_mse``, which adds 1e-30 inside the log where we clamp l below 1 - 1e-6).
      The closest published candidate for LAMP's amplifier; the paper's own equation is still
      not retrievable.
    """
    if config.name == "identity":
        return loss
    if config.name == "exp":
        return torch.expm1(config.alpha * loss) / config.alpha
    return -torch.log1p(-loss.clamp(max=_NEGLOG_MAX))
