"""Greedy k-center coreset (PatchCore, Roth et al. CVPR 2022, Sec. 3.2, Alg. 1).

Picks ``n`` of the memory bank's features so that every feature left out is as close as
possible to a picked one: start from one seeded random feature, then repeatedly add the
feature farthest from everything picked so far. The distances are computed on a
seeded random projection to ``projection_dim`` dimensions (the Johnson-Lindenstrauss
trick PatchCore uses to make the selection cheap); the bank keeps full features.
Deterministic for a given seed.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def k_center_greedy(features: torch.Tensor, n: int, seed: int = 0, projection_dim: int = 128,
                    progress=None) -> torch.Tensor:
    """Indices (n,) into ``features`` (N, D), in the order picked. ``progress(i)`` is called
    every 256 picks when given."""
    count = features.shape[0]
    if n >= count:
        return torch.arange(count)
    if n < 1:
        raise ValueError(f"coreset size must be >= 1, got {n}")
    g = torch.Generator().manual_seed(seed)
    x = features.float()
    if x.shape[1] > projection_dim:
        projection = torch.randn(x.shape[1], projection_dim, generator=g) / projection_dim ** 0.5
        x = x @ projection
    sq = (x * x).sum(1)
    first = int(torch.randint(count, (1,), generator=g))
    picked = torch.empty(n, dtype=torch.long)
    picked[0] = first
    min_d2 = _squared_distances(x, sq, first)
    for i in range(1, n):
        nxt = int(torch.argmax(min_d2))
        picked[i] = nxt
        torch.minimum(min_d2, _squared_distances(x, sq, nxt), out=min_d2)
        if progress is not None and i % 256 == 0:
            progress(i)
    return picked


def _squared_distances(x: torch.Tensor, sq: torch.Tensor, j: int) -> torch.Tensor:
    """||x_i - x_j||^2 for every row i. One matrix-vector product, then in-place work on the (N,)
    result: written as ``sq - 2 * x @ x[j]`` Python scales the whole (N, D) matrix by 2 first
    (``*`` binds before ``@``), a second pass over it per pick that made the selection 3-4x slower
    (200,000 x 128: 51-68 ms against 16 ms per pick on 2 cores). Scaling by 2 is exact, so the
    picks are the same as before."""
    return torch.mv(x, x[j]).mul_(-2).add_(sq).add_(sq[j]).clamp_min_(0)
