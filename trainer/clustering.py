"""k-means and the silhouette, for grouping images by their look (torch, CPU, small N).

Two users: the patch head's style balancing (trainer/patchhead/style_balance.py) and the hybrid's
per-look fusion constants (trainer/hybrid/looks.py). N is hundreds to a few thousand images and D a
few hundred channels, so plain Lloyd iterations and an O(N^2) silhouette cost milliseconds.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


def kmeans(x: torch.Tensor, clusters: int, seed: int, iterations: int = 50) -> torch.Tensor:
    """Cluster index of each row of ``x`` (Lloyd's algorithm from ``clusters`` seeded distinct rows)."""
    g = torch.Generator().manual_seed(seed)
    centers = x[torch.randperm(len(x), generator=g)[:clusters]].clone()
    assign = torch.zeros(len(x), dtype=torch.long)
    for _ in range(iterations):
        assign = torch.cdist(x, centers).argmin(1)
        centers = torch.stack([x[assign == c].mean(0) if (assign == c).any() else centers[c]
                               for c in range(len(centers))])
    return assign


class Clustering(NamedTuple):
    centers: torch.Tensor  # (C, D); C may be below the clusters asked for when a cluster came out empty
    assign: torch.Tensor   # (N,) index of each row's nearest center
    inertia: float         # sum of squared distances of the rows to their centers


def best_kmeans(x: torch.Tensor, clusters: int, seed: int, restarts: int = 10) -> Clustering:
    """The lowest-inertia of ``restarts`` seeded k-means runs. One run from random rows can settle
    on an outlier cluster of a dozen images next to one cluster of everything else (seen on ELPV);
    restarts make the split the data's, not the draw's."""
    best = None
    for r in range(restarts):
        assign = kmeans(x, clusters, seed * 1000 + r)
        centers = torch.stack([x[assign == c].mean(0) for c in range(clusters) if (assign == c).any()])
        assign = torch.cdist(x, centers).argmin(1)
        inertia = float(((x - centers[assign]) ** 2).sum())
        if best is None or inertia < best.inertia:
            best = Clustering(centers, assign, inertia)
    return best


def silhouette(x: torch.Tensor, assign: torch.Tensor) -> float:
    """Mean silhouette (Rousseeuw 1987): per row, (b - a) / max(a, b) with a the mean distance to its own
    cluster and b to the nearest other cluster; 0 for a row alone in its cluster. Near 0: no cluster
    structure; above ~0.25: real groups."""
    labels = assign.unique()
    if len(labels) < 2:
        raise ValueError("the silhouette needs at least 2 clusters")
    d = torch.cdist(x, x)
    member = torch.stack([assign == c for c in labels], 1).to(d.dtype)  # (N, C)
    sums = d @ member                                                   # (N, C) distance sums to each cluster
    sizes = member.sum(0)
    own = (assign.unsqueeze(1) == labels.unsqueeze(0))
    a = (sums * own).sum(1) / (sizes[own.float().argmax(1)] - 1).clamp_min(1)
    mean_other = (sums / sizes).masked_fill(own, float("inf"))
    b = mean_other.min(1).values
    s = (b - a) / torch.maximum(a, b).clamp_min(1e-12)
    s = torch.where(sizes[own.float().argmax(1)] > 1, s, torch.zeros_like(s))
    return float(s.mean())
