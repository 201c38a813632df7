"""The two label-free floors: what any learned detector has to beat on a data set.

Both see each image as grey pixels only: read with the data layer (``read_image(path, 1)``; a colour
image is converted to grey with ``cv2.COLOR_RGB2GRAY``, explicitly), resized to 64 x 64
(``cv2.INTER_AREA``), flattened to 4,096 values scaled to [0, 1].

* ``knn``: image score = Euclidean distance to the nearest training good image.
* ``pca``: PCA fitted on the training good images (mean-centred, numpy SVD); by default the fewest
  components explaining >= 95 % of their variance are kept (``--var``), or a fixed count
  (``--components N``); image score = the L2 norm of the reconstruction residual
  ``|x - mean - P P^T (x - mean)|``.

Both use the trainers' open-set split, ``open_set_split(dataset, k, seed, test_good_fraction=0.25)``:
fitted on the split's training good images only (the k labelled defective training images are not
used: the floors are label-free, but they are kept out of the test set exactly as for the trainers),
evaluated on the split's whole test set (held-out good + remaining defective) with
``trainer.metrics.auroc`` / ``auprc`` (image level).

    python bench/floors.py --data DIR [--layout auto] [--k 10] [--seeds 0 1 2] [--var 0.95 | --components N]
                           [--json PATH]

    from bench.floors import evaluate       # or: sys.path.insert(0, "bench"); import floors
    rows = evaluate(load_dataset(DIR), k=10, seeds=[0, 1, 2])
"""
from __future__ import annotations

import os

if __name__ == "__main__":  # keep BLAS small on a shared machine (before numpy is imported)
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "2")

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from trainer.data import Dataset, ImageError, Sample, load_dataset, open_set_split, read_image  # noqa: E402
from trainer.metrics import auprc, auroc  # noqa: E402

SIZE = 64
VAR = 0.95
METHODS = ("knn", "pca")

__all__ = ["METHODS", "PCA", "evaluate", "fit_pca", "image_matrix", "knn_scores", "pca_scores"]


def _grey(path: Path) -> np.ndarray:
    try:
        return read_image(path, 1)[:, :, 0]
    except ImageError as e:
        if "3 channels" not in str(e):
            raise
        return cv2.cvtColor(read_image(path, 3), cv2.COLOR_RGB2GRAY)


def image_matrix(samples: Iterable[Sample], size: int = SIZE) -> np.ndarray:
    """float32 (n, size*size) in [0, 1]: grey, resized with INTER_AREA, flattened (row-major)."""
    rows = [cv2.resize(_grey(s.path), (size, size), interpolation=cv2.INTER_AREA).reshape(-1) for s in samples]
    return np.stack(rows).astype(np.float32) / 255.0


def knn_scores(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Euclidean distance of each test row to its nearest train row (float64)."""
    a, b = test.astype(np.float64), train.astype(np.float64)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(d2.min(axis=1), 0.0))


@dataclass(frozen=True)
class PCA:
    mean: np.ndarray  #: (d,)
    components: np.ndarray  #: (n_components, d), orthonormal rows
    explained: float  #: fraction of the training variance the kept components explain


def fit_pca(train: np.ndarray, var: float = VAR, n_components: int | None = None) -> PCA:
    """PCA of ``train`` (rows = images) by numpy SVD; keep ``n_components``, or the fewest reaching ``var``."""
    x = train.astype(np.float64)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    energy = s ** 2
    total = float(energy.sum())
    if total <= 0.0:
        raise ValueError("the training images are all identical: PCA has no variance to explain")
    cum = np.cumsum(energy) / total
    if n_components is None:
        if not 0.0 < var <= 1.0:
            raise ValueError(f"var must be in (0, 1], got {var}")
        n = int(np.searchsorted(cum, var - 1e-12) + 1)
    else:
        n = int(n_components)
        if not 1 <= n <= vt.shape[0]:
            raise ValueError(f"n_components must be in 1..{vt.shape[0]} (the rank bound), got {n}")
    n = min(n, vt.shape[0])
    return PCA(mean=mean, components=vt[:n], explained=float(cum[n - 1]))


def pca_scores(pca: PCA, test: np.ndarray) -> np.ndarray:
    """L2 norm of each test row's PCA reconstruction residual."""
    c = test.astype(np.float64) - pca.mean
    residual = c - (c @ pca.components.T) @ pca.components
    return np.sqrt((residual * residual).sum(axis=1))


def evaluate(dataset: Dataset, k: int, seeds: Sequence[int], size: int = SIZE, var: float = VAR,
             n_components: int | None = None, methods: Sequence[str] = METHODS) -> list[dict]:
    """One row per (seed, method): counts, image AUROC and AUPRC on the open-set split's test set."""
    samples = list(dataset.samples)
    index = {s.path: i for i, s in enumerate(samples)}
    pixels = image_matrix(samples, size)  # every image once; the splits only index into it
    rows = []
    for seed in seeds:
        split = open_set_split(dataset, k, seed, test_good_fraction=0.25)
        train = pixels[[index[s.path] for s in split.train_good]]
        test = pixels[[index[s.path] for s in split.test]]
        labels = np.array([s.label for s in split.test])
        common = {"seed": int(seed), "k": int(k), "size": size, "n_train_good": len(train),
                  "n_test_good": int((labels == 0).sum()), "n_test_defective": int((labels == 1).sum())}
        for method in methods:
            if method == "knn":
                scores, extra = knn_scores(train, test), {}
            elif method == "pca":
                pca = fit_pca(train, var=var, n_components=n_components)
                scores = pca_scores(pca, test)
                extra = {"n_components": int(pca.components.shape[0]), "explained": round(pca.explained, 4)}
            else:
                raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
            rows.append({"method": method, **common, **extra,
                         "auroc": auroc(scores, labels), "auprc": auprc(scores, labels)})
    return rows


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(rows: list[dict]) -> str:
    lines = ["| method | seed | train good | test good / defective | AUROC | AUPRC | PCA components |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        comp = f"{r['n_components']} ({r['explained']:.1%} var.)" if "n_components" in r else ""
        lines.append(f"| {r['method']} | {r['seed']} | {r['n_train_good']} | {r['n_test_good']} / "
                     f"{r['n_test_defective']} | {r['auroc']:.3f} | {r['auprc']:.3f} | {comp} |")
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        lines.append(f"| **{method}** | mean ± std ({len(rs)}) | | | {_mean_std([r['auroc'] for r in rs])} | "
                     f"{_mean_std([r['auprc'] for r in rs])} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="data set folder (mvtec, elpv or folders layout)")
    p.add_argument("--layout", default="auto", help="auto (default), mvtec, elpv or folders")
    p.add_argument("--k", type=int, default=10, help="labelled defective training images of the split (default 10)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--size", type=int, default=SIZE, help="side of the grey thumbnails (default 64)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--var", type=float, default=VAR, help="PCA: keep components explaining this variance (0.95)")
    g.add_argument("--components", type=int, default=None, help="PCA: keep this many components instead")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    cv2.setNumThreads(1)
    try:
        ds = load_dataset(args.data, args.layout)
        rows = evaluate(ds, args.k, args.seeds, size=args.size, var=args.var, n_components=args.components,
                        methods=args.methods)
    except (ImageError, ValueError) as e:
        print(f"floors: error: {e}", file=sys.stderr)
        return 2
    c = ds.counts()
    print(f"{ds.root} ({ds.layout}): {c['good']} good, {c['defective']} defective; k = {args.k}; "
          f"{args.size}x{args.size} grey, image-level metrics on the open-set test set")
    print(table(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
