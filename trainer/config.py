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
