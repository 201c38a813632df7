"""Probe: a patch classifier on FROZEN pretrained features, alone and fused with the patch kNN.

Why this probe exists: the two-head scorer fine-tunes the whole EfficientNet-Lite0 with k labelled
defects and reaches ELPV image AUROC 0.835 at k = 10 (docs/benchmarks.md, detection), below the
label-free patch kNN (0.884) on the same features. A small head on the frozen features keeps what
ImageNet taught and learns only which patches look like the labelled defects. This script measures
whether that pays, before it becomes a hybrid member.

What it does, per (k, seed) on the trainers' open-set split (``open_set_split(ds, k, seed, 0.25)``):

* features: ``PatchFeatureExtractor`` (Lite0 stages 2 + 4, 3x3 average pooling, 152-d on the
  stride-8 grid; the familiarity member's features) of every image, grey, resized to ``--size``
  (``cv2.INTER_AREA``), computed once and cached under ``--work``;
* 20 % of the split's training good images are held out as validation (seeded); neither the bank
  nor the head sees them; they fit the fusion (median / 1.4826 MAD per member, as ``trainer.hybrid``);
* ``--standardize``: each grey image is first set to mean 0.5 and SD 0.2 (brightness and contrast
  of one cell do not count);
* ``knn``: a random bank of ``--bank`` patches of the remaining training good images; image score =
  the largest patch distance to the bank (the familiarity member's score, without the coreset);
* ``head``: features standardised per channel (training statistics), 1x1 conv 152 -> 64 -> ReLU -> 1
  (a patch logit), image logit = mean of the 8 largest patch logits (multiple-instance pooling:
  a defective image needs only some defective patches); binary cross-entropy with the positives
  weighted by good / defective, AdamW lr 1e-3, weight decay 1e-2, ``--epochs`` passes, batch 64,
  on the training good images plus the k labelled defective ones;
* ``hybrid``: the sum of the two members' robust z-scores.

Metrics on the split's test set: image AUROC / AUPRC (``trainer.metrics``) and the miss rate at
5 % false alarms (threshold = the interpolated 95th percentile of the test good scores, ``np.quantile``;
bench/detection.py's ``fnr_at_far`` takes the order statistic instead, so the two differ slightly).

    python bench/frozen_head.py --data ../shared/data/elpv --k 10 1 --seeds 0 1 2 [--size 224]
"""
from __future__ import annotations

import os

if __name__ == "__main__":  # keep BLAS small on a shared machine (before numpy is imported)
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "2")

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench.report import mean_std, variant_suffix, write_section  # noqa: E402
from trainer.backbones import VARIANTS, load_imagenet_weights  # noqa: E402
from trainer.data import load_dataset, open_set_split, read_image  # noqa: E402
from trainer.familiarity.patch_features import PatchFeatureExtractor  # noqa: E402
from trainer.robust import robust_center_scale  # noqa: E402
from trainer.metrics import auprc, auroc  # noqa: E402

MEMBERS = ("knn", "head", "hybrid")
TOP_PATCHES = 8


def grey_resized(path: Path, size: int, standardize: bool = False) -> np.ndarray:
    img = read_image(path, 1)[:, :, 0]
    full_scale = 65535.0 if img.dtype == np.uint16 else 255.0
    x = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / full_scale
    if standardize:  # per-image brightness and contrast: mean 0.5, SD 0.2
        x = (x - x.mean()) / (x.std() + 1e-6) * 0.2 + 0.5
    return x


def cached_features(samples, size: int, work: Path, standardize: bool = False,
                    backbone: str = "lite0") -> torch.Tensor:
    """(N, D, size/8, size/8) float16 features of every sample (D = 152 for Lite0), cached with the
    list of paths."""
    work.mkdir(parents=True, exist_ok=True)
    name = f"features_{size}" + ("_std" if standardize else "") + variant_suffix(backbone)
    feats, listing = work / f"{name}.npy", work / f"{name}.txt"
    paths = "\n".join(s.path.as_posix() for s in samples)
    if feats.is_file() and listing.is_file() and listing.read_text() == paths:
        return torch.from_numpy(np.load(feats))
    extractor = PatchFeatureExtractor(backbone=backbone)
    load_imagenet_weights(extractor.backbone)
    extractor.eval()
    out, start = [], time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(samples), 32):
            batch = np.stack([grey_resized(s.path, size, standardize) for s in samples[i:i + 32]])[:, None]
            out.append(extractor(torch.from_numpy(batch)).half())
            print(f"\rfeatures {min(i + 32, len(samples))}/{len(samples)} ({time.perf_counter() - start:.0f} s)",
                  end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    all_feats = torch.cat(out)
    np.save(feats, all_feats.numpy())
    listing.write_text(paths)
    return all_feats


def patches(x: torch.Tensor) -> torch.Tensor:
    return x.float().permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    bank_sq = (bank * bank).sum(1)
    out = []
    for i in range(0, len(queries), chunk):  # small chunks: the distance block stays in cache
        q = queries[i:i + chunk]
        d = (q * q).sum(1, keepdim=True) - 2 * q @ bank.T + bank_sq
        out.append(d.min(1).values.clamp_min(0).sqrt())
    return torch.cat(out)


def random_bank(train_feats: torch.Tensor, bank_size: int, seed: int) -> torch.Tensor:
    """``bank_size`` patch features drawn at random (seeded) from the training good images."""
    pool = patches(train_feats)
    return pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:bank_size]]


def knn_scores(bank: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """Image score: the largest patch distance to the nearest bank feature."""
    n, _, h, w = feats.shape
    return torch.cat([nearest_distance(patches(feats[i:i + 64]), bank).reshape(-1, h * w).max(1).values
                      for i in range(0, n, 64)])


def standardised(member_scores: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Per member, every part's scores as robust z-scores of the member's ``val`` (good) scores,
    plus ``hybrid``, their sum (trainer.hybrid's sum rule)."""
    z = {}
    for name, parts in member_scores.items():
        center, scale = robust_center_scale(parts["val"])
        z[name] = {part: (v - center) / scale for part, v in parts.items()}
    z["hybrid"] = {part: sum(z[name][part] for name in member_scores) for part in z[next(iter(member_scores))]}
    return z


class PatchHead(torch.nn.Module):
    def __init__(self, dim: int, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(dim, 64, 1), torch.nn.ReLU(), torch.nn.Conv2d(64, 1, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        logits = self.net((feats.float() - self.mean) / self.std).flatten(1)
        return logits.topk(TOP_PATCHES, 1).values.mean(1)


def train_head(feats: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int) -> PatchHead:
    torch.manual_seed(seed)
    f = feats.float()
    head = PatchHead(f.shape[1], f.mean((0, 2, 3), keepdim=True), f.std((0, 2, 3), keepdim=True) + 1e-3)
    optimiser = torch.optim.AdamW(head.net.parameters(), lr=1e-3, weight_decay=1e-2)
    pos_weight = (labels == 0).sum() / (labels == 1).sum().clamp_min(1)
    for _ in range(epochs):
        order = torch.randperm(len(f))
        for i in range(0, len(f), 64):
            b = order[i:i + 64]
            loss = F.binary_cross_entropy_with_logits(head(f[b]), labels[b], pos_weight=pos_weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return head.eval()


def head_scores(head: PatchHead, feats: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([head(feats[i:i + 128]) for i in range(0, len(feats), 128)])


def miss_at_5(scores: np.ndarray, labels: np.ndarray) -> float:
    threshold = np.quantile(scores[labels == 0], 0.95)
    return float((scores[labels == 1] <= threshold).mean())


_KNN_CACHE: dict = {}


def evaluate(feats: torch.Tensor, index: dict, dataset, k: int, seed: int, bank: int, epochs: int) -> list[dict]:
    split = open_set_split(dataset, k, seed, test_good_fraction=0.25)
    good = [index[s.path] for s in split.train_good]
    rng = np.random.default_rng(seed)
    rng.shuffle(good)
    n_val = len(good) // 5
    val, fit_good = good[:n_val], good[n_val:]
    defective = [index[s.path] for s in split.train_defective]
    test = [index[s.path] for s in split.test]
    y = np.array([s.label for s in split.test])
    start = time.perf_counter()
    # label-free: the good split, and so the bank and the kNN scores, are the same for every k of a seed
    key = (seed, bank, tuple(fit_good), tuple(val))
    if key not in _KNN_CACHE:
        bank_feats = random_bank(feats[fit_good], bank, seed)
        _KNN_CACHE[key] = (bank_feats, knn_scores(bank_feats, feats[val]).numpy(), {})
    bank_feats, val_scores, by_index = _KNN_CACHE[key]
    missing = [i for i in test if i not in by_index]  # a smaller k leaves more defects for testing
    if missing:
        by_index.update(zip(missing, knn_scores(bank_feats, feats[missing]).numpy().tolist()))
    knn = {"val": val_scores, "test": np.array([by_index[i] for i in test])}
    knn_s = time.perf_counter() - start
    start = time.perf_counter()
    train = fit_good + defective
    head = train_head(feats[train], torch.tensor([0.0] * len(fit_good) + [1.0] * len(defective)), epochs, seed)
    head_s = time.perf_counter() - start
    hd = {"val": head_scores(head, feats[val]).numpy(), "test": head_scores(head, feats[test]).numpy()}
    z = {name: parts["test"] for name, parts in standardised({"knn": knn, "head": hd}).items()}
    seconds = {"knn": knn_s, "head": head_s, "hybrid": knn_s + head_s}
    return [{"k": k, "seed": seed, "member": m, "auroc": auroc(z[m], y), "auprc": auprc(z[m], y),
             "miss_at_5": miss_at_5(z[m], y), "seconds": round(seconds[m], 1),
             "n_test_good": int((y == 0).sum()), "n_test_defective": int((y == 1).sum())} for m in MEMBERS]


def table(rows: list[dict]) -> str:
    lines = ["| k | member | seeds | image AUROC | image AUPRC | miss at 5% false alarms | fit s (median) |",
             "|---|---|---|---|---|---|---|"]
    for k in sorted({r["k"] for r in rows}, reverse=True):
        for m in MEMBERS:
            rs = [r for r in rows if r["k"] == k and r["member"] == m]
            if rs:
                lines.append(f"| {k} | {m} | {len(rs)} | {mean_std([r['auroc'] for r in rs])} | "
                             f"{mean_std([r['auprc'] for r in rs])} | {mean_std([r['miss_at_5'] for r in rs])} | "
                             f"{float(np.median([r['seconds'] for r in rs])):.0f} |")
    return "\n".join(lines)


def write_docs(data: str, size: int, standardize: bool, backbone: str, bank: int, rows: list[dict]) -> None:
    write_section(f"frozen_head_{data}" + ("_std" if standardize else "") + variant_suffix(backbone),
                  f"## Probe: a patch classifier on frozen {backbone.capitalize()} features ({data}, {size} px)\n\n"
                  f"Written by `bench/frozen_head.py` (its docstring says exactly what runs)"
                  f"{'; input standardised per image' if standardize else ''}. Random kNN bank of {bank} patches; "
                  f"the head sees the k labelled defects and the training good images; 20% of the training good "
                  f"images are held out to fit the fusion. Shared machine: seconds are indicative only.\n\n"
                  f"{table(rows)}\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="data set root (any layout trainer.data reads; required unless --from-json)")
    p.add_argument("--k", type=int, nargs="+", default=[10, 1], help="labelled defective images (default 10 1)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--size", type=int, default=224, help="square input side in pixels (default 224)")
    p.add_argument("--bank", type=int, default=16384, help="random kNN bank size in patches (default 16384)")
    p.add_argument("--epochs", type=int, default=20, help="passes of the head over its training set (default 20)")
    p.add_argument("--standardize", action="store_true",
                   help="standardise each grey image to mean 0.5, SD 0.2 before the backbone")
    p.add_argument("--backbone", default="lite0", choices=sorted(VARIANTS),
                   help="EfficientNet-Lite variant whose stride-8 + stride-16 stages give the features")
    p.add_argument("--work", default="runs/bench_frozen_head", help="feature cache folder")
    p.add_argument("--json", default="docs/bench/frozen_head.json", help="rows as JSON ('' to skip)")
    p.add_argument("--no-docs", action="store_true", help="do not write the docs/benchmarks.md section")
    p.add_argument("--from-json", type=Path, default=None, metavar="FILE",
                   help="only write the docs section from rows this script saved before (--json FILE)")
    args = p.parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        write_docs(saved["data"], saved["size"], saved.get("standardize", args.standardize),
                   saved.get("backbone", "lite0"), saved["bank"], saved["rows"])
        return 0
    if not args.data:
        p.error("--data DIR is required (or --from-json FILE)")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    dataset = load_dataset(args.data)
    samples = sorted(dataset.samples, key=lambda s: s.path.as_posix())
    feats = cached_features(samples, args.size, Path(args.work) / Path(args.data).resolve().name, args.standardize,
                            args.backbone)
    index = {s.path: i for i, s in enumerate(samples)}
    rows = []
    for k in args.k:
        for seed in args.seeds:
            for r in evaluate(feats, index, dataset, k, seed, args.bank, args.epochs):
                rows.append(r)
                print(json.dumps(r), flush=True)
            if args.json:  # partial results survive an interrupted run
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps({"data": Path(args.data).name, "size": args.size,
                                                       "backbone": args.backbone,
                                                       "standardize": args.standardize, "bank": args.bank, "epochs": args.epochs,
                                                       "rows": rows}, indent=1) + "\n")
    print(table(rows))
    if not args.no_docs:
        write_docs(Path(args.data).resolve().name, args.size, args.standardize, args.backbone, args.bank, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
