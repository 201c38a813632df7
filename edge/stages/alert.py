"""Alert stage: scored frames -> verdicts -> versioned alerts on a PUB socket (edge.alerts).

Per frame: the camera's calibrated threshold (manifest, calibration.json) gives the
verdict; the pixel threshold turns the heatmap into defect regions in frame
pixels; an optional JPEG thumbnail overlays the heatmap on what the model saw.
Frames that could not be judged (rejects, engine errors, non-finite scores, a
blind camera) are published as NotDecidable whatever ``publish`` says: the line
must never take silence for OK.

The socket is an XPUB so the stage can see subscriptions arrive: with
``wait_subscribers`` it holds the pipeline until the PLC/MES side is listening
(PUB drops whatever is sent before a subscriber has joined).

Every alert is first written to the node's journal (edge/journal.py; one transaction and
one fsync per scored message), then published: ``alert_seq`` continues across restarts and
has no gaps, and the replay endpoint (a ROUTER served in this stage's loop, edge/replay.py)
gives a subscriber what it missed. If the journal cannot be written (disk full), the alert
is published anyway (the line would rather have it), counted in ``journal_errors`` and
logged as an ERROR; up to UNJOURNALED_MAX such alerts wait in memory and are written when
the disk recovers, older ones become tombstones (reported as missing by the replay).
Before the first such alert is published, a marker file beside the journal says so: if the
stage ends before the backlog is written, the next start begins a new journal epoch (a new
journal_id, edge/journal.py) instead of publishing those alert_seq numbers a second time.
"""
from __future__ import annotations

import collections
import math
import socket
import time

import cv2
import numpy as np
import zmq

from edge.alerts import MAX_ALERT_BYTES, encode_alert, make_alert
from edge.config import PipelineConfig
from edge.journal import AlertJournal, JournalEntry, JournalError, default_journal_path
from edge.manifest import load_manifest
from edge.overlay import heatmap_overlay
from edge.regions import find_regions
from edge.replay import ReplayServer, default_replay_addr
from edge.rules import DEFAULT_CAMERA, CameraRules, RulesError, camera_rules, check_cameras, rules_for
from edge.stages.base import Stage, log
from edge.verdict import normalised_score
from edge.view.preview import PreviewFeed
from edge.wire import MessageError, check_items, field, make_socket

RECV_HWM = 16
PUB_HWM = 10_000
THUMBNAIL_QUALITY = 80
UNJOURNALED_MAX = 1000        # alerts published but not yet journaled, kept for a retry


def heat_thumbnail(pixels: np.ndarray, heatmap: np.ndarray, high: float) -> bytes:
    """What the model saw with its heatmap over it (red = high), as JPEG bytes (edge/overlay.py:
    the same blend as the engineer's reports)."""
    ok, jpeg = cv2.imencode(".jpg", heatmap_overlay(pixels, heatmap, 0.0, high),
                            [cv2.IMWRITE_JPEG_QUALITY, THUMBNAIL_QUALITY])
    return jpeg.tobytes() if ok else b""


def frame_regions(heatmap: np.ndarray, rules: CameraRules, item: dict) -> list[dict]:
    """Defect regions in the camera frame's pixels (ROI offset and scale applied)."""
    if rules.pixel_threshold is None:
        return []
    h, w = heatmap.shape
    fh, fw = item.get("frame_shape") or (h, w)
    x0, y0, cw, ch = item.get("roi") or (0, 0, fw, fh)
    sx, sy = cw / w, ch / h
    out = []
    for r in find_regions(heatmap, float(rules.pixel_threshold), rules.min_region_area):
        x, y, bw, bh = r["box"]
        out.append({"box": [round(x0 + x * sx), round(y0 + y * sy), math.ceil(bw * sx), math.ceil(bh * sy)],
                    "area": round(r["area"] * sx * sy), "peak": r["peak"]})
    return out


class AlertStage(Stage):
    name = "alert"

    def __init__(self, cfg: PipelineConfig, ctx: zmq.Context | None = None, on_ready=None) -> None:
        super().__init__(cfg, ctx, on_ready)
        self.manifest = load_manifest(cfg.engine, verify_checksum=False)
        self.rules = camera_rules(self.manifest, cfg.threshold)
        self.check_cameras_known(cfg)
        self.node = cfg.node_id or socket.gethostname()
        path = cfg.journal_path or str(default_journal_path(self.node, cfg.alerts_addr))
        try:
            self.journal = AlertJournal(path, self.node, max_alerts=cfg.journal_max_alerts,
                                        max_age_s=cfg.journal_max_age_s, max_bytes=cfg.journal_max_bytes)
        except JournalError as e:
            raise ValueError(f"{e} (--journal FILE puts it elsewhere)") from e
        # durable numbering: continues where the journal ends, across restarts of edge-run
        self.alert_seq = self.journal.last_seq()
        self._outbox: list[tuple[JournalEntry, list[bytes], str]] = []
        self._unjournaled: collections.deque[JournalEntry] = collections.deque()
        self._unjournaled_dropped = False
        self._marked_unjournaled = False   # the journal's marker file exists (module doc)
        self._last_journal_log = -math.inf
        try:
            self.inp = make_socket(self.ctx, zmq.PULL, hwm=RECV_HWM)
            self.bind(self.inp, cfg.scored_addr)
            self.pub = make_socket(self.ctx, zmq.XPUB, hwm=PUB_HWM, max_bytes=4096)  # inbound: subscriptions only
            self.bind(self.pub, cfg.alerts_addr, always=True)
            replay_addr = cfg.replay_addr or default_replay_addr(cfg.alerts_addr)
            self.replay = ReplayServer(self.ctx, replay_addr, self.journal, self.node,
                                       count=lambda name, n=1: self.metrics.inc(name, n=n),
                                       prepare=lambda sock: self.secure_server(sock, replay_addr, always=True))
            # the operator's screen (edge-run --view-port, edge/view/preview.py): never waits, off when unwatched
            self.preview = PreviewFeed(self.ctx, cfg.preview_addr, cfg.preview_fps) if cfg.preview_addr else None
        except BaseException:
            self.journal.close()
            raise
        self.poller = zmq.Poller()
        self.poller.register(self.inp, zmq.POLLIN)
        self.poller.register(self.replay.sock, zmq.POLLIN)
        if self.journal.previous_journal_id is not None:
            log.warning("alert: the previous run published alerts it could not journal; their alert_seq must not "
                        "be reused, so this run starts a new journal epoch: journal_id %s -> %s, alert_seq starts "
                        "at 1 (old journal kept as %s); subscribers read the new journal_id as new alerts",
                        self.journal.previous_journal_id, self.journal.journal_id, self.journal.previous_path)
        log.info("alert: journal %s (journal_id %s, %d alerts kept, alert_seq continues at %d); replay on %s",
                 path, self.journal.journal_id, self.journal.count(), self.alert_seq + 1, replay_addr)
        self.subscribers = 0
        self.eos_seen = 0

    def check_cameras_known(self, cfg: PipelineConfig) -> None:
        """Refuse to start unless every camera that can arrive has rules (edge/rules.py). Without
        the capture stage here (stages on several hosts) the cameras are not known at start, so
        only a '*' entry (or --threshold) covers them."""
        if cfg.sources:
            from edge.sources import parse_source
            check_cameras(self.rules, [parse_source(t, i).camera for i, t in enumerate(cfg.sources)])
        elif DEFAULT_CAMERA not in self.rules:
            raise RulesError(f"the alert stage runs without --source here, so its cameras are unknown at start, and "
                             f"the calibration has entries for {', '.join(sorted(self.rules))} only: add a '*' entry "
                             f"(edge-calibrate --camera '*' ...) so that no camera arrives unjudged")

    def rules_for(self, camera: str) -> CameraRules:
        return rules_for(self.rules, camera)   # its own entry, else '*'; never another camera's

    def poll_subscriptions(self) -> None:
        while True:
            try:
                msg = self.pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg[:1] == b"\x01":
                self.subscribers += 1
            elif msg[:1] == b"\x00":
                self.subscribers -= 1

    def wait_for_subscribers(self) -> None:
        deadline = time.monotonic() + self.cfg.wait_subscribers_s
        while self.subscribers < self.cfg.wait_subscribers and time.monotonic() < deadline and not self.stopping:
            if self.pub.poll(100):
                self.poll_subscriptions()
            self.replay.serve()   # a subscriber says hello before it subscribes
        if self.subscribers < self.cfg.wait_subscribers:
            log.warning("alert: %d of %d subscriber(s) after %.0f s; publishing anyway", self.subscribers,
                        self.cfg.wait_subscribers, self.cfg.wait_subscribers_s)

    def publish(self, camera: str, frame_seq: int, mono: float, wall: float, verdict: str, rules: CameraRules,
                score: float | None = None, regions=None, reason: str | None = None,
                thumbnail: bytes | None = None, part_id: str | None = None, view_jpeg: bytes | None = None,
                item: dict | None = None) -> None:
        latency_ms = (time.monotonic() - mono) * 1e3
        if frame_seq >= 0:   # a frame's verdict; an alert about the camera itself is not a frame
            self.metrics.inc(f"verdict_{verdict}", camera)
            self.metrics.observe("latency_ms", latency_ms, camera)
            self.metrics.observe("latency_ms", latency_ms)
        else:
            self.metrics.inc("camera_alerts", camera)
        if verdict == "OK" and self.cfg.publish != "all":
            if view_jpeg is not None:   # a frame the operator's screen asked for, not published as an alert
                self.preview.send("frame", {
                    "camera": camera, "frame_seq": frame_seq, "capture_wall": wall, "latency_ms": latency_ms,
                    "verdict": verdict, "score": score, "threshold": rules.threshold, "part_id": part_id,
                    "normalised_score": None if score is None else float(normalised_score(score, rules.center,
                                                                                          rules.scale)),
                    "model_version": self.manifest["model_version"], "regions": regions or []}, view_jpeg, item)
            return
        self.alert_seq += 1
        alert = make_alert(
            node=self.node, alert_seq=self.alert_seq, camera=camera, frame_seq=frame_seq, capture_wall=wall,
            published_wall=time.time(), latency_ms=latency_ms, verdict=verdict, score=score,
            normalised_score=None if score is None else float(normalised_score(score, rules.center, rules.scale)),
            threshold=rules.threshold, model_version=self.manifest["model_version"], regions=regions,
            reason=reason, thumbnail_jpeg=thumbnail, is_simulated=self.cfg.is_simulated,
            journal_id=self.journal.journal_id, part_id=part_id)
        frames = encode_alert(alert)
        if len(frames[1]) > MAX_ALERT_BYTES:  # a huge thumbnail must not make the alert unreadable
            alert["thumbnail_jpeg"] = None
            frames = encode_alert(alert)
        entry = JournalEntry(self.alert_seq, alert["published_wall"], camera, verdict, frames[1])
        self._outbox.append((entry, frames, camera))   # journaled, then sent, by flush()
        if self.preview is not None and (view_jpeg is not None or frame_seq < 0 or (
                verdict == "NotDecidable" and item is None and self.preview.wants(camera, verdict))):
            self.preview.send("frame" if verdict == "OK" else "alert", alert, view_jpeg, item)

    def flush(self) -> None:
        """Journal the alerts of the message just handled (one transaction: one fsync), then
        publish them. Alerts the journal refuses are published all the same (see module doc)."""
        if not self._outbox:
            return
        outbox, self._outbox = self._outbox, []
        entries = list(self._unjournaled) + [entry for entry, _, _ in outbox]
        t0 = time.monotonic()
        try:
            self.journal.append_many(entries, lost_before=self._unjournaled_dropped)
            if self._unjournaled:
                log.warning("alert: the journal works again: %d alert(s) published meanwhile written late",
                            len(self._unjournaled))
            self._unjournaled.clear()
            self._unjournaled_dropped = False
            if self._marked_unjournaled:
                self.journal.clear_unjournaled()
                self._marked_unjournaled = False
            self.metrics.observe("journal_ms", (time.monotonic() - t0) * 1e3)
        except JournalError as e:
            if not self._marked_unjournaled:   # on disk before any of these numbers goes out
                self._marked_unjournaled = self.journal.mark_unjournaled(entries[0].seq, outbox[-1][0].seq)
            self.metrics.inc("journal_errors", n=len(outbox))
            for entry, _, _ in outbox:
                if len(self._unjournaled) >= UNJOURNALED_MAX:
                    self._unjournaled.popleft()
                    self._unjournaled_dropped = True
                self._unjournaled.append(entry)
            now = time.monotonic()
            if now - self._last_journal_log >= 10:   # an ERROR every 10 s while it lasts, not per alert
                self._last_journal_log = now
                log.error("alert: cannot journal alert_seq %d..%d, publishing them anyway (%d not journaled, "
                          "journal_errors %d): %s", outbox[0][0].seq, outbox[-1][0].seq, len(self._unjournaled),
                          self.metrics.counter("journal_errors"), e)
        for _, frames, camera in outbox:
            self.pub.send_multipart(frames)
            self.metrics.inc("alerts_published", camera)

    def judge(self, item: dict, pixels: np.ndarray, score: float, heatmap: np.ndarray) -> None:
        camera = item["camera"]
        rules = self.rules_for(camera)
        if not (math.isfinite(score) and np.isfinite(heatmap).all()):
            self.publish(camera, item["seq"], item["mono"], item["wall"], "NotDecidable", rules,
                         reason="the engine returned a non-finite score or heatmap", part_id=item.get("part_id"))
            return
        verdict = "NotOK" if score > rules.threshold else "OK"
        regions = frame_regions(heatmap, rules, item) if verdict == "NotOK" else []
        want_thumb = self.cfg.thumbnails == "all" or (self.cfg.thumbnails == "defects" and verdict == "NotOK")
        high = 2 * float(rules.pixel_threshold or heatmap.max() or 1.0)
        thumb = heat_thumbnail(pixels, heatmap, high) \
            if want_thumb and (self.cfg.publish == "all" or verdict != "OK") else None
        view_jpeg = None   # the operator's screen: this camera's newest frame and its rejects, rate-limited
        if self.preview is not None and self.preview.wants(camera, verdict):
            view_jpeg = thumb if thumb is not None else heat_thumbnail(pixels, heatmap, high)
        self.publish(camera, item["seq"], item["mono"], item["wall"], verdict, rules, score=score,
                     regions=regions, thumbnail=thumb, part_id=item.get("part_id"), view_jpeg=view_jpeg, item=item)

    def handle(self, header: dict, arrays: list) -> None:
        kind = header["kind"]
        if kind == "eos":
            self.eos_seen += 1
            return
        if kind == "event":
            camera, event = field(header, "camera", str), field(header, "event", str)
            if event in ("blind", "bad_frame"):
                self.publish(camera, -1, float(header.get("mono", time.monotonic())),
                             float(header.get("wall", time.time())), "NotDecidable", self.rules_for(camera),
                             reason=f"camera {event}: {header.get('detail', '')}",
                             part_id=field(header, "part_id", (str, type(None))))   # an unreadable image: its name
            return
        if kind != "scored":
            raise MessageError(f"unexpected {kind} message")
        items, rejects = check_items(header.get("items")), check_items(header.get("rejects"))
        if items and (len(arrays) != 3 or not (len(arrays[0]) == len(arrays[1]) == len(arrays[2]) == len(items))
                      or arrays[0].ndim != 4 or arrays[2].ndim != 4):
            raise MessageError("scored message arrays do not match its items")
        for r in rejects:
            self.metrics.inc("frames_in", r["camera"])
            self.publish(r["camera"], r["seq"], float(r["mono"]), float(r["wall"]), "NotDecidable",
                         self.rules_for(r["camera"]), reason=str(r.get("reason", "frame rejected"))[:500],
                         part_id=r.get("part_id"))
        if not items:
            return
        pixels, scores, maps = arrays
        now = time.monotonic()
        for i, item in enumerate(items):
            self.metrics.inc("frames_in", item["camera"])
            self.metrics.observe("age_alert_ms", (now - item["mono"]) * 1e3)
            self.judge(item, pixels[i], float(scores[i]), maps[i].reshape(maps[i].shape[-2:]))

    def run(self) -> None:
        try:
            if self.cfg.wait_subscribers:
                self.wait_for_subscribers()
            self.report(force=True, ready=True)
            while self.eos_seen < 1 and not self.orphaned() and not self.stopping:
                self.poll_subscriptions()
                ready = dict(self.poller.poll(100))
                if self.replay.sock in ready:
                    self.replay.serve()
                if self.inp not in ready:
                    self.report()
                    continue
                for header, arrays in self.receive_all(self.inp, timeout_ms=0, limit=64):
                    try:
                        self.handle(header, arrays)
                    except (MessageError, KeyError, TypeError, ValueError) as e:
                        self.malformed(e)
                    finally:
                        self.flush()
                self.report()
        finally:
            self.close()

    def close(self) -> None:
        try:
            self.flush()
            if self._unjournaled:   # retry once; then say exactly what is at stake
                self._outbox, entries = [], list(self._unjournaled)
                try:
                    self.journal.append_many(entries, lost_before=self._unjournaled_dropped)
                    self._unjournaled.clear()
                    if self._marked_unjournaled:
                        self.journal.clear_unjournaled()
                except JournalError as e:
                    if self._marked_unjournaled or self.journal.mark_unjournaled(entries[0].seq, entries[-1].seq):
                        log.critical("alert: alert_seq %d..%d were published but are not in the journal %s (%s): "
                                     "the next start begins a new journal epoch (new journal_id) so that these "
                                     "numbers are never reused", entries[0].seq, entries[-1].seq,
                                     self.journal.path, e)
                    else:
                        log.critical("alert: alert_seq %d..%d were published but are not in the journal %s (%s), "
                                     "and the marker that makes the next start begin a new epoch could not be "
                                     "written: move that journal aside before the next start, or new alerts will "
                                     "reuse these numbers", entries[0].seq, entries[-1].seq, self.journal.path, e)
        finally:
            if self.preview is not None:
                self.preview.close()
            self.replay.close()
            self.journal.close()
            super().close()


def run(cfg: PipelineConfig) -> None:
    stage = AlertStage(cfg)
    stage.install_signal_handlers()
    stage.run()
