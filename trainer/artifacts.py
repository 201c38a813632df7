"""Run-directory artifacts: atomic JSON writes and file fingerprints."""
from __future__ import annotations

import json
import os
from pathlib import Path

from edge.manifest import sha256_file  # one file hash for trainer and edge

RUN_FORMAT_VERSION = 1

__all__ = ["RUN_FORMAT_VERSION", "read_json", "sha256_file", "write_json"]


def write_json(path: Path, obj) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: is {path.parent} a complete run directory?")
    return json.loads(path.read_text())
