"""Replay: a subscriber that missed alerts fetches them from the node's journal (edge/journal.py).

The alert stage binds a ZeroMQ ROUTER socket beside its PUB (``edge-run --replay-addr``,
default: the alert port + 1) and answers, in its own loop, requests of this protocol. A
client uses a DEALER (never REQ: a REQ that timed out is wedged until it gets its reply).
docs/alerts.md is the integrator's copy.

Request: one frame (a REQ-style empty delimiter before it is accepted), a msgpack map of at
most MAX_REQUEST_BYTES (the ROUTER's MAXMSGSIZE: a bigger one drops the connection)::

    {"v": 1, "op": "hello", "id": <echoed>}
    {"v": 1, "op": "since", "id": <echoed>, "after": N, "limit": L,        # L <= MAX_LIMIT
     "cameras": [str, ...], "verdicts": [str, ...]}                        # optional filters

Reply: one frame, a msgpack map of at most MAX_REPLY_BYTES::

    {"v": 1, "ok": true, "id", "node", "journal_id", "first_seq", "last_seq"}          hello
    ... + "alerts": [body, ...], "missing": [[lo, hi], ...], "upto": U                 since
    {"v": 1, "ok": false, "id", "error": "..."}                                        refused

``alerts`` are the exact msgpack bodies the node published (frame 2 of the alert message),
oldest first. Every alert_seq in (after, upto] is in ``alerts``, in ``missing`` (pruned by the
journal's retention, or never journaled), or did not match the filters; ask again with
``after = upto`` while ``upto < last_seq``. A request that is not of this protocol is answered
``ok: false`` and counted (``replay_malformed``), never fatal to the node.
"""
from __future__ import annotations

import itertools
import time
from typing import Callable

import msgpack
import zmq

from edge.alerts import MAX_ALERT_BYTES, VERDICTS
from edge.journal import AlertJournal, JournalError

REPLAY_VERSION = 1
MAX_REQUEST_BYTES = 4096
MAX_LIMIT = 500                         # alerts per reply
MAX_REPLY_ALERT_BYTES = 4 << 20         # bodies per reply (always at least one; one is <= MAX_ALERT_BYTES)
MAX_REPLY_BYTES = MAX_REPLY_ALERT_BYTES + MAX_ALERT_BYTES + (64 << 10)   # the client's MAXMSGSIZE
MAX_FILTER_VALUES = 64
MAX_ENVELOPE_FRAMES = 3                 # identity (+ an empty delimiter from a REQ) + the request
ROUTER_SNDHWM = 4                       # replies queued per client: bounded memory if one stops reading
ID_TYPES = (int, str, bytes, type(None))


class ReplayError(ValueError):
    """A request or reply that does not follow this protocol."""


def default_replay_addr(alerts_addr: str) -> str:
    """The replay endpoint beside an alert endpoint: TCP port + 1, ``<path>.replay`` for ipc/inproc."""
    scheme, sep, rest = alerts_addr.partition("://")
    if not sep:
        raise ValueError(f"{alerts_addr!r} is not a ZeroMQ endpoint (e.g. tcp://host:5560)")
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not port.isdigit() or not 0 < int(port) < 65535:
            raise ValueError(f"cannot derive a replay endpoint from {alerts_addr!r}: give it explicitly")
        return f"tcp://{host}:{int(port) + 1}"
    if scheme in ("ipc", "inproc"):
        return f"{alerts_addr}.replay"
    raise ValueError(f"cannot derive a replay endpoint from {alerts_addr!r}: give it explicitly")


def _check_id(request: dict):
    rid = request.get("id")
    if not isinstance(rid, ID_TYPES) or isinstance(rid, bool) or (isinstance(rid, (str, bytes)) and len(rid) > 64):
        raise ReplayError("'id' must be an integer or a string of at most 64 characters")
    return rid


def parse_request(raw: bytes) -> dict:
    """Validate one request frame; ReplayError says what is wrong."""
    if len(raw) > MAX_REQUEST_BYTES:
        raise ReplayError(f"request of {len(raw)} bytes exceeds {MAX_REQUEST_BYTES}")
    try:
        req = msgpack.unpackb(raw, raw=False, strict_map_key=True, max_bin_len=MAX_REQUEST_BYTES,
                              max_str_len=MAX_REQUEST_BYTES)
    except Exception as e:   # msgpack raises several types for bad input
        raise ReplayError(f"request is not msgpack: {e}") from e
    if not isinstance(req, dict):
        raise ReplayError(f"request must be a map, got {type(req).__name__}")
    if req.get("v") != REPLAY_VERSION:
        raise ReplayError(f"replay protocol version {req.get('v')!r}; this node speaks {REPLAY_VERSION}")
    _check_id(req)
    op = req.get("op")
    if op == "hello":
        return req
    if op != "since":
        raise ReplayError(f"unknown op {op!r}: use 'hello' or 'since'")
    for key in ("after", "limit"):
        if not isinstance(req.get(key), int) or isinstance(req.get(key), bool):
            raise ReplayError(f"'since' needs an integer '{key}'")
    if req["after"] < 0 or not 1 <= req["limit"] <= MAX_LIMIT:
        raise ReplayError(f"'after' must be >= 0 and 'limit' within 1..{MAX_LIMIT}")
    for key in ("cameras", "verdicts"):
        values = req.get(key, [])
        if not isinstance(values, list) or len(values) > MAX_FILTER_VALUES or \
                not all(isinstance(v, str) and 0 < len(v) <= 256 for v in values):
            raise ReplayError(f"'{key}' must be a list of at most {MAX_FILTER_VALUES} names")
    if any(v not in VERDICTS for v in req.get("verdicts", [])):
        raise ReplayError(f"'verdicts' must be among {VERDICTS}")
    return req


def parse_reply(raw: bytes) -> dict:
    """Validate one reply frame (the client side); ReplayError says what is wrong."""
    try:
        rep = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as e:
        raise ReplayError(f"reply is not msgpack: {e}") from e
    if not isinstance(rep, dict) or rep.get("v") != REPLAY_VERSION or not isinstance(rep.get("ok"), bool):
        raise ReplayError("not a replay reply of version 1")
    if not rep["ok"]:
        if not isinstance(rep.get("error"), str):
            raise ReplayError("a refusal without 'error'")
        return rep
    kinds = {"node": str, "journal_id": str, "first_seq": (int, type(None)), "last_seq": int}
    if "alerts" in rep:
        kinds.update(alerts=list, missing=list, upto=int)
    for key, kind in kinds.items():
        if not isinstance(rep.get(key), kind) or isinstance(rep.get(key), bool):
            raise ReplayError(f"reply field '{key}' missing or of type {type(rep.get(key)).__name__}")
    if not all(isinstance(b, bytes) and len(b) <= MAX_ALERT_BYTES for b in rep.get("alerts", [])):
        raise ReplayError("reply 'alerts' must be alert bodies (bin)")
    if not all(isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) for x in r) and r[0] <= r[1]
               for r in rep.get("missing", [])):
        raise ReplayError("reply 'missing' must be [lo, hi] ranges")
    return rep


def encode_request(op: str, rid=None, **fields) -> bytes:
    return msgpack.packb({"v": REPLAY_VERSION, "op": op, "id": rid, **fields}, use_bin_type=True)


class ReplayServer:
    """The node's side: a ROUTER at ``addr`` answering from ``journal``. :meth:`serve` is called
    from the alert stage's loop (single-threaded, like the journal). ``count(name, n)`` is told
    ``replay_requests``, ``replay_malformed``, ``replay_alerts_sent``, ``replay_unsent``."""

    def __init__(self, ctx: zmq.Context, addr: str, journal: AlertJournal, node: str,
                 count: Callable[[str, int], None] = lambda name, n=1: None,
                 prepare: Callable[[zmq.Socket], None] = lambda sock: None):
        """``prepare`` is called on the socket before it binds (CURVE: edge.security.secure_server)."""
        self.journal, self.node, self.count = journal, node, count
        self.sock = ctx.socket(zmq.ROUTER)
        prepare(self.sock)
        try:
            for opt, value in ((zmq.LINGER, 0), (zmq.MAXMSGSIZE, MAX_REQUEST_BYTES), (zmq.RCVHWM, 64),
                               (zmq.SNDHWM, ROUTER_SNDHWM), (zmq.ROUTER_MANDATORY, 1),
                               (zmq.HEARTBEAT_IVL, 2000), (zmq.HEARTBEAT_TIMEOUT, 6000)):
                self.sock.setsockopt(opt, value)
            self.sock.bind(addr)
        except zmq.ZMQError as e:
            self.sock.close(linger=0)
            raise ValueError(f"cannot bind the replay endpoint {addr}: {e} (--replay-addr)") from e
        self.addr = addr
        self.last_error: str | None = None

    def _hello(self) -> dict:
        return {"v": REPLAY_VERSION, "ok": True, "node": self.node, "journal_id": self.journal.journal_id,
                "first_seq": self.journal.first_seq(), "last_seq": self.journal.last_seq()}

    def answer(self, raw: bytes) -> dict:
        """The reply to one request frame (never raises for a bad request)."""
        rid = None
        try:
            req = parse_request(raw)
            rid = req.get("id")
            rep = self._hello()
            if req["op"] == "since":
                found = self.journal.since(req["after"], req["limit"], cameras=req.get("cameras", ()),
                                           verdicts=req.get("verdicts", ()), max_bytes=MAX_REPLY_ALERT_BYTES)
                rep.update(alerts=found.alerts, missing=found.missing, upto=found.upto,
                           first_seq=found.first_seq, last_seq=found.last_seq)
                self.count("replay_alerts_sent", len(found.alerts))
        except ReplayError as e:
            self.count("replay_malformed", 1)
            self.last_error = str(e)
            return {"v": REPLAY_VERSION, "ok": False, "id": rid, "error": str(e)}
        except JournalError as e:
            self.count("replay_errors", 1)
            self.last_error = str(e)
            return {"v": REPLAY_VERSION, "ok": False, "id": rid, "error": f"journal unavailable: {e}"}
        rep["id"] = rid
        return rep

    def serve(self, budget: int = 16) -> int:
        """Answer up to ``budget`` queued requests without waiting; returns how many."""
        served = 0
        while served < budget:
            frames, n = [], 0
            try:
                while True:   # frame by frame: a message of many frames cannot pile up in memory
                    frame = self.sock.recv(zmq.NOBLOCK)
                    n += 1
                    if len(frames) < MAX_ENVELOPE_FRAMES + 1:
                        frames.append(frame)
                    if not self.sock.getsockopt(zmq.RCVMORE):
                        break
            except zmq.Again:
                return served
            served += 1
            self.count("replay_requests", 1)
            if n > MAX_ENVELOPE_FRAMES or (n == 3 and frames[1] != b""):
                self.count("replay_malformed", 1)   # no envelope we could answer safely
                self.last_error = f"request of {n} frames"
                continue
            reply = self.answer(frames[-1])
            try:
                self.sock.send_multipart(frames[:-1] + [msgpack.packb(reply, use_bin_type=True)], zmq.NOBLOCK)
            except zmq.ZMQError:   # Again: the client does not read its replies; EHOSTUNREACH: it left
                self.count("replay_unsent", 1)
        return served

    def close(self) -> None:
        self.sock.close(linger=0)


class ReplayLink:
    """A subscriber's connection to one node's replay endpoint: a DEALER with at most one
    request in flight. After a timeout the socket is replaced (its queue holds a stale request,
    and a late reply would otherwise be taken for the next one); replies are matched by id."""

    _ids = itertools.count(1)

    def __init__(self, ctx: zmq.Context, endpoint: str, timeout_s: float = 2.0,
                 prepare: Callable[[zmq.Socket], None] = lambda sock: None):
        """``prepare`` is called on each new socket before it connects (CURVE: secure_client)."""
        self.ctx, self.endpoint, self.timeout_s, self.prepare = ctx, endpoint, timeout_s, prepare
        self.sock = self._socket()
        self.pending: dict | None = None     # {"id", "op", "sent", ...caller's context}

    def _socket(self) -> zmq.Socket:
        s = self.ctx.socket(zmq.DEALER)
        try:
            for opt, value in ((zmq.LINGER, 0), (zmq.MAXMSGSIZE, MAX_REPLY_BYTES), (zmq.SNDHWM, 2),
                               (zmq.RCVHWM, 4), (zmq.RECONNECT_IVL, 100), (zmq.RECONNECT_IVL_MAX, 5000)):
                s.setsockopt(opt, value)
            self.prepare(s)
            s.connect(self.endpoint)
        except zmq.ZMQError as e:
            s.close(linger=0)
            raise ValueError(f"cannot connect to the replay endpoint {self.endpoint!r}: {e}") from e
        return s

    def send(self, op: str, context: dict | None = None, **fields) -> bool:
        """Send a request unless one is in flight; False when it could not be sent."""
        if self.pending is not None:
            return False
        rid = next(self._ids)
        try:
            self.sock.send(encode_request(op, rid, **fields), zmq.NOBLOCK)
        except zmq.Again:
            return False
        self.pending = {"id": rid, "op": op, "sent": time.monotonic(), **fields, **(context or {})}
        return True

    def expired(self, now: float) -> bool:
        return self.pending is not None and now - self.pending["sent"] > self.timeout_s

    def recv(self) -> tuple[dict, dict] | None:
        """(request, reply) for the reply now readable, or None (stale, or not a reply: ReplayError)."""
        try:
            raw = self.sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return None
        while self.sock.getsockopt(zmq.RCVMORE):   # a well-behaved node sends one frame
            self.sock.recv()
        rep = parse_reply(raw)
        if self.pending is None or rep.get("id") != self.pending["id"]:
            return None
        request, self.pending = self.pending, None
        return request, rep

    def reset(self) -> zmq.Socket:
        """Give up the request in flight and start over on a fresh socket; returns the old one
        (the caller unregisters it from its poller, then closes it)."""
        old, self.sock, self.pending = self.sock, self._socket(), None
        return old

    def close(self) -> None:
        self.sock.close(linger=0)


def replay_request(endpoint: str, op: str = "hello", timeout_s: float = 2.0, context: zmq.Context | None = None,
                   **fields) -> dict:
    """One synchronous request (scripts, tests): the parsed reply; TimeoutError without one."""
    ctx = context or zmq.Context.instance()
    link = ReplayLink(ctx, endpoint, timeout_s)
    try:
        if not link.send(op, **fields):
            raise TimeoutError(f"cannot send to {endpoint}")
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if link.sock.poll(int(left * 1000) + 1):
                got = link.recv()
                if got is not None:
                    return got[1]
        raise TimeoutError(f"no reply from {endpoint} within {timeout_s} s")
    finally:
        link.close()
