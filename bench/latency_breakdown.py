"""Where a paced frame's capture -> alert time goes (issue 15: paced p99 <= 1.5x one engine call).

Per round, side by side on the bundled model and cells (the folders and workers of
bench/pipeline_bench.py):

1. the bare backend at batch 1, calls back to back (the issue's reference call);
2. the bare backend at batch 1, one call per tick of the camera's pace: the engine idles
   between calls as it does in a paced line, so this separates "the engine is slower when it
   has rested" from "the pipeline adds time";
3. ``edge-run --fps PACE`` on the same cells, in each ``--modes`` stage mode (processes: the
   default; threads: one process, ``inproc://`` hops): capture -> alert, and each frame's age
   since capture where it passes each point (the stages' ``age_*_ms`` metrics).

Writes docs/bench/latency_breakdown.json and the ``pipeline_latency`` section of
docs/benchmarks.md. Timings need a quiet machine: it waits for one (``--wait-quiet``) and
records what else ran.

  python bench/latency_breakdown.py [--rounds 3] [--paced-fps 10] [--paced-frames 200] [--modes processes threads]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_bench import ROOT, fmt, make_folder, med, run_bare, run_pipeline, wait_for_quiet  # noqa: E402
from report import write_section  # noqa: E402

from edge.run import AGE_POINTS  # noqa: E402   (pipeline_bench put the repository root on sys.path)

POINTS = [point for _, _, point in AGE_POINTS]   # edge-run's summary: latency_breakdown_ms, in pipeline order


def paced_run(paced: Path, args, tmp: Path, r: int, mode: str):
    return lambda: run_pipeline(paced, args.paced_frames, ["--fps", f"{args.paced_fps:g}", "--stage-mode", mode], None,
                                120 + 3 * args.paced_frames / args.paced_fps, tmp, f"r{r}-paced-{mode}")


def one_round(folder: Path, paced: Path, args, tmp: Path, r: int) -> dict:
    steps = [("bare_b1", lambda: run_bare(folder, 1, args.frames_b1)),
             ("bare_b1_paced", lambda: run_bare(paced, 1, args.paced_frames, pace_s=1 / args.paced_fps))]
    steps += [(f"paced_{mode}", paced_run(paced, args, tmp, r, mode)) for mode in args.modes]
    if r % 2:
        steps.reverse()
    out = {"round": r}
    for key, fn in steps:
        res = out[key] = fn()
        if key.startswith("bare"):
            print(f"[round {r + 1}] {key:<14} call p50 {res['call_ms_p50']:6.2f} ms  p99 {res['call_ms_p99']:6.2f} ms  "
                  f"others {res['noise']['other_cpu_cores']:.2f} cores", flush=True)
        else:
            ages = res["summary"].get("latency_breakdown_ms", {})
            print(f"[round {r + 1}] {key:<14} capture->alert p50 {fmt(res['summary']['latency_ms_p50'])} "
                  f"p99 {fmt(res['summary']['latency_ms_p99'])} ms; age p50 where it "
                  + ", ".join(f"{p}: {fmt(ages.get(p, {}).get('p50'), '.2f')}" for p in POINTS)
                  + f"; engine call p50 {fmt(res['engine']['infer_ms_p50'], '.2f')} p99 "
                  f"{fmt(res['engine']['infer_ms_p99'], '.2f')}; others {res['noise']['other_cpu_cores']:.2f} cores",
                  flush=True)
    return out


def summarise(rounds: list[dict], modes: list[str]) -> dict:
    s = {key: {q: med([r[key][f"call_ms_{q}"] for r in rounds]) for q in ("p50", "p99")}
         for key in ("bare_b1", "bare_b1_paced")}
    for mode in modes:
        key = f"paced_{mode}"
        ok = [r for r in rounds if r[key].get("ok")]
        s[mode] = {
            "call": {q: med([r[key]["engine"][f"infer_ms_{q}"] for r in ok]) for q in ("p50", "p99")},
            "ages": {p: {q: med([r[key]["summary"].get("latency_breakdown_ms", {}).get(p, {}).get(q) for r in ok])
                         for q in ("p50", "p99")} for p in POINTS},
            "ratio_p99_to_bare_b1": [r[key]["summary"]["latency_ms_p99"] / r["bare_b1"]["call_ms_p99"] for r in ok],
            "ratio_p99_to_bare_b1_paced": [r[key]["summary"]["latency_ms_p99"] / r["bare_b1_paced"]["call_ms_p99"]
                                           for r in ok]}
    s["other_cpu_cores_max"] = max(max(v["noise"]["other_cpu_cores"] for k, v in r.items() if k != "round")
                                   for r in rounds)
    return s


def markdown(doc: dict) -> str:
    s, a = doc["summary"], doc["args"]
    modes = a["modes"]
    quiet = "quiet machine (nothing else running)" if s["other_cpu_cores_max"] < 0.15 else \
        f"NOT quiet: other processes used up to {s['other_cpu_cores_max']:.2f} cores"
    lines = ["## Where the paced latency goes (`bench/latency_breakdown.py`, issue 15)", "",
             f"{doc['when']}; bundled model, ONNX Runtime CPU, {a['rounds']} rounds interleaved, medians of the "
             f"rounds; {quiet}. A camera paced at {a['paced_fps']:g} frames/s, {a['paced_frames']} frames.", "",
             "| engine call at batch 1 | p50 (ms) | p99 (ms) |", "|---|---|---|",
             f"| bare, calls back to back (the issue's reference) | {fmt(s['bare_b1']['p50'], '.2f')} | "
             f"{fmt(s['bare_b1']['p99'], '.2f')} |",
             f"| bare, one call per tick at {a['paced_fps']:g}/s (the engine rests between calls) | "
             f"{fmt(s['bare_b1_paced']['p50'], '.2f')} | {fmt(s['bare_b1_paced']['p99'], '.2f')} |"]
    lines += [f"| inside edge-run at {a['paced_fps']:g}/s, stages as {m} (score stage `infer_ms`) | "
              f"{fmt(s[m]['call']['p50'], '.2f')} | {fmt(s[m]['call']['p99'], '.2f')} |" for m in modes]
    lines += ["", "A frame's age since capture where it passes each point of edge-run (p50 and p99 of each point; "
              "the step is the difference of the p50s):", "",
              "| point | " + " | ".join(f"{m}: age p50 (ms) | step | age p99" for m in modes) + " |",
              "|---|" + "---|---|---|" * len(modes)]
    prev = {m: 0.0 for m in modes}
    for point in POINTS:
        cells = []
        for m in modes:
            age = s[m]["ages"][point]
            step = age["p50"] - prev[m] if age["p50"] is not None else None
            cells += [fmt(age["p50"], ".2f"), fmt(step, ".2f"), fmt(age["p99"], ".2f")]
            prev[m] = age["p50"] if age["p50"] is not None else prev[m]
        lines.append(f"| {point} | " + " | ".join(cells) + " |")
    lines.append("")
    for m in modes:
        r1 = ", ".join(f"{x:.2f}" for x in s[m]["ratio_p99_to_bare_b1"])
        r2 = ", ".join(f"{x:.2f}" for x in s[m]["ratio_p99_to_bare_b1_paced"])
        lines.append(f"- {m}: capture -> alert p99 / bare back-to-back call p99, per round: {r1} (target <= 1.5); "
                     f"/ bare paced call p99: {r2}.")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--paced-fps", type=float, default=10.0)
    p.add_argument("--paced-frames", type=int, default=200)
    p.add_argument("--frames-b1", type=int, default=1000, help="calls of the back-to-back bare loop")
    p.add_argument("--modes", nargs="+", default=["processes", "threads"], choices=["processes", "threads"],
                   help="edge-run --stage-mode of the paced runs (default: both, side by side)")
    p.add_argument("--wait-quiet", type=float, default=900, metavar="S")
    p.add_argument("--quiet-cpu", type=float, default=0.15)
    p.add_argument("--no-docs", action="store_true", help="print only; leave docs/ alone")
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "bench" / "latency_breakdown.json")
    args = p.parse_args()
    quiet = wait_for_quiet(args.wait_quiet, args.quiet_cpu)
    with tempfile.TemporaryDirectory(prefix="latency-bench-") as d:
        tmp = Path(d)
        folder = make_folder(tmp, "frames", args.frames_b1)
        paced = make_folder(tmp, "paced", args.paced_frames)
        rounds = [one_round(folder, paced, args, tmp, r) for r in range(args.rounds)]
    doc = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "args": vars(args) | {"json": str(args.json)},
           "quiet_check": quiet, "cpu_count": os.cpu_count(), "rounds": rounds, "summary": summarise(rounds, args.modes)}
    text = markdown(doc)
    print(text)
    if not args.no_docs:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        write_section("pipeline_latency", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
