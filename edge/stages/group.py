"""Several pipeline stages as threads of one process (``edge-run --stage-mode threads``).

The same stage classes as in processes mode, each run in its own thread, all on one ZeroMQ
context so that the hops between them are ``inproc://``: a message is handed over as a
reference (no copy, no system call), and capture passes the decoded frame itself to
preprocess instead of copying it into a shared-memory ring. What makes this worth doing on a
small machine: ONNX Runtime / TensorRT, OpenCV's decode and resize, the JPEG encoder and
libzmq's I/O all release the GIL, so the threads run in parallel where the work is.

What it costs is isolation, so the supervisor (edge/run.py) treats the process as one unit:

* a stage thread that raises (a bug; bad input is counted and skipped inside the stage) ends
  the whole process with exit code 1, and the supervisor restarts the process: every stage,
  capture included. Frames inside it are counted as lost in restarts, as for a stage process.
* a stage thread that stops reporting (hung in a driver call) cannot be killed alone: the
  supervisor's heartbeat check kills the process and restarts it.
* SIGTERM stops the first local stage (capture): end-of-stream then flows down and every frame
  in flight is finished; a second SIGTERM more than SIGTERM_DEBOUNCE_S later (the supervisor's
  grace is up), or one before capture was released, stops them all.

Each stage thread is named ``edge-<stage>`` (``top -H``, /proc/PID/task/TID/comm); the
process is ``edge-pipeline``.
"""
from __future__ import annotations

import importlib
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback

import zmq

from edge.config import PipelineConfig
from edge.stages.base import FLUSH_LINGER_MS, Stage

log = logging.getLogger("edge")
CLASSES = {"capture": "CaptureStage", "preprocess": "PreprocessStage", "score": "ScoreStage", "alert": "AlertStage"}
CRASH_EXIT = 1
CONFIG_ERROR_EXIT = 2   # edge.run.CONFIG_ERROR_EXIT: never restarted
SIGTERM_DEBOUNCE_S = 2.0


def stage_class(name: str) -> type[Stage]:
    return getattr(importlib.import_module(f"edge.stages.{name}"), CLASSES[name])


class StageGroup:
    """Runs ``stages`` (in pipeline order) as threads; capture waits for the others to be ready
    (and for the supervisor's ``go`` when given)."""

    def __init__(self, cfg: PipelineConfig, stages: list[str], go=None, name_thread=None) -> None:
        self.cfg, self.stages, self.go = cfg, list(stages), go
        self.name_thread = name_thread or (lambda name: None)
        self.ctx = zmq.Context()
        self.objects: dict[str, Stage] = {}
        self.built = {s: threading.Event() for s in self.stages}     # constructed (or failed to)
        self.ready = {s: threading.Event() for s in self.stages}     # reported ready
        self.others_ready = threading.Event()                         # every stage but capture ready
        if all(s == "capture" for s in self.stages):   # capture alone (--stages capture): nothing to wait for
            self.others_ready.set()
        self.error: tuple[str, BaseException] | None = None           # the first stage that could not run
        self.crashed: str | None = None
        self.released = go is None or go.is_set()
        self.first_sigterm = -math.inf
        self.threads = [threading.Thread(target=self._main, args=(s,), name=f"edge-{s}", daemon=True)
                        for s in self.stages]

    # -- one thread -----------------------------------------------------------------------------
    def _on_ready(self, name: str) -> None:
        self.ready[name].set()
        if all(self.ready[s].is_set() for s in self.stages if s != "capture"):
            self.others_ready.set()

    def _main(self, name: str) -> None:
        from edge.backends import BackendError
        from edge.manifest import ManifestError
        self.name_thread(f"edge-{name}")
        try:
            try:
                stage = stage_class(name)(self.cfg, ctx=self.ctx, on_ready=lambda: self._on_ready(name))
            finally:
                self.built[name].set()
            self.objects[name] = stage
            if name == "capture":
                stage.run(go=self.go, ready=self.others_ready)
            else:
                stage.run()
        # as a stage process (edge/run.py): a bad engine, address or journal cannot be helped by a restart
        except (BackendError, ManifestError, ValueError, OSError, zmq.ZMQError) as e:
            log.error("%s stage cannot run: %s", name, e)
            self.error = self.error or (name, e)
        except BaseException:
            self._crash(name)

    def _crash(self, name: str) -> None:
        """A stage thread raised: the process cannot go on with a hole in the pipeline. Exit at
        once (exit code 1), as a crashed stage process would; the supervisor restarts the group."""
        self.crashed = name
        log.critical("%s stage thread crashed; ending the stage process so that it is restarted:\n%s",
                     name, traceback.format_exc())
        logging.shutdown()
        sys.stderr.flush()
        os._exit(CRASH_EXIT)

    # -- the process ----------------------------------------------------------------------------
    def head(self) -> Stage | None:
        return next((self.objects[s] for s in self.stages if s in self.objects), None)

    def on_sigterm(self, *_) -> None:
        """The first SIGTERM stops the head (the rest finish what is in flight and follow on its
        end-of-stream); a later one (the supervisor's STOP_GRACE_S is up), or one before capture
        ever read, stops every stage. A second SIGTERM within SIGTERM_DEBOUNCE_S is the same stop
        said twice: a stop of the whole process group (Ctrl-C, systemd's control-group kill)
        reaches this process both from the sender and from the supervisor passing it on."""
        now = time.monotonic()
        head = self.head()
        released = self.released or (self.go is not None and self.go.is_set())
        if head is None or ("capture" in self.objects and not released) or \
                (head.stopping and now - self.first_sigterm > SIGTERM_DEBOUNCE_S):
            for stage in self.objects.values():
                stage.stopping = True
        elif not head.stopping:
            head.stopping = True
            self.first_sigterm = now

    def run(self) -> int:
        """Start every stage thread, wait for them all; the exit code for the supervisor."""
        for t in self.threads:
            t.start()
        # A stage that cannot be built (bad engine, address in use) ends the group with the
        # configuration exit code; the ones already built are stopped first.
        while any(t.is_alive() for t in self.threads):
            for t in self.threads:
                t.join(0.1)
            if self.error is not None:
                for stage in list(self.objects.values()):
                    stage.stopping = True
        # Every stage closed its sockets; terminating the context waits for what they still deliver
        # (their linger: the last alerts to a TCP subscriber). Bounded: a socket a failed stage
        # never closed would make it wait forever.
        term = threading.Thread(target=self.ctx.term, daemon=True)
        term.start()
        term.join(1.0 if self.error is not None else FLUSH_LINGER_MS / 1000 + 5)
        return 0 if self.error is None else CONFIG_ERROR_EXIT


def run(cfg: PipelineConfig, stages: list[str], go=None, name_thread=None) -> int:
    group = StageGroup(cfg, stages, go, name_thread)
    signal.signal(signal.SIGTERM, group.on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return group.run()
