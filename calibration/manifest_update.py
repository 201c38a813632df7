"""Recalibration at the line: replace one camera's entry in an engine's manifest, keep history.

``edge-calibrate --engine model.plan --camera side --good DIR --update model.plan.manifest.json``
fits the camera on that engine and writes the new entry into the manifest the edge reads:
* the entry must have been fitted on the manifest's own engine (same sha256) and the same checkpoint;
* the entry it replaces goes to ``calibration.history`` with when, by whom on which host, from how
  many images, and the old and new thresholds (so a site can see how its lighting drifted);
* only ``calibration`` changes: the engine and its sha256 are untouched, so the manifest's
  checksums stay valid (``load_manifest`` with checksum verification is run on the result);
* the write is atomic (temporary file + rename): a running edge-run never reads half a manifest.
A running edge-run keeps the rules it started with; it applies the new ones when restarted
(``systemctl restart``, or stop and start edge-run): rules are read once at start, where they are
checked (edge/rules.py, edge/calibration_provenance.py).
"""
from __future__ import annotations

import datetime
import getpass
import socket
from pathlib import Path

from edge.manifest import ManifestError, load_manifest, manifest_path
from edge.rules import check_calibration
from trainer.artifacts import write_json

HISTORY_KEEP = 100   # the newest replaced entries kept in the manifest


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):   # no passwd entry (containers): the host still says where
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def history_record(camera: str, old: dict | None, new: dict) -> dict:
    def summary(e):
        if not e:
            return None
        return {"threshold": e["image"]["threshold"], "n_good": e["image"]["n_good"],
                "target_far": e["image"]["target_far"], "fitted_utc": e.get("fitted_utc"),
                "engine_sha256": (e.get("engine") or {}).get("sha256")}
    return {"camera": camera, "replaced_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "by": _who(), "old": summary(old), "new": summary(new), "old_entry": old}


def update_manifest(engine: Path, camera: str, entry: dict, model: dict, path: Path | None = None) -> dict:
    """Write ``entry`` as ``camera``'s calibration into ``engine``'s manifest; return the new manifest."""
    engine = Path(engine)
    expected = manifest_path(engine)
    if path is not None and Path(path).resolve() != expected.resolve():
        raise ValueError(f"--update {path} is not the manifest of --engine {engine} ({expected.name}): "
                         f"recalibrate the engine whose manifest you update")
    manifest = load_manifest(engine)   # verifies the engine's checksum: we calibrated these bytes
    if entry.get("engine", {}).get("sha256") != manifest["engine"]["sha256"]:
        raise ManifestError(f"the new calibration of camera {camera!r} was fitted on another engine than "
                            f"{engine.name}: calibrate with --engine {engine}")
    if model["checkpoint_sha256"] != manifest["checkpoint_sha256"]:
        raise ManifestError(f"{expected.name} describes another checkpoint than the engine just scored")
    cal = manifest.get("calibration") or {"format_version": 1, "kind": "edge-inspect/calibration",
                                          "model": model, "cameras": {}}
    old = cal["cameras"].get(camera)
    cal.setdefault("history", []).append(history_record(camera, old, entry))
    cal["history"] = cal["history"][-HISTORY_KEEP:]
    cal["cameras"][camera] = entry
    check_calibration(cal, expected.name)
    manifest["calibration"] = cal
    write_json(expected, manifest)
    return load_manifest(engine)   # what the edge will read, checksums verified
