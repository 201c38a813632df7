"""A shared-memory ring of frame slots: full-size pixels cross a process boundary once, by memcpy.

Between stages on one host, ZeroMQ carries only the frame header (slot, generation);
the pixels sit in a file under /dev/shm mapped by both processes. Measured on the
project's 2-core machine, a 1080p frame crosses TCP loopback ~500 times/s but is
copied ~6,000 times/s (docs/benchmarks.md), so this is where transport time goes.

One writer (a camera's capture thread), readers in other processes. Layout:

    int64 gen[slots]       even = settled, odd = being written; bumped by 2 per frame
    int64 released[slots]  the generation a reader finished with (frees the slot)
    uint8 data[slots][slot_bytes]

Drop-oldest (live cameras): the writer takes slots round robin and overwrites the
oldest one even if unread; the writer counts that as a drop (it knows: released <
gen). A reader checks the generation before and after it reads (a seqlock), so a
frame overwritten while it was being read is discarded, never half-used.
No-drop (file sources): the writer waits until the reader released the slot.

Aligned int64 stores are atomic on x86-64 and aarch64; the ZeroMQ send/receive
between write and read orders the pixel stores before the reader's loads.
"""
from __future__ import annotations

import mmap
import os
import tempfile
import time
from pathlib import Path

import numpy as np

SHM_DIR = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
PREFIX = "edge-inspect-"


class RingError(RuntimeError):
    pass


class FrameRing:
    def __init__(self, path: Path, slots: int, slot_bytes: int, mm: mmap.mmap, owner: bool) -> None:
        self.path, self.slots, self.slot_bytes, self._mm, self.owner = Path(path), slots, slot_bytes, mm, owner
        self.gen = np.frombuffer(mm, dtype=np.int64, count=slots, offset=16)
        self.released = np.frombuffer(mm, dtype=np.int64, count=slots, offset=16 + 8 * slots)
        self._data_offset = 16 + 16 * slots
        self._next = 0

    # -- creation ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, tag: str, slots: int, slot_bytes: int) -> FrameRing:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in tag)
        path = SHM_DIR / f"{PREFIX}{os.getpid()}-{safe}-{time.monotonic_ns()}"
        size = 16 + 16 * slots + slots * slot_bytes
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        np.frombuffer(mm, dtype=np.int64, count=2)[:] = (slots, slot_bytes)
        return cls(path, slots, slot_bytes, mm, owner=True)

    @classmethod
    def attach(cls, path: str | Path) -> FrameRing:
        path = Path(path)
        if path.parent != SHM_DIR or not path.name.startswith(PREFIX):
            raise RingError(f"{path} is not an edge-inspect frame ring")
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as e:
            raise RingError(f"frame ring {path} cannot be opened (capture restarted?): {e}") from e
        try:
            size = os.fstat(fd).st_size
            if size < 16:
                raise RingError(f"frame ring {path} is truncated")
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        slots, slot_bytes = (int(n) for n in np.frombuffer(mm, dtype=np.int64, count=2))
        if slots <= 0 or slot_bytes <= 0 or 16 + 16 * slots + slots * slot_bytes != size:
            mm.close()
            raise RingError(f"frame ring {path} has an inconsistent layout")
        return cls(path, slots, slot_bytes, mm, owner=False)

    def _slot(self, slot: int, nbytes: int) -> np.ndarray:
        start = self._data_offset + slot * self.slot_bytes
        return np.frombuffer(self._mm, dtype=np.uint8, count=nbytes, offset=start)

    # -- writer -----------------------------------------------------------------------------------
    def write(self, frame: np.ndarray, wait_free: bool, should_stop=lambda: False) -> tuple[int, int, bool] | None:
        """Copy ``frame`` into the next slot: (slot, generation, overwrote_unread).
        With ``wait_free`` block until the reader released the slot (None if told to stop)."""
        if frame.nbytes > self.slot_bytes:
            raise RingError(f"frame of {frame.nbytes} bytes does not fit a {self.slot_bytes}-byte slot")
        slot = self._next
        self._next = (slot + 1) % self.slots
        settled = int(self.gen[slot])
        if wait_free:
            while int(self.released[slot]) < settled:
                if should_stop():
                    return None
                time.sleep(0.0005)
        unread = int(self.released[slot]) < settled
        self.gen[slot] = settled + 1           # odd: a reader now sees "being written"
        self._slot(slot, frame.nbytes)[:] = np.ascontiguousarray(frame).reshape(-1)
        self.gen[slot] = settled + 2
        return slot, settled + 2, unread

    # -- reader -----------------------------------------------------------------------------------
    def view(self, slot: int, gen: int, shape, dtype=np.uint8) -> np.ndarray | None:
        """A read-only view of a slot's frame, or None if it was already overwritten. The caller
        must call ``still_valid`` after using it, and ``release`` when done."""
        if not (0 <= slot < self.slots) or gen % 2:
            raise RingError(f"slot {slot} / generation {gen} is not in this ring")
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if nbytes > self.slot_bytes:
            raise RingError(f"frame {tuple(shape)} does not fit a {self.slot_bytes}-byte slot")
        if int(self.gen[slot]) != gen:
            return None
        v = self._slot(slot, nbytes).view(dtype).reshape(shape)
        v.flags.writeable = False
        return v

    def still_valid(self, slot: int, gen: int) -> bool:
        return int(self.gen[slot]) == gen

    def release(self, slot: int, gen: int) -> None:
        if int(self.released[slot]) < gen:
            self.released[slot] = gen

    def close(self) -> None:
        # numpy views keep the mmap exported; drop them before closing.
        self.gen = self.released = None
        try:
            self._mm.close()
        except BufferError:
            pass  # a caller still holds a view; the mapping goes when it does
        if self.owner:
            self.path.unlink(missing_ok=True)


def remove_stale_rings(pid: int) -> int:
    """Remove the rings a (dead) capture process left behind; returns how many."""
    n = 0
    for p in SHM_DIR.glob(f"{PREFIX}{pid}-*"):
        p.unlink(missing_ok=True)
        n += 1
    return n
