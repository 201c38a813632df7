"""What every stage shares: sockets, the stop flag, metrics reporting, the input loop.

A stage reads messages from its input socket, validates them (edge.wire), counts
and skips malformed ones, and ends when it has seen end-of-stream from each of
its upstreams (in-flight work is finished first) or when the supervisor that
started it is gone (no orphans).

A stage runs as its own process (``edge-run --stage-mode processes``) or as one thread of a
process that runs several (``--stage-mode threads``, edge/stages/group.py). The code is the
same; a threaded stage is given the process's shared ZeroMQ context (``inproc://`` hops work
only within one context) and then owns only the sockets it opened on it.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
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

    def __init__(self, cfg: PipelineConfig, ctx: zmq.Context | None = None, on_ready=None) -> None:
        """``ctx``: the process's context, shared with the other stage threads (threads mode);
        None: a context of this stage's own (one stage per process). ``on_ready``: called once
        the stage reports itself ready (threads mode: the group releases capture on it)."""
        self.cfg = cfg
        # A shadow is a second Python handle on the same libzmq context: inproc:// reaches the
        # other stages, and its socket list is this stage's own, so close() leaves theirs alone.
        self._own_ctx = ctx is None
        self.ctx = zmq.Context() if ctx is None else zmq.Context.shadow(ctx)
        self.on_ready = on_ready
        self.metrics = StageMetrics(self.name)
        self.stopping = False
        self._inproc: set[zmq.Socket] = set()          # sockets connected over inproc:// (see end_stream)
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
                self._authority = shared_authority(self.ctx, self.cfg.curve_allow,
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
        if addr.startswith("inproc://"):
            self._inproc.add(sock)

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
        if extra.get("ready") and self.on_ready is not None:
            self.on_ready()
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
        the acknowledgement. Bounded: FLUSH_LINGER_MS, and an orphan stops waiting at once.

        Over inproc:// (stage threads of one process) a sent message is already in the receiver's
        queue, which outlives the sender's socket, and libzmq reports no disconnects there: the
        send is enough."""
        if sock in self._inproc:
            self.send_control(sock, {"kind": "eos", "stage": self.name})
            return
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
            release_authority(self._authority)   # its thread holds a socket of this context: before destroy
            self._authority = None
        linger = 0 if self.orphaned() else FLUSH_LINGER_MS
        if self._own_ctx:
            self.ctx.destroy(linger=linger)
        else:   # the context is the process's: close this stage's sockets (libzmq still delivers what
            # they queued, up to linger); the process terminates the context when every stage is done
            for sock in list(getattr(self.ctx, "_sockets", None) or []):
                if sock is not None and not sock.closed:
                    sock.close(linger=linger)


# One ZAP handler per libzmq context: stage threads that share a context share it, and it is
# closed by the last of them, after every CURVE server socket on the context is closed.
_authorities: dict[int, list] = {}   # context address -> [CurveAuthority, users]
_authorities_lock = threading.Lock()


def shared_authority(ctx: zmq.Context, allow_dir: str, on_refused) -> CurveAuthority:
    """The context's CURVE authority, started by its first user. Refusals are counted by the
    stage that started it (the run's summary adds every stage's ``curve_refused``)."""
    with _authorities_lock:
        entry = _authorities.get(ctx.underlying)
        if entry is None:
            # on a handle of its own: a stage closing its sockets must not close the authority's
            entry = _authorities[ctx.underlying] = [
                CurveAuthority(zmq.Context.shadow(ctx.underlying), allow_dir, log, on_refused=on_refused), 0]
        entry[1] += 1
        return entry[0]


def release_authority(authority: CurveAuthority) -> None:
    with _authorities_lock:
        for key, entry in list(_authorities.items()):
            if entry[0] is authority:
                entry[1] -= 1
                if entry[1] > 0:
                    return
                del _authorities[key]
                break
    authority.close()


def decode_snapshot(header: dict) -> dict:
    snap = header.get("snapshot")
    if not isinstance(snap, dict) or not isinstance(snap.get("stage"), str):
        raise MessageError("metrics message without a snapshot")
    return snap

