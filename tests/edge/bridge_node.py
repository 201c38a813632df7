"""A simulated edge node for the bridge tests and bench/bridge_latency.py: a real AlertJournal,
an XPUB for the alerts and the replay ROUTER (edge.replay.ReplayServer), owned by one thread
(each belongs to one thread), as in the alert stage. No mocks: the bridge under test talks to
it over loopback TCP like to edge-run."""
from __future__ import annotations

import queue
import threading
import time

import zmq

from edge.alerts import encode_alert, make_alert
from edge.journal import AlertJournal
from edge.replay import ReplayServer

VERDICT_CYCLE = ("OK", "NotOK", "OK", "NotDecidable", "OK")


def verdict_for(seq: int) -> str:
    """A known verdict per alert_seq, so a test can check each result the PLC read."""
    return VERDICT_CYCLE[seq % len(VERDICT_CYCLE)]


def score_for(seq: int):
    v = verdict_for(seq)
    return None if v == "NotDecidable" else (0.25 + seq / 1000 if v == "OK" else 1.5 + seq / 1000)


def frame_for(seq: int) -> int:
    return 1000 + seq


class SimNode:
    """``publish(n)`` journals and publishes n alerts (verdicts by :func:`verdict_for`);
    ``start_rate(rate, n)`` publishes n alerts at ``rate`` per second in the node's thread and
    records each one's publication time (time.perf_counter) in ``published_at``."""

    def __init__(self, journal_path, node: str = "line1", cameras=("top", "side"), ports=None):
        self.node, self.cameras = node, tuple(cameras)
        self.cmds: queue.Queue = queue.Queue()
        self.published_at: dict[int, float] = {}
        self.subscriptions = 0
        self._rate = None
        self._ready = threading.Event()
        self._error = None
        self._args = (journal_path, ports)
        self.thread = threading.Thread(target=self._run, name="sim-node", daemon=True)
        self.thread.start()
        assert self._ready.wait(10) and self._error is None, self._error

    def _run(self):
        path, ports = self._args
        ctx = zmq.Context()
        try:
            pub = ctx.socket(zmq.XPUB)
            pub.setsockopt(zmq.LINGER, 0)
            pub.setsockopt(zmq.XPUB_VERBOSE, 1)
            pub.bind(f"tcp://127.0.0.1:{ports[0] if ports else '*'}")
            journal = AlertJournal(path, self.node)
            srv = ReplayServer(ctx, f"tcp://127.0.0.1:{ports[1] if ports else '*'}", journal, self.node)
            self.endpoint = pub.getsockopt(zmq.LAST_ENDPOINT).decode()
            self.replay_endpoint = srv.sock.getsockopt(zmq.LAST_ENDPOINT).decode()
            self.connect = f"{self.endpoint},{self.replay_endpoint}"
            self.journal_id = journal.journal_id
        except Exception as e:
            self._error = e
            self._ready.set()
            ctx.destroy(linger=0)
            return
        self._ready.set()
        next_at = None
        while True:
            while pub.poll(0):
                if pub.recv()[:1] == b"\x01":
                    self.subscriptions += 1
            srv.serve()
            if self._rate is not None:
                period, left = self._rate
                now = time.perf_counter()
                next_at = next_at or now
                if now >= next_at:
                    self._publish(journal, pub, 1)
                    left -= 1
                    next_at += period
                    self._rate = (period, left) if left > 0 else None
                    if self._rate is None:
                        next_at = None
                    continue
                wait = max(0.0, min(0.005, next_at - now))
            else:
                wait = 0.005
            try:
                cmd = self.cmds.get(timeout=wait)
            except queue.Empty:
                continue
            if cmd is None:
                break
            fn, box, done = cmd
            try:
                box.append(fn(journal, pub))
            except Exception as e:
                box.append(e)
            done.set()
        srv.close()
        journal.close()
        ctx.destroy(linger=0)

    def _publish(self, journal, pub, n):
        out = []
        for _ in range(n):
            seq = journal.last_seq() + 1
            now = time.time()
            verdict = verdict_for(seq)
            a = make_alert(node=self.node, alert_seq=seq, camera=self.cameras[seq % len(self.cameras)],
                           frame_seq=frame_for(seq), capture_wall=now - 0.01, published_wall=now, latency_ms=10.0,
                           verdict=verdict, score=score_for(seq), normalised_score=None if verdict == "NotDecidable"
                           else (0.2 if verdict == "OK" else 0.9), threshold=1.0, model_version="sim-000000000000",
                           regions=[{"box": [1, 2, 3, 4], "area": 12, "peak": 2.0}] if verdict == "NotOK" else [],
                           reason="camera blind: simulated" if verdict == "NotDecidable" else None,
                           journal_id=journal.journal_id, is_simulated=True)
            frames = encode_alert(a)
            journal.append(seq, now, frames[1], a["camera"], verdict)
            self.published_at[seq] = time.perf_counter()
            pub.send_multipart(frames)
            out.append(seq)
        return out

    def call(self, fn):
        box, done = [], threading.Event()
        self.cmds.put((fn, box, done))
        assert done.wait(10)
        if isinstance(box[0], Exception):
            raise box[0]
        return box[0]

    def publish(self, n: int = 1) -> list[int]:
        return self.call(lambda journal, pub: self._publish(journal, pub, n))

    def start_rate(self, rate: float, n: int) -> None:
        self.call(lambda journal, pub: setattr(self, "_rate", (1.0 / rate, n)))

    @property
    def busy(self) -> bool:
        return self._rate is not None

    def last_seq(self) -> int:
        return self.call(lambda journal, pub: journal.last_seq())

    def close(self):
        self.cmds.put(None)
        self.thread.join(5)
