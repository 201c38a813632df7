"""Calibration on the engine that ships: fp32 ONNX vs its fp16 conversion, and what edge-calibrate --engine costs.

    .venv/bin/python bench/calibration_engines.py --elpv ../shared/data/elpv --count 300

On the bundled model (edge/bundled/model.onnx) and the first COUNT good ELPV cells (label 0, file
order): times ``calibrate_engine`` (what ``edge-calibrate --engine`` runs: read, preprocess, ONNX
Runtime, fit) on the fp32 graph, converts the graph to fp16 with edge-build's converter
(deploy.build.convert_to_fp16: I/O and score nodes fp32) and scores the same cells with it
through the same backend, then reports the score shift and what it does to the verdicts at the
fp32-fitted threshold. The bundled model was trained on ELPV cells outside the demo sample, so
most of these cells are training cells: the shift is a property of the engine (the same images,
two precisions), not a held-out false-alarm rate. Writes docs/bench/calibration_engines.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--elpv", type=Path, required=True)
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--engine", type=Path, default=ROOT / "edge" / "bundled" / "model.onnx")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "calibration_engines.json")
    a = p.parse_args(argv)
    import onnx

    from calibration.calibrate import calibrate_engine
    from calibration.engine_scores import EngineScorer
    from calibration.images import model_pixels
    from deploy.build import convert_to_fp16
    from deploy.manifest import write_derived_manifest
    from edge.manifest import sha256_file
    from trainer.data import load_dataset
    good = [s for s in load_dataset(a.elpv, "elpv").samples if s.label == 0][:a.count]
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        doc = calibrate_engine(a.engine, good, 0.05, plots=False, out=Path(tmp) / "calibration.json")
        calibrate_s = time.perf_counter() - t0
        threshold = doc["cameras"]["*"]["image"]["threshold"]
        fp32 = EngineScorer(a.engine)
        pixels = model_pixels(good, fp32.size, fp32.channels)
        s32 = fp32.score(pixels).scores
        fp16_path = Path(tmp) / "model.fp16.onnx"
        onnx.save(convert_to_fp16(onnx.load(str(a.engine))), str(fp16_path))
        write_derived_manifest(fp16_path, a.engine, "onnx", {"precision": "fp16", "onnx": {
            "file": fp16_path.name, "sha256": sha256_file(fp16_path)}})
        s16 = EngineScorer(fp16_path).score(pixels).scores
    d = s16 - s32
    result = {
        "engine": a.engine.name, "images": len(good), "target_far": 0.05,
        "calibrate_engine_s": round(calibrate_s, 1), "load_avg_1_5_15_at_start": [round(x, 2) for x in load],
        "cpu_cores": os.cpu_count(), "fp32_threshold": threshold,
        "fp32_good_score_spread_iqr": float(np.subtract(*np.percentile(s32, [75, 25]))),
        "fp16_minus_fp32": {"median": float(np.median(d)), "mean_abs": float(np.mean(np.abs(d))),
                            "max_abs": float(np.max(np.abs(d)))},
        "flagged_at_fp32_threshold": {"fp32": float(np.mean(s32 > threshold)), "fp16": float(np.mean(s16 > threshold))},
        "verdicts_flipped": int(np.sum((s32 > threshold) != (s16 > threshold))),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
