"""edge-run with its stages as processes vs. as threads of one process (``--stage-mode``).

Two measurements, both stage modes in the same run, interleaved (the order flips every round):

1. **CPU per frame at a camera's pace.** One camera played at ``--paced-fps`` (default 10 frames/s,
   ``--no-drop``), the bundled model, from two sources: the bundled ELPV cells (PNG, ~300x300 mono:
   a frame costs little to move) and a 1920x1080 colour MJPEG video made from them (``--video``:
   a full-HD camera's frame, 6.2 MB, which processes mode copies into shared memory and threads
   mode hands over). While edge-run runs, /proc is sampled
   twice a second: the CPU time of every thread of every stage process, attributed by thread name.
   edge-run names each stage's process (processes mode) or thread (threads mode) ``edge-<stage>``,
   and threads a stage starts inherit the name (ONNX Runtime's pool in score, the camera reader
   threads in capture); libzmq names its own I/O threads ``ZMQbg/...`` (one set per stage process in
   processes mode, one in threads mode): counted apart as "ZeroMQ I/O". CPU ms per frame over the
   steady part: from the first sample after the first alert to the last sample, per alert received
   in between (the engine's load and the interpreters' start are not counted). Also the run's
   capture->alert p50/p99 (edge-run's summary). The reference, in the same rounds: the bare
   engine at batch 1 called at the same pace by a fresh process (bench/pipeline_bench.py's bare
   loop), its whole CPU per call: "total / engine" is what the stages cost on top of the call
   (issue 15: little more than the engine call itself).
2. **Multi-camera scaling.** N simulated cameras (``--source camI=<folder>`` each, paced at
   ``--camera-fps``, drop mode: a camera the pipeline cannot keep up with loses frames, counted),
   one engine shared through the score stage's deadline batcher, for ``--camera-seconds``: frames
   captured / judged / dropped, aggregate frames judged per second (judged / edge-run's elapsed),
   the engine's mean batch, and capture->alert p99 per camera (median and worst camera).

Every row carries the 1-minute load average at its end: on a machine that runs something else
the figures are a loaded machine's, and say so.

  .venv/bin/python bench/stage_mode_bench.py                 # ~6 min on 2 cores; writes docs/
  .venv/bin/python bench/stage_mode_bench.py --rounds 1 --cameras 1,2 --no-docs   # a quick look

Writes docs/bench/stage_modes.json and the "stage-modes" section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_bench import children, make_folder, pct, proc_stat, run_bare  # noqa: E402
from report import write_section  # noqa: E402
from transport_bench import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ENGINE = ROOT / "edge" / "bundled" / "model.onnx"
MODES = ("processes", "threads")
STAGES = ("capture", "preprocess", "score", "alert")
GROUPS = STAGES + ("zmq_io", "other")


def group_of(comm: str) -> str:
    """Which stage a thread works for, from its name (see the module doc)."""
    if comm.startswith("edge-") and comm[5:] in STAGES:
        return comm[5:]
    if comm.startswith("ZMQbg"):
        return "zmq_io"
    return "other"   # the threads-mode process's main thread (edge-pipeline), pyzmq's gc thread, ...


def thread_cpu(root: int) -> dict[tuple[int, int], tuple[str, float]]:
    """(pid, tid) -> (thread name, CPU seconds) of every thread of every child of edge-run."""
    out = {}
    for pid in children(root):
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            st = proc_stat(f"{pid}/task/{task.name}")
            if st:
                out[(pid, int(task.name))] = (st["comm"], st["cpu_s"])
    return out


def run_edge(mode: str, sources: list[str], extra: list[str], tmp: Path, tag: str, timeout_s: float) -> dict:
    """One edge-run with a subscriber; CPU samples by thread; alerts as received."""
    import zmq

    from edge.alerts import decode_alert
    alerts_addr = f"tcp://127.0.0.1:{free_port()}"
    summary_path = tmp / f"summary-{tag}.json"
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(alerts_addr)
    received, done = [], threading.Event()

    def listen():
        while not done.is_set() or sub.poll(0):
            if sub.poll(200):
                received.append(sub.recv_multipart())
    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    cmd = [sys.executable, "-m", "edge.run", "--insecure", "--engine", str(ENGINE), *sources, "--quiet",
           "--publish", "all", "--stage-mode", mode, "--alerts-addr", alerts_addr,
           "--replay-addr", f"tcp://127.0.0.1:{free_port()}", "--journal", str(tmp / f"journal-{tag}.sqlite"),
           "--wait-subscribers", "1", "--summary-json", str(summary_path), *extra]
    history = []   # (alerts so far, thread samples)
    log_path = tmp / f"edge-run-{tag}.log"
    with open(log_path, "w") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, process_group=0)
        while proc.poll() is None and time.monotonic() - t0 < timeout_s:
            history.append((len(received), thread_cpu(proc.pid)))
            time.sleep(0.5)
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        proc.wait()
    time.sleep(0.5)
    done.set()
    listener.join(5)
    sub.close(0)
    ctx.term()
    if proc.returncode != 0 or not summary_path.exists():
        return {"ok": False, "returncode": proc.returncode, "log_tail": log_path.read_text()[-3000:]}
    summary = json.loads(summary_path.read_text())
    alerts = [decode_alert(f) for f in received]
    # steady part: the first sample after the first alert .. the last sample in which every stage thread
    # of that first sample is still alive (stage threads and processes end at the end of the run; a sample
    # taken then lacks them, and their CPU would be counted as 0)
    base = next((h for h in history if h[0] > 0), None)
    stage_threads = {k for k, (comm, _) in base[1].items() if group_of(comm) in STAGES} if base else set()
    end = next((h for h in reversed(history) if stage_threads and stage_threads <= set(h[1])), None)
    frames = (end[0] - base[0]) if base and end else 0
    cpu = {g: 0.0 for g in GROUPS}
    by_name: dict[str, float] = {}
    if frames > 0:
        for key, (comm, s) in end[1].items():
            used = s - base[1].get(key, (comm, 0.0))[1]
            cpu[group_of(comm)] += used
            by_name[comm] = by_name.get(comm, 0.0) + used
    per_cam: dict[str, list[float]] = {}
    for a in alerts:
        if a["frame_seq"] >= 0:
            per_cam.setdefault(a["camera"], []).append(a["latency_ms"])
    return {"ok": True, "summary": summary, "alerts": len(alerts), "steady_frames": frames,
            "cpu_ms_per_frame": {g: 1e3 * c / frames for g, c in cpu.items()} if frames > 0 else None,
            "cpu_ms_per_frame_total": 1e3 * sum(cpu.values()) / frames if frames > 0 else None,
            "cpu_ms_per_frame_by_thread_name": {k: round(1e3 * v / frames, 3) for k, v in by_name.items()}
            if frames > 0 else None, "window_s": (len(history) and 0.5 * (history.index(end) - history.index(base)))
            if base and end else None,
            "stage_processes": len({pid for (pid, _), (comm, _) in (end[1] if end else {}).items()
                                    if group_of(comm) in STAGES}),
            "per_camera_p99_ms": {cam: pct(v, 99) for cam, v in sorted(per_cam.items())},
            "loadavg_1min": os.getloadavg()[0]}



def make_video(tmp: Path, frames: int, size=(1920, 1080)) -> Path:
    """A full-HD colour MJPEG .avi of the bundled cells (each cell resized to fill the frame)."""
    import cv2
    cells = sorted((ROOT / "trainer" / "sample_data" / "elpv_mini" / "images").glob("*.png"))
    path = tmp / "fullhd.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    if not writer.isOpened():
        raise SystemExit("OpenCV cannot write an MJPEG .avi here (--no-video skips the full-HD rows)")
    for i in range(frames):
        gray = cv2.resize(cv2.imread(str(cells[i % len(cells)]), cv2.IMREAD_GRAYSCALE), size)
        writer.write(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--paced-fps", type=float, default=10.0)
    p.add_argument("--paced-frames", type=int, default=150, help="frames per paced run (15 s at 10 frames/s)")
    p.add_argument("--cameras", default="1,2,4,8", metavar="N,N,...")
    p.add_argument("--camera-fps", type=float, default=10.0, help="each simulated camera's pace")
    p.add_argument("--camera-seconds", type=float, default=12.0)
    p.add_argument("--scaling-rounds", type=int, default=1)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--no-video", action="store_true", help="skip the full-HD video source in the paced part")
    p.add_argument("--no-docs", action="store_true")
    p.add_argument("--note", default="")
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "bench" / "stage_modes.json")
    args = p.parse_args()
    modes = list(args.modes)
    result = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args) | {"json": str(args.json)},
              "cpu_count": os.cpu_count(), "loadavg_at_start": os.getloadavg(), "note": args.note,
              "paced": {m: [] for m in modes}, "paced_video": {m: [] for m in modes}, "bare_b1_paced": [],
              "scaling": []}
    with tempfile.TemporaryDirectory(prefix="edge-stage-modes-") as d:
        tmp = Path(d)
        sources = {"paced": make_folder(tmp, "paced", args.paced_frames)}
        if not args.no_video:
            sources["paced_video"] = make_video(tmp, args.paced_frames)
        for r in range(args.rounds):
            bare = run_bare(sources["paced"], 1, args.paced_frames, pace_s=1 / args.paced_fps)
            bare["round"] = r
            result["bare_b1_paced"].append(bare)
            print(f"[bare engine, batch 1, {args.paced_fps:g}/s, round {r + 1}] {bare['cpu_ms_per_frame']:.2f} CPU ms "
                  f"per call, call p50 {bare['call_ms_p50']:.2f} p99 {bare['call_ms_p99']:.2f} ms", flush=True)
            for kind, mode in [(k, m) for k in sources for m in (modes if r % 2 == 0 else modes[::-1])]:
                res = run_edge(mode, ["--source", str(sources[kind]), "--no-drop"], ["--fps", f"{args.paced_fps:g}"], tmp,
                               f"{kind}-{mode}-{r}", 120 + 3 * args.paced_frames / args.paced_fps)
                res["round"] = r
                result[kind][mode].append(res)
                if res["ok"]:
                    c = res["cpu_ms_per_frame"] or {}
                    print(f"[{kind} {mode} round {r + 1}] " + " ".join(f"{g} {c.get(g, 0):.2f}" for g in GROUPS)
                          + f" total {res['cpu_ms_per_frame_total'] or 0:.2f} ms/frame; p50 "
                          f"{res['summary']['latency_ms_p50']:.1f} p99 {res['summary']['latency_ms_p99']:.1f} ms; "
                          f"load {res['loadavg_1min']:.1f}", flush=True)
                else:
                    print(f"[{kind} {mode} round {r + 1}] FAILED\n{res['log_tail']}", flush=True)
        cams_folder = make_folder(tmp, "cams", 50)
        for r in range(args.scaling_rounds):
            for n in [int(x) for x in args.cameras.split(",") if x]:
                for mode in (modes if (n + r) % 2 == 0 else modes[::-1]):
                    sources = [a for i in range(n) for a in ("--source", f"cam{i}={cams_folder}")]
                    res = run_edge(mode, sources, ["--fps", f"{args.camera_fps:g}", "--loop",
                                                   "--duration", f"{args.camera_seconds:g}"],
                                   tmp, f"cams{n}-{mode}-{r}", 120 + 3 * args.camera_seconds)
                    res.update(cameras=n, mode=mode, round=r)
                    result["scaling"].append(res)
                    if res["ok"]:
                        s = res["summary"]
                        p99 = list(res["per_camera_p99_ms"].values())
                        print(f"[cameras {n} {mode}] captured {s['frames_captured']} judged {s['frames_judged']} "
                              f"dropped {s['frames_dropped']} -> {s['frames_judged'] / s['elapsed_s']:.1f} frames/s; "
                              f"p99 per camera median {statistics.median(p99):.0f} max {max(p99):.0f} ms; "
                              f"load {res['loadavg_1min']:.1f}", flush=True)
                    else:
                        print(f"[cameras {n} {mode}] FAILED\n{res['log_tail']}", flush=True)
    result["loadavg_at_end"] = os.getloadavg()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    md = markdown(result)
    print("\n".join(md))
    if not args.no_docs:
        write_section("stage-modes", "\n".join(md))


def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _f(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def markdown(result: dict) -> list[str]:
    a = result["args"]
    load = result["loadavg_at_start"][0], result["loadavg_at_end"][0]
    out = ["## Stage modes: processes vs. threads (`bench/stage_mode_bench.py`)", "",
           f"Measured {result['started']} on {result['cpu_count']} CPUs, load average (1 min) {load[0]:.1f} at the "
           f"start and {load[1]:.1f} at the end" + (" (**loaded machine**: the figures are not a quiet machine's)"
                                                   if max(load) > 1.0 else "") + "."
           + (f" {result['note']}" if result.get("note") else ""), "",
           f"**CPU per frame at {a['paced_fps']:g} frames/s** (one camera, {a['paced_frames']} frames, "
           f"`--no-drop`, the bundled model; median of {a['rounds']} round(s); ms of CPU per judged frame, by the "
           "thread names edge-run gives its stages; ZeroMQ I/O = libzmq's own threads):", "",
           "| source | stage mode | capture | preprocess | score | alert | ZeroMQ I/O | other | total | total / engine "
           "| capture->alert p50 / p99 (ms) | load average (1 min) |", "|---" * 12 + "|"]
    engine = _med(b["cpu_ms_per_frame"] for b in result.get("bare_b1_paced", []))
    labels = {"paced": "bundled cells (PNG, ~300x300 mono)", "paced_video": "1920x1080 colour MJPEG"}
    for kind, mode, runs in [(k, m, rs) for k in labels for m, rs in result.get(k, {}).items()]:
        label = labels[kind]
        ok = [r for r in runs if r["ok"] and r["cpu_ms_per_frame"]]
        if not runs:
            continue
        if not ok:
            out.append(f"| {label} | {mode} | failed | | | | | | | | | |")
            continue
        cells = [_f(_med(r["cpu_ms_per_frame"][g] for r in ok)) for g in GROUPS]
        total = _med(r['cpu_ms_per_frame_total'] for r in ok)
        ratio = f"{total / engine:.2f}x" if engine else "-"
        out.append(f"| {label} | {mode} | " + " | ".join(cells) + f" | {_f(total)} | {ratio} | "
                   f"{_f(_med(r['summary']['latency_ms_p50'] for r in ok), '.1f')} / "
                   f"{_f(_med(r['summary']['latency_ms_p99'] for r in ok), '.1f')} | "
                   f"{_f(_med(r['loadavg_1min'] for r in ok), '.1f')} |")
    if engine:
        bare = result["bare_b1_paced"]
        out += ["", f"The engine call alone (the reference of `total / engine`): the bare backend at batch 1, one call "
                f"every {1000 / a['paced_fps']:g} ms, a fresh process: **{engine:.2f} CPU ms per call** (median of "
                f"{len(bare)} rounds: " + ", ".join(f"{b['cpu_ms_per_frame']:.2f}" for b in bare) + "; call p50 "
                f"{_f(_med(b['call_ms_p50'] for b in bare))} ms, p99 {_f(_med(b['call_ms_p99'] for b in bare))} ms). "
                "The same model and pixels as the pipeline rows; the pipeline's own score stage also stacks, scales "
                "and sends."]
    out += ["", f"**Multi-camera scaling**: N simulated cameras (the bundled cells, looped), each paced at "
            f"{a['camera_fps']:g} frames/s, drop mode, {a['camera_seconds']:g} s each, one engine shared through the "
            "score stage's deadline batcher (`--max-queue-delay-ms` default):", "",
            "| cameras | stage mode | offered frames/s | captured | judged | dropped | aggregate frames/s judged | "
            "capture->alert p99 per camera, median / worst (ms) | load average (1 min) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in result["scaling"]:
        if not r["ok"]:
            out.append(f"| {r['cameras']} | {r['mode']} | | failed | | | | | |")
            continue
        s, p99 = r["summary"], list(r["per_camera_p99_ms"].values())
        out.append(f"| {r['cameras']} | {r['mode']} | {r['cameras'] * a['camera_fps']:g} | {s['frames_captured']} | "
                   f"{s['frames_judged']} | {s['frames_dropped']} | {s['frames_judged'] / s['elapsed_s']:.1f} | "
                   f"{_f(_med(p99), '.0f')} / {_f(max(p99) if p99 else None, '.0f')} | {r['loadavg_1min']:.1f} |")
    out += ["", "Rerun: `.venv/bin/python bench/stage_mode_bench.py` (`make bench-stage-modes`) on a quiet machine."]
    return out


if __name__ == "__main__":
    main()
