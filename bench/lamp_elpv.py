"""LAMP on vs. off on ELPV: image AUROC/AUPRC over 3 seeds, time, throughput, memory.

Phase 1 (selection, good images only): one seed kept apart from the evaluation
seeds trains each candidate amplifier; the candidate with the best validation
AUROC on held-out *good* images with painted synthetic defects is chosen. No
real defect label is looked at to choose.
Phase 2 (evaluation): the chosen amplifier and the identity (plain MSE), seeds
0, 1, 2, evaluated on the ELPV test split (25% of good cells + all defective
cells; uncertain grades excluded).

Each run is its own `edge-train ae` process (honest per-run peak memory).
Writes docs/bench/lamp_elpv.json and its section of docs/benchmarks.md.

  python bench/lamp_elpv.py [--data ../shared/data/elpv] [--epochs 20] [--size 128]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import mean_std, median, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = {"identity": ["--amplifier", "identity"], "exp a=3": ["--amplifier", "exp", "--alpha", "3"],
              "exp a=10": ["--amplifier", "exp", "--alpha", "10"],
              "exp a=30": ["--amplifier", "exp", "--alpha", "30"], "lmse": ["--amplifier", "lmse"]}
SELECTION_SEED = 100


def train(args, name: str, seed: int, extra: list[str], epochs: int) -> dict:
    out = Path(args.runs) / f"{name.replace(' ', '').replace('=', '')}-s{seed}"
    cmd = [sys.executable, "-m", "trainer.cli", "ae", "--data", str(args.data), "--k", str(args.k),
           "--size", str(args.size), "--epochs", str(epochs), "--seed", str(seed), "--threads", str(args.threads),
           "--quiet", "--overwrite", "--out", str(out), *extra]
    t = time.perf_counter()
    if (out / "metrics.json").is_file() and not args.fresh:
        print(f"{name:10s} seed {seed}: reusing the finished run in {out}", flush=True)
    else:
        subprocess.run(cmd, check=True, cwd=ROOT)
    metrics = json.loads((out / "metrics.json").read_text())
    img = metrics["test"]["image"]
    print(f"{name:10s} seed {seed}: test AUROC {img['auroc']:.4f} AUPRC {img['auprc']:.4f} "
          f"val-synthetic {metrics['validation']['synthetic_defect_auroc']:.4f} "
          f"({time.perf_counter() - t:.0f} s)", flush=True)
    return {"name": name, "seed": seed, "run": str(out), "metrics": metrics}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "elpv")
    p.add_argument("--runs", default=str(ROOT / "runs" / "bench-lamp-elpv"))
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--selection-epochs", type=int, default=10)
    p.add_argument("--k", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fresh", action="store_true", help="retrain runs that already finished")
    p.add_argument("--note", default="nothing else running",
                   help="what else shared the machine (time and images/s are figures only on a quiet one)")
    args = p.parse_args()
    if not (args.data / "labels.csv").is_file():
        sys.exit(f"ELPV not found at {args.data} (expects labels.csv): pass --data")

    print("phase 1: choose the amplifier on good images only", flush=True)
    selection = [train(args, n, SELECTION_SEED, extra, args.selection_epochs) for n, extra in CANDIDATES.items()]
    amplified = [r for r in selection if r["name"] != "identity"]
    chosen = max(amplified, key=lambda r: r["metrics"]["validation"]["synthetic_defect_auroc"])["name"]
    print(f"chosen: {chosen}", flush=True)

    print("phase 2: evaluate", flush=True)
    evaluation = [train(args, n, s, CANDIDATES[n], args.epochs) for n in ("identity", chosen) for s in args.seeds]

    env = {"python": platform.python_version(), "cpu_count": os.cpu_count(),
           "machine": platform.machine(), "size": args.size, "epochs": args.epochs, "k": args.k,
           "note": args.note}
    (ROOT / "docs" / "bench").mkdir(parents=True, exist_ok=True)
    (ROOT / "docs" / "bench" / "lamp_elpv.json").write_text(json.dumps(
        {"env": env, "chosen": chosen, "selection": selection, "evaluation": evaluation}, indent=1))
    write_section("lamp_elpv", render(env, chosen, selection, evaluation))
    print("wrote docs/benchmarks.md and docs/bench/lamp_elpv.json")


def render(env, chosen, selection, evaluation) -> str:
    sel_rows = "\n".join(
        f"| {r['name']} | {r['metrics']['validation']['synthetic_defect_auroc']:.3f} | "
        f"{r['metrics']['test']['image']['auroc']:.3f} |" for r in selection)
    rows = []
    for name in dict.fromkeys(r["name"] for r in evaluation):
        runs = [r["metrics"] for r in evaluation if r["name"] == name]
        rows.append(
            f"| {'plain MSE (LAMP off)' if name == 'identity' else f'LAMP, {name}'} | "
            f"{mean_std(m['test']['image']['auroc'] for m in runs)} | "
            f"{mean_std(m['test']['image']['auprc'] for m in runs)} | "
            f"{median(m['train']['seconds'] for m in runs):.0f} | "
            f"{median(m['train']['images_per_second'] for m in runs):.1f} | "
            f"{median(m['train']['peak_rss_mb'] for m in runs):.0f} |")
    test = evaluation[0]["metrics"]["test"]["image"]
    return f"""## LAMP autoencoder on ELPV (`bench/lamp_elpv.py`)

Setting: ELPV solar cells, good (grade 0) vs. defective (grade 1), uncertain grades excluded;
open-set split with k = {env['k']} (the autoencoder learns good cells only), test = 25% of the good cells
+ the defective ones ({test['n_good']} good, {test['n_defective']} defective). Model input {env['size']}x{env['size']}
grayscale, {env['epochs']} epochs, batch 16, Adam 1e-3, flips; score = mean of the top 1% of the blurred
squared-error map. {env['cpu_count']} CPU cores, torch CPU, 2 threads, one `edge-train` process per run;
{env.get('note', 'nothing else running')}. The reading is the section `lamp_elpv_reading` below.

**Choosing the amplifier on good images only** (seed 100, {selection[0]['metrics']['train']['epochs']} epochs):
validation = held-out good training cells vs. the same cells with painted synthetic defects.
The test AUROC column is shown for transparency and was not used to choose. Chosen: **{chosen}**.

| amplifier | validation AUROC (synthetic, good-only) | test AUROC (not used) |
|---|---|---|
{sel_rows}

**Evaluation**, seeds {', '.join(str(r['seed']) for r in evaluation if r['name'] == 'identity')} (mean ± std; time, throughput and memory are medians):

| training loss | image AUROC | image AUPRC | train time (s) | train images/s | peak memory (MB) |
|---|---|---|---|---|---|
{chr(10).join(rows)}
"""


if __name__ == "__main__":
    main()
