"""Pipeline metrics: counters and latency windows per stage, their rates, a human summary,
and the Prometheus text exposition (format 0.0.4) served on ``edge-run --metrics-port``.

Each stage process owns one :class:`StageMetrics` and periodically sends its
:meth:`StageMetrics.snapshot` (a plain dict: msgpack-able, no numpy types) to the
supervisor; the supervisor keeps the latest snapshot per stage and prints
:func:`format_summary` / serves :func:`render_prometheus` through :class:`MetricsServer`.

Snapshot (``format`` :data:`SNAPSHOT_VERSION`)::

    {"stage": "score", "pid": 1234, "time": <time.monotonic() of the stage process>,
     "counters":   {"frames_in": {"cam0": 812, "": 3}, ...},             # "" = not per camera
     "latency_ms": {"capture_to_alert": {"cam0": {"p50": 11.2, "p99": 30.5, "max": 41.0,
                                                  "count": 812, "sum": 9544.1}}}}

Counters only grow (a restarted process starts again from 0: :func:`rates` sees the new
pid). Latency quantiles and ``max`` cover the last ``window`` samples per key (recent
behaviour, bounded memory); ``count`` and ``sum`` cover the life of the process, as in a
Prometheus summary. ``time`` is CLOCK_MONOTONIC, which is one clock for all processes of
one Linux host, so the supervisor may compare it with its own ``time.monotonic()``.

stdlib + numpy only (runs on the line machine).
"""
from __future__ import annotations

import collections
import http.server
import logging
import math
import os
import re
import threading
import time
from typing import Callable
from urllib.parse import urlsplit

import numpy as np

log = logging.getLogger("edge.metrics")

SNAPSHOT_VERSION = 1
DEFAULT_WINDOW = 4096
QUANTILES = (("p50", 50.0, "0.5"), ("p99", 99.0, "0.99"))   # snapshot key, numpy percentile, Prometheus label
# The end-to-end latency the alert stage observes (per camera, and "" for all cameras):
# capture (monotonic) -> alert published, the same figure as the alert's latency_ms field.
CAPTURE_TO_ALERT = "latency_ms"
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# HELP texts of the names the pipeline uses; any other name gets a generic one.
HELP = {
    "frames_in": "Frames (or messages) received by the stage.",
    "frames_out": "Frames (or messages) sent on by the stage.",
    "dropped": "Frames dropped by the stage (queue full, late, or superseded by a newer frame).",
    "malformed": "Messages refused as malformed (bad header, shape, version or size).",
    "alerts": "Alerts published.",
    "errors": "Errors the stage survived.",
    "alerts_published": "Alerts published on the alert PUB socket.",
    "stale": "Frames skipped because a newer frame of the camera was waiting.",
    "rejected": "Frames refused by the stage (wrong shape or dtype, unreadable).",
    "latency_rejected": "Latency samples refused because they were not finite numbers.",
    CAPTURE_TO_ALERT: "Milliseconds from frame capture to alert publication.",
    "preprocess_ms": "Milliseconds spent preprocessing one frame.",
    "batch_wait_ms": "Milliseconds the oldest frame of an engine batch waited in the score stage's batcher.",
    # where capture -> alert latency goes: a frame's age (since capture) at each point it passes
    "age_preprocess_ms": "Milliseconds from a frame's capture to its arrival in the preprocess stage.",
    "age_score_ms": "Milliseconds from a frame's capture to its arrival in the score stage.",
    "age_engine_start_ms": "Milliseconds from a frame's capture to the start of its engine call.",
    "age_engine_end_ms": "Milliseconds from a frame's capture to the end of its engine call.",
    "age_alert_ms": "Milliseconds from a frame's capture to its arrival in the alert stage.",
}


class StageMetrics:
    """Counters and latency windows of one stage process. Thread-safe (a stage may count
    from a capture thread and its main loop)."""

    def __init__(self, stage: str, window: int = DEFAULT_WINDOW):
        if not stage:
            raise ValueError("a stage needs a name, e.g. 'capture' or 'score'")
        if window < 1:
            raise ValueError(f"window must be at least 1 sample, got {window}")
        self.stage = stage
        self.window = int(window)
        self._lock = threading.Lock()
        self._counters: dict[str, dict[str, int]] = {}
        self._samples: dict[str, dict[str, collections.deque]] = {}
        self._count: dict[tuple[str, str], int] = collections.defaultdict(int)
        self._sum: dict[tuple[str, str], float] = collections.defaultdict(float)

    def inc(self, name: str, camera: str | None = None, n: int = 1) -> None:
        """Add ``n`` (>= 0) to counter ``name`` of ``camera`` (None: the stage as a whole)."""
        if n < 0:
            raise ValueError(f"counters only grow; got n={n} for {name!r}")
        cam = camera or ""
        with self._lock:
            per = self._counters.setdefault(name, {})
            per[cam] = per.get(cam, 0) + int(n)

    def observe(self, name: str, value_ms: float, camera: str | None = None) -> None:
        """Record one latency sample in milliseconds. A non-finite value is not recorded (it
        would poison every quantile) but counted as ``latency_rejected``: metrics never crash
        a stage."""
        v = float(value_ms)
        cam = camera or ""
        if not math.isfinite(v):
            self.inc("latency_rejected", camera)
            return
        with self._lock:
            per = self._samples.setdefault(name, {})
            window = per.get(cam)
            if window is None:
                window = per[cam] = collections.deque(maxlen=self.window)
            window.append(v)
            self._count[name, cam] += 1
            self._sum[name, cam] += v

    def counter(self, name: str, camera: str | None = None) -> int:
        """The current value of one counter (cheap: no snapshot, no percentiles)."""
        with self._lock:
            return self._counters.get(name, {}).get(camera or "", 0)

    def snapshot(self) -> dict:
        """A plain-dict copy of the current state (see the module doc for its layout)."""
        with self._lock:
            counters = {name: dict(per) for name, per in self._counters.items()}
            windows = {name: {cam: (np.fromiter(w, dtype=np.float64, count=len(w)),
                                    self._count[name, cam], self._sum[name, cam])
                              for cam, w in per.items()}
                       for name, per in self._samples.items()}
        latency = {}
        for name, per in windows.items():
            latency[name] = {}
            for cam, (a, count, total) in per.items():
                q = np.percentile(a, [p for _, p, _ in QUANTILES])
                entry = {key: float(v) for (key, _, _), v in zip(QUANTILES, q)}
                entry.update(max=float(a.max()), count=int(count), sum=float(total))
                latency[name][cam] = entry
        return {"format": SNAPSHOT_VERSION, "stage": self.stage, "pid": os.getpid(), "time": time.monotonic(),
                "window": self.window, "counters": counters, "latency_ms": latency}


def rates(prev: dict | None, cur: dict) -> dict:
    """Events per second of every counter and camera of ``cur`` since ``prev`` (two snapshots
    of one stage): ``{name: {camera: per_s}}``. A counter that went down, or a new pid (the
    stage restarted), counts from 0, as Prometheus' rate() treats counter resets. Empty when
    there is no earlier snapshot or no time passed between the two."""
    if prev is None:
        return {}
    if prev.get("stage") != cur.get("stage"):
        raise ValueError(f"rates of two different stages: {prev.get('stage')!r} and {cur.get('stage')!r}")
    dt = cur["time"] - prev["time"]
    if not dt > 0:
        return {}
    restarted = prev.get("pid") != cur.get("pid")
    out: dict[str, dict[str, float]] = {}
    for name, per in cur.get("counters", {}).items():
        before = {} if restarted else prev.get("counters", {}).get(name, {})
        out[name] = {}
        for cam, value in per.items():
            b = before.get(cam, 0)
            out[name][cam] = (value - b if value >= b else value) / dt
    return out


# -- Prometheus ------------------------------------------------------------------------------
_BAD_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_:]")


def metric_name(name: str) -> str:
    """``edge_<name>`` with characters a Prometheus metric name cannot hold replaced by '_'."""
    return "edge_" + _BAD_NAME_CHARS.sub("_", name)


def latency_family(name: str) -> str:
    """``edge_<name>_ms``; a name that already ends in ``_ms`` keeps one suffix
    (``latency_ms`` -> ``edge_latency_ms``, ``infer`` -> ``edge_infer_ms``)."""
    fam = metric_name(name)
    return fam if fam.endswith("_ms") else fam + "_ms"


def escape_label_value(value: str) -> str:
    """Label values: backslash, double quote and line feed escaped (text format 0.0.4)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(pairs) -> str:
    return "{" + ",".join(f'{k}="{escape_label_value(str(v))}"' for k, v in pairs) + "}"


def _value(v) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int):
        return str(v)
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def _series_labels(stage: str, cam: str) -> list[tuple[str, str]]:
    # camera "" (the stage as a whole) leaves the label out: Prometheus reads an empty label
    # value as an absent label anyway, so this is the same series, written plainly.
    return [("stage", stage), ("camera", cam)] if cam else [("stage", stage)]


def render_prometheus(snapshots: dict[str, dict]) -> str:
    """Text exposition 0.0.4 of the latest snapshot of every stage. The dict key is the
    ``stage`` label (the supervisor's name for the process, unique even when two processes
    run the same stage). Counters: ``edge_<name>_total{stage,camera}`` (TYPE counter).
    Latencies: a summary ``edge_<name>_ms{stage,camera,quantile="0.5"|"0.99"}`` with
    ``_sum`` and ``_count``, and a gauge ``edge_<name>_ms_max`` (max of the window); a name
    that ends in ``_ms`` already is not suffixed twice (:func:`latency_family`).
    Every family is written once, HELP and TYPE first, as the format requires."""
    counters: dict[str, list] = {}
    latencies: dict[str, list] = {}
    for stage in sorted(snapshots):
        snap = snapshots[stage]
        for name, per in snap.get("counters", {}).items():
            for cam, v in per.items():
                counters.setdefault(name, []).append((_series_labels(stage, cam), v))
        for name, per in snap.get("latency_ms", {}).items():
            for cam, q in per.items():
                latencies.setdefault(name, []).append((_series_labels(stage, cam), q))
    lines: list[str] = []
    for name in sorted(counters):
        fam = metric_name(name) + "_total"
        lines += [f"# HELP {fam} {_escape_help(HELP.get(name, f'Count of {name} events.'))}",
                  f"# TYPE {fam} counter"]
        lines += [f"{fam}{_labels(labels)} {_value(v)}" for labels, v in counters[name]]
    for name in sorted(latencies):
        fam = latency_family(name)
        help_text = HELP.get(name, f"Latency of {name} in milliseconds.")
        lines += [f"# HELP {fam} {_escape_help(help_text + ' Quantiles over the last samples (window).')}",
                  f"# TYPE {fam} summary"]
        for labels, q in latencies[name]:
            for key, _, label in QUANTILES:
                lines.append(f"{fam}{_labels(labels + [('quantile', label)])} {_value(q[key])}")
            if "sum" in q:
                lines.append(f"{fam}_sum{_labels(labels)} {_value(q['sum'])}")
            lines.append(f"{fam}_count{_labels(labels)} {_value(q['count'])}")
        lines += [f"# HELP {fam}_max {_escape_help(f'Largest {name} sample in the window, milliseconds.')}",
                  f"# TYPE {fam}_max gauge"]
        lines += [f"{fam}_max{_labels(labels)} {_value(q['max'])}" for labels, q in latencies[name]]
    return "\n".join(lines) + "\n" if lines else ""


# -- human summary -------------------------------------------------------------------------
def _total(snap: dict, name: str) -> int:
    return sum(snap.get("counters", {}).get(name, {}).values())


def _total_rate(r: dict, name: str) -> float | None:
    return sum(r[name].values()) if name in r else None


PIPELINE_ORDER = ("capture", "preprocess", "score", "alert")


def _stage_order(stage: str):
    base = stage.split("-")[0].split(":")[0]   # "score-1" sorts with "score"
    return (PIPELINE_ORDER.index(base) if base in PIPELINE_ORDER else len(PIPELINE_ORDER), stage)


def format_summary(snapshots: dict[str, dict], prev: dict[str, dict] | None = None) -> str:
    """Human lines, stages in pipeline order: per stage frames/s in and out (needs ``prev``,
    the snapshots of the last summary; totals without it), drops and malformed messages
    (totals, and per second with ``prev``); then per camera the capture->alert latency
    p50/p99/max (camera "(all)": the stage-wide samples)."""
    lines = []
    for stage in sorted(snapshots, key=_stage_order):
        snap = snapshots[stage]
        p = (prev or {}).get(stage)
        try:
            r = rates(p, snap)
        except ValueError:
            r = {}
        parts = []
        for name, label in (("frames_in", "in"), ("frames_out", "out")):
            if name in snap.get("counters", {}):
                per_s = _total_rate(r, name)
                parts.append(f"{label} {per_s:7.1f}/s" if per_s is not None else f"{label} {_total(snap, name)}")
        for name in ("dropped", "malformed"):
            total = _total(snap, name)
            per_s = _total_rate(r, name)
            parts.append(f"{name} {total}" + (f" ({per_s:.1f}/s)" if per_s else ""))
        lines.append(f"{stage:<10} pid {snap.get('pid', '?'):>7}  " + "  ".join(parts))
    e2e = [(cam == "", cam, stage, q) for stage in sorted(snapshots, key=_stage_order)
           for cam, q in snapshots[stage].get("latency_ms", {}).get(CAPTURE_TO_ALERT, {}).items()]
    for _, cam, stage, q in sorted(e2e, key=lambda e: e[:3]):
        lines.append(f"capture->alert {cam or '(all)':<12} p50 {q['p50']:7.1f} ms  p99 {q['p99']:7.1f} ms  "
                     f"max {q['max']:7.1f} ms  n={q['count']}")
    return "\n".join(lines)


# -- HTTP endpoint ---------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "edge-metrics/1"
    timeout = 10  # a client that opens a connection and says nothing does not hold a thread forever

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self._serve(body=True)

    def do_HEAD(self):  # noqa: N802
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        if urlsplit(self.path).path != "/metrics":
            self._reply(404, b"not found: try /metrics\n", "text/plain; charset=utf-8", body)
            return
        try:
            text = render_prometheus(self.server.get_snapshots()).encode()
        except Exception as e:  # a bad snapshot must not take the supervisor down
            log.exception("cannot render metrics")
            self._reply(500, f"cannot render metrics: {e}\n".encode(), "text/plain; charset=utf-8", body)
            return
        self._reply(200, text, PROMETHEUS_CONTENT_TYPE, body)

    def _reply(self, code: int, payload: bytes, content_type: str, body: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def log_message(self, format, *args):  # noqa: A002 (signature of http.server)
        log.debug("%s %s", self.address_string(), format % args)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # a restarted supervisor gets its port back despite TIME_WAIT

    def __init__(self, address, get_snapshots):
        self.get_snapshots = get_snapshots
        super().__init__(address, _Handler)


class MetricsServer:
    """``GET /metrics`` -> ``render_prometheus(get_snapshots())`` from a daemon thread; any other
    path 404. ``port=0`` picks a free port: read ``.port`` after :meth:`start`."""

    def __init__(self, port: int, get_snapshots: Callable[[], dict[str, dict]], host: str = "0.0.0.0"):
        if not 0 <= int(port) <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        self.host, self.port = host, int(port)
        self._get_snapshots = get_snapshots
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("MetricsServer already started")
        try:
            self._server = _Server((self.host, self.port), self._get_snapshots)
        except OSError as e:
            raise OSError(e.errno, f"cannot serve metrics on {self.host}:{self.port}: {e.strerror} "
                                   "(another process on that port? choose another --metrics-port)") from e
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"metrics-http:{self.port}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and free the port (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "MetricsServer":
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
