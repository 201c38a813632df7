"""Train the LAMP autoencoder on good images and write a run directory.

Run directory (documented in docs/run-directory.md):
  config.json       the AeTrainConfig, as plain values
  split.json        the open-set split (rule, k, seed, files) + the validation hold-out
  train_log.jsonl   one line per epoch: loss, plain MSE, synthetic-defect validation AUROC
  checkpoint.pt     state_dict + constructor arguments (safe to load, see checkpoint.py)
  metrics.json      test metrics, training time and throughput, peak memory, checksums
"""
from __future__ import annotations

import json
import math
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from trainer.artifacts import RUN_FORMAT_VERSION, sha256_file, write_json
from trainer.checkpoint import save_lamp_checkpoint
from trainer.config import AeTrainConfig
from trainer.data import Dataset, Split
from trainer.evaluate import evaluate_split, predict
from trainer.lamp import LampAutoencoder, LampDetector, lamp_loss
from trainer.metrics import auroc
from trainer.synthetic_defects import add_synthetic_defect
from trainer.tensors import load_images, load_masks

RUN_FILES = ("config.json", "split.json", "train_log.jsonl", "checkpoint.pt", "metrics.json")


def hold_out_validation(split: Split, fraction: float, seed: int):
    """Good training images -> (fit, validation). Labelled defects are not used by the
    autoencoder: it learns good parts only (they stay listed in split.json)."""
    good = [s for s in split.train if s.label == 0]
    order = np.random.default_rng(seed).permutation(len(good))
    n_val = round(fraction * len(good))
    return [good[i] for i in order[n_val:]], [good[i] for i in order[:n_val]]


def synthetic_validation_set(val_images: torch.Tensor, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Each held-out good image twice: as is, and with one painted defect."""
    rng = np.random.default_rng(seed + 1)
    defective = np.stack([add_synthetic_defect(x, rng)[0] for x in val_images.numpy()])
    images = torch.cat([val_images, torch.from_numpy(defective)])
    labels = np.r_[np.zeros(len(val_images)), np.ones(len(val_images))].astype(int)
    return images, labels


def random_flips(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip_h, flip_v = torch.rand(2, x.shape[0], 1, 1, 1, generator=g) < 0.5
    x = torch.where(flip_h, x.flip(-1), x)
    return torch.where(flip_v, x.flip(-2), x)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def train_autoencoder(config: AeTrainConfig, dataset: Dataset, split: Split, out_dir: Path,
                      progress: bool = True) -> dict:
    """Train, evaluate on the split's test part, write the run directory; return the metrics."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    size, channels = config.model.image_size, config.model.in_channels

    fit, val = hold_out_validation(split, config.val_fraction, config.seed)
    if len(fit) < 2:
        raise ValueError(f"only {len(fit)} good image(s) left for training after the validation "
                         f"hold-out: add good images or lower --val-fraction")
    write_json(out_dir / "config.json", {"format_version": RUN_FORMAT_VERSION, "model": "lamp_autoencoder",
                                         **config.to_dict()})
    split_doc = split.to_json(dataset.root)
    split_doc["validation_good"] = [str(s.path.relative_to(dataset.root)) for s in val]
    split_doc["data_fingerprint"] = dataset.fingerprint()
    split_doc["layout"] = dataset.layout
    split_doc["skipped"] = dict(dataset.skipped)
    write_json(out_dir / "split.json", split_doc)

    images = load_images(fit, size, channels)
    val_images, val_labels = (synthetic_validation_set(load_images(val, size, channels), config.seed)
                              if val else (None, None))

    model = LampAutoencoder(**asdict(config.model))
    detector = LampDetector(model, config.anomaly_map)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    g = torch.Generator().manual_seed(config.seed)
    batch = min(config.batch_size, len(images))
    steps = math.ceil(len(images) / batch)
    if len(images) % batch == 1:
        steps -= 1  # a one-image tail batch breaks BatchNorm's batch statistics: drop it
    log_path = out_dir / "train_log.jsonl"
    log_path.write_text("")

    start = time.perf_counter()
    interactive = progress and sys.stderr.isatty()
    bar = tqdm(total=config.epochs * steps, desc="train ae", unit="step", disable=not interactive,
               mininterval=0.5)
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(images), generator=g)
        loss_sum = mse_sum = 0.0
        for step in range(steps):
            x = images[order[step * batch:min((step + 1) * batch, len(images))]]
            if config.flip_augment:
                x = random_flips(x, g)
            reconstruction = model(x)
            loss = lamp_loss(x, reconstruction, config.amplifier)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch + 1}: "
                                         f"lower --lr or --alpha")
            loss_sum += loss.item()
            mse_sum += (x - reconstruction).pow(2).mean().item()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4g}")
        record = {"epoch": epoch + 1, "loss": loss_sum / steps, "mse": mse_sum / steps,
                  "seconds": round(time.perf_counter() - start, 3)}
        if val_images is not None:
            record["val_synthetic_auroc"] = auroc(predict(detector, val_images)[0], val_labels)
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if progress and not interactive and (epoch + 1) % max(1, config.epochs // 10) == 0:
            # logs and CI get a line per tenth of the run instead of a redrawn bar
            print(f"train ae: epoch {epoch + 1}/{config.epochs} loss {record['loss']:.4g} "
                  f"mse {record['mse']:.4g} {record['seconds']:.0f} s", file=sys.stderr, flush=True)
    bar.close()
    train_seconds = time.perf_counter() - start

    checkpoint = out_dir / "checkpoint.pt"
    save_lamp_checkpoint(checkpoint, model, config.model, config.anomaly_map, config.amplifier,
                         dataset.fingerprint())

    test = list(split.test)
    scores, maps = predict(detector, load_images(test, size, channels))
    metrics = {
        "format_version": RUN_FORMAT_VERSION,
        "model": "lamp_autoencoder",
        "amplifier": asdict(config.amplifier),
        "test": evaluate_split(test, scores, maps, load_masks(test, size, channels)),
        "validation": {"synthetic_defect_auroc": record.get("val_synthetic_auroc"),
                       "n_good": len(val),
                       "note": "held-out good images vs. the same images with painted defects (a proxy)"},
        "train": {"seconds": round(train_seconds, 2), "epochs": config.epochs,
                  "images": len(fit), "images_per_second": round(len(fit) * config.epochs / train_seconds, 2),
                  "final_loss": record["loss"], "final_mse": record["mse"],
                  "torch_threads": torch.get_num_threads(), "peak_rss_mb": round(peak_rss_mb(), 1)},
        "checkpoint_sha256": sha256_file(checkpoint),
        "data_fingerprint": dataset.fingerprint(),
    }
    write_json(out_dir / "metrics.json", metrics)
    np.savez_compressed(out_dir / "test_scores.npz", scores=scores,
                        labels=np.array([s.label for s in test]),
                        paths=np.array([str(s.path.relative_to(dataset.root)) for s in test]))
    return metrics
