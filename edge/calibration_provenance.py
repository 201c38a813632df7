"""Was each camera's threshold fitted on the engine that runs? Checked by edge-run at start.

Each calibration entry records the engine its scores came from (file, sha256, precision;
calibration/engine_scores.py). Against the engine in the manifest:
* the same engine (sha256 equal): fitted on the scores the line computes; nothing to say;
* the ONNX graph this engine was built from: a TensorRT engine derived from the calibrated
  graph. Reduced precision (fp16, int8) shifts scores, so the promise is unverified: a loud
  warning, with the command that re-calibrates on this engine;
* another engine altogether (another model export, another build): refused, with that command;
* no record (calibrated before engines were recorded, on the torch checkpoint's scores):
  a warning with that command.
numpy-free: runs on the line.
"""
from __future__ import annotations

from edge.rules import RulesError


def recalibrate_command(manifest: dict, camera: str, entry: dict) -> str:
    """The edge-calibrate line that fits ``camera`` on this manifest's engine, in place."""
    engine = manifest["engine"]["file"]
    far = (entry.get("image") or {}).get("target_far", 0.05)
    return (f"edge-calibrate --engine {engine} --good GOOD_IMAGES_DIR --camera '{camera}' --target-far {far:g} "
            f"--update {engine}.manifest.json")


def built_from(manifest: dict) -> set[str]:
    """sha256 of the ONNX graph(s) this engine was built from (the exported one, the precision one)."""
    build = manifest["engine"].get("build") or {}
    shas = {(manifest.get("onnx") or {}).get("sha256"), (build.get("onnx") or {}).get("sha256")}
    return {s for s in shas if s}


def check_calibrated_engine(manifest: dict) -> list[str]:
    """Warnings to log loudly at start; RulesError for a calibration fitted on another engine."""
    cameras = (manifest.get("calibration") or {}).get("cameras") or {}
    engine = manifest["engine"]
    precision = (engine.get("build") or {}).get("precision", "fp32")
    warnings, refused = [], []
    for camera, entry in cameras.items():
        fitted = entry.get("engine")
        fix = recalibrate_command(manifest, camera, entry)
        if not isinstance(fitted, dict) or not fitted.get("sha256"):
            warnings.append(f"camera {camera!r}: its calibration records no engine (fitted on the training "
                            f"checkpoint's scores, not on {engine['file']}'s): the false-alarm promise is not "
                            f"checked for this engine; re-calibrate: {fix}")
        elif fitted["sha256"] == engine.get("sha256"):
            continue
        elif fitted["sha256"] in built_from(manifest):
            note = (entry.get("engine_check") or {}).get("status", "not re-checked")
            warnings.append(f"camera {camera!r}: calibrated on {fitted.get('precision', 'fp32')} graph "
                            f"{fitted.get('file')}, this engine {engine['file']} runs {precision} ({note}): "
                            f"reduced precision shifts scores and the false-alarm rate is unverified; "
                            f"re-calibrate on this engine: {fix}")
        else:
            refused.append(f"camera {camera!r} was fitted on {fitted.get('file')} (sha256 {fitted['sha256'][:12]}), "
                           f"not on {engine['file']} (sha256 {str(engine.get('sha256'))[:12]}) nor on the graph it "
                           f"was built from; re-calibrate: {fix}")
    if refused:
        raise RulesError("the manifest's calibration was fitted on another engine: " + "; ".join(refused))
    return warnings
