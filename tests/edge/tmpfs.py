"""A small tmpfs of its own for tests that need a disk that fills up (chaos tests of the journal).

Mounting needs root (CAP_SYS_ADMIN); where it is refused the test is skipped with the reason."""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(where: Path, size_kib: int):
    """Mount a tmpfs of ``size_kib`` KiB at ``where`` (created) for the duration of the block."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a tmpfs that fills up needs root to mount")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill_disk(where: Path, name: str = "ballast") -> Path:
    """Write zeros into ``where`` until the file system refuses (ENOSPC); returns the ballast file."""
    ballast = where / name
    chunk = b"\0" * 4096
    with open(ballast, "ab", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
    return ballast
