"""Keep freed message buffers for reuse instead of handing them back to the kernel.

libzmq allocates every received message with malloc: a 1080p frame is 6.2 MB, a scored batch
a few MB. glibc serves allocations above its mmap threshold with a fresh mmap and unmaps them on
free, and trims the heap top back to the kernel past its trim threshold. Its dynamic thresholds
usually adapt, but with libzmq's I/O thread allocating (its own arena) while the stage frees, and a
queue of frames in flight, they often do not: a received frame then lands on pages never touched
before, a page fault and a zeroed page each (6 MB = 1,536 pages), about as much work again as
copying the frame. Measured on the project's 2-core machine (loaded, load average ~4), 1920x1080x3
frames inline over TCP loopback, 6 interleaved rounds: 186 frames/s with glibc's defaults (0 to 523
page faults per frame, erratic) and 237 frames/s with these thresholds (4 to 15).

Called once at the start of a stage process. Costs memory: up to ``TRIM_THRESHOLD`` of freed
buffers stay with the process after a burst (bounded: every queue has a high-water mark).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("edge")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20     # glibc's largest allowed value on 64-bit: a 4K RGB frame (25 MB) fits under it
TRIM_THRESHOLD = 256 << 20


def keep_freed_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds (mallopt); False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False   # musl, macOS: their allocators decide for themselves
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        log.debug("mallopt refused the buffer thresholds; freed buffers go back to the kernel")
    return ok
