"""Write the manifest the edge reads (edge/manifest.py), beside an exported engine.

Two writers, one document (docs/manifest.md):
* ``write_manifest``: beside the ONNX graph, from the export report and the run (edge-export);
* ``write_derived_manifest``: beside an engine built from that graph (edge-build), derived from
  the ONNX's own manifest, so building needs only ``model.onnx`` + ``model.onnx.manifest.json``,
  not the run directory.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path

from edge.manifest import MANIFEST_FORMAT_VERSION, MANIFEST_KIND, load_manifest, manifest_path, sha256_file
from trainer.artifacts import read_json, write_json

OUTPUT_MEANING = {
    "score": "image anomaly score (raw, the run's units); compare with calibration threshold",
    "anomaly_map": "pixel heatmap (batch, 1, H, W) at model resolution; regions above the pixel threshold",
    "member_scores": "hybrid: (batch, members) each member's score in robust standard deviations of good parts",
}
# What describes the model (not the engine file): carried unchanged from the ONNX manifest to an engine's.
MODEL_KEYS = ("model_version", "model_kind", "checkpoint_sha256", "input", "outputs", "output_meaning", "parity",
              "calibration")


def read_calibration(calibration: Path | None, checkpoint_sha256: str) -> dict | None:
    cal = read_json(calibration) if calibration else None
    if cal is not None and cal["model"]["checkpoint_sha256"] != checkpoint_sha256:
        raise ValueError(f"{calibration} was fitted for another checkpoint: calibrate this run first")
    return cal


def check_fitted_on(calibration: dict | None, graph: Path, where: Path | None) -> None:
    """Refuse to embed a calibration whose entries were fitted on another graph than ``graph``
    (edge-export): the thresholds would hold for someone else's scores. Entries that record no
    engine (older calibrations) pass; edge-run warns about them at start."""
    sha = sha256_file(graph)
    for camera, entry in ((calibration or {}).get("cameras") or {}).items():
        fitted = (entry.get("engine") or {}).get("sha256")
        if fitted and fitted != sha:
            raise ValueError(f"{where}: camera {camera!r} was fitted on {entry['engine'].get('file')} (sha256 "
                             f"{fitted[:12]}), not on {graph.name} (sha256 {sha[:12]}): calibrate this graph: "
                             f"edge-calibrate --engine {graph} --good DIR --camera '{camera}' --update "
                             f"{graph}.manifest.json (or --run RUN --engine {graph})")


def mark_not_rechecked(calibration: dict | None, precision: str) -> dict | None:
    """Entries carried to a reduced-precision engine without re-fitting say so (edge-run warns)."""
    if calibration is None or precision == "fp32":
        return calibration
    cal = json.loads(json.dumps(calibration))
    for entry in cal["cameras"].values():
        fitted = (entry.get("engine") or {}).get("precision", "fp32")
        entry["engine_check"] = {"status": f"calibrated on {fitted}, not re-checked on this {precision} engine",
                                 "engine_precision": precision}
    return cal


def _write(engine: Path, model: dict, engine_format: str, onnx: dict, build: dict | None) -> dict:
    engine = Path(engine)
    doc = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "kind": MANIFEST_KIND,
        **{k: model[k] for k in MODEL_KEYS},
        "engine": {"file": engine.name, "format": engine_format, "sha256": sha256_file(engine),
                   **({"build": build} if build is not None else {})},
        "onnx": onnx,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(manifest_path(engine), doc)
    return doc


def write_manifest(engine: Path, export_report: dict, run_dir: Path, calibration: Path | None,
                   engine_format: str = "onnx", onnx_file: Path | None = None, build: dict | None = None) -> dict:
    """The manifest of a freshly exported graph (edge-export)."""
    onnx_file = Path(onnx_file or engine)
    model = {
        "model_version": f"{Path(run_dir).resolve().name}-{export_report['checkpoint_sha256'][:12]}",
        "model_kind": export_report["model_kind"],
        "checkpoint_sha256": export_report["checkpoint_sha256"],
        "input": export_report["input"],
        "outputs": export_report["outputs"],
        "output_meaning": {n: OUTPUT_MEANING.get(n, "") + (
            f"; members in order: {', '.join(export_report['member_names'])}"
            if n == "member_scores" and export_report.get("member_names") else "") for n in export_report["outputs"]},
        "parity": export_report["parity"],
        "calibration": read_calibration(calibration, export_report["checkpoint_sha256"]),
    }
    check_fitted_on(model["calibration"], onnx_file, calibration)
    onnx = {"file": onnx_file.name, "sha256": sha256_file(onnx_file), "opset": export_report["opset"]}
    return _write(engine, model, engine_format, onnx, build)


def write_derived_manifest(engine: Path, onnx_file: Path, engine_format: str, build: dict,
                           max_batch: int | None = None, calibration: Path | None = None) -> dict:
    """The manifest of an engine built from ``onnx_file``, derived from that graph's own manifest.

    Model, input, outputs and calibration come from ``<onnx_file>.manifest.json`` (its checksum
    is verified); ``max_batch`` replaces the input's batch limit with the engine's (its
    optimisation profile), and ``calibration`` (a calibration.json for the same checkpoint),
    when given, replaces the embedded calibration.
    """
    source = load_manifest(Path(onnx_file))
    model = {k: source[k] for k in MODEL_KEYS}
    if max_batch is not None:
        model["input"] = {**source["input"], "max_batch": int(max_batch)}
    if calibration is not None:
        model["calibration"] = read_calibration(calibration, source["checkpoint_sha256"])
    model["calibration"] = mark_not_rechecked(model["calibration"], build.get("precision", "fp32"))
    return _write(engine, model, engine_format, dict(source["onnx"]), build)
