"""What every stage process shares: sockets, the stop flag, metrics reporting, the input loop.

A stage reads messages from its input socket, validates them (edge.wire), counts
and skips malformed ones, and ends when it has seen end-of-stream from each of
its upstreams (in-flight work is finished first) or when the supervisor that
started it is gone (no orphans).
"""
from __future__ import annotations

import logging
import os
import signal
import time

import zmq

from edge.config import PipelineConfig
from edge.security import CurveAuthority, HandshakeWatch, secure_client, secure_server
from edge.metrics import StageMetrics
from edge.wire import MessageError, make_socket, pack, unpack

log = logging.getLogger("edge")
# Bounded by the supervisor too: it kills a stage that has not exited STOP_GRACE_S after a stop.
FLUSH_LINGER_MS = 60_000


class Stage:
    name = "stage"

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self.ctx = zmq.Context()
        self.metrics = StageMetrics(self.name)
        self.stopping = False
        self._last_report = 0.0
        self._metrics_out = None
        self._authority: CurveAuthority | None = None
        self._curve_servers: list[zmq.Socket] = []     # closed before the authority (see close)
        self._handshakes: list[HandshakeWatch] = []    # explain and count refused handshakes
        if cfg.metrics_addr:
            self._metrics_out = make_socket(self.ctx, zmq.PUSH, hwm=16, linger_ms=500)
            self._metrics_out.connect(cfg.metrics_addr)

    # -- CURVE on every socket that leaves the host (docs/security.md) ----------------------------------
    def secure_server(self, sock: zmq.Socket, addr: str, always: bool = False) -> None:
        """Before bind: a CURVE server admitting the allow-list, for tcp:// (or ``always``)."""
        if self.cfg.curve_secret and (always or addr.startswith("tcp://")):
            if self._authority is None:   # one ZAP handler per context, started before the first bind
                self._authority = CurveAuthority(self.ctx, self.cfg.curve_allow, log,
                                                 on_refused=lambda r: self.metrics.inc("curve_refused"))
            secure_server(sock, self.cfg.curve_secret, authority=self._authority)
            self._curve_servers.append(sock)
            # A plaintext client or one that expects another server key never reaches ZAP (the
            # authority counts only refused keys): only the socket's monitor sees it.
            self._handshakes.append(HandshakeWatch(sock, role="server", logger=log))

    def bind(self, sock: zmq.Socket, addr: str, always: bool = False) -> None:
        self.secure_server(sock, addr, always)
        sock.bind(addr)

    def connect(self, sock: zmq.Socket, addr: str) -> None:
        """Connect, as a CURVE client of the receiving host when the hop is tcp://."""
        if self.cfg.curve_secret and addr.startswith("tcp://"):
            secure_client(sock, self.cfg.curve_secret, self.cfg.curve_server_key)
        sock.connect(addr)

    def install_signal_handlers(self) -> None:
        """SIGTERM: finish in-flight work and stop. SIGINT is the supervisor's to handle (a
        Ctrl-C reaches the whole process group; the supervisor then stops the stages in order)."""
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def orphaned(self) -> bool:
        return bool(self.cfg.parent_pid) and os.getppid() != self.cfg.parent_pid

    def count_handshake_failures(self) -> None:
        """Every refused handshake on a CURVE server socket counted (``curve_handshake_failed_<kind>``,
        e.g. ``client_not_curve`` for a plaintext client); HandshakeWatch logs them, rate-limited."""
        for watch in self._handshakes:
            try:
                failures = watch.poll(0)
            except zmq.ZMQError:   # the socket is closing
                continue
            for f in failures:
                self.metrics.inc(f"curve_handshake_failed_{f.kind}")

    def report(self, force: bool = False, **extra) -> None:
        """Send a metrics snapshot to the supervisor (at most every metrics_interval_s)."""
        self.count_handshake_failures()
        now = time.monotonic()
        if self._metrics_out is None or (not force and now - self._last_report < self.cfg.metrics_interval_s):
            return
        self._last_report = now
        body = {"kind": "metrics", "snapshot": self.metrics.snapshot(), **extra}
        try:
            self._metrics_out.send_multipart(pack(body), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # a busy supervisor misses one snapshot; the next carries the totals

    def receive_all(self, sock: zmq.Socket, timeout_ms: int, limit: int) -> list[tuple[dict, list]]:
        """Wait up to ``timeout_ms`` for a message, then take every message already queued (up to
        ``limit``): the stage sees its whole backlog and can drop the oldest or batch across
        cameras. Malformed messages are counted and skipped here."""
        out = []
        if not sock.poll(timeout_ms):
            return out
        while len(out) < limit:
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                out.append(unpack(frames))
            except MessageError as e:
                self.malformed(e)
        return out

    def malformed(self, error: Exception) -> None:
        self.metrics.inc("malformed")
        n = self.metrics.counter("malformed")
        if n <= 5 or n % 1000 == 0:  # rate-limited: a flood must not fill the log
            log.warning("%s: skipped malformed message #%d: %s", self.name, n, error)

    def send(self, sock: zmq.Socket, frames: list, blocking: bool) -> bool:
        """Send; in drop mode never wait (False = the next stage is full, the caller counts the
        drop). In no-drop mode wait, but give up if this stage is told to stop hard."""
        if not blocking:
            try:
                sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                return False
        while True:
            if sock.poll(200, zmq.POLLOUT):
                sock.send_multipart(frames, copy=False)
                return True
            if self.orphaned():
                return False
            self.report()   # waiting on the next stage is not hanging: keep the heartbeat going

    def send_control(self, sock: zmq.Socket, header: dict, timeout_s: float = 10.0) -> bool:
        """End-of-stream and events must not be dropped: wait (bounded) for room."""
        if sock.poll(int(timeout_s * 1000), zmq.POLLOUT):
            sock.send_multipart(pack(header))
            return True
        log.error("%s: could not pass on %s within %.0f s", self.name, header.get("kind"), timeout_s)
        return False

    def end_stream(self, sock: zmq.Socket) -> None:
        """Pass end-of-stream on, then keep the socket open until the next stage has closed its end.

        Closing right after the last send can lose it: ZeroMQ hands messages to the kernel, but
        a receiver whose queue is full (its high-water mark) stops reading the connection, and
        when the sender's side closes meanwhile libzmq may drop what was still in flight. The
        next stage closes its input only after it has seen end-of-stream, so its disconnect is
        the acknowledgement. Bounded: FLUSH_LINGER_MS, and an orphan stops waiting at once."""
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        try:
            if not self.send_control(sock, {"kind": "eos", "stage": self.name}):
                return
            deadline = time.monotonic() + FLUSH_LINGER_MS / 1000
            while time.monotonic() < deadline and not self.orphaned():
                if monitor.poll(200):
                    return
                self.report()
            log.warning("%s: the next stage did not close within %d s after end-of-stream",
                        self.name, FLUSH_LINGER_MS // 1000)
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)

    def close(self) -> None:
        """Close every socket. Messages still queued (the last batches and the end-of-stream) are
        delivered first: ZeroMQ drops whatever is unsent when a socket's linger runs out, and a
        busy next stage may take seconds to make room. An orphan has no one to deliver to."""
        self.report(force=True, final=True)
        for watch in self._handshakes:
            watch.close()
        if self._authority is not None:
            # The CURVE server sockets first: with no ZAP handler bound, libzmq would admit any
            # key to a socket still open. Closing returns at once; libzmq still delivers what
            # they queued (LINGER) to the sessions already admitted, and accepts no new one.
            linger = 0 if self.orphaned() else FLUSH_LINGER_MS
            for sock in self._curve_servers:
                if not sock.closed:
                    sock.close(linger=linger)
            self._authority.close()   # its thread holds a socket of this context: before destroy
        self.ctx.destroy(linger=0 if self.orphaned() else FLUSH_LINGER_MS)


def decode_snapshot(header: dict) -> dict:
    snap = header.get("snapshot")
    if not isinstance(snap, dict) or not isinstance(snap.get("stage"), str):
        raise MessageError("metrics message without a snapshot")
    return snap

