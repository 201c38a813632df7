"""The subscriber client: :class:`AlertSubscriber`, exactly once and in order per node journal.

It subscribes (ZeroMQ SUB, connecting) to one or more edge nodes' alert PUB sockets, decodes
every message with :func:`edge.alerts.decode_alert`, and fetches what it missed from each
node's replay endpoint (edge/replay.py). A message that is not a valid alert is counted and
logged (rate-limited) and never stops the subscriber: it reads alerts from a factory network,
not from a friend.
"""
from __future__ import annotations

import collections
import logging
import math
import sqlite3
import time
from typing import TYPE_CHECKING, Iterable

import zmq
from zmq.utils.monitor import recv_monitor_message

from edge.alerts import MAX_ALERT_BYTES, VERDICTS, AlertError, decode_alert, decode_alert_body
from edge.replay import ReplayError, ReplayLink, default_replay_addr
from edge.security import HANDSHAKE_EVENTS, explain_handshake_failure, secure_client
from edge.subscriber.ratelimit import RateLimitedLog

if TYPE_CHECKING:
    from edge.subscriber.store import AlertStore

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
RECENT_MAX = 10_000           # delivered alerts remembered per node journal, to tell a reused number from a duplicate


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
        # alert_seq -> published_wall of the alerts delivered lately: a copy with another time is
        # not a duplicate but a reused number (a node without journal epochs), and is delivered
        self.recent: collections.OrderedDict[int, float] = collections.OrderedDict()

    def remember(self, alert: dict) -> None:
        self.recent[alert["alert_seq"]] = float(alert["published_wall"])
        while len(self.recent) > RECENT_MAX:
            self.recent.popitem(last=False)

    def reused(self, alert: dict) -> bool:
        """True when this alert_seq was delivered before with another publication time."""
        seen = self.recent.get(alert["alert_seq"])
        return seen is not None and seen != float(alert["published_wall"])

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
    (alerts), ``journal_resets``, ``seq_conflicts`` (a number delivered before arrived with other
    content: delivered, logged at ERROR), ``replay_timeouts`` / ``replay_errors``, ``connected`` /
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
        st.remember(alert)
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
            elif st.reused(alert):   # another part under a number already used: never drop its verdict
                self.counters["seq_conflicts"] += 1
                log.error("node %s: alert_seq %d of journal %s arrived again with other content (frame %d of %s): "
                          "the node reused the number; delivering it as a new alert", alert["node"], s, jid,
                          alert["frame_seq"], alert["camera"])
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
                "seq_conflicts": c["seq_conflicts"],
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
