"""The bridge's own Prometheus metrics (text format 0.0.4) on ``edge-bridge --metrics-port``.

Counters and gauges come from a callable returning plain dicts, so the HTTP thread never
touches a socket or a SQLite connection of another thread: the asyncio loop refreshes the
snapshot (edge.bridge.cli) and this module only renders it. stdlib only.
"""
from __future__ import annotations

import http.server
import logging
import threading
from typing import Callable

import numpy as np

log = logging.getLogger("edge.bridge")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(snapshot: dict) -> str:
    """``snapshot``: {"counters": {name: {labels-tuple: value}}, "gauges": {...},
    "latency_ms": {name: {labels-tuple: [samples]}}, "help": {name: text}}. Names get the
    prefix ``edge_bridge_``; counters the suffix ``_total``; latencies become summaries
    (p50, p99 over the recent samples) with ``_count``."""
    helps = snapshot.get("help", {})
    lines: list[str] = []

    def labels(pairs) -> str:
        if not pairs:
            return ""
        inner = ",".join(f'{k}="{str(v)}"'.replace("\n", " ") for k, v in pairs)
        return "{" + inner + "}"

    for kind, suffix, typ in (("counters", "_total", "counter"), ("gauges", "", "gauge")):
        for name in sorted(snapshot.get(kind, {})):
            fam = f"edge_bridge_{name}{suffix}"
            lines += [f"# HELP {fam} {helps.get(name, name.replace('_', ' '))}", f"# TYPE {fam} {typ}"]
            for lab, v in sorted(snapshot[kind][name].items()):
                lines.append(f"{fam}{labels(lab)} {float(v):g}")
    for name in sorted(snapshot.get("latency_ms", {})):
        fam = f"edge_bridge_{name}_ms"
        lines += [f"# HELP {fam} {helps.get(name, name.replace('_', ' '))} (milliseconds, recent samples)",
                  f"# TYPE {fam} summary"]
        for lab, samples in sorted(snapshot["latency_ms"][name].items()):
            for q, ql in ((50, "0.5"), (99, "0.99")):
                v = float(np.percentile(samples, q)) if samples else float("nan")
                lines.append(f"{fam}{labels(tuple(lab) + (('quantile', ql),))} {v:g}")
            lines.append(f"{fam}_count{labels(lab)} {len(samples)}")
    return "\n".join(lines) + "\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    timeout = 10

    def do_GET(self):  # noqa: N802
        if self.path.split("?")[0] != "/metrics":
            payload, code, ctype = b"not found: try /metrics\n", 404, "text/plain; charset=utf-8"
        else:
            try:
                payload, code, ctype = render(self.server.get_snapshot()).encode(), 200, CONTENT_TYPE
            except Exception as e:   # a bad snapshot must not take the bridge down
                log.exception("cannot render metrics")
                payload, code, ctype = f"cannot render metrics: {e}\n".encode(), 500, "text/plain; charset=utf-8"
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format, *args):  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class BridgeMetricsServer:
    def __init__(self, host: str, port: int, get_snapshot: Callable[[], dict]):
        try:
            self._server = _Server((host, port), _Handler)
        except OSError as e:
            raise OSError(f"cannot serve metrics on {host}:{port}: {e.strerror} "
                          "(another process on that port? choose another --metrics-port)") from e
        self._server.get_snapshot = get_snapshot
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="bridge-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
