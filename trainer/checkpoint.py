"""Checkpoints are data: a state_dict plus the constructor arguments as plain values.

Loaded with ``torch.load(..., weights_only=True)`` (safe: no pickled code),
then rebuilt by calling the constructor (the nanoGPT rule).
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch

from trainer.config import AutoencoderConfig
from trainer.lamp import AmplifierConfig, AnomalyMapConfig, LampAutoencoder, LampDetector

CHECKPOINT_FORMAT_VERSION = 1
LAMP_KIND = "lamp_autoencoder"


class CheckpointError(ValueError):
    pass


def save_lamp_checkpoint(path: Path, model: LampAutoencoder, model_config: AutoencoderConfig,
                         map_config: AnomalyMapConfig, amplifier: AmplifierConfig,
                         data_fingerprint: str) -> None:
    payload = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "kind": LAMP_KIND,
        "model_config": asdict(model_config),
        "anomaly_map": asdict(map_config),
        "amplifier": asdict(amplifier),
        # what the edge must reproduce before the first layer (see edge/preprocess.py)
        "preprocess": {"size": model_config.image_size, "channels": model_config.in_channels,
                       "color_order": "GRAY" if model_config.in_channels == 1 else "RGB",
                       "scale": "uint8 / 255 -> [0, 1]", "resize": "cv2.INTER_AREA"},
        "data_fingerprint": data_fingerprint,
        "torch_version": str(torch.__version__),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_lamp_checkpoint(path: Path) -> tuple[LampDetector, dict]:
    """Rebuild the detector (eval mode) and return it with the checkpoint's metadata."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file: say which and why
        raise CheckpointError(f"{path} is not a readable edge-inspect checkpoint: {e}") from e
    if not isinstance(payload, dict) or payload.get("kind") != LAMP_KIND:
        raise CheckpointError(f"{path} is not a LAMP autoencoder checkpoint (kind={payload.get('kind') if isinstance(payload, dict) else None!r})")
    if payload.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {payload.get('format_version')}, "
                              f"this version reads {CHECKPOINT_FORMAT_VERSION}: retrain or use a matching edge-inspect")
    autoencoder = LampAutoencoder(**payload["model_config"])
    autoencoder.load_state_dict(payload.pop("state_dict"))
    detector = LampDetector(autoencoder, AnomalyMapConfig(**payload["anomaly_map"])).eval()
    return detector, payload
