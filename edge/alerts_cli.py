"""`edge-alerts`: the reference PLC/MES subscriber for the alerts `edge-run` publishes.

It subscribes (ZeroMQ SUB, connecting) to one or more edge nodes' alert PUB sockets,
decodes every message with :func:`edge.alerts.decode_alert`, and prints, stores
(SQLite), or saves thumbnails of the alerts. docs/alerts.md documents the wire
schema for integrators and the SQLite table written by ``--db``.

Reusable from Python::

    from edge.alerts_cli import AlertSubscriber, AlertStore
    with AlertSubscriber(["tcp://line1:5560"], verdicts=["NotOK", "NotDecidable"]) as sub, \\
            AlertStore("alerts.sqlite") as store:
        while (alert := sub.recv(timeout=5.0)) is not None:
            store.add(alert)

A message that is not a valid alert is counted and logged (rate-limited) and never
stops the subscriber: it reads alerts from a factory network, not from a friend.
"""
from __future__ import annotations

import argparse
import collections
import datetime as _dt
import json
import logging
import math
import os
import re
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Iterable

import zmq
from zmq.utils.monitor import recv_monitor_message

from edge.alerts import ALERT_SCHEMA_VERSION, MAX_ALERT_BYTES, VERDICTS, AlertError, decode_alert, decode_alert_body
from edge.replay import ReplayError, ReplayLink, default_replay_addr
from edge.security import (HANDSHAKE_EVENTS, CurveConfig, SecurityError, add_curve_arguments,
                           explain_handshake_failure, insecure_warning, secure_client)

log = logging.getLogger("edge.alerts")

# A frame above MAXMSGSIZE makes libzmq drop the whole connection (a protocol error, after
# which it does NOT reconnect by itself: see AlertSubscriber._redial_abandoned). The margin
# lets a body slightly above MAX_ALERT_BYTES through so decode_alert names and counts it.
MAXMSGSIZE = MAX_ALERT_BYTES + (64 << 10)
RCVHWM = 1000                 # alerts queued per connected node before ZeroMQ drops (bounded memory)
HEARTBEAT_IVL_MS = 1000       # ping each node every second...
HEARTBEAT_TIMEOUT_MS = 3000   # ...and drop + re-dial a node that stays silent for 3 s (pulled cable)
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 5000   # exponential back-off while a node is down
REDIAL_AFTER_S = 1.0          # a disconnect libzmq has not re-dialled within this is re-dialled by us
KEPT_FRAMES = 3               # a message with more frames is malformed: keep no more than this
# Replay (edge/replay.py): fetching what was missed from a node's journal
REPLAY_TIMEOUT_S = 2.0        # a request unanswered for this long: the replay is unavailable for now
HELLO_EVERY_S = 5.0           # ask each node for its last alert_seq this often (finds a lost tail)
HELLO_BACKOFF_MAX_S = 30.0    # ...and back off up to this while it does not answer
GAP_RETRY_MIN_S = 1.0         # an open gap is retried after this, doubling up to...
GAP_RETRY_MAX_S = 60.0
PAGE = 200                    # alerts per replay request; the next page only when these are handed out
HELD_MAX = 1000               # live alerts held per node while the ones before them are fetched
MAX_GAPS = 1000               # open gap ranges per node journal (the oldest are given up on)


class RateLimitedLog:
    """Log the first event at once, then at most one line per ``interval_s`` that says how
    many were suppressed in between: a node spewing garbage must not flood the log."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0, level: int = logging.WARNING,
                 clock=time.monotonic):
        self.logger, self.interval_s, self.level, self.clock = logger, interval_s, level, clock
        self._last: float | None = None
        self.suppressed = 0

    def __call__(self, msg: str, *args) -> bool:
        now = self.clock()
        if self._last is not None and now - self._last < self.interval_s:
            self.suppressed += 1
            return False
        if self.suppressed:
            msg = msg + f" ({self.suppressed} similar suppressed in the last {self.interval_s:g} s)"
        self.logger.log(self.level, msg, *args)
        self._last, self.suppressed = now, 0
        return True


def subscription_prefixes(cameras: Iterable[str] = (), verdicts: Iterable[str] = ()) -> list[bytes]:
    """SUB prefixes for the filters. The topic is ``b"<verdict>/<camera>"``, so the publisher
    (ZeroMQ >= 3 filters on the PUB side) sends only what can match: a verdict filter is
    ``b"NotOK/"``, a camera filter one prefix per verdict (``b"OK/cam0"``, ...). A prefix also
    matches longer camera names (``cam0`` matches ``cam01``): the exact test is done after decoding."""
    cameras, verdicts = sorted(set(cameras)), sorted(set(verdicts))
    for v in verdicts:
        if v not in VERDICTS:
            raise ValueError(f"unknown verdict {v!r}: use one of {', '.join(VERDICTS)}")
    for c in cameras:
        if not c:
            raise ValueError("an empty camera name filters nothing: leave --camera out to take all cameras")
    if not cameras:
        return [f"{v}/".encode() for v in verdicts] or [b""]
    return [f"{v}/{c}".encode() for v in (verdicts or VERDICTS) for c in cameras]


def parse_connect(text: str) -> tuple[str, str | None]:
    """``ALERTS[,REPLAY]`` -> (alerts endpoint, replay endpoint). Without REPLAY the replay
    endpoint is the node's default beside its alerts (TCP port + 1, edge.replay.default_replay_addr);
    None when none can be derived (e.g. a wildcard port)."""
    alerts, _, replay = text.partition(",")
    alerts, replay = alerts.strip(), replay.strip()
    if not alerts:
        raise ValueError(f"--connect {text!r}: expected ALERTS[,REPLAY], e.g. tcp://line1:5560")
    if replay:
        return alerts, replay
    try:
        return alerts, default_replay_addr(alerts)
    except ValueError:
        return alerts, None


class _Link:
    """One --connect: the node's replay endpoint and what its last answer said."""

    def __init__(self, ctx: zmq.Context, alerts: str, replay: str, timeout_s: float, prepare=None):
        self.alerts, self.replay = alerts, replay
        self.rl = ReplayLink(ctx, replay, timeout_s, **({"prepare": prepare} if prepare else {}))
        self.node: str | None = None
        self.journal_id: str | None = None
        self.next_hello = 0.0
        self.urgent = True            # the next hello is after a (re)connect: fetch what we missed at once
        self.failures = 0


class _Stream:
    """The alerts of one journal of one node: what was delivered, what is held, what is missing.

    ``expected`` is the next alert_seq to deliver in order. Live alerts beyond it wait in
    ``held`` while the replay fetches the ones before them (``catching_up``). Ranges the replay
    could not give at the time are ``gaps``: fetched later and delivered late (out of order)."""

    def __init__(self, node: str, journal_id: str):
        self.node, self.journal_id = node, journal_id
        self.expected = 1
        self.fresh = True             # nothing delivered yet and no resume point: the start may move down
        self.target = 0               # the highest alert_seq known to exist
        self.held: dict[int, dict] = {}
        self.catching_up = False
        self.skip_pruned = False      # --since-start: what retention removed before we asked is not "lost"
        self.gaps: list[list[int]] = []
        self.next_gap_try = 0.0
        self.gap_backoff = GAP_RETRY_MIN_S
        self.dead = False             # the node's journal was replaced; nothing more will come of this one
        self.hello_mark = 0           # the node's last_seq at the previous hello

    def missing(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.gaps)


class AlertSubscriber:
    """SUB socket connected to every endpoint in ``connect``; :meth:`recv` returns the next
    valid alert that passes the filters, or None after ``timeout`` seconds.

    Exactly once, in order, when the nodes journal their alerts (``journal_id`` in the alert):
    per node journal the subscriber tracks the next ``alert_seq`` it expects. A live alert
    below it is a duplicate (dropped, counted); one above it means alerts were lost on the way
    (a restart of ours, ZeroMQ's slow joiner, a full queue, a network cut): the missing ones
    are fetched from the node's replay endpoint (a DEALER, edge/replay.py) and delivered first,
    then the live one. If the replay cannot be reached, the live alert is delivered at once and
    the missing range stays open (``gaps_open``), retried with back-off and delivered late
    (``gaps_recovered``); alerts the node no longer has (pruned by its retention) are counted
    in ``gaps_lost`` and logged. A node whose journal is replaced (new ``journal_id``) is
    logged loudly and its new journal is read from its start. Alerts of nodes without a
    journal (older edge-run) are delivered as they come (at most once).

    Where to start, per node journal: ``resume`` (an :class:`AlertStore`: after the last
    alert stored, and the gaps it had open); else ``replay_from`` N; else ``since_start``
    (all the node still has); else from the first alert that arrives after we connect.
    ``connect`` items are ``ALERTS[,REPLAY]`` (see :func:`parse_connect`); ``replay=False``
    turns replay off (at most once, as a plain SUB).

    Counters (``self.counters``): ``received`` (alerts returned, live or replayed),
    ``replayed`` (of them, fetched from a replay endpoint), ``duplicates``, ``malformed``
    (messages decode_alert refused), ``filtered`` (valid alerts a topic prefix let through
    but the exact camera filter did not), ``gaps_opened`` / ``gaps_recovered`` / ``gaps_lost``
    (alerts), ``journal_resets``, ``replay_timeouts`` / ``replay_errors``, ``connected`` /
    ``disconnected`` / ``redialed`` (connection events, from a ZeroMQ socket monitor).
    :attr:`gaps_open`: alerts missing right now. ``by_verdict``, ``by_camera``, ``by_node``:
    received alerts. ``last_error``: why the last malformed message was refused.

    Not thread-safe (a ZeroMQ socket belongs to one thread): use one subscriber per thread.
    """

    def __init__(self, connect: Iterable[str], *, cameras: Iterable[str] = (), verdicts: Iterable[str] = (),
                 context: zmq.Context | None = None, rcvhwm: int = RCVHWM,
                 heartbeat_ivl_ms: int = HEARTBEAT_IVL_MS, heartbeat_timeout_ms: int = HEARTBEAT_TIMEOUT_MS,
                 log_interval_s: float = 10.0, replay: bool = True, resume: "AlertStore | None" = None,
                 since_start: bool = False, replay_from: int | None = None,
                 replay_timeout_s: float = REPLAY_TIMEOUT_S, hello_every_s: float = HELLO_EVERY_S,
                 curve: tuple[str, str] | None = None):
        """``curve``: (our secret key file, the nodes' public key file) for CURVE (docs/security.md);
        None = plaintext, which only a node run with --insecure accepts."""
        pairs = [parse_connect(c) for c in connect]
        self.endpoints = list(dict.fromkeys(a for a, _ in pairs))
        if not self.endpoints:
            raise ValueError("give at least one endpoint to connect to, e.g. tcp://line1:5560")
        if replay_from is not None and replay_from < 1:
            raise ValueError("replay_from is an alert_seq: 1 or more")
        self.cameras = frozenset(cameras)
        self.verdicts = frozenset(verdicts)
        self.prefixes = subscription_prefixes(self.cameras, self.verdicts)
        self.counters: collections.Counter = collections.Counter()
        self.by_verdict: collections.Counter = collections.Counter()
        self.by_camera: collections.Counter = collections.Counter()
        self.by_node: collections.Counter = collections.Counter()
        self.last_error: str | None = None
        self.resume, self.since_start, self.replay_from = resume, since_start, replay_from
        self.hello_every_s = hello_every_s
        self._log_malformed = RateLimitedLog(log, log_interval_s)
        self._log_redial = RateLimitedLog(log, log_interval_s)
        self._log_handshake = RateLimitedLog(log, log_interval_s, level=logging.ERROR)
        self._log_replay = RateLimitedLog(log, log_interval_s)
        self._log_lost = RateLimitedLog(log, log_interval_s)
        self._ctx = context or zmq.Context.instance()
        self._ready: collections.deque[tuple[dict, bool]] = collections.deque()
        self._streams: dict[str, _Stream] = {}
        self._nodes_seen: set[str] = set()
        self._links: dict[str, _Link] = {}
        self._closed = False
        self._sock = self._ctx.socket(zmq.SUB)
        try:
            for opt, value in ((zmq.LINGER, 0), (zmq.RCVHWM, int(rcvhwm)), (zmq.MAXMSGSIZE, MAXMSGSIZE),
                               (zmq.HEARTBEAT_IVL, int(heartbeat_ivl_ms)),
                               (zmq.HEARTBEAT_TIMEOUT, int(heartbeat_timeout_ms)),
                               # asks the node to drop us too if we go silent (ZMTP 3.1 ping TTL)
                               (zmq.HEARTBEAT_TTL, int(heartbeat_timeout_ms)),
                               (zmq.RECONNECT_IVL, RECONNECT_IVL_MS),
                               (zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)):
                self._sock.setsockopt(opt, value)
            for p in self.prefixes:
                self._sock.setsockopt(zmq.SUBSCRIBE, p)
            self._curve_client = secure_client(self._sock, *curve) if curve else None
            self._monitor = self._sock.get_monitor_socket(
                HANDSHAKE_EVENTS | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED)
            self._monitor.setsockopt(zmq.LINGER, 0)
            for ep in self.endpoints:
                try:
                    self._sock.connect(ep)
                except zmq.ZMQError as e:
                    raise ValueError(f"cannot connect to {ep!r}: {e} (expected e.g. tcp://host:5560; "
                                     "connect takes a host name or address, not '*')") from e
            if replay:
                for alerts, replay_ep in pairs:
                    if replay_ep is not None and alerts not in self._links:
                        self._links[alerts] = _Link(self._ctx, alerts, replay_ep, replay_timeout_s,
                                                    (lambda s: secure_client(s, *curve)) if curve else None)
        except BaseException:
            for link in self._links.values():
                link.rl.close()
            self._sock.close(linger=0)
            raise
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        for link in self._links.values():
            self._poller.register(link.rl.sock, zmq.POLLIN)
        self.connected: set[str] = set()   # endpoints with a live ZMTP session
        self._silent_since: dict[str, float] = {}   # endpoint -> when it disconnected, until libzmq re-dials
        self._service(time.monotonic())            # hellos in flight before the first recv()

    # -- receiving ---------------------------------------------------------------------
    def recv(self, timeout: float | None = None) -> dict | None:
        """The next valid alert that passes the filters, or None when ``timeout`` seconds
        (None: forever) pass without one. Malformed messages are counted, never raised."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            if self._ready:
                return self._hand_out()
            self._pump(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if not self._ready and deadline is not None and time.monotonic() >= deadline:
                return None

    def _pump(self, wait_s: float | None) -> None:
        """One round: what is due, then wait (at most ``wait_s``) for sockets and handle them."""
        timer = self._service(time.monotonic())
        if self._ready:
            return
        if timer is not None:
            wait_s = timer if wait_s is None else min(wait_s, timer)
        if self._silent_since:   # wake up to re-dial an abandoned endpoint in time
            wait_s = min(wait_s if wait_s is not None else REDIAL_AFTER_S, REDIAL_AFTER_S)
        events = dict(self._poller.poll(None if wait_s is None else int(math.ceil(wait_s * 1000))))
        self._redial_abandoned()
        if self._monitor in events:
            self._drain_monitor()
        if self._sock in events:
            alert = self._recv_one()
            if alert is not None:
                self._on_live(alert)
        for link in self._links.values():
            if link.rl.sock in events:
                self._on_reply(link)

    def _hand_out(self) -> dict:
        alert, replayed = self._ready.popleft()
        self.counters["received"] += 1
        if replayed:
            self.counters["replayed"] += 1
        self.by_verdict[alert["verdict"]] += 1
        self.by_camera[alert["camera"]] += 1
        self.by_node[alert["node"]] += 1
        return alert

    def _passes(self, alert: dict) -> bool:
        if (self.cameras and alert["camera"] not in self.cameras) or \
                (self.verdicts and alert["verdict"] not in self.verdicts):
            self.counters["filtered"] += 1
            return False
        return True

    def _recv_one(self) -> dict | None:
        frames, n = [], 0
        while True:  # frame by frame, so a message with many frames cannot pile up in memory
            try:
                frame = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return None
            n += 1
            if len(frames) < KEPT_FRAMES:
                frames.append(frame)
            if not self._sock.getsockopt(zmq.RCVMORE):
                break
        try:
            if n != 2:
                raise AlertError(f"an alert has 2 frames [topic, body], got {n}")
            alert = decode_alert(frames)
        except AlertError as e:
            self._malformed(e)
            return None
        return alert if self._passes(alert) else None

    def _malformed(self, e: Exception, what: str = "alert message") -> None:
        self.counters["malformed"] += 1
        self.last_error = str(e)
        self._log_malformed("malformed %s refused (%d so far): %s", what, self.counters["malformed"], e)

    # -- per journal: order, duplicates, gaps ---------------------------------------------
    @property
    def gaps_open(self) -> int:
        """Alerts known to be missing right now and still being fetched."""
        return sum(st.missing() for st in self._streams.values())

    def _stream(self, node: str, journal_id: str, last_seq: int | None = None,
                live_seq: int | None = None) -> _Stream:
        st = self._streams.get(journal_id)
        if st is not None:
            return st
        st = self._streams[journal_id] = _Stream(node, journal_id)
        resumed = self.resume.last_seq(node, journal_id) if self.resume is not None else None
        known = node in self._nodes_seen or (self.resume is not None and self.resume.knows_node(node))
        if resumed is not None:
            st.expected, st.fresh = resumed + 1, False
            st.gaps = [list(g) for g in self.resume.open_gaps(node, journal_id)]
            st.target = resumed
        elif self.replay_from is not None:
            st.expected, st.fresh = self.replay_from, False
        elif self.since_start:
            st.fresh, st.skip_pruned = False, True
        elif known:
            log.warning("node %s: alerts from a journal this subscriber has not seen (journal_id %s): the node's "
                        "journal was reset or replaced, its alert_seq starts over; reading it from its start",
                        node, journal_id)
            self.counters["journal_resets"] += 1
            st.fresh = False
            if not self._links:   # nothing to read it from: from this alert on
                st.expected = live_seq if live_seq is not None else 1
        else:   # from now on (a live alert below the start may still move it down while nothing is delivered)
            st.expected = last_seq + 1 if last_seq is not None else live_seq if live_seq is not None else 1
        self._nodes_seen.add(node)
        return st

    def _deliver(self, st: _Stream, alert: dict, replayed: bool) -> None:
        st.fresh = False
        self._ready.append((alert, replayed))

    def _on_live(self, alert: dict) -> None:
        jid = alert.get("journal_id")
        if jid is None:                      # a node without a journal: as it comes, at most once
            self._ready.append((alert, False))
            return
        s = alert["alert_seq"]
        if jid not in self._streams:
            for link in self._links.values():   # which endpoint serves this journal? ask now
                if link.journal_id != jid:
                    link.next_hello = 0.0
        st = self._stream(alert["node"], jid, live_seq=s)
        if st.fresh and not st.held and s < st.expected:
            st.expected = s                  # nothing delivered yet: it arrived after we connected
        st.target = max(st.target, s)
        if s < st.expected:
            if self._take_from_gaps(st, s):
                self.counters["gaps_recovered"] += 1
                self._deliver(st, alert, False)
            else:
                self.counters["duplicates"] += 1
            return
        if s == st.expected and not st.catching_up:
            st.expected += 1
            self._deliver(st, alert, False)
            return
        if not self._links:                  # replay off: what is missing stays missing
            if not (self.cameras or self.verdicts):   # with filters, a jump is expected
                self.counters["gaps_lost"] += s - st.expected
            st.expected = s + 1
            self._deliver(st, alert, False)
            return
        if s not in st.held and len(st.held) < HELD_MAX:
            st.held[s] = alert               # beyond HELD_MAX: the replay brings it (or it joins a gap)
        st.catching_up = True

    def _take_from_gaps(self, st: _Stream, s: int) -> bool:
        for i, (lo, hi) in enumerate(st.gaps):
            if lo <= s <= hi:
                st.gaps[i:i + 1] = [g for g in ([lo, s - 1], [s + 1, hi]) if g[0] <= g[1]]
                return True   # (the store's copy of the gap shrinks when the alert is stored)
        return False

    def _open_gap(self, st: _Stream, lo: int, hi: int) -> None:
        if lo > hi:
            return
        self._persist("add_gap", st.node, st.journal_id, lo, hi)   # before anything after it is delivered
        self.counters["gaps_opened"] += hi - lo + 1
        if st.gaps and st.gaps[-1][1] + 1 >= lo:
            st.gaps[-1][1] = max(st.gaps[-1][1], hi)
        else:
            st.gaps.append([lo, hi])
        while len(st.gaps) > MAX_GAPS:       # bounded: the oldest are given up on
            lo0, hi0 = st.gaps.pop(0)
            self._lost(st, lo0, hi0, "too many open gaps")
            self._persist("close_gap", st.journal_id, lo0, hi0)
        st.next_gap_try = time.monotonic() + st.gap_backoff

    def _lost(self, st: _Stream, lo: int, hi: int, why: str) -> None:
        self.counters["gaps_lost"] += hi - lo + 1
        self._log_lost("node %s: alert_seq %d..%d lost (%s): treat those parts as not inspected",
                       st.node, lo, hi, why)

    def _give_up_catchup(self, st: _Stream, why: str) -> None:
        """The replay cannot help now: deliver what is held, in order, and keep what is between
        as open gaps to fetch later."""
        cursor = st.expected
        for s in sorted(st.held):
            if s >= cursor:
                self._open_gap(st, cursor, s - 1)
                self._deliver(st, st.held[s], False)
                cursor = s + 1
        self._open_gap(st, cursor, st.target)
        st.expected = max(cursor, st.target + 1)
        st.held.clear()
        st.catching_up = False
        if st.gaps:
            self._log_replay("node %s: %s; %d alert(s) missing for now, delivering newer ones and retrying",
                             st.node, why, st.missing())

    def _persist(self, method: str, *args) -> None:
        """Keep the store's table of open gaps (AlertStore.add_gap / close_gap) in step, so that a
        restarted subscriber retries them."""
        if self.resume is not None:
            try:
                getattr(self.resume, method)(*args)
            except sqlite3.Error as e:
                self._log_replay("cannot record open gaps in the store: %s", e)

    # -- replay requests -----------------------------------------------------------------
    def _link_for(self, journal_id: str) -> _Link | None:
        return next((link for link in self._links.values() if link.journal_id == journal_id), None)

    def _service(self, now: float) -> float | None:
        """Time-outs, hellos, catch-up pages and gap retries that are due; returns the seconds
        until the next one (None: nothing scheduled)."""
        timer = None

        def soon(t: float) -> None:
            nonlocal timer
            timer = t if timer is None else min(timer, t)

        for link in self._links.values():
            if link.rl.expired(now):
                self._on_timeout(link, now)
            if link.rl.pending is None and now >= link.next_hello:
                if not link.rl.send("hello", {"purpose": "hello"}):
                    link.next_hello = now + 0.5
            if link.rl.pending is not None:
                soon(max(0.0, link.rl.pending["sent"] + link.rl.timeout_s - now) + 0.001)
            else:
                soon(max(0.0, link.next_hello - now))
        for st in list(self._streams.values()):
            if st.dead or not (st.catching_up or st.gaps):
                continue
            link = self._link_for(st.journal_id)
            if link is None:   # wait for the hellos in flight; then no endpoint we know serves this journal
                if st.catching_up and not any(l.rl.pending and l.rl.pending["purpose"] == "hello"
                                              for l in self._links.values()):
                    self._give_up_catchup(st, "no replay endpoint serves its journal")
                continue
            if link.rl.pending is not None:
                continue
            fields = {"limit": PAGE, **({"cameras": sorted(self.cameras)} if self.cameras else {}),
                      **({"verdicts": sorted(self.verdicts)} if self.verdicts else {})}
            if st.catching_up:
                if len(self._ready) < PAGE:      # bounded: the next page when this one is handed out
                    link.rl.send("since", {"purpose": "catchup", "stream": st.journal_id},
                                 after=st.expected - 1, **fields)
            elif st.gaps:
                if now >= st.next_gap_try:
                    link.rl.send("since", {"purpose": "gap", "stream": st.journal_id},
                                 after=st.gaps[0][0] - 1, **fields)
                else:
                    soon(st.next_gap_try - now)
        return timer

    def _on_timeout(self, link: _Link, now: float) -> None:
        request = link.rl.pending
        old = link.rl.reset()
        self._poller.unregister(old)
        old.close(linger=0)
        self._poller.register(link.rl.sock, zmq.POLLIN)
        self.counters["replay_timeouts"] += 1
        link.failures += 1
        link.next_hello = now + min(HELLO_BACKOFF_MAX_S, 0.25 * 2 ** link.failures)
        self._log_replay("no answer from the replay endpoint %s within %.1f s", link.replay, link.rl.timeout_s)
        self._request_failed(request, now)

    def _request_failed(self, request: dict, now: float) -> None:
        st = self._streams.get(request.get("stream", ""))
        if st is None:
            return
        if request["purpose"] == "catchup":
            self._give_up_catchup(st, "its replay endpoint did not answer")
        elif request["purpose"] == "gap":
            st.next_gap_try = now + st.gap_backoff
            st.gap_backoff = min(GAP_RETRY_MAX_S, st.gap_backoff * 2)

    def _on_reply(self, link: _Link) -> None:
        while True:
            try:
                got = link.rl.recv()
            except ReplayError as e:
                self.counters["replay_errors"] += 1
                self._log_replay("bad reply from the replay endpoint %s: %s", link.replay, e)
                continue
            if got is None:
                if link.rl.sock.poll(0):
                    continue      # a stale reply was dropped; read on
                return
            request, reply = got
            now = time.monotonic()
            if not reply["ok"]:
                self.counters["replay_errors"] += 1
                self._log_replay("the replay endpoint %s refused a request: %s", link.replay, reply["error"])
                self._request_failed(request, now)
                continue
            link.failures = 0
            link.next_hello = now + self.hello_every_s
            self._on_node_info(link, reply, hello=request["purpose"] == "hello")
            st = self._streams.get(request.get("stream", ""))
            if request["purpose"] == "hello" or st is None:
                continue
            if reply["journal_id"] != st.journal_id:
                continue   # the node's journal changed meanwhile (_on_node_info has dealt with it)
            if request["purpose"] == "catchup":
                self._on_catchup_page(st, request, reply)
            else:
                self._on_gap_page(st, request, reply)

    def _on_node_info(self, link: _Link, reply: dict, hello: bool) -> None:
        node, jid = reply["node"], reply["journal_id"]
        if link.journal_id is not None and link.journal_id != jid:
            old = self._streams.get(link.journal_id)
            log.warning("node %s at %s: its alert journal was replaced (journal_id %s -> %s): alert_seq starts over",
                        node, link.alerts, link.journal_id, jid)
            link.journal_id = jid
            if old is not None and self._link_for(old.journal_id) is None:
                if old.catching_up:
                    self._give_up_catchup(old, "its journal was replaced")
                for lo, hi in old.gaps:
                    self._lost(old, lo, hi, "the node's journal was replaced")
                    self._persist("close_gap", old.journal_id, lo, hi)
                old.gaps, old.dead = [], True
        link.node, link.journal_id = node, jid
        new = jid not in self._streams
        st = self._stream(node, jid, last_seq=reply["last_seq"])
        st.target = max(st.target, reply["last_seq"])
        if not hello and not new:
            return
        # Alerts we have not got: missed while away (a new stream, a reconnect: fetch now), or the
        # tail of a burst lost on the way (still missing at the next hello: alerts merely in flight
        # at this one have arrived by then, so a busy line does not replay what it gets live anyway)
        due = new or link.urgent or st.expected <= st.hello_mark
        if due and not st.dead and st.expected <= st.target:
            st.catching_up = True
        st.hello_mark = reply["last_seq"]
        link.urgent = False

    def _bodies(self, st: _Stream, reply: dict):
        for body in reply["alerts"]:
            try:
                alert = decode_alert_body(body)
                if alert.get("journal_id") != st.journal_id or alert["node"] != st.node:
                    raise AlertError("a replayed alert of another node or journal")
            except AlertError as e:
                self._malformed(e, "replayed alert")
                continue
            yield alert

    def _count_missing(self, st: _Stream, reply: dict, lo: int, hi: int, have: dict) -> None:
        """Count as lost the seqs of lo..hi the node says it no longer has (except those in ``have``)."""
        for m_lo, m_hi in reply["missing"]:
            a, b = max(lo, m_lo), min(hi, m_hi)
            if a > b:
                continue
            if st.skip_pruned and reply["first_seq"] is not None and b < reply["first_seq"]:
                continue   # --since-start: "all the node still has" does not include what it pruned
            n = b - a + 1 - sum(1 for s in have if a <= s <= b)
            if n > 0:
                self.counters["gaps_lost"] += n
                self._log_lost("node %s: %d alert(s) of alert_seq %d..%d lost: the node no longer has them "
                               "(pruned by its journal's retention, or never journaled): treat those parts as "
                               "not inspected", st.node, n, a, b)

    def _on_catchup_page(self, st: _Stream, request: dict, reply: dict) -> None:
        if not st.catching_up or request["after"] != st.expected - 1:
            return   # the start moved meanwhile: ask again from there
        upto = max(reply["upto"], request["after"])
        got = {a["alert_seq"]: (a, True) for a in self._bodies(st, reply) if st.expected <= a["alert_seq"] <= upto}
        for s in [s for s in st.held if s <= upto]:
            if s in got or s < st.expected:
                self.counters["duplicates"] += 1   # its replayed copy is delivered instead
            else:
                got[s] = (st.held[s], False)       # published, but not in the journal: our live copy
            del st.held[s]
        self._count_missing(st, reply, st.expected, upto, got)
        st.skip_pruned = False
        for s in sorted(got):
            alert, replayed = got[s]
            if self._passes(alert):
                self._deliver(st, alert, replayed)
        st.expected = upto + 1
        if upto >= st.target:
            st.catching_up = False
        elif reply["upto"] <= request["after"]:    # no progress: the node has less than we know exists
            self._give_up_catchup(st, f"its journal ends at alert_seq {reply['last_seq']}")

    def _on_gap_page(self, st: _Stream, request: dict, reply: dict) -> None:
        lo = request["after"] + 1
        gap = next((g for g in st.gaps if g[0] == lo), None)
        if gap is None:
            return
        hi = gap[1]
        covered = min(hi, max(reply["upto"], request["after"]))
        got = {a["alert_seq"]: a for a in self._bodies(st, reply) if lo <= a["alert_seq"] <= covered}
        self._count_missing(st, reply, lo, covered, got)
        for s in sorted(got):
            if self._passes(got[s]):
                self.counters["gaps_recovered"] += 1
                self._deliver(st, got[s], True)
        cursor = lo   # lo..covered is settled: what was delivered leaves the store's gap when stored
        for s in sorted(got) + [covered + 1]:
            if s > cursor:
                self._persist("close_gap", st.journal_id, cursor, s - 1)
            cursor = s + 1
        if covered >= hi:
            st.gaps.remove(gap)
        else:
            gap[0] = covered + 1
        st.gap_backoff = GAP_RETRY_MIN_S
        st.next_gap_try = 0.0 if covered >= lo else time.monotonic() + st.gap_backoff

    # -- connection events ---------------------------------------------------------------
    def _drain_monitor(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            endpoint = event["endpoint"].decode(errors="replace")
            failure = explain_handshake_failure(event["event"], event["value"], endpoint, role="client",
                                                client=self._curve_client)
            if failure is not None:   # a refused key or an impostor node: say which, and what to do
                self.counters["handshake_failed"] += 1
                self.last_error = failure.message
                self._log_handshake("%s", failure.message)
            self._on_monitor_event(event["event"], endpoint)

    def _on_monitor_event(self, event: int, endpoint: str) -> None:
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.counters["connected"] += 1
            self.connected.add(endpoint)
            log.info("connected to %s", endpoint)
            if endpoint in self._links:      # (re)connected: ask what we may have missed meanwhile
                self._links[endpoint].next_hello = 0.0
                self._links[endpoint].urgent = True
        elif event == zmq.EVENT_DISCONNECTED:
            self.counters["disconnected"] += 1
            self.connected.discard(endpoint)
            if endpoint in self.endpoints:
                self._silent_since.setdefault(endpoint, time.monotonic())
        elif event == zmq.EVENT_CONNECT_RETRIED:
            self._silent_since.pop(endpoint, None)   # libzmq is re-dialling by itself

    def _redial_abandoned(self) -> None:
        """Re-dial endpoints libzmq gave up on. After a network error or a heartbeat timeout
        libzmq re-dials by itself (and says so: EVENT_CONNECT_RETRIED); after a protocol error (a
        frame above MAXMSGSIZE) it closes the session for good, and one oversized message would
        silence that node for the rest of our life. Only then do we disconnect and connect again.
        Never at the moment of a disconnect: zmq_disconnect() discards what the pipe still holds
        (the node's last alerts) and, mid-message, trips a libzmq assertion (fq.cpp '!_more')."""
        now = time.monotonic()
        for endpoint, since in list(self._silent_since.items()):
            if now - since >= REDIAL_AFTER_S:
                del self._silent_since[endpoint]
                try:
                    self._sock.disconnect(endpoint)
                except zmq.ZMQError:
                    pass  # the session is already gone
                self._sock.connect(endpoint)
                self.counters["redialed"] += 1
                self._log_redial("lost %s and libzmq gave up on it; re-dialling", endpoint)

    # -- wait helpers (tests, demos) -----------------------------------------------------
    def wait_connected(self, timeout: float = 5.0, endpoints: Iterable[str] | None = None) -> bool:
        """True once every endpoint (default: all) has a live session, False after ``timeout``.
        A live session does not yet mean the node has our subscription (ZeroMQ's slow joiner):
        a publisher that must not lose the first alerts has to wait for it (XPUB) or resend."""
        want = set(self.endpoints if endpoints is None else endpoints)
        deadline = time.monotonic() + timeout
        while not want <= self.connected:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._monitor.poll(int(left * 1000) + 1):
                self._drain_monitor()
        return True

    def wait_replay(self, timeout: float = 5.0) -> bool:
        """True once every node's replay endpoint has answered (the subscriber knows where each
        node's numbering stands), False after ``timeout``. Alerts that arrive meanwhile are kept
        for :meth:`recv`."""
        deadline = time.monotonic() + timeout
        while not all(link.journal_id for link in self._links.values()):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._pump(min(left, 0.05))
        return True

    def summary(self) -> dict:
        c = self.counters
        return {"received": c["received"], "malformed": c["malformed"], "filtered": c["filtered"],
                "disconnected": c["disconnected"], "replayed": c["replayed"], "duplicates": c["duplicates"],
                "gaps_opened": c["gaps_opened"], "gaps_open": self.gaps_open, "gaps_recovered": c["gaps_recovered"],
                "gaps_lost": c["gaps_lost"], "journal_resets": c["journal_resets"],
                "replay_timeouts": c["replay_timeouts"], "replay_errors": c["replay_errors"],
                "by_verdict": dict(self.by_verdict), "by_camera": dict(self.by_camera),
                "by_node": dict(self.by_node)}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)
        self._sock.close(linger=0)
        for link in self._links.values():
            link.rl.close()

    def __enter__(self) -> "AlertSubscriber":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- SQLite ----------------------------------------------------------------------------
STORE_SCHEMA_VERSION = 2  # PRAGMA user_version of the file; docs/alerts.md shows the tables
STORE_DDL = """
CREATE TABLE IF NOT EXISTS alerts (
    node             TEXT    NOT NULL,
    alert_seq        INTEGER NOT NULL,
    camera           TEXT    NOT NULL,
    frame_seq        INTEGER NOT NULL,
    capture_wall     REAL    NOT NULL,  -- Unix seconds (UTC epoch)
    published_wall   REAL    NOT NULL,  -- Unix seconds
    received_wall    REAL    NOT NULL,  -- Unix seconds, this subscriber's clock
    latency_ms       REAL    NOT NULL,
    verdict          TEXT    NOT NULL CHECK (verdict IN ('OK', 'NotOK', 'NotDecidable')),
    score            REAL,              -- NULL when NotDecidable without a score
    normalised_score REAL,
    threshold        REAL    NOT NULL,
    model_version    TEXT    NOT NULL,
    n_regions        INTEGER NOT NULL,
    regions_json     TEXT    NOT NULL,  -- JSON array of {"box": [x, y, w, h], "area", "peak"}
    reason           TEXT,
    thumbnail_jpeg   BLOB,
    is_simulated     INTEGER NOT NULL,  -- 0 / 1
    schema_v         INTEGER NOT NULL,  -- the alert's "v"
    journal_id       TEXT               -- the node's alert journal (NULL from a node without one)
);
"""
# One row per alert. A journaled node numbers its alerts durably: (node, journal_id, alert_seq)
# names one. A node without a journal (older edge-run) starts alert_seq at 1 again when it
# restarts: for its alerts published_wall tells a restart from the same message received twice.
STORE_INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS alerts_once ON alerts (node, journal_id, alert_seq);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_once_unjournaled ON alerts (node, alert_seq, published_wall)
    WHERE journal_id IS NULL;
CREATE INDEX IF NOT EXISTS alerts_node_seq ON alerts (node, alert_seq);
CREATE INDEX IF NOT EXISTS alerts_camera_time ON alerts (camera, capture_wall);
CREATE INDEX IF NOT EXISTS alerts_verdict_time ON alerts (verdict, capture_wall);
CREATE TABLE IF NOT EXISTS gaps (       -- alerts edge-alerts knows it has not got yet (it retries them)
    node       TEXT    NOT NULL,
    journal_id TEXT    NOT NULL,
    first_seq  INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL,
    PRIMARY KEY (journal_id, first_seq)
);
"""
_COLUMNS = ("node", "alert_seq", "camera", "frame_seq", "capture_wall", "published_wall", "received_wall",
            "latency_ms", "verdict", "score", "normalised_score", "threshold", "model_version", "n_regions",
            "regions_json", "reason", "thumbnail_jpeg", "is_simulated", "schema_v", "journal_id")
_INSERT = f"INSERT OR IGNORE INTO alerts ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"


def _finite_or_none(x):
    return x if x is None or math.isfinite(x) else None


def _statements(script: str):
    return [s for s in script.split(";") if s.strip()]


class AlertStore:
    """One row per alert in table ``alerts`` of a SQLite file (schema: STORE_DDL, docs/alerts.md).

    ``add`` returns False for an alert already stored (the same node journal and alert_seq,
    e.g. two --connect to one node, or a live copy of an alert already replayed), counted in
    ``duplicates``: the first copy wins. ``last_seq`` / ``open_gaps`` tell a restarted
    edge-alerts where to resume, so that every alert is stored exactly once. WAL journal so
    that an MES can read while we write; each alert is committed at once (synchronous=NORMAL:
    durable across a crash of this process, the last alerts may be lost on power loss, and
    are then fetched again from the node's replay at the next start).

    A file of store version 1 (before journals) is upgraded in place to version 2: column
    ``journal_id`` (NULL for the rows it had) and table ``gaps`` are added."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.duplicates = 0
        self.rows_written = 0
        self._db = sqlite3.connect(str(self.path))
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            has_table = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='alerts'").fetchone()
            if has_table and version not in (1, STORE_SCHEMA_VERSION):
                raise ValueError(f"{self.path} holds an alerts table of store version {version}; this "
                                 f"edge-alerts writes version {STORE_SCHEMA_VERSION}: use a new file")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._db:   # one transaction: a file is upgraded completely or not at all
                self._db.execute("BEGIN")
                if has_table and version == 1:
                    self._db.execute("ALTER TABLE alerts ADD COLUMN journal_id TEXT")
                    log.warning("%s: alert store upgraded from version 1 to %d (column journal_id, table gaps)",
                                self.path, STORE_SCHEMA_VERSION)
                for statement in _statements(STORE_DDL) + _statements(STORE_INDEXES):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={STORE_SCHEMA_VERSION}")
        except BaseException:
            self._db.close()
            raise

    @staticmethod
    def row(alert: dict, received_wall: float | None = None) -> tuple:
        """The column values of one alert, in the order of ``_COLUMNS``."""
        return (alert["node"], alert["alert_seq"], alert["camera"], alert["frame_seq"],
                float(alert["capture_wall"]), float(alert["published_wall"]),
                time.time() if received_wall is None else received_wall, float(alert["latency_ms"]),
                alert["verdict"], _finite_or_none(alert["score"]), _finite_or_none(alert["normalised_score"]),
                float(alert["threshold"]), alert["model_version"], len(alert["regions"]),
                json.dumps(alert["regions"], default=_json_default, allow_nan=False),
                alert["reason"], alert["thumbnail_jpeg"], int(bool(alert["is_simulated"])), alert["v"],
                alert.get("journal_id"))

    def add(self, alert: dict, received_wall: float | None = None) -> bool:
        """Store one alert (committed when this returns); False for one already stored. An alert
        that fills an open gap (table ``gaps``) leaves it in the same transaction."""
        with self._db:
            cur = self._db.execute(_INSERT, self.row(alert, received_wall))
            if cur.rowcount and alert.get("journal_id") is not None:
                self._subtract_gap(alert["journal_id"], alert["alert_seq"], alert["alert_seq"])
        if cur.rowcount == 0:
            self.duplicates += 1
            return False
        self.rows_written += 1
        return True

    # -- where a restarted subscriber resumes (AlertSubscriber(resume=store)) -------------------
    def last_seq(self, node: str, journal_id: str) -> int | None:
        """The highest alert_seq stored of this node journal; None when none is."""
        return self._db.execute("SELECT max(alert_seq) FROM alerts WHERE node = ? AND journal_id = ?",
                                (node, journal_id)).fetchone()[0]

    def knows_node(self, node: str) -> bool:
        return self._db.execute("SELECT 1 FROM alerts WHERE node = ? LIMIT 1", (node,)).fetchone() is not None

    def open_gaps(self, node: str, journal_id: str) -> list[tuple[int, int]]:
        """The alert_seq ranges of this node journal still missing: neither stored nor known lost."""
        return [tuple(r) for r in self._db.execute(
            "SELECT first_seq, last_seq FROM gaps WHERE node = ? AND journal_id = ? ORDER BY first_seq",
            (node, journal_id))]

    def add_gap(self, node: str, journal_id: str, lo: int, hi: int) -> None:
        """Record lo..hi as missing (merged with the ranges it touches)."""
        with self._db:
            rows = self._overlapping(journal_id, lo - 1, hi + 1)
            for _, first, last in rows:
                self._db.execute("DELETE FROM gaps WHERE journal_id = ? AND first_seq = ?", (journal_id, first))
                lo, hi = min(lo, first), max(hi, last)
            self._db.execute("INSERT INTO gaps VALUES (?, ?, ?, ?)", (node, journal_id, int(lo), int(hi)))

    def close_gap(self, journal_id: str, lo: int, hi: int) -> None:
        """lo..hi are no longer missing: not stored, but known lost or filtered out."""
        with self._db:
            self._subtract_gap(journal_id, lo, hi)

    def _overlapping(self, journal_id: str, lo: int, hi: int) -> list:
        return self._db.execute("SELECT node, first_seq, last_seq FROM gaps WHERE journal_id = ? AND last_seq >= ? "
                                "AND first_seq <= ?", (journal_id, lo, hi)).fetchall()

    def _subtract_gap(self, journal_id: str, lo: int, hi: int) -> None:
        for node, first, last in self._overlapping(journal_id, lo, hi):
            self._db.execute("DELETE FROM gaps WHERE journal_id = ? AND first_seq = ?", (journal_id, first))
            for a, b in ((first, lo - 1), (hi + 1, last)):
                if a <= b:
                    self._db.execute("INSERT INTO gaps VALUES (?, ?, ?, ?)", (node, journal_id, a, b))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> "AlertStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- output ------------------------------------------------------------------------------
JPEG_MAGIC = b"\xff\xd8\xff"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _safe_name(s: str) -> str:
    s = _UNSAFE.sub("_", s)
    return "_" + s[1:] if s.startswith(".") else (s or "_")


def thumbnail_name(alert: dict) -> str:
    """``<node>_<camera>_<frame_seq>.jpg``, characters outside [A-Za-z0-9._-] replaced by '_'."""
    return f"{_safe_name(alert['node'])}_{_safe_name(alert['camera'])}_{alert['frame_seq']}.jpg"


def save_thumbnail(alert: dict, directory: str | os.PathLike) -> Path | None:
    """Write the alert's JPEG thumbnail into ``directory`` (atomically: tmp file + rename);
    None when the alert has none. ValueError for bytes that are not a JPEG."""
    data = alert.get("thumbnail_jpeg")
    if not data:
        return None
    if not data.startswith(JPEG_MAGIC):
        raise ValueError(f"thumbnail of {alert['node']}/{alert['camera']} frame {alert['frame_seq']} "
                         "is not a JPEG (no FF D8 FF start marker)")
    path = Path(directory) / thumbnail_name(alert)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def _json_default(o):
    if isinstance(o, (bytes, bytearray, memoryview)):
        return len(o)  # any bytes nested in a future field: its length, like thumbnail_jpeg
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _json_clean(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None  # JSON has no NaN / Infinity
    if isinstance(o, dict):
        return {k: _json_clean(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_json_clean(v) for v in o]
    return o


def alert_to_json(alert: dict, **extra) -> str:
    """One JSON line: the alert's fields, except ``thumbnail_jpeg`` (bytes) which becomes
    ``thumbnail_jpeg_bytes`` (its length, or null); non-finite numbers become null; ``extra``
    (e.g. ``thumbnail_path``, ``received_wall``) is appended."""
    d = {k: v for k, v in alert.items() if k != "thumbnail_jpeg"}
    thumb = alert.get("thumbnail_jpeg")
    d["thumbnail_jpeg_bytes"] = None if thumb is None else len(thumb)
    d.update(extra)
    return json.dumps(_json_clean(d), default=_json_default, allow_nan=False, separators=(",", ":"))


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t).astimezone().isoformat(timespec="milliseconds")


def format_alert(alert: dict) -> str:
    """One human line: capture time, node, camera, frame, verdict, score vs threshold, regions, latency."""
    score = alert["score"]
    if score is None or not math.isfinite(score):
        cmp = f"score=-/{alert['threshold']:.4g}"
    else:  # flagged when strictly above the threshold (edge/verdict.py)
        cmp = f"score={score:.4g}{'>' if score > alert['threshold'] else '<='}{alert['threshold']:.4g}"
    line = (f"{_iso(alert['capture_wall'])} node={alert['node']} cam={alert['camera']} "
            f"frame={alert['frame_seq']} {alert['verdict']:<12} {cmp} regions={len(alert['regions'])} "
            f"latency={alert['latency_ms']:.1f}ms")
    if alert["reason"]:
        line += f" reason={alert['reason']!r}"
    if alert["is_simulated"]:
        line += " SIMULATED"
    return line


def format_summary(sub: AlertSubscriber, elapsed_s: float, extra: dict | None = None) -> str:
    s = sub.summary()
    lines = [f"edge-alerts summary: {s['received']} alerts in {elapsed_s:.1f} s, {s['malformed']} malformed, "
             f"{s['filtered']} filtered, {s['disconnected']} disconnects",
             f"  delivery: {s['replayed']} replayed, {s['duplicates']} duplicates dropped; missed alerts: "
             f"{s['gaps_opened']} waited for, {s['gaps_recovered']} recovered late, {s['gaps_open']} still missing, "
             f"{s['gaps_lost']} lost; {s['journal_resets']} journal resets"]
    for title, counts in (("verdict", s["by_verdict"]), ("camera", s["by_camera"]), ("node", s["by_node"])):
        if counts:
            lines.append(f"  per {title}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    for k, v in (extra or {}).items():
        lines.append(f"  {k}: {v}")
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------
EPILOG = f"""\
examples:
  # watch one line's alerts as they come (Ctrl-C stops; add --summary for the counts)
  edge-alerts --connect tcp://line1-edge:5560
  #   ...published by: edge-run --engine model.plan --source top=0 --alerts-addr tcp://0.0.0.0:5560

  # two edge nodes, only defects and undecided parts of camera top, stored for the MES
  edge-alerts --connect tcp://line1-edge:5560 --connect tcp://line2-edge:5560 \\
      --camera top --verdict NotOK --verdict NotDecidable --db alerts.sqlite --thumbnails thumbs/

  # JSON lines for another program (thumbnail_jpeg becomes thumbnail_jpeg_bytes: its length)
  edge-alerts --connect tcp://127.0.0.1:5560 --json | jq .verdict

  # a smoke test: expect 10 alerts, give up after 30 s of silence (exit 1), print the counts
  edge-alerts --connect tcp://127.0.0.1:5560 --count 10 --timeout 30 --summary

  # the MES store, exactly once: after a restart it fetches what it missed from each node's
  # replay endpoint (default: the alert port + 1; give it after a comma when it differs)
  edge-alerts --connect tcp://line1-edge:5560 --connect tcp://line2-edge:5560,tcp://line2-edge:6000 \
      --db alerts.sqlite -q

  # everything a node still has in its journal, then live
  edge-alerts --connect tcp://line1-edge:5560 --since-start

exit status: 0 after --count alerts, on --timeout without --count, or on SIGINT/SIGTERM;
1 when --timeout ends the run before --count alerts arrived; 2 for bad options.

Topics are b"<verdict>/<camera>"; --verdict and --camera become SUB prefixes, so the node
does not even send what is filtered out. Every alert once, in order: alerts this program
missed (not running, slow joiner, network cut) are fetched from the node's journal through
its replay endpoint; what the node no longer has is counted as lost (gaps_lost) and logged.
Where to start: with --db, after the last alert stored per node; else --replay-from N or
--since-start; else with the first alert after connecting. --no-replay: at most once.
Alert schema version read: {ALERT_SCHEMA_VERSION}. Malformed messages are counted and
logged (at most one log line per --log-interval seconds), never fatal.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-alerts", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Subscribe to edge-inspect alerts of one or more edge nodes (ZeroMQ SUB) and print, "
                    "store or save them: the reference PLC/MES subscriber.")
    p.add_argument("--connect", action="append", required=True, metavar="ALERTS[,REPLAY]",
                   help="an edge node's alert endpoint, e.g. tcp://line1-edge:5560, and after a comma its replay "
                        "endpoint when it is not the alert port + 1 (repeat for more nodes)")
    p.add_argument("--camera", action="append", default=[], metavar="ID",
                   help="only alerts of this camera (exact id; repeatable)")
    p.add_argument("--verdict", action="append", default=[], choices=VERDICTS,
                   help="only alerts with this verdict (repeatable)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true",
                     help="print JSON lines (thumbnail_jpeg replaced by thumbnail_jpeg_bytes, its length)")
    out.add_argument("-q", "--quiet", action="store_true", help="print no alert lines (use with --db / --summary)")
    p.add_argument("--db", metavar="FILE", help="append every alert to table 'alerts' of this SQLite file")
    p.add_argument("--thumbnails", metavar="DIR",
                   help="save thumbnails as DIR/<node>_<camera>_<frame_seq>.jpg (DIR is created)")
    p.add_argument("--count", type=int, metavar="N", help="exit after N alerts (those that pass the filters)")
    p.add_argument("--timeout", type=float, metavar="S", help="exit after S seconds without an alert")
    p.add_argument("--summary", action="store_true",
                   help="print alerts per verdict/camera/node at exit (to stderr with --json)")
    p.add_argument("--log-interval", type=float, default=10.0, metavar="S",
                   help="at most one malformed-message log line per S seconds (default 10)")
    p.add_argument("-v", "--verbose", action="store_true", help="log connections too")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--since-start", action="store_true",
                       help="first fetch every alert the nodes still have in their journals (unless --db has some)")
    start.add_argument("--replay-from", type=int, metavar="SEQ",
                       help="first fetch each node's alerts from alert_seq SEQ on (unless --db has some)")
    start.add_argument("--no-replay", action="store_true",
                       help="never fetch missed alerts (plain PUB/SUB: at most once)")
    p.add_argument("--replay-timeout", type=float, default=REPLAY_TIMEOUT_S, metavar="S",
                   help=f"a replay request unanswered for S seconds counts as failed (default {REPLAY_TIMEOUT_S:g})")
    add_curve_arguments(p, server=False, client=True)
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.count is not None and args.count < 1:
        p.error("--count must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        p.error("--timeout must be positive (seconds)")
    if args.replay_from is not None and args.replay_from < 1:
        p.error("--replay-from is an alert_seq: 1 or more")
    if args.replay_timeout <= 0:
        p.error("--replay-timeout must be positive (seconds)")
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, format="%(asctime)s edge-alerts %(levelname)s %(message)s")
    log.setLevel(logging.INFO if args.verbose else logging.WARNING)
    curve_config = CurveConfig.from_args(args)
    try:
        curve = (curve_config.secret, curve_config.server_key) if curve_config.check(client=True) else None
    except SecurityError as e:
        p.error(str(e))
    if curve is None:
        insecure_warning(log, "the alert and replay connections run")

    stop = threading.Event()
    restore = {}
    if threading.current_thread() is threading.main_thread():
        def on_signal(signum, _frame):
            stop.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            restore[sig] = signal.signal(sig, on_signal)

    extra: collections.Counter = collections.Counter()
    store = sub = None
    status = 0
    started = time.monotonic()
    summary_out = sys.stderr if args.json else sys.stdout
    try:
        try:
            store = AlertStore(args.db) if args.db else None
            sub = AlertSubscriber(args.connect, cameras=args.camera, verdicts=args.verdict,
                                  log_interval_s=args.log_interval, replay=not args.no_replay, resume=store,
                                  since_start=args.since_start, replay_from=args.replay_from,
                                  replay_timeout_s=args.replay_timeout, curve=curve)
        except (ValueError, sqlite3.Error) as e:
            p.error(str(e))
        thumbs = Path(args.thumbnails) if args.thumbnails else None
        if thumbs is not None:
            thumbs.mkdir(parents=True, exist_ok=True)
        log_io = RateLimitedLog(log, args.log_interval)
        last_alert = time.monotonic()
        n = 0
        while not stop.is_set():
            # short slices so a signal is acted on within 0.2 s
            alert = sub.recv(timeout=0.2)
            if alert is None:
                if args.timeout is not None and time.monotonic() - last_alert >= args.timeout:
                    if args.count is not None:
                        log.warning("no alert for %g s: %d of %d alerts received", args.timeout, n, args.count)
                        status = 1
                    break
                continue
            last_alert = time.monotonic()
            received_wall = time.time()
            n += 1
            info = {}
            if store is not None:
                try:
                    if not store.add(alert, received_wall):
                        log_io("alert %d of node %s received twice (stored once)", alert["alert_seq"], alert["node"])
                except sqlite3.Error as e:
                    extra["db errors"] += 1
                    log_io("cannot store alert in %s: %s", args.db, e)
            if thumbs is not None:
                try:
                    path = save_thumbnail(alert, thumbs)
                    if path is not None:
                        extra["thumbnails written"] += 1
                        info["thumbnail_path"] = str(path)
                except (OSError, ValueError) as e:
                    extra["thumbnail errors"] += 1
                    log_io("thumbnail not saved: %s", e)
            if args.json:
                print(alert_to_json(alert, received_wall=received_wall, **info), flush=True)
            elif not args.quiet:
                print(format_alert(alert), flush=True)
            if args.count is not None and n >= args.count:
                break
        if args.summary:
            if store is not None:
                extra["db rows written"] = store.rows_written
                extra["db duplicates ignored"] = store.duplicates
            print(format_summary(sub, time.monotonic() - started, dict(extra)), file=summary_out, flush=True)
    except BrokenPipeError:  # `edge-alerts ... | head`: the reader left, not an error of ours
        try:  # and keep the interpreter's final flush from raising it again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
    finally:
        if store is not None:
            store.close()
        if sub is not None:
            sub.close()
        for sig, handler in restore.items():
            signal.signal(sig, handler)
    return status


if __name__ == "__main__":
    sys.exit(main())
