"""The LAMP training loss: amplified per-pixel reconstruction error."""
from __future__ import annotations

import torch

from trainer.lamp.amplifier import AmplifierConfig, amplify


def lamp_loss(image: torch.Tensor, reconstruction: torch.Tensor, config: AmplifierConfig) -> torch.Tensor:
    """Mean over pixels and batch of A((x - x_hat)^2), A the configured amplifier.

    With ``AmplifierConfig("identity")`` this is the plain MSE.
    """
    return amplify((image - reconstruction).pow(2), config).mean()
