"""What a pipeline leaves on the host, and removing what dead pipelines left.

``edge-run`` creates two kinds of host objects: frame rings in /dev/shm
(``edge-inspect-<capture pid>-<camera>-<ns>``, edge/frame_ring.py) and a private folder for
its ipc:// sockets (``$TMPDIR/edge-run-<supervisor pid>-<random>``, edge/config.py). A clean run
removes both. A SIGKILL of the whole process group (an OOM kill, ``systemctl kill``) removes
nothing, and a restarted capture stage leaves the dead incarnation's rings; so every start
removes those whose owner process no longer exists. A pid that is alive is left alone, even if
it is a stranger that reuses the number: a leak is better than deleting a live ring.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from edge.frame_ring import PREFIX, SHM_DIR

log = logging.getLogger("edge")
IPC_PREFIX = "edge-run-"
_RING = re.compile(rf"^{re.escape(PREFIX)}(\d+)-")
_IPC = re.compile(rf"^{re.escape(IPC_PREFIX)}(\d+)-")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, another user's
        return True
    return True


def remove_dead_owners(shm_dir: Path = SHM_DIR, tmp_dir: Path | None = None) -> tuple[int, int]:
    """Remove frame rings and ipc folders whose owner pid is gone; (rings, folders) removed."""
    tmp_dir = Path(tmp_dir or tempfile.gettempdir())
    rings = folders = 0
    for pattern, where in ((_RING, shm_dir), (_IPC, tmp_dir)):
        try:
            entries = list(where.iterdir())
        except OSError:
            continue
        for p in entries:
            m = pattern.match(p.name)
            if not m or pid_alive(int(m.group(1))):
                continue
            try:
                if p.is_dir():
                    shutil.rmtree(p)
                    folders += 1
                else:
                    p.unlink()
                    rings += 1
            except OSError as e:   # another user's, or already gone: not ours to force
                log.debug("cannot remove %s: %s", p, e)
    if rings or folders:
        log.warning("removed what dead pipelines left behind: %d frame ring(s) in %s, %d ipc folder(s) in %s",
                    rings, shm_dir, folders, tmp_dir)
    return rings, folders


def remove_ipc_dir(endpoint: str) -> None:
    """Remove the private folder of an ipc:// endpoint made by edge.config.local_endpoints."""
    if not endpoint.startswith("ipc://"):
        return
    folder = Path(endpoint[len("ipc://"):]).parent
    if folder.name.startswith(f"{IPC_PREFIX}{os.getpid()}-"):
        shutil.rmtree(folder, ignore_errors=True)
