"""Typed training configuration; fields mirror constructor arguments."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from trainer.lamp.amplifier import AmplifierConfig
from trainer.lamp.anomaly_map import AnomalyMapConfig


@dataclass(frozen=True)
class AutoencoderConfig:
    """Arguments of ``LampAutoencoder``; stored in the checkpoint to rebuild it."""

    in_channels: int = 1
    image_size: int = 256
    base_channels: int = 16
    depth: int = 5            # 256 / 2**5 = 8x8 bottleneck
    latent_channels: int = 32


@dataclass(frozen=True)
class AeTrainConfig:
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    amplifier: AmplifierConfig = field(default_factory=AmplifierConfig)
    anomaly_map: AnomalyMapConfig = field(default_factory=AnomalyMapConfig)
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    flip_augment: bool = True   # random horizontal/vertical flips of good images
    val_fraction: float = 0.1   # share of the good training images held out for validation
    seed: int = 0
    threads: int = 0            # torch CPU threads; 0 = torch's default

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "AeTrainConfig":
        return AeTrainConfig(
            model=AutoencoderConfig(**d["model"]), amplifier=AmplifierConfig(**d["amplifier"]),
            anomaly_map=AnomalyMapConfig(**d["anomaly_map"]),
            **{k: v for k, v in d.items() if k not in ("model", "amplifier", "anomaly_map")})


AUGMENTATIONS = ("saliencycut", "cutpaste")


SCORER_BACKBONES = ("lite0", "resnet18")
RESNET18_CPU_WIDTH, RESNET18_CPU_OUTPUT_STRIDE = 16, 16


@dataclass(frozen=True)
class ScorerModelConfig:
    """Arguments of ``TwoHeadScorer`` plus its input size; stored in the checkpoint.

    ``backbone``: "lite0" (ImageNet-pretrained EfficientNet-Lite0, default) or "resnet18".
    ``width``/``output_stride`` belong to resnet18 (None there: 16/16, sized for a CPU),
    ``stage`` to lite0 (None: 4, stride 16); giving one to the other backbone is an
    error. The resolved values are what the checkpoint stores. Defaults fit a 2-core
    CPU (docs/twohead.md); the papers' GPU setting is image_size=448,
    scales=(1.0, 0.5) with ResNet-18 width=64, output_stride=32."""

    in_channels: int = 1
    image_size: int = 160
    width: int | None = None
    output_stride: int | None = None
    scales: tuple = (1.0,)
    topk_fraction: float = 0.1
    backbone: str = "lite0"
    stage: int | None = None

    def __post_init__(self) -> None:
        from trainer.twohead.backbone import LITE0_STAGE
        if self.backbone not in SCORER_BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose {' or '.join(SCORER_BACKBONES)}")
        if self.backbone == "lite0":
            if self.width is not None or self.output_stride is not None:
                raise ValueError("width and output_stride are ResNet-18 options (backbone resnet18); "
                                 "EfficientNet-Lite0 takes stage instead")
            if self.stage is None:
                object.__setattr__(self, "stage", LITE0_STAGE)
        else:
            if self.stage is not None:
                raise ValueError("stage is an EfficientNet-Lite0 option (backbone lite0)")
            if self.width is None:
                object.__setattr__(self, "width", RESNET18_CPU_WIDTH)
            if self.output_stride is None:
                object.__setattr__(self, "output_stride", RESNET18_CPU_OUTPUT_STRIDE)

    def constructor_kwargs(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "image_size"} | {"scales": tuple(self.scales)}


@dataclass(frozen=True)
class ScorerTrainConfig:
    model: ScorerModelConfig = field(default_factory=ScorerModelConfig)
    augmentation: str = "saliencycut"   # or "cutpaste" (DRA-style baseline)
    epochs: int = 10                    # SaliencyCut code: 30 epochs x 20 steps (CPU default 10)
    steps_per_epoch: int = 20
    n_normal: int = 32                  # per batch: 32 normal draws ...
    n_anomaly: int = 16                 # ... + 16 labelled defects (cycled)
    pseudo_probability: float = 0.5     # a normal draw becomes a pseudo-defect candidate
    lr: float = 2e-4
    weight_decay: float = 1e-5
    lr_step_epochs: int = 10            # StepLR(step 10, gamma 0.1)
    lr_gamma: float = 0.1
    grad_clip: float = 1.0
    saliency_grid: int = 18
    saliency_threshold: float = 0.4
    val_fraction: float = 0.1
    seed: int = 0
    threads: int = 0
    pretrained: str | None = None       # resnet18: local torchvision-layout ResNet-18 state dict
    imagenet_weights: bool | None = None  # lite0: start from the ImageNet weights (None: True for
                                          # lite0, False for resnet18, which uses ``pretrained``)

    def __post_init__(self) -> None:
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {self.augmentation!r}; choose {' or '.join(AUGMENTATIONS)}")
        for name in ("epochs", "steps_per_epoch", "n_normal"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.pseudo_probability <= 1:
            raise ValueError(f"pseudo_probability must be in [0, 1], got {self.pseudo_probability}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        lite0 = self.model.backbone == "lite0"
        if lite0 and self.pretrained:
            raise ValueError("pretrained (a ResNet-18 state dict file) needs backbone resnet18; "
                             "lite0 loads its ImageNet weights itself (imagenet_weights)")
        if not lite0 and self.imagenet_weights:
            raise ValueError("imagenet_weights is for backbone lite0; give resnet18 a state dict file (pretrained)")
        if self.imagenet_weights is None:
            object.__setattr__(self, "imagenet_weights", lite0)

    def to_dict(self) -> dict:
        return asdict(self)
