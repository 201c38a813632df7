"""Score a split with a detector and compute the run's metrics."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from trainer.data import Sample
from trainer.lamp import LampDetector
from trainer.metrics import auprc, auroc, pixel_auroc, pro_score


@torch.no_grad()
def predict(detector: LampDetector, images: torch.Tensor, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Image scores (N,) and anomaly maps (N, H, W) for images (N, C, H, W) in [0, 1]."""
    detector.eval()
    scores, maps = [], []
    for i in range(0, len(images), batch_size):
        out = detector(images[i:i + batch_size])
        scores.append(out.score.numpy())
        maps.append(out.anomaly_map[:, 0].numpy())
    return np.concatenate(scores), np.concatenate(maps)


def image_metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
    return {"auroc": auroc(scores, labels), "auprc": auprc(scores, labels),
            "n_good": int((labels == 0).sum()), "n_defective": int((labels == 1).sum())}


def evaluate_split(samples: Sequence[Sample], scores: np.ndarray, maps: np.ndarray,
                   masks: np.ndarray | None) -> dict:
    """Image AUROC/AUPRC overall and per defect type; pixel AUROC and PRO where masks exist."""
    labels = np.array([s.label for s in samples])
    result = {"image": image_metrics(scores, labels)}
    types = sorted({s.defect_type for s in samples if s.label == 1})
    if len(types) > 1:
        good = labels == 0
        result["image_per_defect_type"] = {
            t: auroc(scores[good | sel], labels[good | sel])
            for t in types for sel in [np.array([s.defect_type == t for s in samples])]}
    if masks is None:
        result["pixel"] = None
        result["pixel_note"] = "no pixel masks for the defective test images: pixel AUROC and PRO not computed"
    else:
        result["pixel"] = {"auroc": pixel_auroc(maps, masks), "pro_fpr0.3": pro_score(maps, masks),
                           "resolution": list(maps.shape[1:])}
    return result
