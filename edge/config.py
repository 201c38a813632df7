"""The pipeline's settings: one plain dataclass shared by ``edge-run`` and its stage processes."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

STAGES = ("capture", "preprocess", "score", "alert")


def local_endpoints() -> dict[str, str]:
    """ipc:// endpoints in a private temporary folder, for stages that share a host."""
    # the pid in the name lets a later start remove the folder of a run that was killed (edge/leftovers.py)
    d = tempfile.mkdtemp(prefix=f"edge-run-{os.getpid()}-")
    return {name: f"ipc://{os.path.join(d, name)}" for name in ("frames", "batches", "scored", "metrics")}


@dataclass
class PipelineConfig:
    engine: str = ""
    sources: list[str] = field(default_factory=list)        # --source values, parsed by edge.sources
    rois: dict[str, list[int]] = field(default_factory=dict)  # camera -> [x, y, w, h]
    loop: bool = False
    no_drop: bool = False
    fps_limit: float | None = None
    max_batch: int | None = None          # None: the engine's
    max_queue_delay_ms: float = 5.0       # score stage: the longest a frame waits for a fuller batch (edge.batcher)
    publish: str = "all"                  # "all" verdicts or only "defects" (NotOK + NotDecidable)
    thumbnails: str = "defects"           # heatmap thumbnails on "all", "defects" or "none" alerts
    threshold: float | None = None        # overrides the manifest's calibrated threshold (explicitly)
    node_id: str = ""
    alerts_addr: str = "tcp://127.0.0.1:5560"
    frames_addr: str = ""                 # capture -> preprocess
    batches_addr: str = ""                # preprocess -> score
    scored_addr: str = ""                 # score -> alert
    metrics_addr: str = ""                # every stage -> supervisor
    frames_inline: bool = False           # pixels over the socket (stages on different hosts) vs. shared memory
    upstreams: int = 1                    # how many processes feed the first remote stage (end-of-stream count)
    wait_subscribers: int = 0             # alert stage waits for this many subscribers before frames flow
    wait_subscribers_s: float = 10.0
    ring_slots: int = 8
    stall_timeout_s: float = 5.0
    blind_repeat_s: float = 10.0          # a blind camera's NotDecidable report is repeated this often
    metrics_interval_s: float = 0.5
    parent_pid: int = 0                   # stage processes exit if this process goes away
    curve_secret: str = ""                # CURVE (docs/security.md): own secret key file; "" = --insecure
    curve_allow: str = ""                 # allow-list directory (stages that bind network sockets)
    curve_server_key: str = ""            # the receiving host's public key (stages that connect over tcp)
    is_simulated: bool = False            # alerts say so (demo runs)
    # The alert journal (edge/journal.py) and its replay endpoint (edge/replay.py); "" = the default:
    # edge.journal.default_journal_path(node, alerts_addr), edge.replay.default_replay_addr(alerts_addr)
    journal_path: str = ""
    journal_max_alerts: int = 100_000
    journal_max_age_s: float = 7 * 86400.0
    journal_max_bytes: int = 1 << 30
    replay_addr: str = ""
    # The operator's screen (edge-run --view-port, edge/view): the alert stage's rate-limited preview PUB and the
    # camera API's channel to the capture stage, both private ipc:// endpoints; "" = off
    preview_addr: str = ""
    preview_fps: float = 2.0              # preview frames per camera per second
    # the preprocess stage's full frames of rejects for the view (edge/view/full_frames.py): records out, requests in
    full_frames_addr: str = ""
    full_requests_addr: str = ""
    control_addr: str = ""
