"""Loss weights that stop a supervised member from learning "this kind of part is defective".

ELPV's first modules are mono cells of one look, and almost all of their cells are defective: 192
defective to 23 good, 18 of those good ones among the 50 demo cells. A head taught on the rest
learns the look instead of the defect, and flags good cells of that look (docs/benchmarks.md,
section tuned_head_reading). Any line has this risk when one product variant, batch or camera
angle is over-represented among its labelled defects.

The remedy is importance re-weighting (as for spurious correlations in group-robust training):
cluster the training images by their global look (the spatial mean of their frozen ImageNet patch
features, standardised per channel; k-means, seeded), then weight each image so that, in every
cluster, good and defective images carry the data set's overall proportions:

    w(good in c) = n_c (G / N) / g_c,    w(defective in c) = n_c (B / N) / b_c,

with n_c = g_c + b_c images in cluster c, G good and B defective of N. The label then says nothing
about the cluster, only about what differs inside it. Weights are clipped to [1/clip, clip] so that
a cluster with two good images does not hand each of them the weight of a hundred; a cluster of
one class only keeps weight 1.
"""
from __future__ import annotations

import torch

from trainer.clustering import kmeans


def style_balanced_weights(descriptors: torch.Tensor, labels: torch.Tensor, clusters: int, seed: int,
                           clip: float = 10.0) -> tuple[torch.Tensor, list[dict]]:
    """Per-image loss weights (N,) and a per-cluster summary for the run's metrics."""
    if clusters < 2:
        raise ValueError(f"style balancing needs at least 2 clusters, got {clusters}")
    x = descriptors.double()
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    assign = kmeans(x, min(clusters, len(x)), seed)
    good, bad = labels == 0, labels == 1
    n, n_good, n_bad = float(len(labels)), float(good.sum()), float(bad.sum())
    weights = torch.ones(len(labels), dtype=torch.float64)
    summary = []
    for c in range(int(assign.max()) + 1):
        member = assign == c
        g, b = float((member & good).sum()), float((member & bad).sum())
        if g and b:
            weights[member & good] = (g + b) * n_good / n / g
            weights[member & bad] = (g + b) * n_bad / n / b
        weights[member] = weights[member].clamp(1 / clip, clip)
        summary.append({"cluster": c, "good": int(g), "defective": int(b),
                        "weight_good": round(float(weights[member & good].mean()), 3) if g else None,
                        "weight_defective": round(float(weights[member & bad].mean()), 3) if b else None})
    return weights.float(), summary
