"""Probe: LAMP on a feature-reconstruction autoencoder (issue 11 item 4), beside the patch kNN.

The pixel LAMP autoencoder scores 0.53-0.66 on ELPV (docs/benchmarks.md). LAMP is a training
strategy for any reconstruction metric, so this probe applies it to the reconstruction of the
frozen pretrained patch features instead of the pixels (as DFR and similar feature autoencoders do):

* features: the familiarity member's (EfficientNet-Lite0 stages 2 + 4, 3x3 averaged, 152-d on the
  stride-8 grid, 224 px, input standardised per image), cached by ``bench.frozen_head.cached_features``;
* each patch feature is standardised per channel (training statistics) and scaled by 1/4, so that
  the squared residual ``l`` of an element lies mostly in [0, 1), the range the amplifiers are
  defined on (trainer/lamp/amplifier.py);
* autoencoder: 1x1 convolutions 152 -> 64 -> 24 -> 64 -> 152 with ReLU (a per-patch bottleneck),
  trained on the training good images only, loss = mean of ``amplify(l)``, Adam 1e-3, ``--epochs``
  passes in batches of 8 images;
* patch score: the mean squared residual over channels; image score: the largest patch score;
* amplifiers compared: identity (plain MSE, LAMP off), exp alpha 3 and 10, lmse (LMSE, the
  amplifier the paper's first author published, arXiv 2201.05748);
* beside it the random-bank patch kNN on the same features (``bench.frozen_head``), and the sum of
  the two members' robust z-scores fitted on held-out good training images (no labels).

The label-free k = 0 split of ``open_set_split`` per seed, 20 % of its training good images held
out for the fusion (as bench/frozen_head.py). Test-set AUROC is reported for every amplifier: the
choice between them is not made on it (that would be peeking); the member is adopted only if every
variant pays.

    python bench/feature_lamp_probe.py --data ../shared/data/elpv --seeds 0 1 2
"""
from __future__ import annotations

import os

if __name__ == "__main__":
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "2")

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from bench.frozen_head import cached_features, knn_scores, miss_at_5, random_bank, standardised  # noqa: E402
from bench.report import mean_std, write_section  # noqa: E402
from trainer.data import load_dataset, open_set_split  # noqa: E402
from trainer.lamp.amplifier import AmplifierConfig, amplify  # noqa: E402
from trainer.metrics import auroc  # noqa: E402

AMPLIFIERS = {"identity": AmplifierConfig("identity"), "exp a=3": AmplifierConfig("exp", 3.0),
              "exp a=10": AmplifierConfig("exp", 10.0), "lmse": AmplifierConfig("lmse")}
FEATURE_SCALE = 0.25


class FeatureAutoencoder(torch.nn.Module):
    def __init__(self, dim: int, mean: torch.Tensor, sd: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("sd", sd)
        conv = torch.nn.Conv2d
        self.net = torch.nn.Sequential(conv(dim, 64, 1), torch.nn.ReLU(), conv(64, 24, 1), torch.nn.ReLU(),
                                       conv(24, 64, 1), torch.nn.ReLU(), conv(64, dim, 1))

    def squared_residual(self, feats: torch.Tensor) -> torch.Tensor:
        x = (feats.float() - self.mean) / self.sd * FEATURE_SCALE
        return (self.net(x) - x) ** 2

    def image_scores(self, feats: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([self.squared_residual(feats[i:i + 64]).mean(1).flatten(1).amax(1)
                              for i in range(0, len(feats), 64)]).numpy()


def train_autoencoder(feats: torch.Tensor, amplifier: AmplifierConfig, epochs: int, seed: int) -> FeatureAutoencoder:
    torch.manual_seed(seed)
    f = feats.float()
    ae = FeatureAutoencoder(f.shape[1], f.mean((0, 2, 3), keepdim=True), f.std((0, 2, 3), keepdim=True) + 1e-3)
    optimiser = torch.optim.Adam(ae.net.parameters(), lr=1e-3)
    for _ in range(epochs):
        order = torch.randperm(len(f))
        for i in range(0, len(f), 8):
            loss = amplify(ae.squared_residual(f[order[i:i + 8]]), amplifier).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return ae.eval()


def evaluate(feats, index, dataset, seed: int, bank: int, epochs: int) -> list[dict]:
    split = open_set_split(dataset, 0, seed, test_good_fraction=0.25)
    good = [index[s.path] for s in split.train_good]
    rng = np.random.default_rng(seed)
    rng.shuffle(good)
    val, fit = good[:len(good) // 5], good[len(good) // 5:]
    test = [index[s.path] for s in split.test]
    y = np.array([s.label for s in split.test])
    b = random_bank(feats[fit], bank, seed)
    knn = {"val": knn_scores(b, feats[val]).numpy(), "test": knn_scores(b, feats[test]).numpy()}
    rows = [{"seed": seed, "member": "patch kNN", "auroc": auroc(knn["test"], y), "miss_at_5": miss_at_5(knn["test"], y)}]
    for name, amp in AMPLIFIERS.items():
        start = time.perf_counter()
        ae = train_autoencoder(feats[fit], amp, epochs, seed)
        seconds = time.perf_counter() - start
        rec = {"val": ae.image_scores(feats[val]), "test": ae.image_scores(feats[test])}
        z = standardised({"knn": knn, "ae": rec})
        rows.append({"seed": seed, "member": f"feature AE, {name}", "auroc": auroc(rec["test"], y),
                     "miss_at_5": miss_at_5(rec["test"], y), "train_s": round(seconds, 1)})
        rows.append({"seed": seed, "member": f"patch kNN + feature AE ({name}), sum", "auroc": auroc(z["hybrid"]["test"], y),
                     "miss_at_5": miss_at_5(z["hybrid"]["test"], y)})
        print(json.dumps(rows[-2]), json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| member | seeds | image AUROC | miss at 5% false alarms | train s (median) |", "|---|---|---|---|---|"]
    for member in dict.fromkeys(r["member"] for r in rows):
        rs = [r for r in rows if r["member"] == member]
        secs = [r["train_s"] for r in rs if "train_s" in r]
        lines.append(f"| {member} | {len(rs)} | {mean_std([r['auroc'] for r in rs])} | "
                     f"{mean_std([r['miss_at_5'] for r in rs])} | {f'{np.median(secs):.0f}' if secs else ''} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--bank", type=int, default=16384, help="random kNN bank size in patches")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--work", default="runs/bench_frozen_head", help="feature cache folder")
    p.add_argument("--json", type=Path, default=None,
                   help="rows (default docs/bench/feature_lamp_<data folder>.json)")
    p.add_argument("--no-docs", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    dataset = load_dataset(args.data)
    samples = sorted(dataset.samples, key=lambda s: s.path.as_posix())
    feats = cached_features(samples, args.size, Path(args.work) / Path(args.data).resolve().name, True)
    index = {s.path: i for i, s in enumerate(samples)}
    rows = []
    for seed in args.seeds:
        rows += evaluate(feats, index, dataset, seed, args.bank, args.epochs)
        out = args.json or ROOT / "docs" / "bench" / f"feature_lamp_{Path(args.data).resolve().name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1) + "\n")
        print(table(rows), flush=True)
        if not args.no_docs:
            write_section(f"feature_lamp_{Path(args.data).resolve().name}",
                          f"## LAMP on a feature-reconstruction autoencoder ({Path(args.data).name}, "
                          f"`bench/feature_lamp_probe.py`)\n\nFrozen Lite0 patch features (224 px, standardised "
                          f"input), a 1x1-conv autoencoder per amplifier, the random-bank kNN ({args.bank} patches) "
                          f"beside it and their sum; k = 0 split, {args.epochs} epochs (the docstring says exactly "
                          f"what runs). Shared, loaded 2-core machine: seconds are indicative only.\n\n{table(rows)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
