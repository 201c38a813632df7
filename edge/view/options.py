"""edge-run's view options and the view's start and stop beside the supervisor (kept here so that
edge/run.py gains three calls, not the view's logic)."""
from __future__ import annotations

import argparse
import logging
import os
import socket

import zmq

from edge.view.full_frames import full_frame_addrs
from edge.view.server import ViewServer, is_loopback, read_token

log = logging.getLogger("edge")

PREVIEW_FPS = 2.0   # the newest frame per camera, at most this often, to a connected view


def add_view_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("operator's screen (docs/view.md)")
    g.add_argument("--view-port", type=int, default=None, metavar="PORT",
                   help="serve the operator's page (live tiles per camera, reject strip) and the camera API on this "
                        "HTTP port")
    g.add_argument("--view-bind", default="127.0.0.1", metavar="HOST",
                   help="the address the view binds (default 127.0.0.1: this machine only; any other address needs "
                        "--view-token-file)")
    g.add_argument("--view-token-file", default=None, metavar="FILE",
                   help="a file whose first line is the view's token (16+ characters): every page request and the "
                        "camera API (add / remove cameras, 'Authorization: Bearer <token>') then need it")
    g.add_argument("--preview-fps", type=float, default=PREVIEW_FPS, metavar="F",
                   help="newest frame per camera sent to the view at most F times a second (default 2)")


def configure_view(cfg, a: argparse.Namespace, stages: list[str]) -> str | None:
    """Check the view options and set the preview / control endpoints (private ipc:// beside the run's
    metrics socket). Returns the token (None without one); SystemExit with the reason otherwise."""
    if a.view_port is None:
        # said, not ignored: a view option without the view is a mistake (and NaN is no rate)
        if a.view_token_file or a.view_bind != "127.0.0.1" or a.preview_fps != PREVIEW_FPS:
            raise SystemExit("edge-run: --view-bind, --view-token-file and --preview-fps need --view-port")
        return None
    if not 0 <= a.view_port <= 65535:
        raise SystemExit(f"edge-run: --view-port {a.view_port}: a TCP port (1-65535, 0 = any free one)")
    if not (a.preview_fps > 0 and a.preview_fps <= 30):
        raise SystemExit(f"edge-run: --preview-fps {a.preview_fps}: between 0 and 30 frames/s per camera")
    if "alert" not in stages:
        raise SystemExit("edge-run: --view-port needs the alert stage in this edge-run (the view reads its preview); "
                         "run the view on the host that runs --stages ...,alert")
    token = None
    if a.view_token_file:
        try:
            token = read_token(a.view_token_file)
        except (OSError, ValueError) as e:
            raise SystemExit(f"edge-run: --view-token-file: {e}")
    if token is None and not is_loopback(a.view_bind):
        raise SystemExit(f"edge-run: --view-bind {a.view_bind} is reachable from other machines: give "
                         "--view-token-file FILE (every request then needs the token), or keep 127.0.0.1")
    folder = os.path.dirname(cfg.metrics_addr[len("ipc://"):])
    cfg.preview_addr = f"ipc://{os.path.join(folder, 'preview')}"
    cfg.preview_fps = float(a.preview_fps)
    if "preprocess" in stages:   # full frames of rejects: only a local preprocess stage has them
        cfg.full_frames_addr, cfg.full_requests_addr = full_frame_addrs(folder)
    if "capture" in stages:
        cfg.control_addr = f"ipc://{os.path.join(folder, 'control')}"
    return token


class View:
    """The running view: its context, the feed thread, the camera control and the HTTP server."""

    def __init__(self, sup, host: str, port: int, token: str | None) -> None:
        from edge.manifest import load_manifest
        from edge.rules import camera_rules
        from edge.view.cameras import CameraControl
        from edge.view.state import ViewFeed, ViewState
        cfg = sup.cfg
        self.ctx = zmq.Context()   # its own: the supervisor destroys its context from its own thread
        rules = camera_rules(load_manifest(cfg.engine, verify_checksum=False), cfg.threshold)
        self.control = CameraControl(self.ctx, cfg, rules, capture_local="capture" in sup.stages)
        self.state = ViewState(self.control.cameras, sup.merged, node=cfg.node_id or socket.gethostname(),
                               full_frames=bool(cfg.full_frames_addr))
        self.feed = ViewFeed(self.ctx, cfg.preview_addr, self.state, cfg.full_frames_addr, cfg.full_requests_addr)
        self.server = ViewServer(host, port, self.state, self.control, token)

    def start(self) -> None:
        self.server.start()    # a port in use is refused here, before any stage starts
        self.feed.start()
        log.info("operator's screen on http://%s:%d/%s", self.server.host, self.server.port,
                 "" if self.server.token is None else " (token required; camera API on)")

    def close(self) -> None:
        self.server.close()
        self.feed.close()
        self.control.close()
        self.ctx.destroy(linger=0)


def start_view(sup, a: argparse.Namespace, token: str | None) -> View | None:
    if a.view_port is None:
        return None
    view = View(sup, a.view_bind, a.view_port, token)
    try:
        view.start()
    except BaseException:
        view.close()
        raise
    return view
