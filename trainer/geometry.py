"""Label-preserving geometric augmentations on (B, C, H, W) batches."""
from __future__ import annotations

import torch


def random_flips(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Independent random horizontal and vertical flips per image."""
    flip_h, flip_v = torch.rand(2, x.shape[0], 1, 1, 1, generator=g) < 0.5
    x = torch.where(flip_h, x.flip(-1), x)
    return torch.where(flip_v, x.flip(-2), x)


def random_dihedral(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One of the 8 symmetries of the square per image (flips + transposition).

    Stands in for the +-180 degree random rotation of the SaliencyCut/DRA code:
    the same orientations up to 90-degree steps, without black corners that a
    square part never shows on the line. Needs square images."""
    transpose = torch.rand(x.shape[0], 1, 1, 1, generator=g) < 0.5
    return random_flips(torch.where(transpose, x.transpose(-1, -2), x), g)
