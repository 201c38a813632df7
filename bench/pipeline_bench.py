"""edge-run end to end vs. the bare backend; capture->alert latency; frame transport alone.

1. Throughput. The same frames (the 50 bundled ELPV cells, symlinked ``--frames`` times over into
   a temporary folder) go through
   * the bare backend in a loop: a fresh process opens the bundled model with
     ``edge.backends.open_backend`` (the score stage's backend and session settings), preprocesses
     the 50 distinct images once up front (``cv2.imread`` -> ``edge.sources.as_pipeline_frame`` ->
     ``edge.preprocess.frame_to_model_pixels``, as capture and preprocess do), then runs the whole
     frame sequence in batches of ``--batch`` exactly as the score stage calls the engine
     (``np.stack``, ``astype(float32) * 1/255``, ``backend.infer``); and at batch 1 (fewer frames);
   * ``edge-run --no-drop --max-batch 8 --quiet --publish all`` over the folder (4 processes over
     ZeroMQ: capture decodes each PNG, shared-memory ring to preprocess, batches to score, alert
     publishes every verdict); the run ends by itself at the end of the folder.
   Bare and pipeline alternate, ``--rounds`` rounds (order reversed every round); medians and the
   ratio pipeline / bare (per round, where both saw the same machine, and of the medians).
   Pipeline frames/s two ways: edge-run's own summary (frames judged / time from the capture
   process's start to the last stage's exit: includes starting the capture process and the
   drain) and first capture -> last alert (frames / (last alert's published_wall - first frame's
   capture_wall), from the alerts themselves: the stretch the bare loop's clock also covers).
   While a run goes, this script samples /proc: CPU time of each stage process (and of the
   score process's threads), and scrapes edge-run's own metrics (``--metrics-port``, read on
   127.0.0.1) for the score stage's engine calls (count, mean batch, infer_ms).
2. Latency. capture->alert p50/p99 from edge-run's summary (and recomputed from every alert's
   latency_ms) in the saturated run and in a paced run (``--fps``, a camera's pace: the queue is
   not the measurement), vs. the backend's own per-call latency (bare loop, batch 1 and 8) and the
   score stage's infer_ms inside the pipeline.
3. Transport alone: bench/transport_bench.py (1920x1080x3 uint8, imagezmq vs. the project's inline
   and shared-memory paths vs. memcpy), same run.
4. What-if (diagnostic, only with ``--whatif``; the backend has turned spinning off itself since issue 15,
   so these runs repeat the shipped setting and are no longer run by default): the same bare
   loop, saturated pipeline and paced pipeline with ONNX Runtime's intra-op thread spinning off
   (``session.intra_op.allow_spinning = 0``), set by a sitecustomize on PYTHONPATH that patches
   ``onnxruntime.InferenceSession`` in every process of the run. Nothing in edge/ is changed.

Before measuring, the script waits (``--wait-quiet``, polling every minute) until no other
process uses more than ``--quiet-cpu`` of a core, and records what else ran during every
measurement (system CPU time minus this benchmark's own process tree). If something else keeps
a core busy (a stray process you may not stop), raise this run's CPU priority instead of measuring
beside it, e.g. as root: start it with `setsid` and `echo -10 > /proc/<its pid>/autogroup` (the
kernel's autogroup scheduling weighs sessions, so plain `nice` does not help against another
session); the JSON and the docs record the priority. Every process of the run inherits it.

Writes docs/bench/pipeline.json and the "pipeline" section of docs/benchmarks.md.

  python bench/pipeline_bench.py [--frames 4000] [--rounds 3] [--paced-fps 10] [--whatif]

About 8 minutes on 2 cores (plus any wait for a quiet machine).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import write_section  # noqa: E402
from transport_bench import free_port, run_transport  # noqa: E402
from transport_bench import table as transport_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ENGINE = ROOT / "edge" / "bundled" / "model.onnx"
IMAGES = ROOT / "trainer" / "sample_data" / "elpv_mini" / "images"
HZ = os.sysconf("SC_CLK_TCK")
# edge-run's own entry point, plus a faulthandler on SIGUSR1 so that a run that hangs can say where.
EDGE_RUN = ("import faulthandler, signal, sys; faulthandler.register(signal.SIGUSR1); "
            "from edge.run import main; sys.exit(main())")
STAGE_ORDER = ("capture", "preprocess", "score", "alert")
NO_SPIN = "session.intra_op.allow_spinning=0"
SITECUSTOMIZE = '''
# Written by bench/pipeline_bench.py for its what-if runs only: PBENCH_ORT_CONFIG="key=value,..." is
# applied to every onnxruntime.InferenceSession this interpreter creates.
import os
_cfg = os.environ.get("PBENCH_ORT_CONFIG")
if _cfg:
    import importlib.abc
    import importlib.util
    import sys

    def _patch(ort):
        orig = ort.InferenceSession.__init__

        def init(self, path_or_bytes, sess_options=None, *a, **k):
            so = sess_options or ort.SessionOptions()
            for item in _cfg.split(","):
                key, _, val = item.partition("=")
                if key == "intra_op_num_threads":
                    so.intra_op_num_threads = int(val)
                else:
                    so.add_session_config_entry(key, val)
            orig(self, path_or_bytes, so, *a, **k)
        ort.InferenceSession.__init__ = init

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "onnxruntime":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            orig_exec = spec.loader.exec_module

            def exec_module(module):
                orig_exec(module)
                _patch(module)
            spec.loader.exec_module = exec_module
            return spec
    sys.meta_path.insert(0, _Finder())
'''


# -- machine facts and noise ----------------------------------------------------------------------
def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def physical_cores() -> int:
    pairs, phys = set(), None
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            phys = value.strip()
        elif key.strip() == "core id":
            pairs.add((phys, value.strip()))
    return len(pairs) or os.cpu_count() or 1


def busy_seconds() -> float:
    """CPU time spent busy by the whole machine (all CPUs), from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return (sum(f[:8]) - idle) / HZ


def own_cpu_seconds() -> float:
    """This process and its reaped descendants (edge-run reaps its stages, so they count)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Noise:
    """Other processes' CPU during a measurement: machine busy time minus this benchmark's tree."""

    def __enter__(self):
        self.t, self.busy, self.own = time.monotonic(), busy_seconds(), own_cpu_seconds()
        return self

    def __exit__(self, *exc):
        wall = time.monotonic() - self.t
        other = (busy_seconds() - self.busy) - (own_cpu_seconds() - self.own)
        self.result = {"wall_s": wall, "other_cpu_cores": max(0.0, other) / wall if wall > 0 else None,
                       "loadavg_1min": os.getloadavg()[0]}


def proc_stat(pid: int | str) -> dict | None:
    try:
        s = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = s[s.rindex(")") + 2:].split()
    return {"comm": s[s.index("(") + 1:s.rindex(")")], "state": rest[0], "ppid": int(rest[1]),
            "cpu_s": (int(rest[11]) + int(rest[12])) / HZ, "threads": int(rest[17]), "start": int(rest[19])}


def other_processes(seconds: float = 5.0, exclude: set[int] | None = None) -> list[dict]:
    """Processes that used CPU over ``seconds`` (not this one), busiest first."""
    exclude = (exclude or set()) | {os.getpid()}

    def snap():
        out = {}
        for d in os.listdir("/proc"):
            if d.isdigit() and int(d) not in exclude:
                st = proc_stat(d)
                if st:
                    out[int(d)] = st
        return out
    a = snap()
    time.sleep(seconds)
    b = snap()
    rows = []
    for pid, st in b.items():
        if pid in a and a[pid]["start"] == st["start"]:
            used = (st["cpu_s"] - a[pid]["cpu_s"]) / seconds
            if used >= 0.02:
                def cmdline(p):
                    try:
                        return Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    except OSError:
                        return ""
                cmd = cmdline(pid).strip() or st["comm"]
                if "spawn_main" in cmd:   # a multiprocessing child (e.g. an edge-run stage): name its parent
                    cmd = f"child of pid {st['ppid']}: {cmdline(st['ppid']).strip()}"
                rows.append({"pid": pid, "cpu_cores": round(used, 3), "cmd": cmd[:200]})
    return sorted(rows, key=lambda r: -r["cpu_cores"])


def wait_for_quiet(max_wait_s: float, threshold: float, poll_s: float = 60.0) -> dict:
    """Poll until other processes use less than ``threshold`` cores in all (or give up)."""
    t0, log = time.monotonic(), []
    while True:
        busy = other_processes()
        total = sum(r["cpu_cores"] for r in busy)
        log.append({"t_s": round(time.monotonic() - t0), "other_cpu_cores": round(total, 3),
                    "loadavg": os.getloadavg(), "busiest": busy[:3]})
        print(f"[quiet check] other processes use {total:.2f} cores; load average {os.getloadavg()[0]:.2f}"
              + "".join(f"\n    {r['cpu_cores']:.2f}  {r['cmd'][:110]}" for r in busy[:3]), flush=True)
        if total < threshold:
            return {"quiet": True, "waited_s": round(time.monotonic() - t0), "checks": log}
        if time.monotonic() - t0 + poll_s > max_wait_s:
            print("[quiet check] still busy; measuring anyway (recorded in the JSON and the docs)", flush=True)
            return {"quiet": False, "waited_s": round(time.monotonic() - t0), "checks": log}
        time.sleep(poll_s)


def pct(values, q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


# -- the bare backend ----------------------------------------------------------------------------
def bare_worker(folder: Path, batch: int, frames: int, warmup: int, pace_s: float = 0.0) -> dict:
    """Runs in its own process (fresh interpreter, like the score stage). ``pace_s`` > 0: one call
    every ``pace_s`` seconds (a camera's pace: the engine idles between calls, as in a paced line)."""
    import cv2

    from edge.backends import open_backend
    from edge.preprocess import frame_to_model_pixels
    from edge.sources import as_pipeline_frame, list_images
    t0 = time.perf_counter()
    backend = open_backend(ENGINE)
    load_s = time.perf_counter() - t0
    pre = backend.manifest["input"]["preprocess"]
    cache: dict[str, np.ndarray] = {}
    sequence = []
    for path in list_images(str(folder))[:frames]:
        real = os.path.realpath(path)
        if real not in cache:
            frame, fmt = as_pipeline_frame(cv2.imread(real, cv2.IMREAD_UNCHANGED))
            cache[real] = frame_to_model_pixels(frame, fmt, int(pre["size"]), pre["color_order"])
        sequence.append(cache[real])
    # what capture's folder reader spends per frame before the pipeline sees it: the PNG decode
    t = time.perf_counter()
    for _ in range(3):
        for real in cache:
            cv2.imread(real, cv2.IMREAD_UNCHANGED)
    decode_ms = 1e3 * (time.perf_counter() - t) / (3 * len(cache))
    scale = np.float32(1 / 255)
    for i in range(warmup):
        backend.infer(np.stack(sequence[:batch]).astype(np.float32) * scale)
    lat = []

    def thread_cpu() -> dict:
        out = {}
        for task in Path("/proc/self/task").iterdir():
            st = proc_stat(f"self/task/{task.name}")
            if st:
                out[int(task.name)] = st["cpu_s"]
        return out
    threads0 = thread_cpu()
    cpu0, t0 = os.times(), time.perf_counter()
    for start in range(0, len(sequence), batch):
        if pace_s > 0:   # wait for this call's tick
            time.sleep(max(0.0, t0 + (start // batch) * pace_s - time.perf_counter()))
        inputs = np.stack(sequence[start:start + batch])
        t = time.perf_counter()
        backend.infer(inputs.astype(np.float32) * scale)        # what ScoreStage.score times as infer_ms
        lat.append(time.perf_counter() - t)
    elapsed, cpu1 = time.perf_counter() - t0, os.times()
    threads1 = thread_cpu()
    n = len(sequence)
    main_ms = 1e3 * (threads1.get(os.getpid(), 0.0) - threads0.get(os.getpid(), 0.0)) / n
    other_ms = 1e3 * sum(c - threads0.get(t, 0.0) for t, c in threads1.items() if t != os.getpid()) / n
    opts = backend.session.get_session_options()
    try:
        spinning = opts.get_session_config_entry("session.intra_op.allow_spinning")
    except Exception:  # noqa: BLE001 (not set: ONNX Runtime's default, spinning on)
        spinning = "default (1)"
    return {"batch": batch, "pace_s": pace_s, "frames": len(sequence), "distinct_images": len(cache), "elapsed_s": elapsed,
            "frames_per_s": len(sequence) / elapsed, "calls": len(lat),
            "call_ms_p50": 1e3 * pct(lat, 50), "call_ms_p99": 1e3 * pct(lat, 99),
            "call_ms_mean": 1e3 * float(np.mean(lat)), "call_ms_min": 1e3 * float(np.min(lat)),
            "cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
            "cpu_ms_per_frame": 1e3 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / len(sequence),
            "load_s": load_s, "providers": backend.providers,
            "intra_op_num_threads": opts.intra_op_num_threads,
            "allow_spinning": spinning,
            "process_threads": len(threads1), "main_thread_cpu_ms_per_frame": main_ms,
            "other_threads_cpu_ms_per_frame": other_ms, "png_decode_ms_per_image": decode_ms}


def run_bare(folder: Path, batch: int, frames: int, env: dict | None = None, pace_s: float = 0.0) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "_bare", str(folder), str(batch), str(frames), str(pace_s)]
    with Noise() as noise:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    if r.returncode != 0:
        raise SystemExit(f"bare backend loop failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["noise"] = noise.result
    return out


# -- the pipeline ----------------------------------------------------------------------------------
def children(pid: int) -> list[int]:
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(x) for x in (task / "children").read_text().split()]
    except OSError:
        pass
    return out


def stage_of(pid: int) -> str | None:
    """Which stage a process runs, from its memory map: score loads ONNX Runtime; capture maps the
    frame ring it created (named after its own pid, edge.frame_ring); preprocess maps a ring another
    process created; alert maps neither (told apart by elimination once the others are known)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None
    if "onnxruntime" in maps:
        return "score"
    rings = set(re.findall(r"/edge-inspect-(\d+)-", maps))
    if rings:
        return "capture" if str(pid) in rings else "preprocess"
    return None


def parse_metrics(text: str) -> dict:
    """The few series this benchmark reads from edge-run's Prometheus text."""
    out = {}
    for line in text.splitlines():
        m = re.match(r'(edge_\w+)\{([^}]*)\} (\S+)$', line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        key = (m.group(1), labels.get("stage"), labels.get("camera", ""), labels.get("quantile"))
        out[key] = float(m.group(3))
    return out


def engine_stats(metrics: dict) -> dict:
    get = lambda name, q=None: metrics.get((name, "score", "", q))  # noqa: E731
    calls = get("edge_infer_ms_count")
    frames = sum(v for (name, stage, cam, q), v in metrics.items()
                 if name == "edge_frames_out_total" and stage == "score" and cam) or None
    total_ms = get("edge_infer_ms_sum")
    return {"calls": calls, "frames": frames, "mean_batch": frames / calls if calls and frames else None,
            "infer_ms_p50": get("edge_infer_ms", "0.5"), "infer_ms_p99": get("edge_infer_ms", "0.99"),
            "infer_ms_mean": total_ms / calls if calls and total_ms is not None else None,
            "infer_ms_total": total_ms}


def run_pipeline(folder: Path, frames: int, extra: list[str], env: dict | None, timeout_s: float,
                 tmp: Path, tag: str, tree: Path | None = None, cameras: int = 0) -> dict:
    """One edge-run. ``tree``: the source tree to run (default this one; a baseline is an older
    commit's tree, e.g. from ``git archive``). ``cameras``: that many cameras on the same folder, as
    live cameras (drop mode, no --no-drop); 0: one camera with --no-drop."""
    import zmq

    from edge.alerts import decode_alert
    alerts_addr, metrics_port = f"tcp://127.0.0.1:{free_port()}", free_port()
    summary_path = tmp / f"summary-{tag}.json"
    summary_path.unlink(missing_ok=True)
    sources = ["--source", str(folder), "--no-drop"] if not cameras else \
        [a for i in range(cameras) for a in ("--source", f"cam{i}={folder}")]
    args = ["--engine", str(ENGINE), *sources, "--max-batch", "8", "--quiet",
            "--publish", "all", *extra, "--alerts-addr", alerts_addr, "--wait-subscribers", "1",
            "--metrics-port", str(metrics_port), "--summary-json", str(summary_path)]
    # Subscriber first (edge-run holds the frames until it has joined): every alert, timestamped.
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
    log_path = tmp / f"edge-run-{tag}.log"
    samples: dict[int, dict] = {}
    threads: dict[int, dict] = {}
    history: list[tuple[int, dict]] = []    # (alerts received so far, {pid: CPU seconds}) per sample
    metrics, last_scrape, hung = {}, 0.0, False
    with Noise() as noise, open(log_path, "w") as log:
        t_start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", EDGE_RUN, "--insecure", *args], cwd=tree or ROOT, env=env,
                                stdout=log,
                                stderr=subprocess.STDOUT, process_group=0)
        while proc.poll() is None:
            sup = proc_stat(proc.pid)
            if sup is not None:
                samples[proc.pid] = {**sup, "spawned": False}
            for pid in children(proc.pid):
                st = proc_stat(pid)
                if st is None:
                    continue
                # a stage's cmdline says spawn_main once it has exec'd (right after the fork it is
                # still the supervisor's); the resource tracker's never does
                st["spawned"] = samples.get(pid, {}).get("spawned", False)
                if not st["spawned"]:
                    try:
                        st["spawned"] = b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
                    except OSError:
                        pass
                st["stage"] = samples.get(pid, {}).get("stage")
                if st["spawned"] and st["stage"] is None:
                    st["stage"] = stage_of(pid)
                samples[pid] = st
                if st["spawned"]:
                    per = threads.setdefault(pid, {})
                    try:
                        for task in Path(f"/proc/{pid}/task").iterdir():
                            tst = proc_stat(f"{pid}/task/{task.name}")
                            if tst:
                                per[int(task.name)] = tst["cpu_s"]
                    except OSError:
                        pass
            history.append((len(received), {pid: st["cpu_s"] for pid, st in samples.items()},
                            {pid: dict(per) for pid, per in threads.items()}))
            now = time.monotonic()
            if now - last_scrape >= 2.0:
                last_scrape = now
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1) as r:
                        metrics = parse_metrics(r.read().decode()) or metrics
                except OSError:
                    pass
            if now - t_start > timeout_s:
                hung = True
                break
            time.sleep(0.5)
        if hung:   # say where every process is stuck (stages and this wrapper have faulthandler on USR1)
            for pid in [proc.pid] + [p for p, s in samples.items() if s["spawned"]]:
                try:
                    os.kill(pid, signal.SIGUSR1)
                except OSError:
                    pass
            time.sleep(2)
            os.killpg(proc.pid, signal.SIGKILL)   # our own process group: edge-run and its stages only
        proc.wait()
        wall = time.monotonic() - t_start
    time.sleep(0.5)
    done.set()
    listener.join(5)
    sub.close(0)
    ctx.term()
    log_tail = log_path.read_text()[-4000:]
    if hung or proc.returncode != 0 or not summary_path.exists():
        return {"tag": tag, "ok": False, "hung": hung, "returncode": proc.returncode, "wall_s": wall,
                "log_tail": log_tail, "noise": noise.result,
                "processes": {str(p): s for p, s in samples.items()}}
    summary = json.loads(summary_path.read_text())
    # The stage processes, told apart by what they map (stage_of); a stage restarted by the
    # supervisor would appear twice: the incarnation that judged frames last (latest start) counts.
    spawned = sorted((p for p, st in samples.items() if st["spawned"]), key=lambda p: (samples[p]["start"], p))
    by_stage = {samples[p]["stage"]: p for p in spawned if samples[p]["stage"]}
    unknown = [p for p in spawned if not samples[p]["stage"]]
    if len(unknown) == 1 and "alert" not in by_stage:
        by_stage["alert"] = unknown[0]   # the stage with no engine and no frame ring
    stages = {}
    # CPU per frame in the steady part: from the first sample after the first alert (every stage
    # has started: imports and the engine's load are not counted) to the last sample, per alert
    # received in between (frames in flight at either end roughly cancel).
    base = next((h for h in history if h[0] > 0), None)
    end = history[-1] if history else None
    steady_frames = end[0] - base[0] if base and end else 0
    for name, pid in sorted(by_stage.items(), key=lambda kv: STAGE_ORDER.index(kv[0])):
        cpu_steady = end[1].get(pid, 0.0) - base[1].get(pid, 0.0) if steady_frames > 0 else None
        per = {}
        if steady_frames > 0:
            t0, t1 = base[2].get(pid, {}), end[2].get(pid, {})
            per = {tid: t1[tid] - t0.get(tid, 0.0) for tid in t1}
        ranked = sorted(per.items(), key=lambda kv: -kv[1])
        stages[name] = {"pid": pid, "cpu_s": samples[pid]["cpu_s"], "cpu_s_steady": cpu_steady,
                        "cpu_ms_per_frame": 1e3 * cpu_steady / steady_frames if steady_frames > 0 else None,
                        "threads_seen": len(threads.get(pid, {})),
                        "steady_main_thread_cpu_ms_per_frame": 1e3 * per[pid] / steady_frames if pid in per else None,
                        "steady_other_threads_cpu_ms_per_frame": [round(1e3 * c / steady_frames, 3)
                                                                  for t, c in ranked if t != pid and c > 0]}
    if len(spawned) != 4 or len(by_stage) != 4:
        print(f"warning: {len(spawned)} stage processes seen, identified {sorted(by_stage)}", flush=True)
    alerts = []
    for frames_ in received:
        try:
            alerts.append(decode_alert(frames_))
        except Exception as e:  # noqa: BLE001 (count, do not stop the benchmark)
            print(f"warning: undecodable alert: {e}", flush=True)
    n = len(alerts)
    out = {"tag": tag, "ok": True, "args": extra, "wall_s": wall, "summary": summary, "noise": noise.result,
           "stage_processes_seen": len(spawned),
           "alerts_received": n, "engine": engine_stats(metrics), "stages": stages,
           "supervisor_cpu_s": samples.get(proc.pid, {}).get("cpu_s")}
    if n:
        first_capture = min(a["capture_wall"] for a in alerts)
        last_pub = max(a["published_wall"] for a in alerts)
        lat = [a["latency_ms"] for a in alerts]
        out.update(first_capture_to_last_alert_s=last_pub - first_capture,
                   frames_per_s_first_capture_to_last_alert=n / (last_pub - first_capture),
                   latency_ms_p50_all_alerts=pct(lat, 50), latency_ms_p99_all_alerts=pct(lat, 99),
                   latency_ms_max_all_alerts=float(max(lat)),
                   verdicts={v: sum(a["verdict"] == v for a in alerts) for v in ("OK", "NotOK", "NotDecidable")},
                   frame_seqs_complete=sorted(a["frame_seq"] for a in alerts) == list(range(frames)))
        per_cam: dict[str, list[float]] = {}
        for a in alerts:
            if a["frame_seq"] >= 0:
                per_cam.setdefault(a["camera"], []).append(a["latency_ms"])
        out["per_camera"] = {cam: {"alerts": len(v), "latency_ms_p50": pct(v, 50), "latency_ms_p99": pct(v, 99)}
                             for cam, v in sorted(per_cam.items())}
    out["steady_frames_for_cpu"] = steady_frames
    if steady_frames > 0:
        out["supervisor_cpu_ms_per_frame"] = 1e3 * (end[1].get(proc.pid, 0.0) - base[1].get(proc.pid, 0.0)) / steady_frames
    return out


# -- orchestration ---------------------------------------------------------------------------------
def make_folder(tmp: Path, name: str, frames: int) -> Path:
    """``frames`` symlinks to the bundled images, cycled (natural order: r0_cell0001 ... r9_cell0050)."""
    images = sorted(IMAGES.glob("*.png"))
    folder = tmp / name
    folder.mkdir()
    for i in range(frames):
        src = images[i % len(images)]
        (folder / f"r{i // len(images)}_{src.name}").symlink_to(src.resolve())
    return folder


def model_input() -> str:
    """'224 px, 1 channel (GRAY)' from the bundled model's manifest."""
    try:
        pre = json.loads(ENGINE.with_name(ENGINE.name + ".manifest.json").read_text())["input"]["preprocess"]
        return f"{pre['size']} px, {pre['channels']} channel(s), {pre['color_order']}"
    except (OSError, KeyError, ValueError):
        return "input size unknown"


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(rounds: list[dict]) -> dict:
    """Medians over rounds of each measurement, and the ratios."""
    def series(key, fn):
        return [fn(r[key]) for r in rounds if key in r and (not isinstance(r[key], dict) or r[key].get("ok", True))]
    s = {}
    for key in ("bare_b8", "bare_b1", "bare_b8_nospin"):
        if any(key in r for r in rounds):
            s[key] = {m: med(series(key, lambda x, m=m: x.get(m))) for m in
                      ("frames_per_s", "call_ms_p50", "call_ms_p99", "call_ms_mean", "cpu_ms_per_frame",
                       "main_thread_cpu_ms_per_frame", "other_threads_cpu_ms_per_frame", "png_decode_ms_per_image")}
            s[key]["other_cpu_cores"] = med(series(key, lambda x: x["noise"]["other_cpu_cores"]))
            s[key]["loadavg_1min"] = med(series(key, lambda x: x["noise"].get("loadavg_1min")))
            s[key]["cores_busy"] = s[key]["frames_per_s"] * s[key]["cpu_ms_per_frame"] / 1e3
    for key in ("pipeline", "paced", "pipeline_nospin", "paced_nospin", "pipeline_before", "paced_before"):
        if not any(key in r for r in rounds):
            continue
        ok = [r[key] for r in rounds if key in r and r[key]["ok"]]
        d = {"runs_ok": len(ok), "runs_failed": sum(1 for r in rounds if key in r and not r[key]["ok"])}
        if ok:
            d.update({
                "frames_per_s_edge_run": med([x["summary"]["frames_per_s"] for x in ok]),
                "frames_per_s_first_capture_to_last_alert": med([x.get("frames_per_s_first_capture_to_last_alert")
                                                                 for x in ok]),
                "latency_ms_p50": med([x["summary"]["latency_ms_p50"] for x in ok]),
                "latency_ms_p99": med([x["summary"]["latency_ms_p99"] for x in ok]),
                "latency_ms_p50_all_alerts": med([x.get("latency_ms_p50_all_alerts") for x in ok]),
                "latency_ms_p99_all_alerts": med([x.get("latency_ms_p99_all_alerts") for x in ok]),
                "mean_batch": med([x["engine"]["mean_batch"] for x in ok]),
                "infer_ms_p50": med([x["engine"]["infer_ms_p50"] for x in ok]),
                "infer_ms_p99": med([x["engine"]["infer_ms_p99"] for x in ok]),
                "other_cpu_cores": med([x["noise"]["other_cpu_cores"] for x in ok]),
                "loadavg_1min": med([x["noise"].get("loadavg_1min") for x in ok]),
                "stage_cpu_ms_per_frame": {st: med([x["stages"].get(st, {}).get("cpu_ms_per_frame") for x in ok])
                                           for st in ("capture", "preprocess", "score", "alert")},
                "score_main_thread_cpu_ms_per_frame": med([x["stages"].get("score", {}).get(
                    "steady_main_thread_cpu_ms_per_frame") for x in ok]),
                "score_other_threads_cpu_ms_per_frame": med([sum(x["stages"].get("score", {}).get(
                    "steady_other_threads_cpu_ms_per_frame") or [0]) for x in ok]),
                "supervisor_cpu_ms_per_frame": med([x.get("supervisor_cpu_ms_per_frame") for x in ok]),
                "startup_and_drain_s": med([x["summary"]["elapsed_s"] - x["first_capture_to_last_alert_s"]
                                            for x in ok if x.get("first_capture_to_last_alert_s")]),
                "all_frames_judged": all(x["summary"]["frames_judged"] == x["summary"]["frames_captured"]
                                         and x.get("frame_seqs_complete") for x in ok)})
            cpu = d["stage_cpu_ms_per_frame"]
            if all(v is not None for v in cpu.values()):
                d["stages_cpu_ms_per_frame_total"] = sum(cpu.values())
                fps = d["frames_per_s_first_capture_to_last_alert"]
                d["cores_busy"] = fps * d["stages_cpu_ms_per_frame_total"] / 1e3 if fps else None
        s[key] = d

    def ratios(pipe_key, bare_key, metric):
        out = []
        for r in rounds:
            p, b = r.get(pipe_key), r.get(bare_key)
            if p and b and p["ok"] and p.get(metric) is not None:
                out.append(p[metric] / b["frames_per_s"])
            elif p and b and p["ok"] and metric == "edge_run":
                out.append(p["summary"]["frames_per_s"] / b["frames_per_s"])
        return out
    gains = []
    for rnd in rounds:
        a_, b_ = rnd.get("pipeline"), rnd.get("pipeline_nospin")
        if a_ and b_ and a_["ok"] and b_["ok"] and a_.get("frames_per_s_first_capture_to_last_alert"):
            gains.append(b_["frames_per_s_first_capture_to_last_alert"] / a_["frames_per_s_first_capture_to_last_alert"])
    if gains:
        s["nospin_gain_per_round"] = gains
    for pipe_key, bare_key in (("pipeline", "bare_b8"), ("pipeline_nospin", "bare_b8_nospin"),
                               ("pipeline_before", "bare_b8")):
        if pipe_key in s and bare_key in s and s[pipe_key]["runs_ok"]:
            fr = ratios(pipe_key, bare_key, "frames_per_s_first_capture_to_last_alert")
            er = ratios(pipe_key, bare_key, "edge_run")
            s[f"ratio_{pipe_key}"] = {
                "first_capture_to_last_alert": {"per_round": fr, "median_per_round": med(fr),
                                                "of_medians": s[pipe_key]["frames_per_s_first_capture_to_last_alert"]
                                                / s[bare_key]["frames_per_s"]},
                "edge_run_summary": {"per_round": er, "median_per_round": med(er),
                                     "of_medians": s[pipe_key]["frames_per_s_edge_run"] / s[bare_key]["frames_per_s"]}}
    return s


def fmt(x, spec=".1f", none="-"):
    return none if x is None else format(x, spec)


def write_docs(doc: dict, md_path: Path) -> None:
    s, m, a = doc["summary"], doc["machine"], doc["args"]
    b8, b1, p, pc = s["bare_b8"], s["bare_b1"], s["pipeline"], s.get("paced")
    r = s.get("ratio_pipeline")
    lines = ["| what | frames/s (median) | pipeline / bare, per round (median) | pipeline / bare, of the medians "
             "| CPU ms per frame | cores busy | other processes' CPU (cores) | load average (1 min) |",
             "|---|---|---|---|---|---|---|---|"]
    lines.append(f"| bare backend, batch 8 (`backend.infer` in a loop) | {fmt(b8['frames_per_s'])} | | "
                 f"| {fmt(b8['cpu_ms_per_frame'], '.2f')} | {fmt(b8['cores_busy'], '.2f')} "
                 f"| {fmt(b8['other_cpu_cores'], '.2f')} | {fmt(b8.get('loadavg_1min'))} |")
    lines.append(f"| bare backend, batch 1 | {fmt(b1['frames_per_s'])} | | | {fmt(b1['cpu_ms_per_frame'], '.2f')} "
                 f"| {fmt(b1['cores_busy'], '.2f')} | {fmt(b1['other_cpu_cores'], '.2f')} | {fmt(b1.get('loadavg_1min'))} |")
    pb, rb = s.get("pipeline_before"), s.get("ratio_pipeline_before")
    if pb and rb and pb.get("runs_ok"):
        cpu_b = sum(v for v in pb["stage_cpu_ms_per_frame"].values() if v is not None)
        lines.append(f"| *{a.get('baseline_label', 'before')}:* edge-run, first capture -> last alert "
                     f"| {fmt(pb['frames_per_s_first_capture_to_last_alert'])} "
                     f"| {fmt(rb['first_capture_to_last_alert']['median_per_round'], '.1%')} "
                     f"| {fmt(rb['first_capture_to_last_alert']['of_medians'], '.1%')} | {fmt(cpu_b, '.2f')} (4 stages) "
                     f"| {fmt(pb.get('cores_busy'), '.2f')} | {fmt(pb['other_cpu_cores'], '.2f')} "
                     f"| {fmt(pb.get('loadavg_1min'))} |")
        lines.append(f"| *{a.get('baseline_label', 'before')}:* edge-run, its own summary "
                     f"| {fmt(pb['frames_per_s_edge_run'])} | {fmt(rb['edge_run_summary']['median_per_round'], '.1%')} "
                     f"| {fmt(rb['edge_run_summary']['of_medians'], '.1%')} | | | | |")
    stage_cpu = p.get("stage_cpu_ms_per_frame", {})
    total_cpu = sum(v for v in stage_cpu.values() if v is not None) if stage_cpu else None
    if r:
        lines.append(f"| edge-run, first capture -> last alert | {fmt(p['frames_per_s_first_capture_to_last_alert'])} "
                     f"| **{fmt(r['first_capture_to_last_alert']['median_per_round'], '.1%')}** "
                     f"| {fmt(r['first_capture_to_last_alert']['of_medians'], '.1%')} | {fmt(total_cpu, '.2f')} "
                     f"(4 stages) | {fmt(p.get('cores_busy'), '.2f')} | {fmt(p['other_cpu_cores'], '.2f')} "
                     f"| {fmt(p.get('loadavg_1min'))} |")
        lines.append(f"| edge-run, its own summary (frames judged / elapsed_s) | {fmt(p['frames_per_s_edge_run'])} "
                     f"| {fmt(r['edge_run_summary']['median_per_round'], '.1%')} "
                     f"| {fmt(r['edge_run_summary']['of_medians'], '.1%')} | | | | |")
    wn = s.get("pipeline_nospin")
    rn = s.get("ratio_pipeline_nospin")
    if wn and rn and s.get("bare_b8_nospin"):
        bn = s["bare_b8_nospin"]
        lines.append(f"| *what-if, spinning off:* bare backend, batch 8 | {fmt(bn['frames_per_s'])} | | "
                     f"| {fmt(bn['cpu_ms_per_frame'], '.2f')} | {fmt(bn['cores_busy'], '.2f')} "
                     f"| {fmt(bn['other_cpu_cores'], '.2f')} |")
        nospin_cpu = sum(v for v in wn["stage_cpu_ms_per_frame"].values() if v is not None)
        lines.append(f"| *what-if, spinning off:* edge-run, first capture -> last alert "
                     f"| {fmt(wn['frames_per_s_first_capture_to_last_alert'])} "
                     f"| {fmt(rn['first_capture_to_last_alert']['median_per_round'], '.1%')} "
                     f"| {fmt(rn['first_capture_to_last_alert']['of_medians'], '.1%')} | {fmt(nospin_cpu, '.2f')} "
                     f"| {fmt(wn.get('cores_busy'), '.2f')} | {fmt(wn['other_cpu_cores'], '.2f')} |")
    cpu_lines = ["| stage process | CPU ms per frame (median) |" + (" what-if, spinning off |" if wn else ""),
                 "|---|---|" + ("---|" if wn else "")]
    for st in ("capture", "preprocess", "score", "alert"):
        cpu_lines.append(f"| {st} | {fmt(stage_cpu.get(st), '.2f')} |"
                         + (f" {fmt(wn['stage_cpu_ms_per_frame'].get(st), '.2f')} |" if wn else ""))
    cpu_lines.append(f"| (score: main thread / ONNX Runtime worker threads) "
                     f"| {fmt(p.get('score_main_thread_cpu_ms_per_frame'), '.2f')} / "
                     f"{fmt(p.get('score_other_threads_cpu_ms_per_frame'), '.2f')} |"
                     + (f" {fmt(wn.get('score_main_thread_cpu_ms_per_frame'), '.2f')} / "
                        f"{fmt(wn.get('score_other_threads_cpu_ms_per_frame'), '.2f')} |" if wn else ""))
    cpu_lines.append(f"| all four stages | {fmt(p.get('stages_cpu_ms_per_frame_total'), '.2f')} |"
                     + (f" {fmt(wn.get('stages_cpu_ms_per_frame_total'), '.2f')} |" if wn else ""))
    cpu_lines.append(f"| bare backend loop (whole process), batch 8 | {fmt(b8['cpu_ms_per_frame'], '.2f')} |"
                     + (f" {fmt(s['bare_b8_nospin']['cpu_ms_per_frame'], '.2f')} |" if wn else ""))
    bn_ = s.get("bare_b8_nospin") or {}
    cpu_lines.append(f"| (bare loop: main thread / ONNX Runtime worker threads) "
                     f"| {fmt(b8.get('main_thread_cpu_ms_per_frame'), '.2f')} / "
                     f"{fmt(b8.get('other_threads_cpu_ms_per_frame'), '.2f')} |"
                     + (f" {fmt(bn_.get('main_thread_cpu_ms_per_frame'), '.2f')} / "
                        f"{fmt(bn_.get('other_threads_cpu_ms_per_frame'), '.2f')} |" if wn else ""))
    pcn_ = s.get("paced_nospin") or {}
    if pc and pc.get("runs_ok"):
        cpu_lines.append(f"| score stage at {a['paced_fps']:g} frames/s (paced): main thread / worker threads "
                         f"| {fmt(pc.get('score_main_thread_cpu_ms_per_frame'), '.2f')} / "
                         f"{fmt(pc.get('score_other_threads_cpu_ms_per_frame'), '.2f')} |"
                         + (f" {fmt(pcn_.get('score_main_thread_cpu_ms_per_frame'), '.2f')} / "
                            f"{fmt(pcn_.get('score_other_threads_cpu_ms_per_frame'), '.2f')} |" if wn else ""))
    lat = ["| what | p50 (ms) | p99 (ms) | engine calls: mean frames per call | score stage infer_ms p50 / p99 |",
           "|---|---|---|---|---|"]
    lat.append(f"| bare backend, one call at batch 1 | {fmt(b1['call_ms_p50'])} | {fmt(b1['call_ms_p99'])} | 1 | |")
    lat.append(f"| bare backend, one call at batch 8 | {fmt(b8['call_ms_p50'])} | {fmt(b8['call_ms_p99'])} | 8 | |")
    if pc and pc.get("runs_ok"):
        lat.append(f"| edge-run capture->alert, paced at {a['paced_fps']:g} frames/s | {fmt(pc['latency_ms_p50'])} "
                   f"| {fmt(pc['latency_ms_p99'])} | {fmt(pc['mean_batch'], '.2f')} | {fmt(pc['infer_ms_p50'])} / "
                   f"{fmt(pc['infer_ms_p99'])} |")
    pcb, pbb = s.get("paced_before"), s.get("pipeline_before")
    label = a.get("baseline_label", "before")
    if pcb and pcb.get("runs_ok"):
        lat.append(f"| *{label}:* edge-run capture->alert, paced at {a['paced_fps']:g} frames/s "
                   f"| {fmt(pcb['latency_ms_p50'])} | {fmt(pcb['latency_ms_p99'])} | {fmt(pcb['mean_batch'], '.2f')} "
                   f"| {fmt(pcb['infer_ms_p50'])} / {fmt(pcb['infer_ms_p99'])} |")
    if pbb and pbb.get("runs_ok"):
        lat.append(f"| *{label}:* edge-run capture->alert, saturated | {fmt(pbb['latency_ms_p50'])} "
                   f"| {fmt(pbb['latency_ms_p99'])} | {fmt(pbb['mean_batch'], '.2f')} "
                   f"| {fmt(pbb['infer_ms_p50'])} / {fmt(pbb['infer_ms_p99'])} |")
    # CPU per frame per stage, this tree and the baseline, paced and saturated (the issue's before/after)
    side = ["| stage process | paced: CPU ms per frame | paced, " + label + " | saturated | saturated, " + label + " |",
            "|---|---|---|---|---|"]
    for st in ("capture", "preprocess", "score", "alert"):
        side.append(f"| {st} | {fmt((pc or {}).get('stage_cpu_ms_per_frame', {}).get(st), '.2f')} "
                    f"| {fmt((pcb or {}).get('stage_cpu_ms_per_frame', {}).get(st), '.2f')} "
                    f"| {fmt(p.get('stage_cpu_ms_per_frame', {}).get(st), '.2f')} "
                    f"| {fmt((pbb or {}).get('stage_cpu_ms_per_frame', {}).get(st), '.2f')} |")
    side.append(f"| all four | {fmt((pc or {}).get('stages_cpu_ms_per_frame_total'), '.2f')} "
                f"| {fmt((pcb or {}).get('stages_cpu_ms_per_frame_total'), '.2f')} "
                f"| {fmt(p.get('stages_cpu_ms_per_frame_total'), '.2f')} "
                f"| {fmt((pbb or {}).get('stages_cpu_ms_per_frame_total'), '.2f')} |")
    side.append(f"| load average (1 min, median) | {fmt((pc or {}).get('loadavg_1min'))} "
                f"| {fmt((pcb or {}).get('loadavg_1min'))} | {fmt(p.get('loadavg_1min'))} "
                f"| {fmt((pbb or {}).get('loadavg_1min'))} |")
    doc["side_by_side_cpu"] = side
    mc = ["| cameras | pace each (frames/s) | frames captured | judged | dropped | aggregate frames/s judged "
          "(first capture -> last alert) | engine calls: mean frames | per-camera capture->alert p99 (ms) | "
          "load average (1 min) |", "|---|---|---|---|---|---|---|---|---|"]
    for res in doc.get("multicam") or []:
        if not res.get("ok"):
            mc.append(f"| {res['cameras']} | {a.get('camera_fps', '-'):g} | failed | | | | | | |")
            continue
        sm = res["summary"]
        pcs = res.get("per_camera", {})
        mc.append(f"| {res['cameras']} | {a['camera_fps']:g} | {sm['frames_captured']} | {sm['frames_judged']} "
                  f"| {sm['frames_dropped']} | {fmt(res.get('frames_per_s_first_capture_to_last_alert'))} "
                  f"| {fmt(res['engine']['mean_batch'], '.2f')} "
                  f"| {', '.join(fmt(v['latency_ms_p99'], '.0f') for v in pcs.values())} "
                  f"| {fmt(res['noise'].get('loadavg_1min'))} |")
    doc["multicam_table"] = mc if len(mc) > 2 else []
    lat.append(f"| edge-run capture->alert, saturated ({a['frames']} frames as fast as it goes) "
               f"| {fmt(p['latency_ms_p50'])} | {fmt(p['latency_ms_p99'])} | {fmt(p['mean_batch'], '.2f')} "
               f"| {fmt(p['infer_ms_p50'])} / {fmt(p['infer_ms_p99'])} |")
    pcn = s.get("paced_nospin")
    if pcn and pcn.get("runs_ok"):
        lat.append(f"| *what-if, spinning off:* edge-run capture->alert, paced at {a['paced_fps']:g} frames/s "
                   f"| {fmt(pcn['latency_ms_p50'])} | {fmt(pcn['latency_ms_p99'])} | {fmt(pcn['mean_batch'], '.2f')} "
                   f"| {fmt(pcn['infer_ms_p50'])} / {fmt(pcn['infer_ms_p99'])} |")
    tr = transport_table(doc["transport"]) if doc.get("transport") else ["(not measured: --no-transport)"]
    reading = doc["reading"]
    quiet = doc["quiet_check"]
    top = (quiet["checks"][-1].get("busiest") or [None])[0]
    busiest = (f", the busiest pid {top['pid']} `{top['cmd'][:110]}` at {top['cpu_cores']:.2f}"
               if top and not quiet["quiet"] else "")
    if doc.get("note"):
        busiest += f". Note: {doc['note']}"
    group_nice = re.search(r"nice (-?\d+)", m.get("autogroup") or "")
    prio = [f"nice {m['nice']}"] if m.get("nice", 0) < 0 else []
    prio += [f"autogroup nice {group_nice.group(1)}"] if group_nice and int(group_nice.group(1)) < 0 else []
    niced = (f"The benchmark ran with a raised CPU priority ({', '.join(prio)}: all its processes take the CPU "
             f"before other sessions' processes; the shares among its own processes are unchanged). " if prio else "")
    write_section("pipeline", f"""## edge-run end to end vs. the bare backend (`bench/pipeline_bench.py`)

Model: the bundled model (`edge/bundled/model.onnx`, {doc.get('model_input', '?')}), ONNX Runtime
{m['onnxruntime']} CPU through `edge.backends.open_backend` (intra-op threads {m['ort_intra_op_threads']},
thread spinning: {m['ort_allow_spinning']}). Frames: the 50 bundled ELPV cells (~300x300
grey PNGs), cycled to {a['frames']} frames. Bare: a fresh process preprocesses the 50 images once, then
calls the backend over the same {a['frames']} frames in batches of 8 as the score stage does (stack,
scale to float32, `backend.infer`), and at batch 1 ({a['frames_b1']} frames). Pipeline:
`edge-run --no-drop --max-batch 8 --quiet --publish all` over the folder (capture decodes every PNG),
plus a subscriber on the alerts (`--wait-subscribers 1`) and `--metrics-port` read every 2 s.
{a['rounds']} rounds, bare and pipeline alternating (order reversed every round); medians.
Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs ({m['physical_cores']} physical cores), Python
{m['python']}, onnxruntime {m['onnxruntime']}, pyzmq {m['pyzmq']}, imagezmq {m.get('imagezmq') or '-'}.
Before measuring: {'the machine was quiet' if quiet['quiet'] else '**the machine was not quiet**'}
(waited {quiet['waited_s']} s; other processes used {quiet['checks'][-1]['other_cpu_cores']:.2f} cores at the last check{busiest}).
{niced}The last column of the first table is what other processes still used during each measurement.

**Throughput** (pipeline / bare: the target was >= 95%):

{chr(10).join(lines)}

**Where the CPU goes** (CPU time of each process from /proc, per frame judged; the bare loop's
figure is its whole process; 2 cores = 2,000 CPU ms per second of wall time):

{chr(10).join(cpu_lines)}

**CPU per frame per stage, side by side** ({a.get('baseline_label', 'before')}: the same runs from the baseline
tree, in the same rounds; paced = {a['paced_fps']:g} frames/s):

{chr(10).join(doc.get('side_by_side_cpu') or ['(no baseline run: --baseline)'])}

**Latency**: capture->alert (edge-run's summary; capture timestamp taken after the PNG decode) vs.
the backend's own per-call latency (bare loop, nothing else running in it) and the score stage's
`infer_ms` in the pipeline (its metrics; per call, scaling included):

{chr(10).join(lat)}

**Frame transport alone**, {doc['transport']['frame_shape'][1] if doc.get('transport') else 1920}x{doc['transport']['frame_shape'][0] if doc.get('transport') else 1080}x3 uint8 (6.2 MB), sender and receiver in two
processes, loopback only, {doc['transport']['rounds'] if doc.get('transport') else '-'} rounds interleaved
({doc['transport']['rows'][0]['frames_per_round'] if doc.get('transport') else '-'} timed frames per round after
{doc['transport']['warmup_frames'] if doc.get('transport') else '-'} warm-up; memcpy 4x as many); every frame's
sequence stamp checked on arrival (bad frames: {sum(r['bad_frames'] for r in doc['transport']['rows']) if doc.get('transport') else '-'}):

{chr(10).join(tr)}

**Multi-camera scaling**: N live cameras (drop mode: a camera the pipeline cannot keep up with loses
its oldest frames, counted) on the bundled cells, each paced at {a.get('camera_fps', '-')} frames/s, one engine
through the batcher:

{chr(10).join(doc.get('multicam_table') or ['(not measured: --cameras)'])}

**Reading.**
{chr(10).join(reading)}
""", md_path)


def reading(doc: dict) -> list[str]:
    """The reading, worded from the figures (re-running the script rewrites it)."""
    s, a = doc["summary"], doc["args"]
    b8, b1, p = s["bare_b8"], s["bare_b1"], s["pipeline"]
    out = []
    noisy = [k for k in ("bare_b8", "pipeline") if (s[k].get("other_cpu_cores") or 0) > 0.15]
    if noisy:
        out.append(f"- **Caution**: other processes still used up to {max(s[k]['other_cpu_cores'] for k in noisy):.2f} "
                   f"cores (median per measurement) while these ran; round-to-round spread is large (see "
                   f"docs/bench/pipeline.json), so read the per-round ratios, not single figures.")
    r = s.get("ratio_pipeline")
    if r and p.get("runs_ok"):
        headline = r["first_capture_to_last_alert"]["median_per_round"]
        verdict = "meets" if headline >= 0.95 else "falls short of"
        per_round = ", ".join(f"{x:.0%}" for x in r["first_capture_to_last_alert"]["per_round"])
        out.append(f"- Throughput: the pipeline keeps **{headline:.0%}** of the bare backend's batch-8 throughput "
                   f"(median of the per-round ratios {per_round}; {p['frames_per_s_first_capture_to_last_alert']:.0f} vs. "
                   f"{b8['frames_per_s']:.0f} frames/s, first capture -> last alert). It {verdict} the 95% target on "
                   f"this 2-core machine. edge-run's own summary says {p['frames_per_s_edge_run']:.0f} frames/s "
                   f"({r['edge_run_summary']['median_per_round']:.0%}): its elapsed_s runs from the release of capture (started "
                   f"ahead while the engine loads) to the exit of the last stage, so it also counts the first PNG "
                   f"decode and the final drain "
                   f"({fmt(p.get('startup_and_drain_s'), '.1f')} s per run here). Every frame was judged, in order, "
                   f"in every run: {'yes' if p.get('all_frames_judged') else 'NO'}.")
    sc = p.get("stage_cpu_ms_per_frame", {})
    if p.get("stages_cpu_ms_per_frame_total") and p.get("cores_busy"):
        total = p["stages_cpu_ms_per_frame_total"]
        others = sc["capture"] + sc["preprocess"] + sc["alert"]
        decode = b8.get("png_decode_ms_per_image")
        par = p["cores_busy"] / b8["cores_busy"]
        more = total / b8["cpu_ms_per_frame"] - 1
        out.append(f"- Where the time goes. frames/s = cores busy / CPU time per frame, for both. The bare loop: "
                   f"{b8['cores_busy']:.2f} cores busy (its main thread stacks and scales each batch alone between "
                   f"engine calls), {b8['cpu_ms_per_frame']:.2f} CPU ms per frame. The pipeline: "
                   f"{p['cores_busy']:.2f} cores busy"
                   + (" (its stages overlap)" if par > 1 else " (its stages wait on each other: not CPU-bound)")
                   + f", {total:.2f} CPU ms per frame (capture "
                   f"{sc['capture']:.2f}, preprocess {sc['preprocess']:.2f}, score {sc['score']:.2f}, alert "
                   f"{sc['alert']:.2f}; the supervisor {fmt(p.get('supervisor_cpu_ms_per_frame'), '.2f')}). So the "
                   f"pipeline pays {abs(more):.0%} {'more' if more >= 0 else 'less'} CPU per frame and "
                   f"{'gains' if par >= 1 else 'loses'} {abs(par - 1):.0%} in parallelism: "
                   f"{b8['cpu_ms_per_frame'] / total:.2f} x {par:.2f} = "
                   f"{b8['cpu_ms_per_frame'] / total * par:.0%}. The extra CPU: "
                   f"(1) capture, preprocess and alert, {others:.2f} ms per frame, which the bare loop does not do"
                   + (f" (the PNG decode alone is {decode:.2f} ms per image; a camera delivering raw frames would "
                      f"not pay it)" if decode else "")
                   + f", on the same two cores as the engine; (2) the score stage spends {sc['score']:.2f} ms per "
                   f"frame where the bare loop spends {b8['cpu_ms_per_frame']:.2f} for the same engine calls (main "
                   f"thread {fmt(p.get('score_main_thread_cpu_ms_per_frame'), '.2f')} vs. "
                   f"{fmt(b8.get('main_thread_cpu_ms_per_frame'), '.2f')}, ONNX Runtime's worker "
                   f"{fmt(p.get('score_other_threads_cpu_ms_per_frame'), '.2f')} vs. "
                   f"{fmt(b8.get('other_threads_cpu_ms_per_frame'), '.2f')})"
                   + (": the sockets, message packing and metrics, and ONNX Runtime's intra-op threads waiting "
                      "for each other while the cores are contended (a preempted worker stalls the whole call)." if sc["score"] > b8["cpu_ms_per_frame"] * 1.03 else
                      ": no more than the bare loop, so the stage's own overhead is not where the gap is.")
                   + f" At this parallelism, 95% would need at most "
                   f"{b8['cpu_ms_per_frame'] * p['cores_busy'] / b8['cores_busy'] / 0.95:.2f} CPU ms per frame for all "
                   f"four stages ({total:.2f} now).")
    pc, pcn = s.get("paced"), s.get("paced_nospin")
    if pc and pc.get("runs_ok") and pc.get("score_other_threads_cpu_ms_per_frame") is not None:
        spin = pc["score_other_threads_cpu_ms_per_frame"]
        text = (f"- The score stage at a camera's pace ({a['paced_fps']:g} frames/s): ONNX Runtime's worker threads "
                f"used {spin:.1f} CPU ms per frame, its main thread "
                f"{fmt(pc.get('score_main_thread_cpu_ms_per_frame'), '.1f')} ms (a batch-1 call takes "
                f"{b1['call_ms_p50']:.1f} ms wall in the bare loop); the session's threads do not spin between calls "
                f"(edge/backends/onnxruntime_backend.py sets session.intra_op.allow_spinning = 0).")
        if pcn and pcn.get("runs_ok") and pcn.get("score_other_threads_cpu_ms_per_frame") is not None:
            text += (f" With spinning off (what-if below) the same worker used "
                     f"{pcn['score_other_threads_cpu_ms_per_frame']:.1f} ms per frame, and capture->alert was p50 "
                     f"{fmt(pcn['latency_ms_p50'])} / p99 {fmt(pcn['latency_ms_p99'])} ms (spinning: "
                     f"{fmt(pc['latency_ms_p50'])} / {fmt(pc['latency_ms_p99'])} ms).")
        out.append(text)
    wn, rn = s.get("pipeline_nospin"), s.get("ratio_pipeline_nospin")
    if wn and rn and s.get("bare_b8_nospin") and wn.get("runs_ok"):
        bn = s["bare_b8_nospin"]
        gain = wn["frames_per_s_first_capture_to_last_alert"] / p["frames_per_s_first_capture_to_last_alert"]
        effect = ("raises" if gain > 1.05 else "lowers" if gain < 0.95 else "does not change")
        out.append(f"- What-if, not the shipped setting (same rounds; `session.intra_op.allow_spinning = 0` injected "
                   f"from outside edge/): saturated, the pipeline ran {wn['frames_per_s_first_capture_to_last_alert']:.0f} "
                   f"frames/s (x{gain:.2f} the default), score {wn['stage_cpu_ms_per_frame']['score']:.2f} CPU ms per "
                   f"frame (default {sc.get('score', 0):.2f}); the bare loop {bn['frames_per_s']:.0f} frames/s (default "
                   f"{b8['frames_per_s']:.0f}). Turning spinning off {effect} the pipeline's saturated throughput "
                   f"here (threshold +-5%); per round: "
                   + ", ".join(f"x{x:.2f}" for x in s.get("nospin_gain_per_round", []))
                   + f". Both with spinning off, pipeline / bare = "
                   f"{rn['first_capture_to_last_alert']['median_per_round']:.0%}.")
    if p.get("mean_batch") is not None:
        slower = (p.get("infer_ms_p50") or 0) > b8["call_ms_p50"]
        out.append(f"- Batches: the saturated pipeline called the engine with {p['mean_batch']:.2f} frames on "
                   f"average (at most 8: the deadline batcher, edge/batcher.py, runs full batches and lets the rest "
                   f"wait for the next frames; only the run's last call is short); its infer_ms p50 {fmt(p['infer_ms_p50'])} ms vs. {b8['call_ms_p50']:.1f} ms "
                   f"for a batch-8 call in the bare loop"
                   + (" (slower although smaller: the engine shares the cores)." if slower else "."))
    if pc and pc.get("runs_ok"):
        out.append(f"- Latency at a camera's pace ({a['paced_fps']:g} frames/s, {fmt(pc['mean_batch'], '.2f')} frames per "
                   f"engine call): capture->alert p50 {fmt(pc['latency_ms_p50'])} ms, p99 {fmt(pc['latency_ms_p99'])} ms, "
                   f"vs. {b1['call_ms_p50']:.1f} / {b1['call_ms_p99']:.1f} ms for one batch-1 engine call in the bare "
                   f"loop and {fmt(pc['infer_ms_p50'])} / {fmt(pc['infer_ms_p99'])} ms for the same call inside the "
                   f"pipeline; the difference, about {pc['latency_ms_p50'] - (pc['infer_ms_p50'] or 0):.1f} ms at the "
                   f"median, is the three hops (ring + header, batch, scored), preprocess and the alert. Saturated, "
                   f"p50 {fmt(p['latency_ms_p50'])} ms and p99 {fmt(p['latency_ms_p99'])} ms is queueing, not "
                   f"processing: with --no-drop a folder fills every queue (8 ring slots, the sockets' high-water "
                   f"marks) and a frame waits behind the ones ahead of it. A live camera drops the oldest frames "
                   f"instead.")
    t = doc.get("transport")
    if t:
        by = {row["mode"]: row for row in t["rows"]}
        if all(k in by for k in ("imagezmq", "inline", "ring-view", "memcpy")):
            fz, fi = by["imagezmq"]["frames_per_s_median"], by["inline"]["frames_per_s_median"]
            out.append(f"- Transport, 6.2 MB frames: over TCP loopback the project's inline PUSH/PULL moves "
                       f"{fi:.0f} frames/s and imagezmq's REQ/REP {fz:.0f} ({fi / fz:.2f}x; REQ/REP waits a round trip "
                       f"per frame, PUSH/PULL streams); the shared-memory ring (writer memcpy, header over ipc://) "
                       f"{by['ring-view']['frames_per_s_median']:.0f}/s"
                       + (f", {by['ring-copy']['frames_per_s_median']:.0f}/s when the reader also copies the frame out"
                          if "ring-copy" in by else "")
                       + f"; a plain memcpy {by['memcpy']['frames_per_s_median']:.0f}/s. Same host: the ring is "
                       f"{by['ring-view']['frames_per_s_median'] / fi:.1f}x TCP, as the design intends; between hosts "
                       f"(inline) the wire, not the engine, would limit a 1080p camera to ~{fi:.0f} frames/s on this "
                       f"CPU.")
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_bare":   # worker: python pipeline_bench.py _bare FOLDER B N [PACE_S]
        folder, batch, frames = Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
        pace_s = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
        print(json.dumps(bare_worker(folder, batch, frames, warmup=5, pace_s=pace_s)))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=4000, help="frames per throughput run (default: ~20-30 s each)")
    p.add_argument("--frames-b1", type=int, default=1000, help="frames of the bare batch-1 loop")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--paced-fps", type=float, default=10.0)
    p.add_argument("--paced-frames", type=int, default=200)
    p.add_argument("--transport-rounds", type=int, default=5)
    p.add_argument("--transport-frames", type=int, default=600)
    p.add_argument("--no-transport", action="store_true")
    p.add_argument("--whatif", action="store_true", help="also run the ORT spinning-off diagnostic runs (off by "
                   "default: the backend turns spinning off itself since issue 15, so they repeat the shipped setting)")
    p.add_argument("--no-whatif", action="store_true", help=argparse.SUPPRESS)  # the old spelling: the default now
    p.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                   help="also run the saturated and paced pipelines from this source tree (an older commit's, e.g. "
                        "`git archive OLD edge | tar -x -C DIR`), in the same rounds: before/after side by side")
    p.add_argument("--baseline-label", default="before", help="what the baseline is, for the tables")
    p.add_argument("--cameras", default="", metavar="N,N,...",
                   help="multi-camera scaling: that many live cameras (drop mode) at --camera-fps each, e.g. 1,2,4,8")
    p.add_argument("--camera-fps", type=float, default=4.0)
    p.add_argument("--camera-frames", type=int, default=40, help="frames per camera in the scaling runs")
    p.add_argument("--wait-quiet", type=float, default=900, metavar="S",
                   help="wait up to S seconds for other processes to go quiet (0: just record)")
    p.add_argument("--quiet-cpu", type=float, default=0.15, help="'quiet' = other processes use < this many cores")
    p.add_argument("--no-docs", action="store_true", help="print only; leave docs/ alone")
    p.add_argument("--note", default="", help="free text about the run's conditions, kept in the JSON and the docs")
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "bench" / "pipeline.json")
    p.add_argument("--md", type=Path, default=ROOT / "docs" / "benchmarks.md",
                   help="the Markdown file whose 'pipeline' section is written")
    args = p.parse_args()
    imagezmq = None
    if not args.no_transport:
        try:
            import imagezmq
        except ImportError:
            raise SystemExit("imagezmq is not installed: pip install -e '.[bench]' (or run `make bench-pipeline`), "
                             "or pass --no-transport")
    import onnxruntime
    import zmq

    quiet = wait_for_quiet(args.wait_quiet, args.quiet_cpu)
    tmp = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    t_begin = time.monotonic()
    try:
        folder = make_folder(tmp, "frames", args.frames)
        paced = make_folder(tmp, "paced", args.paced_frames)
        site = tmp / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        nospin_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
                      "PBENCH_ORT_CONFIG": NO_SPIN}
        rounds = []
        for r in range(args.rounds):
            steps = [("bare_b8", lambda: run_bare(folder, 8, args.frames)),
                     ("pipeline", lambda: run_pipeline(folder, args.frames, [], None, 120 + args.frames / 20, tmp,
                                                       f"r{r}-sat")),
                     ("bare_b1", lambda: run_bare(folder, 1, args.frames_b1)),
                     ("paced", lambda: run_pipeline(paced, args.paced_frames, ["--fps", f"{args.paced_fps:g}"], None,
                                                    120 + 3 * args.paced_frames / args.paced_fps, tmp, f"r{r}-paced"))]
            if args.whatif and not args.no_whatif:
                steps += [("bare_b8_nospin", lambda: run_bare(folder, 8, args.frames, nospin_env)),
                          ("pipeline_nospin", lambda: run_pipeline(folder, args.frames, [], nospin_env,
                                                                   120 + args.frames / 20, tmp, f"r{r}-nospin")),
                          ("paced_nospin", lambda: run_pipeline(paced, args.paced_frames,
                                                                ["--fps", f"{args.paced_fps:g}"], nospin_env,
                                                                120 + 3 * args.paced_frames / args.paced_fps, tmp,
                                                                f"r{r}-paced-nospin"))]
            if args.baseline:
                steps += [("pipeline_before", lambda: run_pipeline(folder, args.frames, [], None, 120 + args.frames / 20,
                                                                   tmp, f"r{r}-sat-before", tree=args.baseline)),
                          ("paced_before", lambda: run_pipeline(paced, args.paced_frames, ["--fps", f"{args.paced_fps:g}"],
                                                                None, 120 + 3 * args.paced_frames / args.paced_fps, tmp,
                                                                f"r{r}-paced-before", tree=args.baseline))]
            if r % 2:
                steps.reverse()
            rnd = {"round": r}
            for key, fn in steps:
                res = fn()
                rnd[key] = res
                if key.startswith("bare"):
                    print(f"[round {r + 1}/{args.rounds}] {key:<16} {res['frames_per_s']:7.1f} frames/s  call p50 "
                          f"{res['call_ms_p50']:6.1f} ms p99 {res['call_ms_p99']:6.1f} ms  CPU {res['cpu_ms_per_frame']:.2f}"
                          f" ms/frame  others {res['noise']['other_cpu_cores']:.2f} cores", flush=True)
                elif res["ok"]:
                    sc = res["stages"]
                    print(f"[round {r + 1}/{args.rounds}] {key:<16} {res.get('frames_per_s_first_capture_to_last_alert', 0):7.1f}"
                          f" frames/s (edge-run: {res['summary']['frames_per_s']})  latency p50 "
                          f"{fmt(res['summary']['latency_ms_p50'])} p99 {fmt(res['summary']['latency_ms_p99'])} ms  "
                          f"batch {fmt(res['engine']['mean_batch'], '.2f')}  CPU ms/frame "
                          + " ".join(f"{k} {fmt(v.get('cpu_ms_per_frame'), '.2f')}" for k, v in sc.items())
                          + f"  others {res['noise']['other_cpu_cores']:.2f} cores", flush=True)
                else:
                    print(f"[round {r + 1}/{args.rounds}] {key:<16} FAILED (hung={res['hung']}, "
                          f"exit {res['returncode']}):\n{res['log_tail'][-1500:]}", flush=True)
            rounds.append(rnd)
        multicam = []
        if args.cameras:
            cams_folder = make_folder(tmp, "cams", args.camera_frames)
            for n in [int(x) for x in args.cameras.split(",")]:
                res = run_pipeline(cams_folder, args.camera_frames, ["--fps", f"{args.camera_fps:g}"], None,
                                   120 + 3 * args.camera_frames / args.camera_fps, tmp, f"cams{n}", cameras=n)
                res["cameras"] = n
                multicam.append(res)
                if res["ok"]:
                    pc = res.get("per_camera", {})
                    print(f"[cameras {n}] judged {res['summary']['frames_judged']} of {res['summary']['frames_captured']}"
                          f" captured, dropped {res['summary']['frames_dropped']}, per-camera p99 "
                          + " ".join(f"{c}:{fmt(v['latency_ms_p99'])}" for c, v in pc.items()), flush=True)
                else:
                    print(f"[cameras {n}] FAILED:\n{res['log_tail'][-1500:]}", flush=True)
        transport = None
        if not args.no_transport:
            with Noise() as tnoise:
                transport = run_transport(args.transport_rounds, args.transport_frames, 50)
            transport["noise"] = tnoise.result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    opts_probe = rounds[0]["bare_b8"]
    machine = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "physical_cores": physical_cores(),
               "platform": platform.platform(), "python": platform.python_version(),
               "onnxruntime": onnxruntime.__version__, "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(),
               "numpy": np.__version__, "imagezmq": getattr(imagezmq, "__version__", None),
               "ort_intra_op_threads": f"{opts_probe['intra_op_num_threads']} (0 = one per physical core)",
               "ort_allow_spinning": opts_probe["allow_spinning"],
               # CPU priority of this run (the stages and workers inherit it): a raised priority shields
               # the measurement from other processes without changing the shares among its own
               "nice": os.nice(0), "autogroup": Path("/proc/self/autogroup").read_text().strip()
               if Path("/proc/self/autogroup").exists() else None}
    def git(*cmd):
        try:
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return None
    # what was measured: the commit, and edge/ files that differed from it (the tree is shared)
    provenance = {"commit": git("rev-parse", "HEAD"), "edge_uncommitted": (git("status", "--porcelain", "--", "edge")
                                                                           or "").splitlines()}
    summary = summarise(rounds)
    summary["bare_b8"]["intra_op_num_threads"] = f"{opts_probe['intra_op_num_threads']} (session default)"
    doc = {"benchmark": "pipeline", "engine": str(ENGINE.relative_to(ROOT)), "images": str(IMAGES.relative_to(ROOT)),
           "source": provenance, "args": {k: str(v.relative_to(ROOT)) if isinstance(v, Path) and v.is_relative_to(ROOT) else v
                    for k, v in vars(args).items()}, "machine": machine, "quiet_check": quiet,
           "wall_s": time.monotonic() - t_begin,
           "pipeline_command": "edge-run --engine edge/bundled/model.onnx --source FOLDER --no-drop --max-batch 8 "
                               "--quiet --publish all [--fps N] --alerts-addr tcp://127.0.0.1:PORT --wait-subscribers 1 "
                               "--metrics-port PORT --summary-json FILE",
           "summary": summary, "rounds": rounds, "transport": transport, "multicam": multicam, "note": args.note,
           "model_input": model_input()}
    doc["reading"] = reading(doc)
    print("\n".join(doc["reading"]))
    if transport:
        print("\n".join(transport_table(transport)))
    if args.no_docs:
        print(json.dumps(summary, indent=1))
        return
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1, default=str))
    write_docs(doc, args.md)
    print(f"wrote {args.json} and the 'pipeline' section of {args.md}")


if __name__ == "__main__":
    main()
