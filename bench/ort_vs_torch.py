"""ONNX Runtime (CPU) vs. torch eager: images/s and latency of the deployed hybrid model.

The model is the one the line runs: the hybrid (LAMP autoencoder + two-head scorer), built with
the project's own tools on the embedded sample (trainer/sample_data/elpv_mini) as `make train-demo`
and `make bundled-model` do (edge-train ae / scorer / hybrid, then edge-export), at 112 px (their size,
the bundled demo model's) and 128 px (the scorer's default size). Training is cut to a few steps: the weights are useless for inspection but
the graph, and so the cost of a forward pass, is the deployed one. Runs are kept in
runs/bench_runtime/ and reused (--retrain to rebuild them).

Both sides score the same float32 batch (sample cells, preprocessed as on the edge):
* torch: the run's module from trainer.runs.open_run (eval mode) under torch.no_grad(), with
  torch.set_num_threads(N) where N is the thread count ONNX Runtime uses by default;
* ONNX Runtime: edge.backends.open_backend(model.onnx), the edge's own backend with its own session
  settings (CPUExecutionProvider, default intra-op threads = one per physical core, thread spinning
  off), so the figure is what the line gets; a call is backend.infer(batch) (input check included);
* for reference, ONNX Runtime with its own defaults (worker threads spin between calls), which the edge
  turned off for the pipeline's sake: what that choice costs per model call.
Timing is interleaved: rounds of R calls, torch then ONNX Runtime, the order swapped every round, so
machine noise hits both; each round starts with one untimed call (the other runtime's threads may
still be spinning down). Warm-up calls precede everything. Reported: per-call latency p50/p99 and the
fastest call, images/s = batch / median latency, and the speed ratio ONNX Runtime / torch (> 1: ORT
faster) two ways: from the overall medians, and per round (torch median / ORT median within the round,
where both saw the same machine load); the headline is the median of the per-round ratios.

Writes docs/bench/ort_vs_torch.json and the "runtime_cpu" section of docs/benchmarks.md.

  python bench/ort_vs_torch.py [--sizes 112 128] [--calls-b1 500] [--calls-b8 100] [--retrain]

About 3 minutes on 2 cores (training included; 1.5 minutes when the runs are reused), longer on a busy machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLE = ROOT / "trainer" / "sample_data" / "elpv_mini"
RUNS = ROOT / "runs" / "bench_runtime"
# Minimal training (speed only): the Makefile demo's settings with far fewer epochs / steps.
AE_EPOCHS = 2
SCORER_EPOCHS, SCORER_STEPS = 1, 5
TRAINING_NOTE = (f"ae {AE_EPOCHS} epochs; scorer {SCORER_EPOCHS} epoch x {SCORER_STEPS} steps "
                 f"(k = 5, 16 good + 8 defects per step, lr 1e-3); hybrid fusion fitted as usual")


def physical_cores() -> int:
    """Physical cores from /proc/cpuinfo (what ONNX Runtime sizes its default pool by)."""
    try:
        pairs, phys, core = set(), None, None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "physical id":
                phys = value.strip()
            elif key == "core id":
                core = value.strip()
            elif not key and phys is not None and core is not None:
                pairs.add((phys, core))
                phys = core = None
        if phys is not None and core is not None:
            pairs.add((phys, core))
        return len(pairs) or os.cpu_count() or 1
    except OSError:
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def edge_tool(name: str) -> list[str]:
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found next to {sys.executable} or on PATH: run `make install` first")
    return [found]


def build_models(size: int, retrain: bool) -> Path:
    """runs/bench_runtime/s{size}/{ae,scorer,hybrid,model.onnx}, trained and exported unless already there."""
    out = RUNS / f"s{size}"
    onnx_path = out / "model.onnx"
    done = [onnx_path, onnx_path.with_name("model.onnx.manifest.json"), out / "hybrid" / "checkpoint.pt"]
    stale = onnx_path.with_name("model.onnx.tmp.data")   # weights outside the graph: an older edge-export
    if stale.exists():
        stale.unlink()
        retrain = True
    if not retrain and all(p.is_file() for p in done):
        print(f"[{size} px] reusing {out}", flush=True)
        return out
    print(f"[{size} px] training a minimal hybrid into {out} ({TRAINING_NOTE})", flush=True)
    train = edge_tool("edge-train")
    steps = [
        train + ["ae", "--data", str(SAMPLE), "--size", str(size), "--epochs", str(AE_EPOCHS),
                 "--out", str(out / "ae"), "--overwrite", "--quiet"],
        train + ["scorer", "--data", str(SAMPLE), "--k", "5", "--size", str(size), "--epochs", str(SCORER_EPOCHS),
                 "--steps-per-epoch", str(SCORER_STEPS), "--n-normal", "16", "--n-anomaly", "8", "--lr", "1e-3",
                 "--out", str(out / "scorer"), "--overwrite", "--quiet"],
        train + ["hybrid", "--ae", str(out / "ae"), "--scorer", str(out / "scorer"), "--out", str(out / "hybrid"),
                 "--overwrite"],
        edge_tool("edge-export") + ["--run", str(out / "hybrid"), "--out", str(onnx_path)],
    ]
    for cmd in steps:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return out


def spinning_setting(opts) -> str:
    try:
        value = opts.get_session_config_entry("session.intra_op.allow_spinning")
    except Exception:  # not set: ONNX Runtime's default
        return "1 (ONNX Runtime default)"
    return value or "1 (ONNX Runtime default)"


def sample_batch(run: dict, batch: int) -> np.ndarray:
    """``batch`` sample cells, preprocessed as on the edge (edge.preprocess.to_model_input)."""
    import cv2

    from edge.preprocess import to_model_input
    from trainer.runs import run_samples
    val_good, split, _ = run_samples(run["split_doc"])
    samples = (val_good + list(split.test))[:batch]
    pre = run["meta"]["preprocess"]
    flag = cv2.IMREAD_GRAYSCALE if pre["channels"] == 1 else cv2.IMREAD_COLOR
    frames = [cv2.imread(str(s.path), flag) for s in samples]
    if pre["channels"] == 3:
        frames = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames]
    x = np.stack([to_model_input(f, pre["size"], pre["channels"]) for f in frames])
    reps = -(-batch // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:batch])


def pct(values, q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure(size: int, run_dir: Path, threads: int, calls: dict[int, int], round_len: dict[int, int],
            warmup: int) -> list[dict]:
    import torch

    from edge.backends import open_backend
    from trainer.runs import open_run

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    run = open_run(run_dir / "hybrid")
    model = run["model"].eval()
    torch_load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    backend = open_backend(run_dir / "model.onnx")
    ort_load_s = time.perf_counter() - t0
    opts = backend.session.get_session_options()
    ort_settings = {"providers": backend.providers, "intra_op_num_threads": opts.intra_op_num_threads,
                    "inter_op_num_threads": opts.inter_op_num_threads,
                    "execution_mode": str(opts.execution_mode), "graph_optimization_level":
                    str(opts.graph_optimization_level), "allow_spinning": spinning_setting(opts)}
    # reference: the same graph, ONNX Runtime's own session defaults (threads spin between calls)
    import onnxruntime as ort

    from edge.backends import check_batch
    spin_session = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])

    def run_torch(x: np.ndarray):
        with torch.no_grad():
            out = model(torch.from_numpy(x))
        return [t.numpy() for t in out]

    def run_ort(x: np.ndarray):
        return backend.infer(x)

    def run_ort_spin(x: np.ndarray):
        xx = check_batch(x, backend.input_shape, backend.max_batch)
        return dict(zip(backend.output_names, spin_session.run(backend.output_names, {backend.input_name: xx})))

    runtimes = [("torch", run_torch), ("onnxruntime", run_ort), ("onnxruntime_spin", run_ort_spin)]

    rows = []
    for batch in sorted(calls):
        x = sample_batch(run, batch)
        # same model? (scores of the same batch agree; export checked this within 1e-3 already)
        score_diff = float(np.abs(run_torch(x)[0] - run_ort(x)["score"]).max())
        for _ in range(warmup):
            for _, fn in runtimes:
                fn(x)
        lat = {name: [] for name, _ in runtimes}
        per_round = []
        t_begin = time.perf_counter()
        n_rounds = max(1, calls[batch] // round_len[batch])
        for r in range(n_rounds):
            k = r % len(runtimes)           # rotate which runtime goes first
            order = runtimes[k:] + runtimes[:k]
            medians = {}
            for name, fn in order:
                fn(x)  # untimed: the other runtime's pool may still be spinning down
                times = []
                for _ in range(round_len[batch]):
                    t = time.perf_counter()
                    fn(x)
                    times.append(time.perf_counter() - t)
                lat[name] += times
                medians[name] = float(np.median(times))
            per_round.append({"t_s": time.perf_counter() - t_begin, "loadavg_1min": os.getloadavg()[0],
                              **{f"{n}_p50_ms": 1e3 * m for n, m in medians.items()},
                              "ratio": medians["torch"] / medians["onnxruntime"],
                              "ratio_spin": medians["torch"] / medians["onnxruntime_spin"]})
        row = {"size": size, "batch": batch, "calls_per_runtime": n_rounds * round_len[batch],
               "rounds": n_rounds, "calls_per_round": round_len[batch], "max_abs_score_diff": score_diff,
               "torch_load_s": torch_load_s, "onnxruntime_load_s": ort_load_s, "onnxruntime_session": ort_settings,
               "autoencoder": run["meta"]["members"]["lamp"]["model_config"],
               "scorer": run["meta"]["members"]["two_head"]["model_config"]}
        for name, values in lat.items():
            p50 = float(np.median(values))
            row[name] = {"p50_ms": 1e3 * p50, "p99_ms": 1e3 * pct(values, 99), "mean_ms": 1e3 * float(np.mean(values)),
                         "min_ms": 1e3 * float(np.min(values)), "images_per_s": batch / p50}
        row["ratio_ort_over_torch"] = row["onnxruntime"]["images_per_s"] / row["torch"]["images_per_s"]
        row["ratio_fastest_calls"] = row["torch"]["min_ms"] / row["onnxruntime"]["min_ms"]
        ratios = [x["ratio"] for x in per_round]
        # the headline: both runtimes ran back to back within a round, so a round's ratio sees one noise level
        row["ratio_per_round"] = {"median": float(np.median(ratios)), "q25": pct(ratios, 25), "q75": pct(ratios, 75),
                                  "min": float(np.min(ratios)), "max": float(np.max(ratios))}
        spin = [x["ratio_spin"] for x in per_round]
        row["ratio_spin_per_round"] = {"median": float(np.median(spin)), "q25": pct(spin, 25), "q75": pct(spin, 75)}
        row["ratio_spin_fastest_calls"] = row["torch"]["min_ms"] / row["onnxruntime_spin"]["min_ms"]
        row["rounds_detail"] = per_round
        rows.append(row)
        print(f"[{size} px, batch {batch}] torch p50 {row['torch']['p50_ms']:.2f} ms "
              f"({row['torch']['images_per_s']:.1f} img/s), ORT p50 {row['onnxruntime']['p50_ms']:.2f} ms "
              f"({row['onnxruntime']['images_per_s']:.1f} img/s), ORT/torch {row['ratio_ort_over_torch']:.2f} "
              f"(per round: median {row['ratio_per_round']['median']:.2f}); ORT spinning on p50 "
              f"{row['onnxruntime_spin']['p50_ms']:.2f} ms",
              flush=True)
    return rows


def torch_profile(run_dir: Path, threads: int, calls: int = 20, top: int = 6) -> dict:
    """Where torch eager spends a batch-1 call: share of self CPU time of its top operators."""
    import torch

    from trainer.runs import open_run
    torch.set_num_threads(threads)
    run = open_run(run_dir / "hybrid")
    model = run["model"].eval()
    x = torch.from_numpy(sample_batch(run, 1))
    with torch.no_grad():
        for _ in range(5):
            model(x)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                model(x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {"batch": 1, "calls": calls, "total_self_cpu_ms_per_call": total / 1e3 / calls,
            "top_ops": [{"op": e.key, "share": e.self_cpu_time_total / total, "calls_per_forward": e.count // calls}
                        for e in ranked],
            "batch_norm_modules": sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()),
            "conv_modules": sum(isinstance(m, torch.nn.modules.conv._ConvNd) for m in model.modules())}


def ort_graph_facts(onnx_path: Path) -> dict:
    """Node counts of the exported graph and of the graph ONNX Runtime runs after its default optimisations."""
    import tempfile
    from collections import Counter

    import onnx
    import onnxruntime as ort

    def ops(model) -> dict:
        return dict(Counter(n.op_type for n in model.graph.node).most_common())

    exported = onnx.load(str(onnx_path), load_external_data=False)
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()   # defaults, as the edge backend's session, plus a dump of the result
        so.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        optimised = onnx.load(so.optimized_model_filepath, load_external_data=False)
    return {"exported_ops": ops(exported), "optimised_ops": ops(optimised),
            "exported_nodes": len(exported.graph.node), "optimised_nodes": len(optimised.graph.node)}


def table(rows: list[dict]) -> list[str]:
    lines = ["| input | batch | runtime | images/s (median) | p50 latency (ms) | p99 latency (ms) | fastest call (ms) "
             "| ORT / torch: overall medians | ORT / torch: per round, median [IQR] | ORT / torch: fastest calls |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for name, label in (("torch", "torch eager"), ("onnxruntime", "ONNX Runtime CPU (the edge's backend)"),
                            ("onnxruntime_spin", "ONNX Runtime CPU, threads spinning (reference)")):
            m = r[name]
            if name == "torch":
                ratio = " | | "
            else:
                rr = r["ratio_per_round"] if name == "onnxruntime" else r["ratio_spin_per_round"]
                fastest = r["ratio_fastest_calls"] if name == "onnxruntime" else r["ratio_spin_fastest_calls"]
                overall = m["images_per_s"] / r["torch"]["images_per_s"]
                bold = "**" if name == "onnxruntime" else ""
                ratio = (f"{overall:.2f} | {bold}{rr['median']:.2f}{bold} [{rr['q25']:.2f}-{rr['q75']:.2f}] "
                         f"| {fastest:.2f}")
            lines.append(f"| {r['size']} px | {r['batch']} | {label} | {m['images_per_s']:.1f} | {m['p50_ms']:.2f} "
                         f"| {m['p99_ms']:.2f} | {m['min_ms']:.2f} | {ratio} |")
    return lines


def reading(rows: list[dict], profile: dict, graph: dict) -> list[str]:
    out = []
    for r in rows:
        rr = r["ratio_per_round"]
        faster = "ONNX Runtime" if rr["median"] >= 1 else "torch eager"
        factor = rr["median"] if rr["median"] >= 1 else 1 / rr["median"]
        out.append(f"- {r['size']} px, batch {r['batch']}: {faster} is {factor:.1f}x faster (median of the per-round "
                   f"ratios; half the rounds within {rr['q25']:.2f}-{rr['q75']:.2f}, ratio of the overall medians "
                   f"{r['ratio_ort_over_torch']:.2f}, of the fastest calls {r['ratio_fastest_calls']:.2f}); fastest call "
                   f"{r['onnxruntime']['min_ms']:.1f} ms vs. "
                   f"{r['torch']['min_ms']:.1f} ms, p99 {r['onnxruntime']['p99_ms']:.1f} ms vs. {r['torch']['p99_ms']:.1f} ms.")
    depth = {r["size"]: r["autoencoder"]["depth"] for r in rows}
    if len(set(depth.values())) > 1:
        out.append("- The sizes are not the same network scaled: the autoencoder's depth follows the input (stride-2 "
                   "stages down to 8x8 or more: " + ", ".join(f"{d} at {s} px" for s, d in sorted(depth.items()))
                   + "), so time does not grow with the pixel count alone.")
    for size in sorted({r["size"] for r in rows}):
        by = {r["batch"]: r for r in rows if r["size"] == size}
        if 1 in by and 8 in by:
            gain = {n: by[8][n]["images_per_s"] / by[1][n]["images_per_s"] for n in ("torch", "onnxruntime")}
            fast = by[1]["onnxruntime"]["min_ms"] * 8 / by[8]["onnxruntime"]["min_ms"]
            out.append(f"- Batching 8 instead of 1 at {size} px: x{gain['onnxruntime']:.2f} images/s with ONNX Runtime "
                       f"(x{fast:.2f} by the fastest calls), x{gain['torch']:.2f} with torch; a batch of 8 takes "
                       f"{by[8]['onnxruntime']['p50_ms']:.1f} ms (p50) on ONNX Runtime.")
    ops = ", ".join(f"`{o['op']}` {o['share']:.0%}" for o in profile["top_ops"][:4])
    e, o = graph["exported_ops"], graph["optimised_ops"]
    act = sum(e.get(k, 0) for k in ("Relu", "LeakyRelu"))
    act_left = sum(o.get(k, 0) for k in ("Relu", "LeakyRelu"))
    out.append(f"- Where the difference comes from. torch eager ({profile['size']} px, batch 1, profiler self CPU "
               f"time): {ops}; it runs its {profile['conv_modules']} convolution and {profile['batch_norm_modules']} "
               f"BatchNorm modules one op at a time, many of the small and dilated convolutions of this narrow "
               f"network (width 16, output stride 16) in its generic `slow_conv` kernels. ONNX Runtime's default "
               f"optimisation turns the exported graph ({graph['exported_nodes']} nodes, {e.get('Conv', 0)} Conv, "
               f"{e.get('BatchNormalization', 0)} BatchNormalization, {act} Relu/LeakyRelu; the exporter already folded "
               f"the rest of the BatchNorms) into {graph['optimised_nodes']} nodes: "
               f"{o.get('BatchNormalization', 0)} BatchNormalization and {act_left} separate activations left (folded "
               f"and fused into the convolutions), convolutions in its blocked NCHWc layout "
               f"({o.get('ReorderInput', 0)} ReorderInput / {o.get('ReorderOutput', 0)} ReorderOutput nodes), run by "
               f"its MLAS kernels. This compares the eager module as trained; torch.compile or a frozen TorchScript "
               f"module were not tried.")
    cost = [r["onnxruntime"]["p50_ms"] / r["onnxruntime_spin"]["p50_ms"] for r in rows]
    out.append(f"- Thread spinning: the edge's backend turns ONNX Runtime's spinning off "
               f"(`session.intra_op.allow_spinning = 0`: idle worker threads sleep instead of burning the cores "
               f"the other pipeline stages need). The price per model call, median latency with spinning off / "
               f"on (the reference rows, same rounds): "
               + ", ".join(f"x{c:.2f} at {r['size']} px, batch {r['batch']}" for c, r in zip(cost, rows)) + ".")
    spread = {n: [r[n]["p50_ms"] / r[n]["min_ms"] for r in rows] for n in ("torch", "onnxruntime")}
    out.append(f"- Sensitivity to a busy machine (p50 / fastest call, over the rows): torch "
               f"{min(spread['torch']):.2f}-{max(spread['torch']):.2f}, ONNX Runtime "
               f"{min(spread['onnxruntime']):.2f}-{max(spread['onnxruntime']):.2f}"
               + (": torch lost more to the neighbours in this run (its threads wait for each other at every "
                  "operator)." if max(spread["torch"]) > 1.5 * max(spread["onnxruntime"]) else
                  ": ONNX Runtime lost more to the neighbours in this run."
                  if max(spread["onnxruntime"]) > 1.5 * max(spread["torch"]) else
                  ": both about alike in this run."))
    if all(r["ratio_per_round"]["median"] > 1 for r in rows):
        out.append("- For the line: the ONNX Runtime path the edge uses is the faster one on this CPU in every setting "
                   "measured; nothing is gained by running the torch module there.")
    elif all(r["ratio_per_round"]["median"] < 1 for r in rows):
        out.append("- For the line: torch eager beat the edge's ONNX Runtime path in every setting measured here: "
                   "worth a look at the exported graph or the session settings.")
    else:
        out.append("- For the line: neither runtime is faster in every setting measured; see the rows.")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[112, 128],
                   help="model input sizes (112: make train-demo / bundled-model; 128: the scorer's default)")
    p.add_argument("--calls-b1", type=int, default=500, help="timed calls per runtime at batch 1")
    p.add_argument("--calls-b8", type=int, default=100, help="timed calls per runtime at batch 8")
    p.add_argument("--round-b1", type=int, default=20, help="calls per runtime per interleaved round, batch 1")
    p.add_argument("--round-b8", type=int, default=5, help="calls per runtime per interleaved round, batch 8")
    p.add_argument("--warmup", type=int, default=10, help="untimed warm-up calls per runtime and batch size")
    p.add_argument("--retrain", action="store_true", help="rebuild the runs even if runs/bench_runtime has them")
    p.add_argument("--no-docs", action="store_true", help="print only; leave docs/ alone")
    args = p.parse_args()

    import onnxruntime
    import torch

    threads = physical_cores()   # ONNX Runtime's default intra-op pool size; torch gets the same
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    rows = []
    for size in args.sizes:
        run_dir = build_models(size, args.retrain)
        rows += measure(size, run_dir, threads, {1: args.calls_b1, 8: args.calls_b8},
                        {1: args.round_b1, 8: args.round_b8}, args.warmup)
    profile = torch_profile(RUNS / f"s{args.sizes[0]}", threads)
    profile["size"] = args.sizes[0]
    graph = ort_graph_facts(RUNS / f"s{args.sizes[0]}" / "model.onnx")
    graph["size"] = args.sizes[0]
    wall_s = time.perf_counter() - t_start
    load_after = os.getloadavg()
    machine = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "physical_cores": physical_cores(),
               "platform": platform.platform(), "python": platform.python_version(),
               "torch": str(torch.__version__), "onnxruntime": onnxruntime.__version__,
               "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
               "onnxruntime_intra_op_threads": f"session default (0 = one per physical core: {threads})",
               "loadavg_1_5_15_before": list(load_before), "loadavg_1_5_15_after": list(load_after)}
    print()
    print("\n".join(table(rows)))
    print(f"\nwall time {wall_s:.0f} s; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
          f"models trained minimally ({TRAINING_NOTE}): speed only, the scores mean nothing")
    doc = {"benchmark": "ort_vs_torch", "model": "hybrid (LAMP autoencoder + two-head scorer), edge-export ONNX",
           "training": TRAINING_NOTE + " (minimal: for speed only)", "data": str(SAMPLE.relative_to(ROOT)),
           "runs": str(RUNS.relative_to(ROOT)), "machine": machine, "wall_s": wall_s, "warmup_calls": args.warmup,
           "rows": rows, "torch_profile": profile,
           "onnxruntime_graph": graph}
    if args.no_docs:
        return
    (ROOT / "docs" / "bench").mkdir(parents=True, exist_ok=True)
    (ROOT / "docs" / "bench" / "ort_vs_torch.json").write_text(json.dumps(doc, indent=1))
    s0 = rows[0]["onnxruntime_session"]
    peak_load = max([load_after[0]] + [x["loadavg_1min"] for r in rows for x in r["rounds_detail"]])
    # this benchmark's own threads account for about `threads` of the load average
    busy_note = ("" if peak_load <= threads + 1 else
                 f"\n**This run was disturbed**: the 1-minute load average reached {peak_load:.1f} on "
                 f"{machine['logical_cpus']} CPUs (this benchmark accounts for about {threads}); absolute figures "
                 f"(torch's most) are inflated, ratios less so. Re-run on a quiet machine for the absolute figures.")
    write_section("runtime_cpu", f"""## ONNX Runtime vs. torch eager on CPU (`bench/ort_vs_torch.py`)

Model: the deployed kind, the hybrid (LAMP autoencoder + two-head scorer, ResNet-18 width 16, output
stride 16), at {' and '.join(f'{s} px' for s in args.sizes)} grayscale, built with the project's tools on the
embedded sample (`edge-train ae / scorer / hybrid`, `edge-export`, as `make train-demo` and
`make bundled-model` do at 112 px) with **minimal
training** ({TRAINING_NOTE}): the weights are meaningless, the graph and its cost are the deployed ones.
torch: the run's module (`trainer.runs.open_run`), eval mode, `torch.no_grad()`, {machine['torch_threads']}
threads. ONNX Runtime: the edge's own backend (`edge.backends.open_backend`, {', '.join(s0['providers'])},
intra-op threads {s0['intra_op_num_threads']} = ONNX Runtime's default, one per physical core = {threads}, graph
optimisation {s0['graph_optimization_level'].split('.')[-1]}, thread spinning `allow_spinning` = {s0['allow_spinning']}),
timed through `backend.infer` as the line calls it; for reference, the same graph in a session with
ONNX Runtime's own defaults (threads spin between calls), which the edge does not use.
Machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs ({machine['physical_cores']} physical cores),
torch {machine['torch']}, onnxruntime {machine['onnxruntime']}, Python {machine['python']}; load average
{load_before[0]:.2f} before, {load_after[0]:.2f} after (the machine was shared: read medians).{busy_note}

Interleaved: after {args.warmup} warm-up calls each, rounds of {args.round_b1} (batch 1) or {args.round_b8}
(batch 8) calls per runtime, the three taking turns (which goes first rotates every round);
{rows[0]['calls_per_runtime']} timed calls per runtime at batch 1, {rows[1]['calls_per_runtime'] if len(rows) > 1 else '-'}
at batch 8. images/s = batch / median latency over all timed calls. Speed ratio ONNX Runtime / torch
(> 1: ONNX Runtime faster): from the overall medians, and per round (torch median / ONNX Runtime median
of the same round, both under the same machine load): **median** and interquartile range over rounds,
the headline figure; and from the fastest calls (the least disturbed ones: noise only ever adds time).
On a shared machine p99 measures the neighbours as much as the runtime.

{chr(10).join(table(rows))}

**Reading the figures.**
{chr(10).join(reading(rows, profile, graph))}
- The same batch gives the same scores on both (max |difference| {max(r['max_abs_score_diff'] for r in rows):.1g}),
  so the two sides run the same model. Times are for the model call only: preprocessing (resize,
  scaling) and reading the outputs are outside and identical for both.
- Session load: torch (checkpoint -> module) {rows[0]['torch_load_s']:.2f} s, ONNX Runtime
  {rows[0]['onnxruntime_load_s']:.2f} s at {rows[0]['size']} px.
""")
    print("wrote docs/benchmarks.md (section runtime_cpu) and docs/bench/ort_vs_torch.json")
    if busy_note:
        print(busy_note.strip().replace("**", ""))


if __name__ == "__main__":
    main()
