"""A real edge-run with the operator's screen, for the view tests: subprocess, loopback only."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "edge" / "bundled" / "model.onnx"
IMAGES = ROOT / "trainer" / "sample_data" / "elpv_mini" / "images"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ViewLine:
    """``edge-run ... --view-port`` in a subprocess; :meth:`stop` ends it like Ctrl-C and returns its summary."""

    def __init__(self, tmp: Path, *args: str, engine: Path = ENGINE, token: str | None = None) -> None:
        self.token = token   # the view's token, when edge-run is given one (--view-token-file)
        self.port = free_port()
        self.alerts_addr = f"tcp://127.0.0.1:{free_port()}"
        self.summary_path = tmp / f"summary-{time.monotonic_ns()}.json"
        self.log = tmp / f"edge-run-{time.monotonic_ns()}.log"
        cmd = [sys.executable, "-m", "edge.run", "--insecure", "--engine", str(engine), "--alerts-addr",
               self.alerts_addr, "--replay-addr", f"tcp://127.0.0.1:{free_port()}", "--quiet",
               "--journal", str(tmp / f"journal-{time.monotonic_ns()}.sqlite"), "--summary-json",
               str(self.summary_path), "--view-port", str(self.port), *args]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def state(self) -> dict | None:
        try:
            req = urllib.request.Request(self.url + "/state.json")
            if self.token:
                req.add_header("Cookie", f"edge_view_token={self.token}")
            with urllib.request.urlopen(req, timeout=5) as r:
                return json.loads(r.read())
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def wait(self, done, timeout: float, what: str) -> dict:
        """Poll /state.json until ``done(state)``; AssertionError naming ``what`` (and the log) on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"edge-run ended ({self.proc.returncode}) waiting for {what}:\n{self.tail()}")
            s = self.state()
            if s is not None and done(s):
                return s
            time.sleep(0.2)
        raise AssertionError(f"no {what} within {timeout:.0f} s; last state {str(self.state())[:800]}\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self, timeout: float = 60) -> dict:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"edge-run did not stop within {timeout:.0f} s:\n{self.tail()}")
        return json.loads(self.summary_path.read_text()) if self.summary_path.exists() else {}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def request(url: str, method: str = "GET", body: dict | None = None, token: str | None = None,
            headers: dict | None = None, timeout: float = 30) -> tuple[int, dict | str]:
    """One HTTP request; (status, JSON body or text). Errors are answers, not exceptions."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, raw, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
    return status, (json.loads(raw) if "json" in ctype else raw.decode(errors="replace"))
