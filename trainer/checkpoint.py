"""Checkpoints are data: a state_dict plus the constructor arguments as plain values.

Loaded with ``torch.load(..., weights_only=True)`` (safe: no pickled code),
then rebuilt by calling the constructor (the nanoGPT rule). One table maps a
checkpoint's ``kind`` to the function that rebuilds its inference module.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from trainer.lamp import AnomalyMapConfig, LampAutoencoder, LampDetector

CHECKPOINT_FORMAT_VERSION = 1
LAMP_KIND = "lamp_autoencoder"
SCORER_KIND = "two_head_scorer"
FAMILIARITY_KIND = "patch_knn_familiarity"
PATCH_HEAD_KIND = "patch_head_scorer"
HYBRID_KIND = "hybrid"
# the members of a hybrid written before members were named by what they are (format 1)
LEGACY_HYBRID_MEMBERS = {"novelty": "lamp", "familiarity": "two_head"}


class CheckpointError(ValueError):
    pass


def _build_lamp(payload: dict) -> nn.Module:
    autoencoder = LampAutoencoder(**payload["model_config"])
    autoencoder.load_state_dict(payload["state_dict"])
    return LampDetector(autoencoder, AnomalyMapConfig(**payload["anomaly_map"]))


def _build_scorer(payload: dict) -> nn.Module:
    from trainer.twohead.torch_model import TwoHeadScorer
    cfg = {k: v for k, v in payload["model_config"].items() if k != "image_size"}
    cfg.setdefault("backbone", "resnet18")  # checkpoints from before the lite0 backbone
    model = TwoHeadScorer(**{**cfg, "scales": tuple(cfg["scales"])})  # the state dict holds every weight
    model.load_state_dict(payload["state_dict"])
    return model


def _build_familiarity(payload: dict) -> nn.Module:
    from trainer.familiarity import PatchKnnFamiliarity
    cfg = {k: v for k, v in payload["model_config"].items() if k != "image_size"}
    cfg.setdefault("top_patches", 1)  # checkpoints from before 2026-12-05 (session 17) scored the largest distance
    model = PatchKnnFamiliarity(**{**cfg, "stages": tuple(cfg["stages"])})
    model.load_state_dict(payload["state_dict"])
    return model


def _build_patch_head(payload: dict) -> nn.Module:
    from trainer.patchhead import PatchHeadScorer
    cfg = {k: v for k, v in payload["model_config"].items() if k != "image_size"}
    cfg.setdefault("heads", 1)  # checkpoints from before the head ensemble
    model = PatchHeadScorer(**{**cfg, "stages": tuple(cfg["stages"])})
    model.load_state_dict(payload["state_dict"])
    return model


def _build_hybrid(payload: dict) -> nn.Module:
    from trainer.hybrid.torch_model import HybridDetector
    if payload.get("hybrid_format", 1) == 1:  # two fixed members, flat fusion statistics
        old = payload["fusion"]
        members = {new: build_model(payload["members"][role]) for role, new in LEGACY_HYBRID_MEMBERS.items()}
        fusion = {"rule_name": "sum", "members": {
            new: {"score": old[role], "map": old[f"{role}_map"]} for role, new in LEGACY_HYBRID_MEMBERS.items()}}
        return HybridDetector(members, fusion)
    if payload["hybrid_format"] not in (2, 3, 4):
        raise ValueError(f"hybrid format {payload['hybrid_format']} is newer than this edge-inspect reads (2-4): "
                         f"upgrade edge-inspect")
    fusion = payload["fusion"]
    return HybridDetector({name: build_model(payload["members"][name]) for name in fusion["order"]}, fusion)


BUILDERS = {LAMP_KIND: _build_lamp, SCORER_KIND: _build_scorer, FAMILIARITY_KIND: _build_familiarity,
            PATCH_HEAD_KIND: _build_patch_head, HYBRID_KIND: _build_hybrid}


def preprocess_spec(image_size: int, channels: int) -> dict:
    """What the edge must reproduce before the first layer (see edge/preprocess.py)."""
    return {"size": image_size, "channels": channels, "color_order": "GRAY" if channels == 1 else "RGB",
            "scale": "uint8 / 255 -> [0, 1]", "resize": "cv2.INTER_AREA"}


def save_checkpoint(path: Path, kind: str, model: nn.Module, model_config, data_fingerprint: str,
                    **metadata) -> None:
    """``model_config``: the dataclass of constructor arguments (with image_size, in_channels)."""
    payload = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "kind": kind,
        "model_config": asdict(model_config),
        "preprocess": preprocess_spec(model_config.image_size, model_config.in_channels),
        "data_fingerprint": data_fingerprint,
        "torch_version": str(torch.__version__),
        **metadata,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    write_payload(path, payload)


def write_payload(path: Path, payload: dict) -> None:
    """The one checkpoint writer: stamps the format version, writes atomically (temp + rename)."""
    payload = {**payload, "format_version": CHECKPOINT_FORMAT_VERSION}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: Path, kind: str | None = None) -> dict:
    """The checkpoint's payload (state dict included), checked for kind and format version."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file: say which and why
        raise CheckpointError(f"{path} is not a readable edge-inspect checkpoint: {e}") from e
    found = payload.get("kind") if isinstance(payload, dict) else None
    if found not in BUILDERS or (kind is not None and found != kind):
        raise CheckpointError(f"{path} is not a {kind or ' or '.join(BUILDERS)} checkpoint (kind={found!r})")
    if payload.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {payload.get('format_version')}, "
                              f"this version reads {CHECKPOINT_FORMAT_VERSION}: retrain or use a matching edge-inspect")
    return payload


def build_model(payload: dict) -> nn.Module:
    """The inference module (eval mode) of a payload from ``read_checkpoint``."""
    return BUILDERS[payload["kind"]](payload).eval()


def load_checkpoint(path: Path, kind: str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the inference module (eval mode); return it with the checkpoint's metadata."""
    payload = read_checkpoint(path, kind)
    model = build_model(payload)
    payload.pop("state_dict", None)
    return model, payload
