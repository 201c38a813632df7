"""Train the patch head member (a classifier on frozen pretrained patch features) and write a run.

The frozen part of the backbone never changes, so what training reads from it is computed once
per image (no gradient): the patch features, or, when the deeper stages are re-trained
(``tune_from_stage``), the frozen stage maps they start from. The head trains on them for
``epochs`` passes in seconds (about a minute a pass when re-training stages 3-4 of ~1,300 images):
binary cross-entropy on the image logit (mean of the largest patch logits), the labelled defective images weighted by
good / defective so that a handful of them is not drowned by hundreds of good ones; AdamW. With
``heads`` > 1 each head of the ensemble has its own loss (their sum is minimised, so each head's
parameters get exactly the gradient they would get alone; re-trained blocks, shared by the heads,
get the sum, and AdamW's step does not depend on a gradient's scale).
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

from trainer.backbones import load_imagenet_weights, weights_description
from trainer.checkpoint import PATCH_HEAD_KIND
from trainer.data import Dataset, Split
from trainer.evaluate import predict
from trainer.metrics import auroc
from trainer.patchhead import PatchHeadScorer
from trainer.patchhead.config import PatchHeadTrainConfig
from trainer.patchhead.style_balance import style_balanced_weights
from trainer.run_setup import finish_run, start_run, synthetic_validation_set
from trainer.tensors import load_images

BATCH = 16


@torch.no_grad()
def frozen_inputs(model: PatchHeadScorer, samples, size: int, channels: int, flips: bool,
                  progress: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    """What training reads from the frozen backbone, float16, view by view (as they are, then with
    ``flips`` flipped left-right, then up-down): the patch features for a frozen head, or the
    frozen stage maps that the re-trained blocks start from; and each row's look (the spatial mean
    of its frozen patch features, for ``--balance-styles``)."""
    views_kept: list[list[list[torch.Tensor]]] = []
    looks: list[list[torch.Tensor]] = []
    bar = tqdm(total=len(samples), desc="patch head: features", unit="img",
               disable=not (progress and sys.stderr.isatty()))
    for i in range(0, len(samples), BATCH):
        images = load_images(samples[i:i + BATCH], size, channels)
        views = [images] + ([images.flip(-1), images.flip(-2)] if flips else [])
        for v, view in enumerate(views):
            maps = model.features.stage_maps(view)
            combined = model.features.combine(maps)
            if model.tune_from_stage is None:
                parts = [combined]
            else:
                keep = model.frozen_stages()
                parts = [m for s, m in zip(model.features.stages, maps) if s in keep]
            if len(views_kept) <= v:
                views_kept.append([[] for _ in parts])
                looks.append([])
            looks[v].append(combined.mean(dim=(2, 3)))
            for kept, part in zip(views_kept[v], parts):
                kept.append(part.half())
        bar.update(len(images))
    bar.close()
    inputs = [torch.cat([torch.cat(view[j]) for view in views_kept]) for j in range(len(views_kept[0]))]
    return inputs, torch.cat([torch.cat(v) for v in looks])


@torch.no_grad()
def set_statistics(model: PatchHeadScorer, inputs: list[torch.Tensor]) -> None:
    """The head's input standardisation, from the training features at the start of training."""
    if model.tune_from_stage is None:
        model.set_feature_statistics(inputs[0])
        return
    total = total_sq = 0.0
    count = 0
    for i in range(0, len(inputs[0]), 128):
        f = model.features_from_maps([t[i:i + 128].float() for t in inputs]).double()
        total = total + f.sum(dim=(0, 2, 3))
        total_sq = total_sq + (f * f).sum(dim=(0, 2, 3))
        count += f.shape[0] * f.shape[2] * f.shape[3]
    mean = total / count
    sd = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    model.feature_mean = mean.float().view(1, -1, 1, 1)
    model.feature_sd = sd.float().view(1, -1, 1, 1) + 1e-3


def fit_head(model: PatchHeadScorer, inputs: list[torch.Tensor], labels: torch.Tensor, config: PatchHeadTrainConfig,
             log_path: Path, progress: bool, weights: torch.Tensor | None = None) -> list[dict]:
    """Train ``model.head`` (and ``model.tuned``, the re-trained blocks, if any) on precomputed frozen
    inputs (``frozen_inputs``); returns the per-epoch log. A frozen head trains at a constant rate;
    re-trained blocks follow a one-cycle schedule (warm-up, then decay to zero) with batch-norm
    statistics kept from ImageNet (a few hundred parts are too few to re-estimate them). ``weights``:
    per-row loss weights (``--balance-styles``; default 1)."""
    set_statistics(model, inputs)
    tuning = model.tune_from_stage is not None
    groups = [{"params": list(model.head.parameters()), "lr": config.lr}]
    if tuning:
        groups.append({"params": list(model.tuned.parameters()), "lr": config.tune_lr})
    optimiser = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    batch_size = min(config.batch_size, 32) if tuning else config.batch_size
    n = len(inputs[0])
    schedule = None
    if tuning:
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimiser, max_lr=[g["lr"] for g in groups], pct_start=0.15,
            total_steps=config.epochs * ((n + batch_size - 1) // batch_size))
    pos_weight = (labels == 0).sum() / (labels == 1).sum().clamp_min(1)
    g = torch.Generator().manual_seed(config.seed)
    log, start = [], time.perf_counter()
    model.head.train()
    for epoch in range(1, config.epochs + 1):
        order, total = torch.randperm(n, generator=g), 0.0
        for i in range(0, n, batch_size):
            batch = order[i:i + batch_size]
            if tuning:
                features = model.features_from_maps([t[batch].float() for t in inputs])
            else:
                features = inputs[0][batch]
            logits = model.head_image_logits(model.patch_logits(features))     # (b, heads)
            # each head on its own loss (summed: every head gets the gradient it would get alone)
            target = labels[batch, None].expand_as(logits)
            row_weights = None if weights is None else weights[batch, None].expand_as(logits)
            loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, weight=row_weights,
                                                      reduction="none").mean(dim=0).sum()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"patch head: the loss became {loss.item()} at epoch {epoch}: "
                                         f"lower --lr (now {config.lr})" + (f" or --tune-lr (now {config.tune_lr})"
                                                                           if tuning else ""))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if schedule is not None:
                schedule.step()
            total += loss.item() / model.heads * len(batch)
        log.append({"epoch": epoch, "loss": total / n, "seconds": round(time.perf_counter() - start, 2)})
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
    if model.tune_from_stage is not None:
        model.start_tuning()
    samples = fit + defective
    inputs, looks = frozen_inputs(model, samples, size, channels, config.flips, progress)
    views = len(inputs[0]) // len(samples)
    labels = torch.tensor([0.0] * len(fit) + [1.0] * len(defective)).repeat(views)
    weights, styles = None, None
    if config.balance_styles:
        weights, styles = style_balanced_weights(looks, labels, config.balance_styles, config.seed)
    t_features = time.perf_counter() - start
    log = fit_head(model, inputs, labels, config, out_dir / "train_log.jsonl", progress, weights)
    del inputs
    train_seconds = time.perf_counter() - start
    proxy = None
    if val:
        images, vlabels = synthetic_validation_set(load_images(val, size, channels), config.seed)
        proxy = auroc(predict(model, images)[0], vlabels)
    return finish_run(
        out_dir, PATCH_HEAD_KIND, model, config.model, dataset, split,
        checkpoint_metadata={"weights": weights_description(config.model.backbone, config.weights) + ", "
                                        + ("frozen" if model.tune_from_stage is None
                                           else f"re-trained from stage {model.tune_from_stage} on")},
        metrics_head={"n_train_good": len(fit), "n_train_defective": len(defective), "views": views},
        train_stats={"seconds": round(train_seconds, 2), "feature_seconds": round(t_features, 2),
                     "head_seconds": round(train_seconds - t_features, 2), "images": len(samples),
                     "images_per_second": round(len(samples) / max(t_features, 1e-9), 2),
                     "final_loss": log[-1]["loss"], "style_clusters": styles},
        validation={"synthetic_defect_auroc": proxy, "n_good": len(val)})
