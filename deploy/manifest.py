"""Write the manifest the edge reads (edge/manifest.py), beside an exported engine."""
from __future__ import annotations

import datetime
from pathlib import Path

from edge.manifest import MANIFEST_FORMAT_VERSION, MANIFEST_KIND, manifest_path, sha256_file
from trainer.artifacts import read_json, write_json

OUTPUT_MEANING = {
    "score": "image anomaly score (raw, the run's units); compare with calibration threshold",
    "anomaly_map": "pixel heatmap (batch, 1, H, W) at model resolution; regions above the pixel threshold",
    "familiarity": "hybrid: two-head score in robust standard deviations of good parts",
    "novelty": "hybrid: LAMP reconstruction score in robust standard deviations of good parts",
}


def write_manifest(engine: Path, export_report: dict, run_dir: Path, calibration: Path | None,
                   engine_format: str = "onnx", onnx_file: Path | None = None, build: dict | None = None) -> dict:
    engine = Path(engine)
    cal = read_json(calibration) if calibration else None
    if cal is not None and cal["model"]["checkpoint_sha256"] != export_report["checkpoint_sha256"]:
        raise ValueError(f"{calibration} was fitted for another checkpoint: calibrate this run first")
    onnx_file = Path(onnx_file or engine)
    doc = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "kind": MANIFEST_KIND,
        "model_version": f"{Path(run_dir).resolve().name}-{export_report['checkpoint_sha256'][:12]}",
        "model_kind": export_report["model_kind"],
        "checkpoint_sha256": export_report["checkpoint_sha256"],
        "engine": {"file": engine.name, "format": engine_format, "sha256": sha256_file(engine), **(build or {})},
        "onnx": {"file": onnx_file.name, "sha256": sha256_file(onnx_file), "opset": export_report["opset"]},
        "input": export_report["input"],
        "outputs": export_report["outputs"],
        "output_meaning": {n: OUTPUT_MEANING.get(n, "") for n in export_report["outputs"]},
        "parity": export_report["parity"],
        "calibration": cal,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(manifest_path(engine), doc)
    return doc
