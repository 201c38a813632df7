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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", type=Path, default=ROOT / "edge" / "bundled" / "model.onnx")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=40)
    p.add_argument("--note", default="quiet machine (nothing else running)")
    args = p.parse_args(argv)
    backend = open_backend(args.onnx)
    manifest = json.loads(args.onnx.with_name(args.onnx.name + ".manifest.json").read_text())
    shape = manifest["input"]["shape"][1:]
    samples = {1: [], 8: []}
    for _ in range(args.rounds):
        for b in samples:
            samples[b] += measure(backend, shape, b, args.calls if b == 1 else max(args.calls // 4, 5))
    rows = []
    for b, t in samples.items():
        t = np.array(t)
        rows.append({"batch": b, "p50_ms": float(np.median(t) * 1e3), "p99_ms": float(np.quantile(t, 0.99) * 1e3),
                     "frames_per_s": float(b / np.median(t))})
        print(rows[-1])
    size_mb = args.onnx.stat().st_size / 1e6
    members = manifest.get("output_meaning", {}).get("member_scores", "").partition("members in order: ")[2]
    banks = memory_banks(args.onnx)
    bank_text = (", ".join(f"{n}: {r} x {c}" for n, (r, c) in banks.items()) + " patch features"
                 if banks else "none (no familiarity member)")
    md = [f"## Deployed model cost on this CPU (`bench/deployed_cost.py`)\n",
          f"Model `{args.onnx.relative_to(ROOT) if args.onnx.is_relative_to(ROOT) else args.onnx}` "
          f"({manifest['model_kind']}, {manifest['model_version']}; members: {members or 'one'}), input {shape}, "
          f"ONNX {size_mb:.1f} MB; memory bank {bank_text}; "
          f"ONNX Runtime CPU through the edge backend, {os.cpu_count()} cores, {args.rounds} rounds interleaved; "
          f"{args.note}.\n", "| batch | frames/s (median) | p50 ms | p99 ms |", "|---|---|---|---|"]
    md += [f"| {r['batch']} | {r['frames_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |" for r in rows]
    write_section("deployed_cost", "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
