"""Probe on the bundled demo: would a frozen-feature patch head + patch kNN meet `make demo`'s bar?

Trained exactly as the bundled model's data rule says (deploy/bundled_training_data.py): every ELPV
cell that is not one of the 50 demo cells of trainer/sample_data/elpv_mini. Of those, 10 % of the
good cells are held out (seeded) to fit the fusion and the threshold; the rest of the good cells
and every defective one train the members (bench/frozen_head.py describes them). The threshold is
the one edge-calibrate would set for a 5 % false-alarm target at 95 % confidence on the held-out
good scores (``calibration.thresholds``), then the 50 demo cells are judged against it.

    python bench/frozen_head_demo.py --data ../shared/data/elpv [--size 224] [--standardize]
"""
from __future__ import annotations

import os

if __name__ == "__main__":
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "2")

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench.frozen_head import cached_features, head_scores, knn_scores, random_bank, standardised, train_head  # noqa: E402
from calibration.thresholds import fit_threshold  # noqa: E402
from trainer.data import load_dataset  # noqa: E402
from trainer.metrics import auroc  # noqa: E402

SAMPLE = ROOT / "trainer" / "sample_data" / "elpv_mini"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--bank", type=int, default=16384)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--standardize", action="store_true", help="per-image mean 0.5, SD 0.2 (bench/frozen_head.py)")
    p.add_argument("--work", default="runs/bench_frozen_head")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    dataset = load_dataset(args.data)
    samples = sorted(dataset.samples, key=lambda s: s.path.as_posix())
    feats = cached_features(samples, args.size, Path(args.work) / Path(args.data).resolve().name, args.standardize)
    demo_names = {p.name for p in (SAMPLE / "images").iterdir()}
    demo = [i for i, s in enumerate(samples) if s.path.name in demo_names]
    rest = [i for i, s in enumerate(samples) if s.path.name not in demo_names]
    good = [i for i in rest if samples[i].label == 0]
    bad = [i for i in rest if samples[i].label == 1]
    rng = np.random.default_rng(args.seed)
    rng.shuffle(good)
    n_val = len(good) // 10
    val, fit_good = good[:n_val], good[n_val:]
    y_demo = np.array([samples[i].label for i in demo])
    bank = random_bank(feats[fit_good], args.bank, args.seed)
    knn = {part: knn_scores(bank, feats[ix]).numpy() for part, ix in (("val", val), ("demo", demo))}
    head = train_head(feats[fit_good + bad], torch.tensor([0.0] * len(fit_good) + [1.0] * len(bad)), args.epochs, args.seed)
    hd = {part: head_scores(head, feats[ix]).numpy() for part, ix in (("val", val), ("demo", demo))}
    z = standardised({"knn": knn, "head": hd})
    print(f"{len(demo)} demo cells ({int(y_demo.sum())} defective); trained on {len(fit_good)} good + {len(bad)} "
          f"defective, {len(val)} held-out good for fusion and threshold")
    for name, s in z.items():
        thr = fit_threshold(s["val"], far=0.05).threshold
        caught = int((s["demo"][y_demo == 1] > thr).sum())
        fa = int((s["demo"][y_demo == 0] > thr).sum())
        q95 = float(np.quantile(s["val"], 0.95))
        caught95 = int((s["demo"][y_demo == 1] > q95).sum()); fa95 = int((s["demo"][y_demo == 0] > q95).sum())
        print(f"{name:7s} demo AUROC {auroc(s['demo'], y_demo):.3f}; calibrated threshold {thr:.2f}: caught "
              f"{caught}/{int(y_demo.sum())}, false alarms {fa}/{int((y_demo == 0).sum())}; "
              f"at the plain 95th percentile {q95:.2f}: caught {caught95}, false alarms {fa95}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
