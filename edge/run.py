"""``edge-run``: start the pipeline's stage processes, watch them, report, stop them cleanly.

    capture --frames--> preprocess --batches--> score --scored--> alert --PUB--> PLC/MES (edge-alerts)

One command starts every stage as its own process (or, with ``--stage-mode threads``, every
stage as a thread of one process joined by inproc://: edge/stages/group.py; why processes are
the default: docs/pipeline.md, "Stage mode") (``--stages`` picks a subset, so
a plant can run capture on a camera box and the rest on a GPU box: give both the
same addresses). The supervisor (this process) collects each stage's metrics,
prints them every ``--print-every`` seconds, serves them to Prometheus on
``--metrics-port``, and on SIGINT/SIGTERM stops capture first so that every frame
already in flight is scored and alerted before the stages exit. A stage never
outlives the supervisor (each checks its parent).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

import zmq

from edge.backends import BackendError
from edge.buffers import keep_freed_buffers
from edge.config import STAGES, PipelineConfig, local_endpoints
from edge.frame_ring import remove_stale_rings
from edge.leftovers import remove_dead_owners, remove_ipc_dir
from edge.manifest import ManifestError, load_manifest
from edge.metrics import MetricsServer, format_summary
from edge.rules import RulesError, parse_threshold
from edge.security import CurveConfig, SecurityError, add_curve_arguments, insecure_warning
from edge.sources import parse_source, parse_sources
from edge.stages.base import decode_snapshot
from edge.view.options import add_view_arguments, configure_view, start_view
from edge.wire import MessageError, make_socket, unpack

log = logging.getLogger("edge")
STOP_GRACE_S = 20.0
CONFIG_ERROR_EXIT = 2         # a stage that cannot start (bad engine, address in use): never restarted
STARTUP_GRACE_S = 60.0        # a stage's first heartbeat may wait for an engine to load
RESTART_BACKOFF_S = 0.5       # first restart after this, doubling per restart in the window
RESTART_BACKOFF_MAX_S = 10.0
STAGE_MODES = ("processes", "threads")
DEFAULT_STAGE_MODE = "processes"   # why: docs/pipeline.md, "Stage mode"


def _stage_main(name: str, cfg: dict, go=None) -> None:
    """Entry point of a stage process (spawned: a fresh interpreter, no inherited sockets). ``go``: an
    event the capture stage waits for before reading (it is started while the engine loads)."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name:>10} %(levelname)s %(message)s")
    import faulthandler
    import importlib
    faulthandler.register(signal.SIGUSR1)   # `kill -USR1 <pid>` prints where a stuck stage is
    keep_freed_buffers()   # received frames reuse freed memory instead of faulting in fresh pages (edge/buffers.py)
    _name_process(f"edge-{name}")
    try:
        module = importlib.import_module(f"edge.stages.{name}")
        module.run(PipelineConfig(**cfg), **({"go": go} if go is not None else {}))
    except (BackendError, ManifestError, ValueError, OSError, zmq.ZMQError) as e:
        log.error("%s stage cannot run: %s", name, e)
        sys.exit(CONFIG_ERROR_EXIT)
    # The stage has closed its sockets (delivered), journal and rings. Skip the interpreter's own
    # teardown of ONNX Runtime, OpenCV and ZeroMQ objects: measured here it took 0.1 s quiet and up
    # to 1 s under load per stage, after the last alert, on the path of every stop (and of the
    # demo's frames/s). Nothing is left for it to flush.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _group_main(stages: list[str], cfg: dict, go=None) -> None:
    """Entry point of a process that runs several stages as threads (``--stage-mode threads``,
    edge/stages/group.py): exit code 0, CONFIG_ERROR_EXIT (a stage cannot run), or 1 (a stage
    thread crashed: the supervisor restarts the process)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(threadName)15s %(levelname)s %(message)s")
    import faulthandler
    faulthandler.register(signal.SIGUSR1)   # all threads: `kill -USR1 <pid>` shows where each stage is
    keep_freed_buffers()
    _name_process("edge-pipeline")
    from edge.stages import group
    code = group.run(PipelineConfig(**cfg), stages, go, name_thread=_name_process)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)   # as _stage_main: skip the interpreter's teardown


def _name_process(name: str) -> None:
    """Show the stage's name in ps/top (/proc/PID/comm; called in a thread, that thread's name in
    top -H, /proc/PID/task/TID/comm), where a plant engineer looks first."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)   # PR_SET_NAME
    except (OSError, AttributeError):
        pass  # not Linux: cosmetic only


def merge_snapshots(snapshots: list[dict]) -> dict:
    """One stage's totals over its incarnations (restarts): counters add up; latency windows
    and identity come from the newest incarnation."""
    merged = dict(snapshots[-1])
    counters: dict[str, dict[str, int]] = {}
    for snap in snapshots:
        for name, per_camera in snap.get("counters", {}).items():
            for camera, n in per_camera.items():
                counters.setdefault(name, {}).setdefault(camera, 0)
                counters[name][camera] += n
    merged["counters"] = counters
    return merged


def stage_units(stages: list[str], mode: str) -> dict[str, list[str]]:
    """The processes the supervisor runs, each with its stages: one per stage (``processes``), or
    one for all of them (``threads``; named ``pipeline``, or after its stage when it has one)."""
    if mode == "processes" or len(stages) == 1:
        return {s: [s] for s in stages}
    return {"pipeline": list(stages)}


class Supervisor:
    """Starts the stage processes, restarts one that dies or hangs, and stops them in order.

    It watches *units*: a process and the stages it runs (one each with ``--stage-mode
    processes``, all of them as threads of one process with ``threads``). Heartbeats are per
    stage, restarts per unit: a hung or crashed stage thread restarts its whole process."""

    def __init__(self, cfg: PipelineConfig, stages: list[str], print_every: float, metrics_port: int | None,
                 duration: float | None, quiet: bool, heartbeat_timeout_s: float = 15.0,
                 max_restarts: int = 5, restart_window_s: float = 300.0, metrics_host: str = "0.0.0.0",
                 stage_mode: str = "processes") -> None:
        self.cfg, self.stages, self.print_every, self.duration, self.quiet = cfg, stages, print_every, duration, quiet
        self.stage_mode = stage_mode
        self.units = stage_units(stages, stage_mode)
        self.unit_of = {s: u for u, members in self.units.items() for s in members}
        self.released = False                         # capture may read (or runs nowhere here)
        self.group_go = None                          # threads mode: the go event of the unit with capture
        self.heartbeat_timeout_s, self.max_restarts, self.restart_window_s = \
            heartbeat_timeout_s, max_restarts, restart_window_s
        self.ctx = zmq.Context()
        self.metrics_in = make_socket(self.ctx, zmq.PULL, hwm=1000)
        self.metrics_in.bind(cfg.metrics_addr)
        self.snapshots: dict[str, dict] = {}          # newest snapshot of each stage's live incarnation
        self.retired: dict[str, list[dict]] = {}      # last snapshots of incarnations that died
        self.ready: set[str] = set()
        self.procs: dict[str, mp.Process] = {}        # unit -> its live process
        self.last_seen: dict[str, float] = {}         # when each live stage last reported
        self.restart_at: dict[str, float] = {}        # unit -> when to start it again
        self.restart_times: dict[str, list[float]] = {}
        self.stop_requested = False
        self.failed: str | None = None
        self.capture_pids: list[int] = []
        self.standby: tuple[mp.Process, object] | None = None   # capture started ahead, and its go event
        # Every go event lives as long as this supervisor: one dropped before its process has unpickled
        # it is unlinked, and the process dies opening it (FileNotFoundError in SemLock._rebuild).
        self.go_events: list = []
        self.server = MetricsServer(metrics_port, self.exported, host=metrics_host) \
            if metrics_port is not None else None
        self.started = time.monotonic()

    # -- stage processes ------------------------------------------------------------------------------
    def spawn(self, unit: str, go=None) -> None:
        p = self._start_process(unit, go)
        self.procs[unit] = p
        if "capture" in self.units[unit]:
            self.capture_pids.append(p.pid)   # each incarnation's rings are removed at the end
        # A stage reports twice a second once running; loading an engine may take a while first.
        for name in self.units[unit]:
            self.last_seen[name] = time.monotonic() + STARTUP_GRACE_S

    def _start_process(self, unit: str, go=None) -> mp.Process:
        # daemon: should this process die of an exception, multiprocessing terminates the stages
        # instead of waiting for them (which would wait forever: a stage exits when its parent does).
        members = self.units[unit]
        target, args = (_stage_main, (unit, asdict(self.cfg), go)) if self.stage_mode == "processes" \
            else (_group_main, (members, asdict(self.cfg), go))
        p = mp.get_context("spawn").Process(target=target, args=args, name=f"edge-{unit}", daemon=True)
        p.start()
        return p

    def start_capture_ahead(self) -> None:
        """Start the capture process while the other stages load (an interpreter, OpenCV and the
        sources take a second under load); it opens nothing and reads nothing until released.
        In threads mode capture is a thread of the unit's process, which starts now, with the go
        event: its other stages load meanwhile."""
        go = mp.get_context("spawn").Event()
        self.go_events.append(go)
        unit = self.unit_of["capture"]
        if self.units[unit] != ["capture"]:
            self.spawn(unit, go)
            self.group_go = go
            return
        p = self._start_process("capture", go)
        self.capture_pids.append(p.pid)
        self.standby = (p, go)

    def release_capture(self) -> None:
        """Every other stage is ready: let the capture started ahead read (or start one now)."""
        self.released = True
        if self.group_go is not None:
            self.group_go.set()
            self.last_seen["capture"] = time.monotonic() + STARTUP_GRACE_S   # it reports once it reads
            return
        if self.standby is None:
            self.spawn("capture")
            return
        (p, go), self.standby = self.standby, None
        go.set()
        self.procs["capture"] = p   # one that died meanwhile (a bad source) is seen by watch()
        self.last_seen["capture"] = time.monotonic() + STARTUP_GRACE_S

    def stop_standby(self) -> None:
        if self.standby is not None:
            p, _ = self.standby
            self.standby = None
            if p.is_alive():
                p.terminate()
            p.join(5)
            if p.is_alive():
                p.kill()

    def drain_metrics(self, timeout_ms: int) -> None:
        """Take the stages' metrics; waits up to ``timeout_ms`` for one, or for a stage process to end
        (its sentinel), so that an exit is seen at once, not at the next tick."""
        poller = zmq.Poller()
        poller.register(self.metrics_in, zmq.POLLIN)
        for p in self.procs.values():
            if p.exitcode is None:
                poller.register(p.sentinel, zmq.POLLIN)
        if self.metrics_in not in dict(poller.poll(timeout_ms)):
            return
        while True:
            try:
                header, _ = unpack(self.metrics_in.recv_multipart(zmq.NOBLOCK, copy=False))
                snap = decode_snapshot(header)
            except zmq.Again:
                return
            except MessageError as e:
                log.warning("supervisor: bad metrics message: %s", e)
                continue
            name, proc = snap["stage"], self.procs.get(self.unit_of.get(snap["stage"], ""))
            if proc is None or snap.get("pid") != proc.pid:
                continue  # a late word from an incarnation already retired
            self.snapshots[name] = snap
            self.last_seen[name] = time.monotonic()   # the start-up grace ends with the first report
            if header.get("ready"):
                self.ready.add(name)

    def merged(self) -> dict[str, dict]:
        out = {name: merge_snapshots(self.retired.get(name, []) + ([snap] if snap else []))
               for name in set(self.snapshots) | set(self.retired)
               for snap in [self.snapshots.get(name)] if self.retired.get(name) or snap}
        return out

    def exported(self) -> dict[str, dict]:
        """What /metrics serves: the stages, plus the supervisor's own restart counts."""
        out = self.merged()
        out["supervisor"] = {"stage": "supervisor", "pid": os.getpid(), "time": time.monotonic(),
                             # per unit: a stage's name, or "pipeline" for the stage threads of one process
                             "counters": {"stage_restarts": {n: len(t) for n, t in self.restart_times.items()}},
                             "latency_ms": {}}
        return out

    def watch(self, now: float) -> None:
        """Restart a unit whose process died (exit code != 0) or hangs (a stage without heartbeat),
        with back-off."""
        for name, p in list(self.procs.items()):
            if name in self.restart_at:
                continue
            members = self.units[name]
            what = f"{name} stage" if members == [name] else f"{name} ({', '.join(members)}: stage threads)"
            if p.exitcode is None:
                silent = [s for s in members if now - self.last_seen[s] > self.heartbeat_timeout_s]
                if silent and not self.stop_requested:
                    log.error("%s stage (pid %d) silent for %.0f s: killing %s as hung", silent[0], p.pid,
                              now - self.last_seen[silent[0]], "it" if members == [name] else f"the {name} process")
                    p.kill()
                    for stage in members:   # once: it is seen dead at the next look
                        self.last_seen[stage] = math.inf
                continue
            if self.stop_requested:
                continue
            if p.exitcode == CONFIG_ERROR_EXIT:   # a bad engine, address or journal: a restart cannot help
                log.error("%s cannot run (see its error above): stopping the pipeline", what)
                self.failed = self.failed or name
                self.stop_requested = True
                continue
            if p.exitcode == 0:
                if "capture" in self.stages and not self.released:   # ended before any frame
                    log.error("%s ended before the pipeline started: stopping", what)
                    self.failed = self.failed or name
                    self.stop_requested = True
                continue
            for stage in members:
                if stage in self.snapshots:
                    self.retired.setdefault(stage, []).append(self.snapshots.pop(stage))
                self.ready.discard(stage)
            recent = [t for t in self.restart_times.get(name, []) if now - t < self.restart_window_s]
            if len(recent) >= self.max_restarts:
                log.error("%s died (exit code %s) %d times in %.0f s: giving up, stopping the pipeline",
                          what, p.exitcode, len(recent) + 1, self.restart_window_s)
                self.failed = self.failed or name
                self.stop_requested = True
                continue
            delay = min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S * 2 ** len(recent))
            self.restart_times.setdefault(name, []).append(now)
            self.restart_at[name] = now + delay
            log.error("%s died (exit code %s): restarting it in %.1f s (restart %d)", what, p.exitcode,
                      delay, len(self.restart_times[name]))
        for name, when in list(self.restart_at.items()):
            if now >= when:
                del self.restart_at[name]
                if not self.stop_requested:
                    self.spawn(name)

    # -- stopping -------------------------------------------------------------------------------------
    def request_stop(self, *_) -> None:
        self.stop_requested = True

    def stop_capture(self) -> None:
        """Stop the head of the local pipeline; end-of-stream then flows down and ends the rest."""
        head = next((self.procs[u] for s in STAGES for u in [self.unit_of.get(s)]
                     if u in self.procs and self.procs[u].is_alive()), None)
        if head is not None:
            os.kill(head.pid, signal.SIGTERM)

    def terminate_all(self) -> None:
        self.stop_standby()
        for p in self.procs.values():
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + 5
        for p in self.procs.values():
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()

    def capture_started(self) -> bool:
        return self.released or "capture" not in self.stages

    def finished(self) -> bool:
        if not self.procs or self.restart_at or any(p.exitcode is None for p in self.procs.values()):
            return False
        if not self.stop_requested and any(p.exitcode != 0 for p in self.procs.values()):
            return False   # one died (every process, in threads mode): watch() restarts it or gives up
        return self.stop_requested or self.capture_started()

    # -- the loop -------------------------------------------------------------------------------------
    def start_metrics(self) -> None:
        """Serve /metrics; before any stage starts, so that a port in use is refused at once (OSError)."""
        if self.server:
            self.server.start()
            log.info("metrics on http://%s:%d/metrics", self.server.host, self.server.port)

    def run(self) -> int:
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)
        # Downstream first; capture only once every local stage is ready (engine loaded,
        # subscribers joined), so the first frames are not lost to a stage still starting.
        for unit in reversed(list(self.units)):
            if "capture" not in self.units[unit]:
                self.spawn(unit)
        if "capture" in self.stages:   # ahead: it loads while the engine does, reads when released
            self.start_capture_ahead()
        last_print, prev, stopping_since = time.monotonic(), None, None
        while not self.finished():
            self.drain_metrics(100)
            now = time.monotonic()
            if "capture" in self.stages and not self.released and not self.stop_requested:
                if self.ready >= set(self.stages) - {"capture"}:
                    self.release_capture()
                    self.started = time.monotonic()
            self.watch(now)
            # --duration counts from the release of capture (a slow start must not eat it)
            if self.duration is not None and self.capture_started() and now - self.started >= self.duration:
                self.stop_requested = True
            if self.stop_requested and stopping_since is None:
                stopping_since = now
                self.restart_at.clear()
                if self.capture_started():
                    self.stop_capture()
                else:   # nothing was captured, so nothing is in flight: stop every stage now
                    self.terminate_all()
            if stopping_since is not None and now - stopping_since > STOP_GRACE_S:
                self.terminate_all()
            if not self.quiet and now - last_print >= self.print_every and self.snapshots:
                merged = self.merged()
                print(format_summary(merged, prev), flush=True)
                prev, last_print = merged, now
        elapsed = time.monotonic() - self.started   # every stage has ended: the run's time stops here
        self.stop_standby()   # a capture never released (the pipeline did not start)
        self.drain_metrics(200)
        for p in self.procs.values():
            p.join(1)
        for pid in self.capture_pids:   # a capture stage that was killed cannot remove its rings itself
            remove_stale_rings(pid)
        if self.server:
            self.server.close()
        self.ctx.destroy(linger=0)
        remove_ipc_dir(self.cfg.metrics_addr)   # the private ipc:// folder of this run
        for unit, p in self.procs.items():   # the final incarnations' counters join the totals
            for name in self.units[unit]:
                if name in self.snapshots and p.exitcode not in (None, 0):
                    self.retired.setdefault(name, []).append(self.snapshots.pop(name))
        restarted = {s for u, t in self.restart_times.items() if t for s in self.units[u]}
        self.summary = run_summary(self.merged(), elapsed, restarted=restarted)
        self.summary["stage_mode"] = self.stage_mode
        self.summary["stage_pids"] = {s: self.procs[u].pid for s, u in self.unit_of.items() if u in self.procs}
        self.summary["restarts"] = {n: len(t) for n, t in self.restart_times.items()}   # per unit
        self.summary["capture_started"] = self.capture_started()
        self.summary["failed_stage"] = self.failed
        return 1 if self.failed else 0


def _total(snapshot: dict | None, counter: str) -> int:
    return sum((snapshot or {}).get("counters", {}).get(counter, {}).values())


def _per_camera(snapshot: dict | None, counter: str) -> dict[str, int]:
    return {cam: n for cam, n in (snapshot or {}).get("counters", {}).get(counter, {}).items() if cam}


def frame_accounts(snapshots: dict[str, dict], capture_restarted: bool = False) -> dict[str, dict[str, int]]:
    """Per camera: captured = judged + not_decidable + dropped + lost_in_restarts, always.

    judged: OK + NotOK verdicts; not_decidable: NotDecidable verdicts of frames plus images the
    capture stage could not deliver at all (bad_frames: each a part that passed unjudged);
    dropped: counted by the stage that dropped it (each frame once); lost_in_restarts: inside a
    stage process that died (not counted by anyone: the remainder).

    A stage reports its counters twice a second, so a capture stage that died has under-reported
    what it captured and sent. After a capture restart "captured" is therefore the largest of what
    the capture stage reported and what came out of it downstream (preprocess received + capture
    dropped; judged + not decidable + dropped): all lower bounds of the truth, so lost_in_restarts
    is never negative. Without one, captured is the capture stage's own count (frames injected by
    someone else into a later stage then show as a negative remainder: not ours)."""
    cap, pre, alert = snapshots.get("capture"), snapshots.get("preprocess"), snapshots.get("alert")
    verdicts = {v: _per_camera(alert, f"verdict_{v}") for v in ("OK", "NotOK", "NotDecidable")}
    bad = _per_camera(cap, "bad_frames")
    drops = [_per_camera(snap, "dropped") for snap in snapshots.values()]
    cameras = set(_per_camera(cap, "frames_in")) | set(bad) | {c for d in verdicts.values() for c in d} | \
        {c for d in drops for c in d}
    out = {}
    for cam in sorted(cameras):
        judged = verdicts["OK"].get(cam, 0) + verdicts["NotOK"].get(cam, 0)
        not_decidable = verdicts["NotDecidable"].get(cam, 0) + bad.get(cam, 0) + \
            _per_camera(cap, "untransportable").get(cam, 0)
        dropped = sum(d.get(cam, 0) for d in drops)
        reported = _per_camera(cap, "frames_in").get(cam, 0) + bad.get(cam, 0)
        seen_downstream = _per_camera(pre, "frames_in").get(cam, 0) + _per_camera(cap, "dropped").get(cam, 0) \
            + bad.get(cam, 0)
        captured = max(reported, seen_downstream, judged + not_decidable + dropped) if capture_restarted \
            else reported
        out[cam] = {"captured": captured, "judged": judged, "not_decidable": not_decidable, "dropped": dropped,
                    "lost_in_restarts": captured - judged - not_decidable - dropped}
    return out


# Where capture -> alert time goes: a frame's age since capture as it passes each point
AGE_POINTS = (("preprocess", "age_preprocess_ms", "arrived in preprocess"),
              ("score", "age_score_ms", "arrived in score"),
              ("score", "age_engine_start_ms", "engine call started"),
              ("score", "age_engine_end_ms", "engine call ended"),
              ("alert", "age_alert_ms", "arrived in alert"),
              ("alert", "latency_ms", "alert published"))


def latency_breakdown(snapshots: dict[str, dict]) -> dict:
    """{point: {"p50", "p99"}} of a frame's age since capture at each point (all cameras), in
    pipeline order; points no stage reported are left out."""
    out = {}
    for stage, name, point in AGE_POINTS:
        q = ((snapshots.get(stage) or {}).get("latency_ms", {}).get(name, {}) or {}).get("")
        if q:
            out[point] = {"p50": q.get("p50"), "p99": q.get("p99")}
    return out


def run_summary(snapshots: dict[str, dict], elapsed_s: float, restarted: set[str] = frozenset()) -> dict:
    """The end-of-run figures: frames, verdicts, drops, frames/s, capture->alert latency."""
    alert = snapshots.get("alert")
    latency = (alert or {}).get("latency_ms", {}).get("latency_ms", {}).get("", {})
    cameras = frame_accounts(snapshots, capture_restarted="capture" in restarted)
    judged = sum(c["judged"] for c in cameras.values())
    out = {
        "frames_captured": sum(c["captured"] for c in cameras.values()),
        "frames_judged": judged,                      # OK + NotOK: a NotDecidable frame is not judged
        "frames_not_decidable": sum(c["not_decidable"] for c in cameras.values()),
        "frames_dropped": sum(c["dropped"] for c in cameras.values()),
        "cameras": cameras,                           # the same, per camera
        "camera_alerts": _total(alert, "camera_alerts"),   # blind cameras etc.: not frames
        "verdicts": {v: _total(alert, f"verdict_{v}") for v in ("OK", "NotOK", "NotDecidable")},
        "alerts_published": _total(alert, "alerts_published"),
        "dropped": {s: _total(snap, "dropped") for s, snap in snapshots.items() if _total(snap, "dropped")},
        "malformed": {s: _total(snap, "malformed") for s, snap in snapshots.items() if _total(snap, "malformed")},
        "elapsed_s": round(elapsed_s, 3),
        "frames_per_s": round((judged + sum(c["not_decidable"] for c in cameras.values())) / elapsed_s, 2)
        if elapsed_s > 0 else None,
        "latency_ms_p50": latency.get("p50"),
        "latency_ms_p99": latency.get("p99"),
        "latency_breakdown_ms": latency_breakdown(snapshots),
    }
    # Refused peers, counted by every stage with a CURVE server socket (docs/security.md)
    out["curve_refused"] = sum(_total(snap, "curve_refused") for snap in snapshots.values())
    out["curve_handshake_failed"] = {}
    for snap in snapshots.values():
        for name, per in (snap or {}).get("counters", {}).items():
            if name.startswith("curve_handshake_failed_"):
                kind = name[len("curve_handshake_failed_"):]
                out["curve_handshake_failed"][kind] = out["curve_handshake_failed"].get(kind, 0) + sum(per.values())
    # Every captured frame is judged, not decidable, dropped (counted where), or was inside a stage that died.
    out["frames_lost_in_restarts"] = sum(c["lost_in_restarts"] for c in cameras.values())
    return out


def print_summary(s: dict) -> None:
    if not s.get("capture_started", True):   # not "0 frames in 26 s": say that it never started, and why
        why = f"the {s['failed_stage']} stage cannot run (its error is above)" if s.get("failed_stage") \
            else "stopped before every stage was ready"
        print(f"edge-run: the pipeline did not start: {why}; no frame was captured", flush=True)
        return
    v = s["verdicts"]
    print(f"edge-run: {s['frames_captured']} frames captured in {s['elapsed_s']:.1f} s ({s['frames_per_s']} frames/s): "
          f"{s['frames_judged']} frames judged ({v['NotOK']} defect(s) flagged, {v['OK']} OK), "
          f"{s['frames_not_decidable']} not decidable, {s['frames_dropped']} dropped, "
          f"{s['frames_lost_in_restarts']} lost in restarts; capture->alert latency p50 "
          f"{_ms(s['latency_ms_p50'])} p99 {_ms(s['latency_ms_p99'])}; "
          f"dropped per stage {s['dropped'] or 0}, malformed {sum(s['malformed'].values())}", flush=True)
    if s.get("restarts"):
        print(f"edge-run: stage restarts {s['restarts']}; frames lost inside the stages that died: "
              f"{s['frames_lost_in_restarts']}", flush=True)


def _ms(x) -> str:
    return "n/a" if x is None else f"{x:.1f} ms"


def parse_roi(text: str) -> tuple[str, list[int]]:
    try:
        camera, box = text.split("=", 1)
        x, y, w, h = (int(v) for v in box.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--roi {text!r}: expected CAMERA=x,y,w,h (pixels), e.g. cam0=100,50,640,480")
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"--roi {text!r}: x, y must be >= 0 and w, h > 0")
    return camera, [x, y, w, h]


def _number(kind, minimum, inclusive: bool, what: str):
    """An argparse type: a finite number of ``kind`` at least (or above) ``minimum``. Nonsense such
    as --max-batch 0 or --heartbeat-timeout 0 (a stage killed as hung at once, forever) is refused
    with the rule, never coerced."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value != value or value in (float("inf"), float("-inf")) or \
                (value < minimum if inclusive else value <= minimum):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {what}")
        return value
    return parse


positive_seconds = _number(float, 0, False, "a positive number of seconds")
positive_int = _number(int, 1, True, "a whole number of 1 or more")
count_from_zero = _number(int, 0, True, "a whole number of 0 or more")
positive_rate = _number(float, 0, False, "a positive rate (frames per second)")
positive_amount = _number(float, 0, False, "a positive number")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-run", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the inspection pipeline: capture -> preprocess -> score -> alert over ZeroMQ.",
        epilog="""examples:
  # the bundled model over the bundled images, as one camera, every frame judged
  edge-run --engine edge/bundled/model.onnx --source trainer/sample_data/elpv_mini/images --no-drop --insecure
  # two live cameras (USB index 0 and an RTSP camera), TensorRT engine, defects only, Prometheus on :9100
  edge-run --engine model.plan --source top=0 --source side=rtsp://10.0.0.7/stream \\
           --publish defects --metrics-port 9100 --curve-secret node.key_secret --curve-allow allowed/
  # listen to the verdicts (another shell, or the PLC/MES bridge)
  edge-alerts --connect tcp://127.0.0.1:5560 --curve-secret mes.key_secret --curve-server-key node.key
  # stages on two hosts: capture on the camera box, the rest on the GPU box
  gpu-box$    edge-run --engine model.plan --stages preprocess,score,alert --frames-addr tcp://0.0.0.0:5550 \\
              --curve-secret gpu.key_secret --curve-allow allowed/
  camera-box$ edge-run --engine model.plan --stages capture --frames-inline --frames-addr tcp://gpu-box:5550 \\
              --source 0 --curve-secret cam.key_secret --curve-server-key gpu.key
  # keys: edge-keys --help; without keys, --insecure (plaintext, logged as a warning)

Live sources drop the oldest frames when the pipeline falls behind (every drop is counted
per camera); --no-drop makes a file source wait instead. A camera that stops sending is
reopened with back-off and reported as a NotDecidable alert ("camera blind").""")
    p.add_argument("--engine", type=Path, required=True, help="model.plan (TensorRT) or model.onnx (ONNX Runtime), "
                   "with its .manifest.json beside it")
    p.add_argument("--source", action="append", default=[], metavar="[NAME=]SOURCE",
                   help="camera source, repeatable: video file, image folder, device index, rtsp/http URL, "
                        "GStreamer pipeline; NAME is the camera id in alerts (default cam0, cam1, ...)")
    p.add_argument("--roi", action="append", default=[], type=parse_roi, metavar="CAMERA=x,y,w,h",
                   help="crop this camera's frames to the part before resizing (repeatable)")
    p.add_argument("--loop", action="store_true", help="file sources start over at their end instead of ending the run")
    p.add_argument("--no-drop", action="store_true", help="process every frame (file sources wait for the pipeline)")
    p.add_argument("--stall-timeout", type=positive_seconds, default=5.0, metavar="S",
                   help="a live camera silent for S seconds is reported blind and reopened (default 5)")
    p.add_argument("--fps", type=positive_rate, default=None, help="pace file sources like a camera at this frame rate")
    p.add_argument("--max-batch", type=positive_int, default=None, help="frames per engine call (default: the engine's max)")
    p.add_argument("--max-queue-delay-ms", type=_number(float, 0, True, "a number of milliseconds (0 or more)"),
                   default=PipelineConfig.max_queue_delay_ms, metavar="MS",
                   help="the longest a frame waits in the score stage for others to fill a batch (Triton's "
                        "max_queue_delay; default %(default)g; a sparse stream does not wait)")
    p.add_argument("--publish", choices=["all", "defects"], default="all",
                   help="publish an alert for every verdict, or only NotOK / NotDecidable (default all)")
    p.add_argument("--thumbnails", choices=["all", "defects", "none"], default="defects",
                   help="attach a JPEG heatmap overlay to these alerts (default defects)")
    p.add_argument("--threshold", type=parse_threshold, default=None,
                   help="raw score threshold, overriding the manifest's calibrated one (say why in your logbook)")
    p.add_argument("--node-id", default="", help="this node's name in alerts (default: host name)")
    p.add_argument("--alerts-addr", default="tcp://127.0.0.1:5560",
                   help="where the alert PUB socket binds (default tcp://127.0.0.1:5560; tcp://0.0.0.0:5560 for the plant)")
    p.add_argument("--wait-subscribers", type=count_from_zero, default=0, metavar="N",
                   help="hold the frames until N alert subscribers have joined (at most 10 s)")
    p.add_argument("--journal", default="", metavar="FILE",
                   help="the alert journal: every alert is written to this SQLite file before it is published "
                        "and replayed from it to subscribers that missed it (default: alerts-<node>-<port>.sqlite "
                        "in $STATE_DIRECTORY, else $XDG_STATE_HOME/edge-inspect or ~/.local/state/edge-inspect)")
    p.add_argument("--journal-max-alerts", type=positive_int, default=100_000, metavar="N",
                   help="keep at most the newest N alerts in the journal (default 100000)")
    p.add_argument("--journal-max-days", type=positive_amount, default=7.0, metavar="D",
                   help="forget journaled alerts older than D days (default 7)")
    p.add_argument("--journal-max-mb", type=positive_amount, default=1024.0, metavar="MB",
                   help="keep at most MB megabytes of alerts (thumbnails included) in the journal (default 1024)")
    p.add_argument("--replay-addr", default="", metavar="ADDR",
                   help="where the replay endpoint (ZeroMQ ROUTER) binds (default: the --alerts-addr port + 1)")
    p.add_argument("--metrics-port", type=_number(int, 1, True, "a TCP port (1-65535)"), default=None,
                   help="serve Prometheus metrics on this HTTP port")
    p.add_argument("--metrics-bind", default="0.0.0.0", metavar="HOST",
                   help="the address the metrics endpoint binds (default 0.0.0.0: every interface; plain HTTP, "
                        "so give the management network's address, or 127.0.0.1 for local scraping only)")
    p.add_argument("--print-every", type=positive_seconds, default=5.0, metavar="S", help="print metrics every S seconds")
    p.add_argument("--duration", type=positive_seconds, default=None, metavar="S", help="stop cleanly after S seconds")
    p.add_argument("--stages", default=",".join(STAGES), help="the stages this process runs (default: all four)")
    p.add_argument("--stage-mode", choices=STAGE_MODES, default=DEFAULT_STAGE_MODE,
                   help="run each stage as its own process (default: a stage that crashes or hangs is restarted "
                        "alone, the others keep their frames and the engine stays loaded), or all of them as "
                        "threads of one process joined by inproc:// (capture hands preprocess the decoded frame "
                        "itself: no shared-memory copy, no socket system calls; the engine, OpenCV and ZeroMQ "
                        "release the GIL), which saves CPU per frame but restarts every stage, capture and the "
                        "engine load included, when one of them crashes or hangs (docs/pipeline.md)")
    for hop in ("frames", "batches", "scored"):
        p.add_argument(f"--{hop}-addr", default="", metavar="ADDR",
                       help=f"ZeroMQ endpoint of the {hop} hop (default: private ipc:// when the stages share this host)")
    p.add_argument("--frames-inline", action="store_true",
                   help="send pixels over the frames socket (capture on another host) instead of shared memory")
    p.add_argument("--upstreams", type=positive_int, default=1, help="capture processes feeding this preprocess stage")
    p.add_argument("--simulated", action="store_true", help="mark alerts as simulated (demos, commissioning)")
    p.add_argument("--summary-json", type=Path, default=None, help="also write the end-of-run summary here")
    p.add_argument("--quiet", action="store_true", help="no periodic metrics lines")
    p.add_argument("--heartbeat-timeout", type=positive_seconds, default=15.0, metavar="S",
                   help="a stage silent for S seconds is killed as hung and restarted (default 15)")
    p.add_argument("--max-restarts", type=count_from_zero, default=5, metavar="N",
                   help="restarts of one stage within 5 minutes before edge-run gives up (default 5)")
    add_curve_arguments(p, server=True, client=True)
    add_view_arguments(p)
    return p


def config_from_args(a: argparse.Namespace) -> tuple[PipelineConfig, list[str]]:
    stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise SystemExit(f"edge-run: --stages {a.stages!r}: choose from {', '.join(STAGES)}")
    if "capture" in stages and not a.source:
        raise SystemExit("edge-run: give at least one --source (a video file, image folder, device index or URL)")
    try:   # parse_sources also refuses two sources with one camera id (they would share a ring)
        specs = parse_sources(a.source)
    except ValueError as e:
        raise SystemExit(f"edge-run: {e}")
    for text, spec in zip(a.source, specs):
        if not spec.live and not Path(spec.target).exists():
            raise SystemExit(f"edge-run: source {text!r}: {spec.target} does not exist")
    try:
        manifest = load_manifest(a.engine)
        check_start(manifest, a, stages)
    except (ManifestError, RulesError) as e:
        raise SystemExit(f"edge-run: {e}")
    if a.journal_max_alerts < 1 or a.journal_max_days <= 0 or a.journal_max_mb <= 0:
        raise SystemExit("edge-run: --journal-max-alerts, --journal-max-days and --journal-max-mb must be positive")
    if "alert" in stages:
        from edge.replay import default_replay_addr
        try:
            replay_addr = a.replay_addr or default_replay_addr(a.alerts_addr)
        except ValueError as e:
            raise SystemExit(f"edge-run: {e} (--replay-addr)")
        if replay_addr == a.alerts_addr:
            raise SystemExit("edge-run: --replay-addr must differ from --alerts-addr")
    endpoints = local_endpoints()
    addr = {hop: getattr(a, f"{hop}_addr") or endpoints[hop] for hop in ("frames", "batches", "scored")}
    if a.stage_mode == "threads":   # a hop between two stage threads of this process: inproc://
        for hop, (tx, rx) in HOPS.items():
            if not getattr(a, f"{hop}_addr") and tx in stages and rx in stages:
                addr[hop] = f"inproc://edge-{hop}"
    cfg = PipelineConfig(
        engine=str(a.engine), sources=list(a.source), rois=dict(a.roi), loop=a.loop, no_drop=a.no_drop,
        fps_limit=a.fps, stall_timeout_s=a.stall_timeout, max_batch=a.max_batch, max_queue_delay_ms=a.max_queue_delay_ms, publish=a.publish, thumbnails=a.thumbnails, threshold=a.threshold,
        node_id=a.node_id, alerts_addr=a.alerts_addr, frames_addr=addr["frames"], batches_addr=addr["batches"],
        scored_addr=addr["scored"], metrics_addr=endpoints["metrics"], frames_inline=a.frames_inline,
        upstreams=a.upstreams, wait_subscribers=a.wait_subscribers, parent_pid=os.getpid(),
        is_simulated=a.simulated, journal_path=a.journal, journal_max_alerts=a.journal_max_alerts,
        journal_max_age_s=a.journal_max_days * 86400.0, journal_max_bytes=int(a.journal_max_mb * (1 << 20)),
        replay_addr=a.replay_addr)
    try:
        configure_curve(cfg, a, stages)
    except SystemExit:
        remove_ipc_dir(cfg.metrics_addr)
        raise
    return cfg, [s for s in STAGES if s in stages]


def check_start(manifest: dict, a: argparse.Namespace, stages: list[str]) -> None:
    """Refuse, before any process starts, a camera without calibration, a calibration fitted on
    another engine and a --roi for no camera; warn loudly where the calibration is unverified."""
    from edge.rules import camera_rules, check_cameras, check_rois, describe_rules
    cameras = [parse_source(t, i).camera for i, t in enumerate(a.source)]
    if a.source:
        check_rois([camera for camera, _ in a.roi], cameras)
    if "alert" in stages:
        rules = camera_rules(manifest, a.threshold)
        if cameras:
            check_cameras(rules, cameras)
            for line in describe_rules(manifest, cameras, a.threshold):
                log.info("%s", line)
        if a.threshold is None:   # with --threshold the operator has taken the thresholds over
            from edge.calibration_provenance import check_calibrated_engine
            for warning in check_calibrated_engine(manifest):
                log.warning("CALIBRATION NOT CHECKED FOR THIS ENGINE: %s", warning)


# hop -> (the stage that connects and sends, the stage that binds and receives)
HOPS = {"frames": ("capture", "preprocess"), "batches": ("preprocess", "score"), "scored": ("score", "alert")}


def configure_curve(cfg: PipelineConfig, a: argparse.Namespace, stages: list[str]) -> None:
    """CURVE on every socket of this process that leaves the host: the alert and replay sockets
    (when the alert stage runs here) and every tcp:// hop between stages. Without keys, only an
    explicit --insecure lets the command run (and the log says so)."""
    addrs = {"frames": cfg.frames_addr, "batches": cfg.batches_addr, "scored": cfg.scored_addr}
    server = "alert" in stages or any(addrs[h].startswith("tcp://") and rx in stages for h, (_, rx) in HOPS.items())
    client = any(addrs[h].startswith("tcp://") and tx in stages for h, (tx, _) in HOPS.items())
    curve = CurveConfig.from_args(a)
    try:
        enabled = curve.check(server=server, client=client)
    except SecurityError as e:
        raise SystemExit(f"edge-run: {e}")
    if enabled:
        cfg.curve_secret, cfg.curve_allow, cfg.curve_server_key = \
            curve.secret or "", curve.allow_dir or "", curve.server_key or ""
    elif server or client:
        insecure_warning(log, "the alert, replay and tcp:// stage channels run")


def attach_signed_numbers(argv: list[str], options: tuple[str, ...] = ("--threshold",)) -> list[str]:
    """``--threshold -inf`` as ``--threshold=-inf``: argparse takes a value that starts with '-' and is not
    a plain decimal ('-inf', '-1e-3') for an option, and would answer "expected one argument" instead of
    saying what is wrong with the number."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in options and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            try:
                float(argv[i + 1])
            except ValueError:
                pass
            else:
                out.append(f"{argv[i]}={argv[i + 1]}")
                i += 2
                continue
        out.append(argv[i])
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(attach_signed_numbers(sys.argv[1:] if argv is None else list(argv)))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor %(levelname)s %(message)s")
    cfg, stages = config_from_args(a)   # a configuration error is refused in one line, before anything is touched
    try:
        view_token = configure_view(cfg, a, stages)   # the operator's screen (edge/view): checked before any start
    except SystemExit:
        remove_ipc_dir(cfg.metrics_addr)
        raise
    remove_dead_owners()   # frame rings and ipc folders of pipelines that were killed
    sup = Supervisor(cfg, stages, a.print_every, a.metrics_port, a.duration, a.quiet,
                     heartbeat_timeout_s=a.heartbeat_timeout, max_restarts=a.max_restarts,
                     metrics_host=a.metrics_bind, stage_mode=a.stage_mode)
    try:
        sup.start_metrics()
    except OSError as e:   # a port in use, a bad --metrics-bind: one line, not a traceback
        print(f"edge-run: {e.strerror or e} (--metrics-port / --metrics-bind)", file=sys.stderr, flush=True)
        sup.ctx.destroy(linger=0)
        remove_ipc_dir(cfg.metrics_addr)
        return CONFIG_ERROR_EXIT
    try:
        view = start_view(sup, a, view_token)
    except OSError as e:   # the view's port in use
        print(f"edge-run: {e.strerror or e} (--view-port / --view-bind)", file=sys.stderr, flush=True)
        if sup.server:
            sup.server.close()
        sup.ctx.destroy(linger=0)
        remove_ipc_dir(cfg.metrics_addr)
        return CONFIG_ERROR_EXIT
    try:
        code = sup.run()
    finally:
        if view is not None:
            view.close()
    print_summary(sup.summary)
    if a.summary_json:
        a.summary_json.write_text(json.dumps(sup.summary, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
