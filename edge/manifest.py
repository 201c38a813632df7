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

from edge.rules import RulesError, check_calibration

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
    try:   # a NaN or missing threshold is refused here, at start, not found by the alert stage per frame
        check_calibration(doc.get("calibration"), f"{path.name}")
    except RulesError as e:
        raise ManifestError(str(e)) from e
    return doc


def rebuild_command(manifest: dict) -> str:
    """The ``edge-build`` command line that rebuilds this manifest's TensorRT engine on this machine."""
    build = manifest["engine"].get("build") or {}
    cmd = (f"edge-build --onnx {manifest.get('onnx', {}).get('file', 'model.onnx')} "
           f"--out {manifest['engine']['file']} --precision {build.get('precision', 'fp32')}")
    if build.get("max_batch"):
        cmd += f" --max-batch {build['max_batch']}"
    if build.get("precision") == "int8":
        cmd += " --calibration calibration.json"   # the INT8 set int8_calibration.npz lies beside it
    if build.get("dla_core") is not None:
        cmd += f" --dla-core {build['dla_core']}"
    return cmd


def check_tensorrt_build(manifest: dict, tensorrt_version: str, compute_capability: str) -> None:
    """Refuse a TensorRT engine built by another TensorRT version or for another GPU architecture.

    A serialized TensorRT engine runs only with the exact TensorRT version that built it, on
    the GPU architecture (compute capability) it was built for; deserializing it elsewhere
    fails or, worse, half-works. The fix is always the same: rebuild on this machine from the
    ONNX that sits beside the engine. ``compute_capability`` is "major.minor", e.g. "8.7".
    """
    engine = manifest.get("engine", {})
    build = engine.get("build")
    if engine.get("format") != "tensorrt" or not isinstance(build, dict):
        raise ManifestError(f"the manifest of {engine.get('file')} describes no TensorRT build: "
                            f"build the engine with `edge-build --onnx model.onnx --out {engine.get('file')}`")
    problems = []
    if build.get("tensorrt_version") != tensorrt_version:
        problems.append(f"it was built with TensorRT {build.get('tensorrt_version')}, this machine has "
                        f"TensorRT {tensorrt_version}")
    if build.get("compute_capability") != compute_capability:
        problems.append(f"it was built for compute capability {build.get('compute_capability')} "
                        f"({build.get('gpu', 'unknown GPU')}), this GPU has {compute_capability}")
    if problems:
        raise ManifestError(f"TensorRT engine {engine.get('file')} cannot run here: {'; '.join(problems)}. "
                            f"Rebuild it on this machine from the ONNX beside it: `{rebuild_command(manifest)}`")
