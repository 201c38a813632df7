"""Capture stage: one reader thread per camera (edge.sources) -> frame messages to preprocess.

Pixels go into a per-camera shared-memory ring (edge.frame_ring) and only the
header crosses the socket; with ``frames_inline`` (preprocess on another host)
the pixels travel as a second, zero-copy frame. Over ``inproc://`` (preprocess is a
thread of this process, ``--stage-mode threads``) they travel inline too: the message
hands preprocess a reference to the decoded frame itself, no copy at all. Live cameras never wait: the
ring overwrites the oldest unread frame and a full socket refuses the newest,
both counted as ``dropped`` for that camera. With ``no_drop`` the reader thread
waits instead, which slows a file source down to the pipeline's pace.

A camera that sees nothing is never silence on the line: a live camera that never opens
(connection refused, no such device) is reported blind at its first failed open, like one
that stops delivering; and while it stays blind (failed reopens) the report is repeated every
BLIND_REPEAT_S seconds (:class:`BlindCameras`). The alert stage publishes each report as a
NotDecidable alert with frame_seq -1.

Frame accounting, per camera: ``frames_in`` counts frames read, ``bad_frames`` images the
reader could not deliver at all (each one a part that passes unjudged: a NotDecidable in
the summary), ``untransportable`` frames too large for the inline transport (the receiver's
MAXMSGSIZE would drop the message and the connection with it: reported as NotDecidable
instead), ``dropped`` frames this stage could not pass on, each counted once.

Frame sizes may change (a folder of mixed images, a camera switching resolution): a frame
that does not fit the camera's ring gets a new, larger ring, and the old one is *retired*,
not closed: frames already sent still point into it. A retired ring is closed once the
reader has released every slot of it (or after RETIRED_RING_MAX_S, when nothing will).
"""
from __future__ import annotations

import threading
import time

import zmq

from edge.config import PipelineConfig
from edge.frame_ring import FrameRing
from edge.sources import CameraReader, parse_source
from edge.stages.base import Stage, log
from edge.view.cameras import serve_requests
from edge.wire import MAX_MESSAGE_BYTES, make_socket, pack

SEND_HWM = 16               # ring headers: a few hundred bytes each
# Inline frames (tcp:// to another host, inproc:// to a stage thread) queue whole frames: 16 of 1080p would be
# 100 MB and half a second of stale frames at 30 frames/s. Measured over TCP loopback (1920x1080x3, loaded
# machine, bench/transport_bench.py): 4 frames queued on each side ran as fast as 16 + 64 (within the noise).
INLINE_SEND_HWM = 4
RETIRED_RING_MAX_S = 60.0   # a retired ring whose frames were never released is closed after this
RING_GROWTH = 1.5           # a ring that must grow grows by at least this factor: few rings for mixed sizes
INLINE_HEADER_ROOM = 64 << 10   # a frame message's header and framing, beside the pixels
BLIND_REPEAT_S = PipelineConfig.blind_repeat_s   # reports repeat this often while blind (docs/pipeline.md)


class BlindCameras:
    """Which cameras see nothing right now, and when the line was last told about each.

    Fed with the reader's events (edge.sources): ``blind`` and the first ``open_failed`` of a
    camera that is not blind yet (it never opened, or it came back and failed again) start a
    blind spell and are reported at once; ``opened`` / ``reconnected`` end it; :meth:`due`
    gives the reminders of the spells still running. Thread-safe (readers call from their
    threads, the stage loop asks for reminders)."""

    def __init__(self, repeat_s: float = BLIND_REPEAT_S, clock=time.monotonic) -> None:
        if not repeat_s > 0:
            raise ValueError(f"the blind report interval must be > 0 s, got {repeat_s}")
        self.repeat_s, self.clock = float(repeat_s), clock
        self._spells: dict[str, dict] = {}   # camera -> since, told, reason
        self._lock = threading.Lock()

    def on_event(self, camera: str, event: str, detail: str) -> str | None:
        """The detail of a blind report to send now for this event, or None."""
        now = self.clock()
        with self._lock:
            if event in ("opened", "reconnected"):
                self._spells.pop(camera, None)
                return None
            if event == "blind":
                self._spells[camera] = {"since": now, "told": now, "reason": detail}
                return detail
            if event == "open_failed":
                spell = self._spells.get(camera)
                if spell is None:
                    self._spells[camera] = {"since": now, "told": now, "reason": detail}
                    return f"cannot open the camera: {detail}"
                spell["reason"] = detail   # the reminder says why the latest reopen failed
            return None

    def due(self) -> list[tuple[str, str]]:
        """(camera, detail) of every blind camera whose last report is ``repeat_s`` old."""
        now, out = self.clock(), []
        with self._lock:
            for camera, spell in self._spells.items():
                if now - spell["told"] >= self.repeat_s:
                    spell["told"] = now
                    out.append((camera, f"still blind after {now - spell['since']:.0f} s: {spell['reason']}"))
        return out

    def blind(self) -> list[str]:
        with self._lock:
            return sorted(self._spells)


class CaptureStage(Stage):
    name = "capture"

    def __init__(self, cfg: PipelineConfig, ctx: zmq.Context | None = None, on_ready=None) -> None:
        super().__init__(cfg, ctx, on_ready)
        self.specs = [parse_source(text, i) for i, text in enumerate(cfg.sources)]
        # inproc: the frame object itself is handed over (a reference); no ring, no size limit
        self.inproc = cfg.frames_addr.startswith("inproc://")
        self.inline = cfg.frames_inline or self.inproc
        self.out = make_socket(self.ctx, zmq.PUSH, hwm=INLINE_SEND_HWM if self.inline else SEND_HWM)
        self.connect(self.out, cfg.frames_addr)
        # One socket, one lock: ZeroMQ sockets are not thread-safe, and a single socket keeps
        # each camera's frames and the final end-of-stream in order.
        self.lock = threading.Lock()
        self.rings: dict[str, FrameRing] = {}
        self.retired: dict[str, list[tuple[FrameRing, float]]] = {}   # camera -> (ring, when retired)
        self._bad_counted: dict[str, int] = {}
        self.blind = BlindCameras(cfg.blind_repeat_s)
        self.readers = [CameraReader(s, self.on_frame, self.on_event, loop=cfg.loop,
                                     stall_timeout_s=cfg.stall_timeout_s, fps_limit=cfg.fps_limit)
                        for s in self.specs]
        self.roi_of = {s.camera: list(s.roi) for s in self.specs if s.roi}
        self.removed: list[CameraReader] = []   # cameras removed at run time (the camera API, edge/view/cameras.py)
        self.control = None
        if cfg.control_addr:
            self.control = self.ctx.socket(zmq.DEALER)
            self.control.setsockopt(zmq.LINGER, 0)
            self.control.setsockopt(zmq.MAXMSGSIZE, 64 << 10)
            self.control.connect(cfg.control_addr)

    # -- cameras added and removed while the line runs (edge-run --view-port's camera API) -------------
    def control_request(self, req: dict) -> dict:
        """One camera API request from the supervisor, already checked there as --source is at start."""
        if not isinstance(req, dict) or time.monotonic() > float(req.get("deadline", 0)):
            raise ValueError("request expired: the supervisor has stopped waiting for it")
        if req.get("op") == "add":
            spec = parse_source(str(req["source"]), len(self.specs))
            if any(r.camera == spec.camera for r in self.readers):
                raise ValueError(f"camera {spec.camera!r} is already running")
            reader = CameraReader(spec, self.on_frame, self.on_event, loop=self.cfg.loop,
                                  stall_timeout_s=self.cfg.stall_timeout_s, fps_limit=self.cfg.fps_limit)
            if spec.roi:
                self.roi_of[spec.camera] = list(spec.roi)
            try:
                reader.start()   # SourceError (a ValueError) for a source that cannot work: refused, with why
            except BaseException:
                self.roi_of.pop(spec.camera, None)
                raise
            self.specs.append(spec)
            self.readers.append(reader)
            log.info("capture %s: added (%s %s)", spec.camera, spec.kind, spec.shown)
            return {}
        if req.get("op") == "remove":
            reader = next((r for r in self.readers if r.camera == req.get("camera")), None)
            if reader is None:
                raise ValueError(f"no camera {req.get('camera')!r} is running")
            reader.stop()   # its last frame is sent before the thread ends; frames in flight go on downstream
            self.readers.remove(reader)
            self.specs = [s for s in self.specs if s.camera != reader.camera]
            self.removed.append(reader)
            self.roi_of.pop(reader.camera, None)
            self.blind.on_event(reader.camera, "opened", "removed")   # no more blind reminders for it
            ring = self.rings.pop(reader.camera, None)
            if ring is not None:   # frames in flight still point into it: closed once released
                self.retired.setdefault(reader.camera, []).append((ring, time.monotonic()))
            log.info("capture %s: removed after %d frames", reader.camera, reader.stats["frames"])
            return {"frames": int(reader.stats["frames"])}
        raise ValueError(f"unknown request {req.get('op')!r}")

    def serve_control(self, timeout_s: float) -> None:
        if self.control is None:
            time.sleep(timeout_s)
            return
        serve_requests(self.control, self.control_request, int(timeout_s * 1000))
        for r in self.removed:
            self.close_released_rings(r.camera)

    def ring_for(self, camera: str, nbytes: int) -> FrameRing:
        """The camera's ring, grown when a frame does not fit (called from the camera's thread)."""
        self.close_released_rings(camera)
        ring = self.rings.get(camera)
        if ring is None or ring.slot_bytes < nbytes:  # first frame, or the camera's size grew
            size = nbytes if ring is None else max(nbytes, int(ring.slot_bytes * RING_GROWTH))
            new = FrameRing.create(camera, self.cfg.ring_slots, size)
            if ring is not None:   # frames in flight still point into it: retire, do not close
                self.retired.setdefault(camera, []).append((ring, time.monotonic()))
            ring = self.rings[camera] = new
        return ring

    def close_released_rings(self, camera: str, force: bool = False) -> None:
        keep = []
        for ring, since in self.retired.get(camera, []):
            if force or bool((ring.released >= ring.gen).all()) or time.monotonic() - since > RETIRED_RING_MAX_S:
                ring.close()
            else:
                keep.append((ring, since))
        self.retired[camera] = keep

    def all_rings(self) -> list[FrameRing]:
        return list(self.rings.values()) + [r for rings in self.retired.values() for r, _ in rings]

    def count_bad_frames(self) -> None:
        """Images a reader could not deliver (bad_frame) are frames too: counted, per camera, exactly
        (the reader's bad_frame *events* are rate-limited on streams; its stats are not)."""
        for r in self.readers + self.removed:
            n = int(r.stats["bad_frames"])
            new = n - self._bad_counted.get(r.camera, 0)
            if new > 0:
                self.metrics.inc("bad_frames", r.camera, n=new)
                self._bad_counted[r.camera] = n

    def on_frame(self, camera: str, seq: int, frame, pixel_format: str, mono: float, wall: float,
                 part_id: str | None = None) -> None:
        self.metrics.inc("frames_in", camera)
        header = {"kind": "frame", "camera": camera, "seq": seq, "mono": mono, "wall": wall,
                  "shape": list(frame.shape), "pixel_format": pixel_format, "part_id": part_id}
        roi = self.roi_of.get(camera)
        if roi is not None:   # the source's own ROI (--source NAME=SRC@x,y,w,h, or the camera API): preprocess crops it
            header["roi"] = roi
        if self.inline:
            if not self.inproc and frame.nbytes + INLINE_HEADER_ROOM > MAX_MESSAGE_BYTES:
                self.metrics.inc("untransportable", camera)
                self.send_event(camera, "bad_frame", f"frame {seq} of {frame.shape[1]}x{frame.shape[0]} "
                                f"({frame.nbytes} bytes) is too large to send inline (limit {MAX_MESSAGE_BYTES} "
                                "bytes): crop it with --roi, or run preprocess on this host (shared memory)", part_id)
                return
            frames = pack(header, frame)
        else:
            ring = self.ring_for(camera, frame.nbytes)
            placed = ring.write(frame, wait_free=self.cfg.no_drop, should_stop=lambda: self.stopping)
            if placed is None:
                return
            slot, gen, overwrote_unread = placed
            if overwrote_unread:
                self.metrics.inc("dropped", camera)
            header.update(ring=str(ring.path), slot=slot, gen=gen)
            frames = pack(header)
        with self.lock:
            sent = self.send(self.out, frames, blocking=self.cfg.no_drop)
        if sent:
            self.metrics.inc("frames_out", camera)
        else:
            self.metrics.inc("dropped", camera)
            if not self.inline:   # nobody will read that slot: free it, so that
                ring.release(slot, gen)      # overwriting it later is not counted a second time

    def on_event(self, camera: str, event: str, detail: str, part_id: str | None = None) -> None:
        self.metrics.inc(f"event_{event}", camera)
        (log.warning if event in ("blind", "open_failed", "bad_frame") else log.info)(
            "capture %s: %s %s", camera, event, detail)
        blind_report = self.blind.on_event(camera, event, detail)
        if blind_report is not None:
            self.send_event(camera, "blind", blind_report)
        elif event in ("reconnected", "bad_frame"):  # the alert stage turns bad_frame into a verdict
            self.send_event(camera, event, detail, part_id)

    def send_event(self, camera: str, event: str, detail: str, part_id: str | None = None) -> None:
        if event == "blind":
            self.metrics.inc("blind_reports", camera)
        with self.lock:
            self.send_control(self.out, {"kind": "event", "camera": camera, "event": event, "detail": detail,
                                         "mono": time.monotonic(), "wall": time.time(), "part_id": part_id})

    def wait_for_go(self, *events) -> bool:
        """edge-run starts capture while the engine loads; it reads nothing until released (every
        event set: the supervisor's go, and in threads mode the other stage threads' readiness)."""
        for go in events:
            while not go.wait(0.1):
                if self.stopping or self.orphaned():
                    return False
        return True

    def run(self, go=None, ready=None) -> None:
        events = [e for e in (go, ready) if e is not None]
        if events and not self.wait_for_go(*events):
            self.close()
            return
        for r in self.readers:
            r.start()
        try:
            while not self.stopping and not all(r.finished for r in self.readers) and not self.orphaned():
                self.serve_control(0.05)
                for camera, detail in self.blind.due():   # still blind: the line is told again
                    self.send_event(camera, "blind", detail)
                self.count_bad_frames()
                self.report()
        finally:
            for r in self.readers:
                r.stop()
            self.count_bad_frames()
            with self.lock:
                self.end_stream(self.out)
            self.wait_for_readers(timeout_s=30.0 if self.cfg.no_drop else 1.0)
            if self.control is not None:
                self.control.close(linger=0)
            self.close()
            for ring in self.all_rings():
                ring.close()

    def wait_for_readers(self, timeout_s: float) -> None:
        """Keep the rings until preprocess has released every frame it was sent (bounded)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.orphaned():
            if all((r.released >= r.gen).all() for r in self.all_rings()):
                return
            time.sleep(0.01)


def run(cfg: PipelineConfig, go=None) -> None:
    stage = CaptureStage(cfg)
    stage.install_signal_handlers()
    stage.run(go)
