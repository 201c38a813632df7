"""What the operator's screen costs the line (issue 16): pipeline frames/s with and without a connected
view, in the same edge-run, phases interleaved.

One edge-run with --view-port judges the bundled ELPV cells as two cameras, looped, every frame
(--no-drop: the pipeline runs as fast as it can, so any CPU the view takes shows as fewer frames/s).
Phases of --phase-s seconds follow each other in every round: nothing connected; a view connected.
A view is one of:

  sse       a client that does what the page does over HTTP (reads /events, fetches every new picture
            it names) and nothing else: what the node pays for a browser on another machine (the panel)
  chromium  the page itself in a headless Chromium on this machine (rendering included): a browser
            on the node, which the docs advise against on a 2-core box

Frames/s per phase come from the alert stage's verdict counters on --metrics-port (Prometheus text),
read at the start and end of each phase. Optionally (--reference) the view's standing cost, when no
browser is connected: separate edge-runs with --view-port (nothing connected) and without it,
interleaved, --rounds pairs (separate runs: the machine's load moves between them, compare pairs). Writes a table and docs/bench/view_bench.json; the load average is beside every
phase (this machine is shared: say so when quoting it).

    .venv/bin/python bench/view_bench.py                       # sse and chromium, 3 rounds of 20 s phases
    .venv/bin/python bench/view_bench.py --clients sse --rounds 5 --phase-s 30
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ENGINE = ROOT / "edge" / "bundled" / "model.onnx"
IMAGES = ROOT / "trainer" / "sample_data" / "elpv_mini" / "images"
VERDICT = re.compile(r'^edge_verdict_(OK|NotOK|NotDecidable)_total\{stage="alert",camera="([^"]+)"\} (\d+)', re.M)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def judged(metrics_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(int(n) for _, _, n in VERDICT.findall(text))


class SseClient:
    """What the page does, without a browser: read /events, fetch each new picture it names."""

    def __init__(self, url: str) -> None:
        self.url, self.stop = url, threading.Event()
        self.messages = self.images = self.missed = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        seen: set[str] = set()
        with urllib.request.urlopen(self.url + "/events", timeout=30) as r:
            buf = b""
            while not self.stop.is_set():
                chunk = r.read1(65536)
                if not chunk:
                    return
                buf += chunk
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    if not event.startswith(b"data: "):
                        continue
                    self.messages += 1
                    doc = json.loads(event[6:])
                    urls = [c["img"] for c in doc["cameras"] if c.get("img")] + \
                           [x["img"] for x in doc["rejects"] if x.get("img")]
                    for u in urls:
                        if u not in seen:
                            seen.add(u)
                            try:
                                with urllib.request.urlopen(self.url + u, timeout=10) as img:
                                    img.read()
                                self.images += 1
                            except urllib.error.HTTPError:   # a reject already pushed out of the strip
                                self.missed += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


class ChromiumClient:
    def __init__(self, url: str) -> None:
        from tests.edge.cdp import Chromium, chromium_path
        exe = chromium_path()
        if exe is None:
            raise SystemExit("view_bench: no chromium (make chromium), or use --clients sse")
        self.browser = Chromium(exe, 1280, 800)
        self.browser.navigate(url + "/")
        if not self.browser.wait_for("document.querySelectorAll('.tile img').length >= 1", 30):
            raise RuntimeError("the page showed no tile")

    def close(self) -> None:
        self.browser.close()


def start_run(tmp: Path, view: bool, cameras: int) -> tuple[subprocess.Popen, int, int | None]:
    metrics_port, view_port = free_port(), free_port() if view else None
    cmd = [sys.executable, "-m", "edge.run", "--insecure", "--engine", str(ENGINE), "--loop", "--no-drop", "--quiet",
           "--alerts-addr", f"tcp://127.0.0.1:{free_port()}", "--replay-addr", f"tcp://127.0.0.1:{free_port()}",
           "--journal", str(tmp / f"journal-{time.monotonic_ns()}.sqlite"), "--metrics-port", str(metrics_port),
           "--metrics-bind", "127.0.0.1"]
    for i in range(cameras):
        cmd += ["--source", f"cam{i}={IMAGES}"]
    if view:
        cmd += ["--view-port", str(view_port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=open(tmp / f"edge-run-{int(view)}.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if judged(metrics_port) > 0:
                return proc, metrics_port, view_port
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"edge-run ended: {(tmp / f'edge-run-{int(view)}.log').read_text()[-2000:]}")
        time.sleep(0.5)
    raise SystemExit("edge-run judged nothing in 180 s")


def stop_run(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pids: set[int] | None = None, ppid: int | None = None, pgrp: int | None = None) -> float:
    """CPU seconds (user + system) of the processes named by pid, parent or process group (/proc).
    CPU time, unlike frames/s, does not move with the machine's load: the view's cost, measured directly."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if (pids and int(d) in pids) or (ppid is not None and int(fields[1]) == ppid) or \
                (pgrp is not None and int(fields[2]) == pgrp):
            total += int(fields[11]) + int(fields[12])
    return total / TICK


def phase(metrics_port: int, seconds: float, edge_pid: int | None = None, browser_pid: int | None = None) -> dict:
    def sample():
        out = {"n": judged(metrics_port), "t": time.monotonic(), "load": os.getloadavg()[0]}
        if edge_pid:
            out["sup"], out["stages"] = cpu_s({edge_pid}), cpu_s(ppid=edge_pid)
        if browser_pid:
            out["browser"] = cpu_s(pgrp=browser_pid)
        return out
    a = sample()
    time.sleep(seconds)
    b = sample()
    dt, frames = b["t"] - a["t"], b["n"] - a["n"]
    row = {"frames_per_s": round(frames / dt, 2), "seconds": round(dt, 1),
           "load_avg_1m": round((a["load"] + b["load"]) / 2, 2)}
    if edge_pid:   # the view's threads live in the supervisor (edge-run's own process); the stages are its children
        row["supervisor_cpu_ms_per_s"] = round((b["sup"] - a["sup"]) * 1e3 / dt, 1)
        row["stages_cpu_ms_per_frame"] = round((b["stages"] - a["stages"]) * 1e3 / frames, 2) if frames else None
    if browser_pid:
        row["browser_cpu_ms_per_s"] = round((b["browser"] - a["browser"]) * 1e3 / dt, 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="sse,chromium", help="comma-separated: sse, chromium (default both)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--phase-s", type=float, default=20.0)
    ap.add_argument("--warmup-s", type=float, default=10.0)
    ap.add_argument("--cameras", type=int, default=2)
    ap.add_argument("--reference", action="store_true", help="also a run without --view-port (a separate run)")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "bench" / "view_bench.json")
    a = ap.parse_args()
    clients = [c.strip() for c in a.clients.split(",") if c.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="view-bench-"))
    rows: list[dict] = []
    proc, mport, vport = start_run(tmp, True, a.cameras)
    url = f"http://127.0.0.1:{vport}"
    try:
        time.sleep(a.warmup_s)
        for r in range(a.rounds):
            kinds = ["none"] + clients
            for kind in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:   # the order turns each round (load drifts)
                client = None
                if kind == "sse":
                    client = SseClient(url)
                elif kind == "chromium":
                    client = ChromiumClient(url)
                try:
                    time.sleep(1.0)   # connected and drawing before the phase counts
                    row = {"round": r, "view": kind, **phase(mport, a.phase_s, proc.pid,
                                                             client.browser.proc.pid if kind == "chromium" else None)}
                    if kind == "sse":
                        row.update(sse_messages=client.messages, images_fetched=client.images,
                                   images_gone=client.missed)
                finally:
                    if client is not None:
                        client.close()
                rows.append(row)
                print(f"round {r} view {kind:<9} {row['frames_per_s']:7.2f} frames/s  load {row['load_avg_1m']:.2f}  "
                      f"supervisor {row['supervisor_cpu_ms_per_s']} ms/s  stages {row['stages_cpu_ms_per_frame']} "
                      f"ms/frame" + (f"  browser {row['browser_cpu_ms_per_s']} ms/s" if kind == "chromium" else ""),
                      flush=True)
    finally:
        stop_run(proc)
    ref = []
    for r in range(a.rounds if a.reference else 0):
        for view in (True, False):
            proc, mport, _ = start_run(tmp, view, a.cameras)
            try:
                time.sleep(a.warmup_s)
                row = {"round": r, "view": "--view-port, none connected" if view else "no --view-port",
                       **phase(mport, a.phase_s, proc.pid)}
            finally:
                stop_run(proc)
            ref.append(row)
            print(f"round {r} separate run, {row['view']:<28} {row['frames_per_s']:7.2f} frames/s  "
                  f"load {row['load_avg_1m']:.2f}  supervisor {row['supervisor_cpu_ms_per_s']} ms/s  "
                  f"stages {row['stages_cpu_ms_per_frame']} ms/frame", flush=True)
    summary = {}
    for kind in ["none"] + clients:
        mine = [x for x in rows if x["view"] == kind]
        fps = [x["frames_per_s"] for x in mine]
        summary[kind] = {"median_frames_per_s": statistics.median(fps), "per_round": fps,
                         "median_supervisor_cpu_ms_per_s": statistics.median(x["supervisor_cpu_ms_per_s"] for x in mine),
                         "median_stages_cpu_ms_per_frame": statistics.median(x["stages_cpu_ms_per_frame"] for x in mine
                                                                             if x["stages_cpu_ms_per_frame"])}
        if kind == "chromium":
            summary[kind]["median_browser_cpu_ms_per_s"] = statistics.median(x["browser_cpu_ms_per_s"] for x in mine)
    base = summary["none"]["median_frames_per_s"]
    for kind in clients:
        ratios = [v / n for v, n in zip(summary[kind]["per_round"], summary["none"]["per_round"]) if n > 0]
        summary[kind]["ratio_to_none_per_round"] = [round(x, 4) for x in ratios]
        summary[kind]["median_ratio_to_none"] = round(statistics.median(ratios), 4) if ratios else None
    if ref:
        with_port = [x["frames_per_s"] for x in ref if x["view"] != "no --view-port"]
        without = [x["frames_per_s"] for x in ref if x["view"] == "no --view-port"]
        summary["separate runs"] = {"--view-port, none connected": with_port, "no --view-port": without,
                                    "ratio_per_pair": [round(v / n, 4) for v, n in zip(with_port, without) if n],
                                    "median_ratio": round(statistics.median(v / n for v, n in zip(with_port, without)
                                                                            if n), 4)}
    doc = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cameras": a.cameras,
           "phase_s": a.phase_s, "rounds": a.rounds, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "cpus": os.cpu_count(), "phases": rows, "reference_phases": ref, "summary": summary}
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nmedian frames/s with nothing connected: {base:.2f}")
    for kind in clients:
        print(f"  with a {kind} view: {summary[kind]['median_frames_per_s']:.2f} "
              f"(median per-round ratio {summary[kind]['median_ratio_to_none']})")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
