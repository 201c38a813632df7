"""The model manifest: everything the edge must know about an engine, beside it.

``<engine>.manifest.json`` (e.g. ``model.onnx.manifest.json``) is written by
deploy and read here; docs/manifest.md documents it. The edge refuses an
engine whose checksum, format or (for TensorRT) build does not match, with a
message that says how to rebuild. numpy-free, torch-free: runs on the line.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST_FORMAT_VERSION = 1
MANIFEST_KIND = "edge-inspect/manifest"


class ManifestError(ValueError):
    """A missing, unreadable, tampered or mismatched manifest or engine."""


def manifest_path(engine: Path) -> Path:
    return Path(str(engine) + ".manifest.json")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(engine: Path, verify_checksum: bool = True) -> dict:
    engine = Path(engine)
    path = manifest_path(engine)
    if not engine.is_file():
        raise ManifestError(f"engine {engine} does not exist")
    if not path.is_file():
        raise ManifestError(f"{engine} has no manifest ({path.name} missing): export it again with edge-export "
                            f"(and edge-build for a TensorRT engine), which write the manifest beside it")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path} is not readable JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("kind") != MANIFEST_KIND:
        raise ManifestError(f"{path} is not an edge-inspect manifest")
    if doc.get("format_version") != MANIFEST_FORMAT_VERSION:
        raise ManifestError(f"{path} has manifest format {doc.get('format_version')}; this edge reads "
                            f"{MANIFEST_FORMAT_VERSION}: re-export the model with a matching edge-inspect")
    for key in ("engine", "input", "outputs", "model_version"):
        if key not in doc:
            raise ManifestError(f"{path} lacks '{key}': re-export the model")
    if doc["engine"].get("file") != engine.name:
        raise ManifestError(f"{path} describes {doc['engine'].get('file')!r}, not {engine.name!r}")
    if verify_checksum and sha256_file(engine) != doc["engine"].get("sha256"):
        raise ManifestError(f"{engine} does not match its manifest (sha256 differs): the file was changed or "
                            f"truncated; copy it again or rebuild it with edge-export / edge-build")
    return doc
