"""Pieces every trainer shares: validation hold-out, synthetic validation set, run metadata."""
from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import numpy as np
import torch

from trainer.artifacts import RUN_FORMAT_VERSION, sha256_file, write_json
from trainer.checkpoint import save_checkpoint
from trainer.data import Dataset, Sample, Split
from trainer.evaluate import evaluate_split, predict
from trainer.metrics import auroc
from trainer.synthetic_defects import add_synthetic_defect
from trainer.tensors import load_images, load_masks
from trainer.visualize import save_examples


#: Good images the validation hold-out aims for: edge-calibrate --run fits the alert threshold on
#: them, and a 1% false-alarm rate at 95% confidence needs ln(0.05) / ln(0.99) = 299 of them
#: (docs/calibration.md); with 300 a 5% target may leave 8 of them above the threshold instead
#: of being the highest good score (order statistic n of n), which costs misses.
MIN_VALIDATION_GOOD = 300
#: ... but the hold-out never takes more than this share of the good training images to reach it.
MAX_VALIDATION_SHARE = 0.3
VALIDATION_RULE = (f"validation good images: max(round(val_fraction * n), min({MIN_VALIDATION_GOOD}, "
                   f"floor({MAX_VALIDATION_SHARE} * n))) of the n good training images (0 when val_fraction "
                   f"is 0), the first of numpy.random.default_rng(seed).permutation(n) in split order")


def validation_count(n_good: int, fraction: float) -> int:
    """How many of ``n_good`` good training images are held out for validation (and calibration).

    At least ``fraction`` of them, raised towards MIN_VALIDATION_GOOD where that still leaves
    (1 - MAX_VALIDATION_SHARE) of them for training: a 10% hold-out of ELPV's 1131 good
    training cells is 113, too few for a 1% promise; this rule holds out 300. ``fraction`` 0
    holds out nothing (the hybrid then refuses: it fits its fusion on the hold-out)."""
    if fraction <= 0:
        return 0
    return max(round(fraction * n_good), min(MIN_VALIDATION_GOOD, int(MAX_VALIDATION_SHARE * n_good)))


def hold_out_validation(split: Split, fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Good training images -> (fit, validation), the same for every model given the seed.

    Every trainer holds out the same good images, so a hybrid of two models can fit
    its fusion on images neither model trained on. How many: :func:`validation_count`.
    Runs written before the count rule keep their own list (split.json ``validation_good``)."""
    good = [s for s in split.train if s.label == 0]
    order = np.random.default_rng(seed).permutation(len(good))
    n_val = validation_count(len(good), fraction)
    return [good[i] for i in order[n_val:]], [good[i] for i in order[:n_val]]


def synthetic_validation_set(val_images: torch.Tensor, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Each held-out good image twice: as is, and with one painted defect."""
    rng = np.random.default_rng(seed + 1)
    defective = np.stack([add_synthetic_defect(x, rng)[0] for x in val_images.numpy()])
    images = torch.cat([val_images, torch.from_numpy(defective)])
    labels = np.r_[np.zeros(len(val_images)), np.ones(len(val_images))].astype(int)
    return images, labels


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def start_run(out_dir: Path, model_name: str, config, dataset: Dataset, split: Split):
    """Create the run directory, seed torch, set threads, hold out the validation good images
    and write config.json + split.json. ``config`` has seed, threads, val_fraction, to_dict().
    Returns (out_dir, fit, val)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    fit, val = hold_out_validation(split, config.val_fraction, config.seed)
    n_good, asked = len(fit) + len(val), round(config.val_fraction * (len(fit) + len(val)))
    if len(val) > asked:   # said, not silently changed
        print(f"{model_name}: holding out {len(val)} of {n_good} good training images for validation and "
              f"calibration (--val-fraction {config.val_fraction:g} alone gives {asked}; at least "
              f"min({MIN_VALIDATION_GOOD}, {MAX_VALIDATION_SHARE:.0%}) so that a 1% false-alarm rate can be "
              f"promised)", file=sys.stderr)
    if len(fit) < 2:
        raise ValueError(f"only {len(fit)} good image(s) left for training after the validation "
                         f"hold-out: add good images or lower --val-fraction")
    write_run_header(out_dir, model_name, config.to_dict(), dataset, split, val)
    return out_dir, fit, val


def write_run_header(out_dir, model_name: str, config: dict, dataset: Dataset, split: Split,
                     val: list[Sample]) -> None:
    """config.json and split.json: what was trained, on which images."""
    write_json(out_dir / "config.json", {"format_version": RUN_FORMAT_VERSION, "model": model_name, **config})
    doc = split.to_json(dataset.root)
    doc["validation_good"] = [str(s.path.relative_to(dataset.root)) for s in val]
    doc["validation_rule"] = VALIDATION_RULE
    doc["data_root"] = str(dataset.root)
    doc["data_fingerprint"] = dataset.fingerprint()
    doc["layout"] = dataset.layout
    doc["skipped"] = dict(dataset.skipped)
    write_json(out_dir / "split.json", doc)


def finish_run(out_dir: Path, kind: str, model, model_config, dataset: Dataset, split: Split, *,
               checkpoint_metadata: dict, metrics_head: dict, train_stats: dict, validation: dict,
               inference=None) -> dict:
    """Save the checkpoint of ``model``, score the test split with ``inference`` (default:
    ``model`` itself), write metrics.json and test_scores.npz."""
    checkpoint = out_dir / "checkpoint.pt"
    save_checkpoint(checkpoint, kind, model, model_config, dataset.fingerprint(), **checkpoint_metadata)
    test = list(split.test)
    size, channels = model_config.image_size, model_config.in_channels
    images = load_images(test, size, channels)
    scores, maps = predict(inference or model, images)
    metrics = {
        "format_version": RUN_FORMAT_VERSION,
        "model": kind,
        **metrics_head,
        "test": evaluate_split(test, scores, maps, load_masks(test, size, channels)),
        "validation": {**validation,
                       "note": "held-out good images vs. the same images with painted defects (a proxy)"},
        "train": {**train_stats, "torch_threads": torch.get_num_threads(), "peak_rss_mb": round(peak_rss_mb(), 1)},
        "checkpoint_sha256": sha256_file(checkpoint),
        "data_fingerprint": dataset.fingerprint(),
    }
    write_json(out_dir / "metrics.json", metrics)
    labels = np.array([s.label for s in test])
    save_examples(out_dir / "examples.png", images.numpy(), maps, scores, labels)
    np.savez_compressed(out_dir / "test_scores.npz", scores=scores, labels=labels,
                        paths=np.array([str(s.path.relative_to(dataset.root)) for s in test]))
    return metrics


class EpochLog:
    """End-of-epoch bookkeeping shared by the trainers: synthetic-defect validation AUROC,
    one JSON line in train_log.jsonl, and (when stderr is not a terminal, so no progress
    bar is drawn) a line per tenth of the run for logs and CI."""

    def __init__(self, path: Path, name: str, epochs: int, progress: bool, interactive: bool,
                 validation: tuple[torch.Tensor, np.ndarray] | None) -> None:
        self.path, self.name, self.epochs = Path(path), name, epochs
        self.print_lines = progress and not interactive
        self.validation = validation
        self.path.write_text("")

    def __call__(self, record: dict, model) -> dict:
        if self.validation is not None:
            images, labels = self.validation
            record["val_synthetic_auroc"] = auroc(predict(model, images)[0], labels)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.print_lines and record["epoch"] % max(1, self.epochs // 10) == 0:
            print(f"{self.name}: epoch {record['epoch']}/{self.epochs} loss {record['loss']:.4g} "
                  f"{record['seconds']:.0f} s", file=sys.stderr, flush=True)
        return record
