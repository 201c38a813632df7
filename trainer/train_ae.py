"""Train the LAMP autoencoder on good images and write a run directory.

Run directory (documented in docs/run-directory.md):
  config.json       the AeTrainConfig, as plain values
  split.json        the open-set split (rule, k, seed, files) + the validation hold-out
  train_log.jsonl   one line per epoch: loss, plain MSE, synthetic-defect validation AUROC
  checkpoint.pt     state_dict + constructor arguments (safe to load, see checkpoint.py)
  metrics.json      test metrics, training time and throughput, peak memory, checksums
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from trainer.checkpoint import LAMP_KIND
from trainer.config import AeTrainConfig
from trainer.data import Dataset, Split
from trainer.geometry import random_flips
from trainer.lamp import LampAutoencoder, LampDetector, lamp_loss
from trainer.run_setup import EpochLog, finish_run, start_run, synthetic_validation_set
from trainer.tensors import load_images

RUN_FILES = ("config.json", "split.json", "train_log.jsonl", "checkpoint.pt", "metrics.json")


def train_autoencoder(config: AeTrainConfig, dataset: Dataset, split: Split, out_dir: Path,
                      progress: bool = True) -> dict:
    """Train, evaluate on the split's test part, write the run directory; return the metrics."""
    out_dir, fit, val = start_run(out_dir, LAMP_KIND, config, dataset, split)
    size, channels = config.model.image_size, config.model.in_channels

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

    start = time.perf_counter()
    interactive = progress and sys.stderr.isatty()
    log = EpochLog(out_dir / "train_log.jsonl", "train ae", config.epochs, progress, interactive,
                   None if val_images is None else (val_images, val_labels))
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
        log(record, detector)
    bar.close()
    train_seconds = time.perf_counter() - start

    return finish_run(
        out_dir, LAMP_KIND, model, config.model, dataset, split,
        checkpoint_metadata={"anomaly_map": asdict(config.anomaly_map), "amplifier": asdict(config.amplifier)},
        metrics_head={"amplifier": asdict(config.amplifier)},
        train_stats={"seconds": round(train_seconds, 2), "epochs": config.epochs, "images": len(fit),
                     "images_per_second": round(len(fit) * config.epochs / train_seconds, 2),
                     "final_loss": record["loss"], "final_mse": record["mse"]},
        validation={"synthetic_defect_auroc": record.get("val_synthetic_auroc"), "n_good": len(val)},
        inference=detector)
