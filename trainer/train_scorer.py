"""Train the two-head scorer on good images + k labelled defects + pseudo defects.

Each step (SaliencyCut code, arXiv 2306.08366; DRA protocol, CVPR 2022):
1. draw 32 good images and 16 labelled defects (cycled through the k), apply a
   random symmetry of the square;
2. each good draw becomes a pseudo-defect candidate with probability 0.5;
3. ``saliencycut``: forward the clean batch in eval mode, take the input
   gradient of the two-head loss, smooth it into a saliency map, and fill each
   donor's salient region (a random good image of the batch) with the
   candidate's pixels; ``cutpaste`` (DRA-style baseline): paste a random
   rectangle of the candidate elsewhere in itself;
4. train both heads and the whole backbone with the deviation loss; Adam 2e-4,
   weight decay 1e-5, StepLR(10, 0.1), gradient-norm clip 1.0.

The EfficientNet-Lite0 backbone (default) starts from its ImageNet weights
(``imagenet_weights``, loaded here, never by the constructor: a checkpoint
carries the fine-tuned weights); ResNet-18 from scratch or from ``pretrained``.

The run directory has the same files as the autoencoder's (docs/run-directory.md).
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from trainer.checkpoint import SCORER_KIND
from trainer.config import ScorerTrainConfig
from trainer.data import Dataset, Split
from trainer.geometry import random_dihedral
from trainer.run_setup import EpochLog, finish_run, start_run, synthetic_validation_set
from trainer.tensors import load_images
from trainer.twohead.augment import cut_paste, pick_donors, saliency_cut, smooth_saliency
from trainer.twohead.backbone import load_lite0_imagenet, load_pretrained
from trainer.twohead.loss import two_head_loss
from trainer.twohead.torch_model import TwoHeadScorer


def draw_batch(good: torch.Tensor, defects: torch.Tensor, step: int, config: ScorerTrainConfig,
               g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels (0 good, 1 labelled defect, 2 pseudo-defect candidate)."""
    x = good[torch.randint(len(good), (config.n_normal,), generator=g)]
    labels = torch.zeros(config.n_normal, dtype=torch.long)
    candidate = torch.rand(config.n_normal, generator=g) < config.pseudo_probability
    if candidate.all():  # a donor must stay good
        candidate[0] = False
    labels[candidate] = 2
    if len(defects) and config.n_anomaly:
        cycle = (step * config.n_anomaly + torch.arange(config.n_anomaly)) % len(defects)
        x = torch.cat([x, defects[cycle]])
        labels = torch.cat([labels, torch.ones(config.n_anomaly, dtype=torch.long)])
    return random_dihedral(x, g), labels


def input_saliency(model: TwoHeadScorer, x: torch.Tensor, labels: torch.Tensor, grid: int) -> torch.Tensor:
    """Smoothed |dL/dx| of the two-head loss on the clean batch, model in eval mode."""
    was_training = model.training
    model.eval()
    x = x.detach().requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(two_head_loss(out.normal_score, out.anomaly_score, labels), x)
    model.train(was_training)
    return smooth_saliency(grad, grid)


def make_pseudo_defects(model, x, labels, config: ScorerTrainConfig, g: torch.Generator) -> torch.Tensor:
    candidates = torch.nonzero(labels == 2).squeeze(1)
    if len(candidates) == 0:
        return x
    x = x.clone()
    if config.augmentation == "saliencycut":
        saliency = input_saliency(model, x, labels, config.saliency_grid)
        donors = pick_donors(labels == 0, candidates, g)
        x[candidates] = saliency_cut(x, saliency, candidates, donors, config.saliency_threshold)[0]
    else:
        x[candidates] = cut_paste(x[candidates], g)[0]
    return x


def train_scorer(config: ScorerTrainConfig, dataset: Dataset, split: Split, out_dir: Path,
                 progress: bool = True) -> dict:
    out_dir, fit, val = start_run(out_dir, SCORER_KIND, config, dataset, split)
    size, channels = config.model.image_size, config.model.in_channels

    good = load_images(fit, size, channels)
    defects = load_images([s for s in split.train if s.label == 1], size, channels)
    val_images, val_labels = synthetic_validation_set(load_images(val, size, channels), config.seed) if val else (None, None)

    model = TwoHeadScorer(**config.model.constructor_kwargs())
    if config.imagenet_weights:  # lite0: the ImageNet weights; the whole network is then fine-tuned
        load_lite0_imagenet(model.backbone)
    if config.pretrained:
        load_pretrained(model.backbone, Path(config.pretrained))
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.StepLR(optimiser, config.lr_step_epochs, config.lr_gamma)
    g = torch.Generator().manual_seed(config.seed)
    interactive = progress and sys.stderr.isatty()
    log = EpochLog(out_dir / "train_log.jsonl", "train scorer", config.epochs, progress, interactive,
                   None if val_images is None else (val_images, val_labels))
    bar = tqdm(total=config.epochs * config.steps_per_epoch, desc=f"train scorer ({config.augmentation})",
               unit="step", disable=not interactive, mininterval=0.5)
    start, images_seen = time.perf_counter(), 0
    for epoch in range(config.epochs):
        loss_sum = 0.0
        for step in range(config.steps_per_epoch):
            x, labels = draw_batch(good, defects, epoch * config.steps_per_epoch + step, config, g)
            x = make_pseudo_defects(model, x, labels, config, g)
            model.train()
            out = model(x)
            loss = two_head_loss(out.normal_score, out.anomaly_score, labels)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch + 1}: lower --lr")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimiser.step()
            loss_sum += loss.item()
            images_seen += len(x)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4g}")
        schedule.step()
        record = {"epoch": epoch + 1, "loss": loss_sum / config.steps_per_epoch,
                  "lr": optimiser.param_groups[0]["lr"], "seconds": round(time.perf_counter() - start, 3)}
        log(record, model)
    bar.close()
    train_seconds = time.perf_counter() - start
    return finish_run(
        out_dir, SCORER_KIND, model, config.model, dataset, split,
        checkpoint_metadata={"augmentation": config.augmentation},
        metrics_head={"augmentation": config.augmentation, "k": split.k},
        train_stats={"seconds": round(train_seconds, 2), "epochs": config.epochs,
                     "steps": config.epochs * config.steps_per_epoch, "images": len(fit),
                     "labelled_defects": len(defects),
                     "images_per_second": round(images_seen / train_seconds, 2), "final_loss": record["loss"]},
        validation={"synthetic_defect_auroc": record.get("val_synthetic_auroc"), "n_good": len(val)})
