"""What the deployed model costs on this CPU: ONNX Runtime frames/s and latency, file size.

    python bench/deployed_cost.py --onnx edge/bundled/model.onnx [--threads 2] [--rounds 3]

Batch 1 and 8, interleaved over rounds; medians of per-call latency (p50, p99) and frames/s.
Writes the `deployed_cost` section of docs/benchmarks.md. Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_section  # noqa: E402
from edge.backends import open_backend  # noqa: E402


def measure(backend, shape, batch: int, calls: int) -> list[float]:
    x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
    for _ in range(3):
        backend.infer(x)
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        backend.infer(x)
        out.append(time.perf_counter() - t)
    return out


def memory_banks(onnx_file: Path) -> dict[str, tuple[int, int]]:
    """Initializers of the graph that are kNN memory banks (name ends in memory_bank): name -> shape."""
    import onnx
    model = onnx.load(str(onnx_file), load_external_data=False)
    return {i.name: tuple(i.dims) for i in model.graph.initializer if i.name.endswith("memory_bank")}


def describe(onnx_file: Path, manifest: dict, shape) -> str:
    members = manifest.get("output_meaning", {}).get("member_scores", "").partition("members in order: ")[2]
    banks = memory_banks(onnx_file)
    bank_text = (", ".join(f"{n}: {r} x {c}" for n, (r, c) in banks.items()) + " patch features"
                 if banks else "none (no familiarity member)")
    name = onnx_file.relative_to(ROOT) if onnx_file.is_relative_to(ROOT) else onnx_file
    return (f"`{name}` ({manifest['model_kind']}, {manifest['model_version']}; members: {members or 'one'}), "
            f"input {shape}, ONNX {onnx_file.stat().st_size / 1e6:.1f} MB; memory bank {bank_text}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", type=Path, nargs="+", default=[ROOT / "edge" / "bundled" / "model.onnx"],
                   help="one or more exported models, measured side by side (interleaved in every round)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=40)
    p.add_argument("--note", default="quiet machine (nothing else running)")
    args = p.parse_args(argv)
    models = []
    for onnx_file in args.onnx:
        manifest = json.loads(onnx_file.with_name(onnx_file.name + ".manifest.json").read_text())
        models.append((onnx_file, open_backend(onnx_file), manifest, manifest["input"]["shape"][1:]))
    samples = {(i, b): [] for i in range(len(models)) for b in (1, 8)}
    for _ in range(args.rounds):
        for (i, b), t in samples.items():
            t += measure(models[i][1], models[i][3], b, args.calls if b == 1 else max(args.calls // 4, 5))
    md = ["## Deployed model cost on this CPU (`bench/deployed_cost.py`)\n",
          f"ONNX Runtime CPU through the edge backend, {os.cpu_count()} cores, {args.rounds} rounds, the models "
          f"interleaved in each round; {args.note}.\n"]
    md += [f"- model {i + 1}: {describe(f, m, shape)}" for i, (f, _, m, shape) in enumerate(models)]
    md += ["", "| model | batch | frames/s (median) | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    for (i, b), t in samples.items():
        t = np.array(t)
        row = {"model": i + 1, "batch": b, "p50_ms": float(np.median(t) * 1e3),
               "p99_ms": float(np.quantile(t, 0.99) * 1e3), "frames_per_s": float(b / np.median(t))}
        print(row)
        md.append(f"| {i + 1} | {b} | {row['frames_per_s']:.1f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} |")
    write_section("deployed_cost", "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
