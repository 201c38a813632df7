"""Probe: explanation-based novelty (ENS, arXiv 2310.00797) beside the familiarity member.

The novelty paper scores what a model's *explanation* of its own output says about the input, with
B-cos networks whose explanations are faithful (the contributions sum to the output). B-cos weights
for EfficientNet-Lite0 do not exist here and cannot be trained on this CPU, so this probe builds the
closest faithful variant that the issue names: **input x gradient of the familiarity score**.

For a trained familiarity run (patch kNN on frozen Lite0 features, ``edge-train familiarity``):

* ``u(x)`` = the mean over patches of the distance to the nearest good patch (every patch
  contributes, not only the worst one, so that the explanation covers the whole part);
* explanation map ``E(x) = | sum_c x_c * d u / d x_c |`` (input x gradient; for a piecewise-linear
  network it is the first-order contribution of each pixel to ``u``), blurred with sigma 4 px;
* ENS image score = the largest value of ``E`` (a part is as novel as its least explained region);
* hybrid = the sum of the robust z-scores of familiarity and ENS, both fitted on the run's
  validation good images (no labels), as trainer.hybrid does.

Metrics on the run's test split: image AUROC and the miss rate at 5 % false alarms (the order
statistic rule of ``trainer.metrics.fnr_at_far``). The question it answers: does the explanation
map reduce misses at a fixed false-alarm rate? The result is reported either way.

    python bench/ens_probe.py --run runs/bench_detection/elpv/s0/patch_knn_std [--limit 0]
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
from bench.report import write_section  # noqa: E402
from trainer.artifacts import read_json  # noqa: E402
from trainer.lamp.anomaly_map import AnomalyMapConfig, AnomalyMapGenerator  # noqa: E402
from trainer.metrics import auroc, fnr_at_far  # noqa: E402
from trainer.robust import robust_center_scale  # noqa: E402
from trainer.runs import open_run, run_samples  # noqa: E402
from trainer.tensors import load_images  # noqa: E402

JSON_OUT = ROOT / "docs" / "bench" / "ens_probe.json"


def familiarity_and_ens(model, images: torch.Tensor, blur: AnomalyMapGenerator) -> tuple[np.ndarray, np.ndarray]:
    """(familiarity image scores, ENS image scores) of a batch."""
    x = images.clone().requires_grad_(True)
    dist = model.patch_distances(x, eps=1e-12)            # (B, 1, h, w); eps: finite gradient at distance 0
    fam = dist.flatten(1).amax(dim=1)
    dist.flatten(1).mean(dim=1).sum().backward()          # u(x) per image; images are independent
    contribution = (x * x.grad).sum(dim=1, keepdim=True).abs()
    ens = blur.blur(contribution.detach()).flatten(1).amax(dim=1)
    return fam.detach().numpy(), ens.numpy()


def score_all(model, samples, size: int, channels: int, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    blur = AnomalyMapGenerator(AnomalyMapConfig(blur_sigma=4.0, pooling="max"))
    fam, ens, start = [], [], time.perf_counter()
    for i in range(0, len(samples), batch):
        f, e = familiarity_and_ens(model, load_images(samples[i:i + batch], size, channels), blur)
        fam.append(f)
        ens.append(e)
        print(f"\r  {min(i + batch, len(samples))}/{len(samples)} ({time.perf_counter() - start:.0f} s)",
              end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return np.concatenate(fam), np.concatenate(ens)


def ens_scores(run_dir: Path) -> dict:
    """Familiarity and ENS image scores of a finished familiarity run's validation good images and test
    split, with the test paths (relative to the data root) and labels. Cached in the run folder as
    ``ens_scores.npz`` with the checkpoint's sha256: a run retrained in place (``--overwrite``) is scored again."""
    cache = Path(run_dir) / "ens_scores.npz"
    sha = json.loads((Path(run_dir) / "metrics.json").read_text())["checkpoint_sha256"]
    if cache.exists():
        z = np.load(cache)
        if str(z["checkpoint_sha256"]) == sha:
            return {key: z[key] for key in z.files}
    run = open_run(run_dir)
    model = run["model"].eval()
    for param in model.parameters():
        param.requires_grad_(False)
    size, channels = run["meta"]["preprocess"]["size"], run["meta"]["preprocess"]["channels"]
    val, split, root = run_samples(run["split_doc"])
    test = list(split.test)
    print(f"{run_dir}: {len(val)} validation good, {len(test)} test ({sum(s.label for s in test)} defective)",
          flush=True)
    out = {"checkpoint_sha256": np.array(sha)}
    out["val_familiarity"], out["val_ens"] = score_all(model, val, size, channels)
    out["test_familiarity"], out["test_ens"] = score_all(model, test, size, channels)
    out["test_labels"] = np.array([s.label for s in test])
    out["test_paths"] = np.array([s.path.relative_to(root).as_posix() for s in test])
    np.savez(cache, **out)
    return out


def fused_scores(scores: dict) -> dict:
    """Test scores of each member and of their hybrid: robust z-scores fitted on the validation good
    images (no labels), summed."""
    z = {}
    for name, key in (("familiarity", "familiarity"), ("ENS (input x gradient)", "ens")):
        c, s = robust_center_scale(scores[f"val_{key}"])
        z[name] = (scores[f"test_{key}"] - c) / s
    z["hybrid familiarity + ENS (sum)"] = sum(z.values())
    return z


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--run", required=True, type=Path, help="a finished `edge-train familiarity` run")
    p.add_argument("--name", default=None, help="row label (default: the run's data folder name)")
    p.add_argument("--json", type=Path, default=JSON_OUT, help="rows, merged by run (default %(default)s)")
    p.add_argument("--no-docs", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    scores = ens_scores(args.run)   # loads the model only when the scores are not cached
    y = scores["test_labels"]
    z = fused_scores(scores)
    name = args.name or Path(read_json(args.run / "split.json")["data_root"]).name
    rows = [{"data": name, "run": str(args.run), "member": m, "auroc": auroc(s, y),
             "miss_at_5": fnr_at_far(s, y, 0.05)["fnr"]} for m, s in z.items()]
    for r in rows:
        print(json.dumps(r), flush=True)
    old = json.loads(args.json.read_text()) if args.json.exists() else []
    old = [r for r in old if r["run"] != str(args.run)] + rows
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(old, indent=1) + "\n")
    if not args.no_docs:
        lines = ["| data | familiarity run | member | image AUROC | miss rate at 5% false alarms |",
                 "|---|---|---|---|---|"]
        lines += [f"| {r['data']} | `{Path(r['run']).relative_to(ROOT) if Path(r['run']).is_absolute() else r['run']}` "
                  f"| {r['member']} | {r['auroc']:.3f} | {r['miss_at_5']:.3f} |" for r in old]
        write_section("ens_probe", "## Explanation-based novelty (ENS) probe (`bench/ens_probe.py`)\n\n"
                      "Input x gradient of the familiarity member's mean patch distance, blurred (sigma 4 px), "
                      "image score its maximum; fused with familiarity by the sum of robust z-scores fitted on "
                      "the run's validation good images (the docstring says exactly what runs). Label-free "
                      "(k = 0 split); test = the run's test split.\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
