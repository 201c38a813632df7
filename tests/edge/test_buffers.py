"""edge/buffers.py: with the thresholds raised, a big buffer freed and allocated again reuses memory
instead of faulting in fresh pages (what a stage receiving 6 MB frames does per frame)."""
import subprocess
import sys

import pytest

PROBE = r"""
import queue, resource, sys, threading
import numpy as np
from edge.buffers import keep_freed_buffers
if sys.argv[1] == "keep":
    assert keep_freed_buffers()
# As libzmq does with received messages: its I/O thread allocates each 6 MB frame (its own malloc
# arena), up to a high-water mark of them wait in the queue, the stage's thread frees them.
frames = queue.Queue(maxsize=16)
def receive(n):
    for i in range(n):
        a = np.empty(6 << 20, np.uint8)
        a[::4096] = 1
        frames.put(a)
def churn(n):
    t = threading.Thread(target=receive, args=(n,))
    t.start()
    for _ in range(n):
        frames.get()
    t.join()
churn(40)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn(100)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 100)
"""


def faults_per_buffer(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt thresholds are glibc's")
def test_kept_buffers_are_reused_without_page_faults():
    kept = faults_per_buffer("keep")
    assert kept < 50, kept   # 6 MB = 1,536 pages: none of them fresh


def test_keep_freed_buffers_says_whether_it_applied():
    import ctypes.util

    from edge.buffers import keep_freed_buffers
    glibc = sys.platform.startswith("linux") and "musl" not in (ctypes.util.find_library("c") or "")
    assert keep_freed_buffers() is True if glibc else keep_freed_buffers() in (True, False)
