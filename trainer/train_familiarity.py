"""Fit the familiarity member (nearest normal patch features) and write a run directory.

No gradient step: the ImageNet-pretrained EfficientNet-Lite0 is used as it is, the patch
features of the good training images (the validation hold-out excluded, as for every
member) form the memory bank, and a greedy coreset keeps ``bank_size`` of them. The run
directory has the same files as the other trainers' (docs/run-directory.md).
"""
from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from trainer.backbones import load_imagenet_weights, weights_description
from trainer.checkpoint import FAMILIARITY_KIND
from trainer.data import Dataset, Split
from trainer.familiarity import PatchKnnFamiliarity, k_center_greedy
from trainer.familiarity.config import FamiliarityTrainConfig
from trainer.evaluate import predict
from trainer.metrics import auroc
from trainer.run_setup import finish_run, start_run, synthetic_validation_set
from trainer.tensors import load_images

BATCH = 16


def patch_share(n_images: int, patches_per_image: int, max_patches: int) -> int:
    """Candidate patches drawn from each image so that ``n_images`` give at most ``max_patches``."""
    return max(1, min(patches_per_image, max_patches // n_images))


def draw_patches(flat: torch.Tensor, per_image: int, g: torch.Generator) -> list[torch.Tensor]:
    """``per_image`` random rows of each image's (P, D) patch features in ``flat`` (B, P, D), drawn
    with ``g``; every row, in order, when ``per_image`` >= P."""
    p = flat.shape[1]
    return [one[torch.randperm(p, generator=g)[:per_image]] if per_image < p else one for one in flat]


@torch.no_grad()
def collect_patch_features(model: PatchKnnFamiliarity, samples, size: int, channels: int, max_patches: int,
                           seed: int, progress: bool) -> tuple[torch.Tensor, int]:
    """Patch features of ``samples`` as (N, D), at most ``max_patches`` of them drawn at random
    (seeded) with the same share from every image; returns them and the total count."""
    model.eval()
    per_image = None
    chunks, total = [], 0
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(total=len(samples), desc="familiarity: features", unit="img",
               disable=not (progress and sys.stderr.isatty()))
    for i in range(0, len(samples), BATCH):
        images = load_images(samples[i:i + BATCH], size, channels)
        f = model.features(images)
        b, d, h, w = f.shape
        if per_image is None:
            per_image = patch_share(len(samples), h * w, max_patches)
        total += b * h * w
        chunks.extend(draw_patches(f.permute(0, 2, 3, 1).reshape(b, h * w, d), per_image, g))
        bar.update(b)
    bar.close()
    return torch.cat(chunks), total


def train_familiarity(config: FamiliarityTrainConfig, dataset: Dataset, split: Split, out_dir: Path,
                      progress: bool = True) -> dict:
    out_dir, fit, val = start_run(out_dir, FAMILIARITY_KIND, config, dataset, split)
    size, channels = config.model.image_size, config.model.in_channels
    start = time.perf_counter()
    model = PatchKnnFamiliarity(**config.model.constructor_kwargs())
    load_imagenet_weights(model.features.backbone, Path(config.weights) if config.weights else None)
    model.eval()
    features, total = collect_patch_features(model, fit, size, channels, config.max_candidates, config.seed,
                                             progress)
    t_features = time.perf_counter() - start
    n = min(config.model.bank_size, len(features))
    if progress:
        print(f"familiarity: {total} patch features from {len(fit)} good images, coreset of {n} "
              f"from {len(features)} candidates", file=sys.stderr, flush=True)
    picked = k_center_greedy(features, n, seed=config.seed)
    model.set_memory_bank(features[picked])
    train_seconds = time.perf_counter() - start
    model_config = replace(config.model, bank_size=n)
    proxy = None
    if val:
        images, labels = synthetic_validation_set(load_images(val, size, channels), config.seed)
        proxy = auroc(predict(model, images)[0], labels)
    return finish_run(
        out_dir, FAMILIARITY_KIND, model, model_config, dataset, split,
        checkpoint_metadata={"weights": weights_description(config.model.backbone, config.weights)},
        metrics_head={"bank_size": n, "patch_features_seen": total},
        train_stats={"seconds": round(train_seconds, 2), "feature_seconds": round(t_features, 2),
                     "coreset_seconds": round(train_seconds - t_features, 2), "images": len(fit),
                     "images_per_second": round(len(fit) / max(t_features, 1e-9), 2)},
        validation={"synthetic_defect_auroc": proxy, "n_good": len(val)})
