"""The bridge's intake: the existing gap-filling, resuming subscriber (edge.subscriber) in a
thread of its own, storing every alert once in the outbox before any downstream sees it.

AlertSubscriber is blocking and not thread-safe, and a SQLite connection belongs to one
thread: so the subscriber, its resume store (the outbox) and its sockets all live in this
thread; the asyncio side only hears "something new" (``on_new``) and reads the outbox itself.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable

from edge.bridge.outbox import Outbox, StateError
from edge.subscriber.client import AlertSubscriber

log = logging.getLogger("edge.bridge")


class Intake(threading.Thread):
    """Subscribes to one or more nodes and appends what arrives to the outbox at ``state``.

    ``counters`` (read from other threads: plain ints, updated by this thread only):
    ``received``, ``stored``, ``duplicates``, ``store_errors``; ``sub_summary`` is the
    subscriber's own summary (gaps, replays, reconnects), refreshed twice a second.
    ``error``: why the intake stopped (the bridge then stops too), else None."""

    def __init__(self, state: str, connect: list[str], *, cameras=(), on_new: Callable[[], None] = lambda: None,
                 since_start: bool = False, replay_from: int | None = None, curve=None):
        super().__init__(name="bridge-intake", daemon=True)
        self.state, self.connect, self.cameras = state, list(connect), list(cameras)
        self.on_new = on_new
        self.since_start, self.replay_from, self.curve = since_start, replay_from, curve
        self.counters: collections.Counter = collections.Counter()
        self.sub_summary: dict = {}
        self.connected = False
        self.error: str | None = None
        self.started = threading.Event()
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            with Outbox(self.state) as outbox, \
                    AlertSubscriber(self.connect, cameras=self.cameras, resume=outbox, since_start=self.since_start,
                                    replay_from=self.replay_from, curve=self.curve) as sub:
                self.started.set()
                next_summary = 0.0
                while not self._stop_event.is_set():
                    alert = sub.recv(timeout=0.1)
                    now = time.monotonic()
                    if now >= next_summary:
                        self.sub_summary = sub.summary()
                        self.connected = bool(sub.connected)
                        next_summary = now + 0.5
                    if alert is None:
                        continue
                    self.counters["received"] += 1
                    # Stored before anyone downstream is told: after a SIGKILL here the subscriber
                    # resumes after the last stored alert, and the node's replay brings the rest.
                    if outbox.add(alert) is None:
                        self.counters["duplicates"] += 1
                    else:
                        self.counters["stored"] += 1
                        self.on_new()
        except (StateError, ValueError) as e:
            self.error = str(e)
            log.error("intake stopped: %s", e)
        except Exception as e:   # never silently: the bridge stops and says why
            self.error = f"{type(e).__name__}: {e}"
            log.exception("intake stopped")
        finally:
            self.started.set()
            self.connected = False
            self.on_new()

    def stop(self) -> None:
        self._stop_event.set()
