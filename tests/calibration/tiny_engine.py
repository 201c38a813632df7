"""A tiny real ONNX engine, made without torch in milliseconds, with its manifest beside it.

score = mean pixel brightness (x gain), anomaly_map = the image: brightening every
image (a lighting change) raises every good score, which is what the recalibration
test needs; ``nan=True`` makes an engine whose scores are NaN.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge.manifest import MANIFEST_FORMAT_VERSION, MANIFEST_KIND, manifest_path, sha256_file

SIZE = 16


def write_tiny_engine(path: Path, gain: float = 1.0, nan: bool = False, size: int = SIZE,
                      calibration: dict | None = None, checkpoint: str = "c" * 64) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, size, size])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])
    amap = helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", 1, size, size])
    k = numpy_helper.from_array(np.array(np.nan if nan else gain, np.float32), "gain")
    nodes = [helper.make_node("ReduceMean", ["images"], ["mean"], name="mean", axes=[1, 2, 3], keepdims=0),
             helper.make_node("Mul", ["mean", "gain"], ["score"], name="gain"),
             helper.make_node("Identity", ["images"], ["anomaly_map"], name="map")]
    graph = helper.make_graph(nodes, "tiny", [x], [score, amap], initializer=[k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    manifest = {
        "format_version": MANIFEST_FORMAT_VERSION, "kind": MANIFEST_KIND,
        "model_version": f"tiny-{gain:g}", "model_kind": "tiny_brightness", "checkpoint_sha256": checkpoint,
        "input": {"name": "images", "shape": ["batch", 1, size, size], "dtype": "float32", "range": [0, 1],
                  "layout": "NCHW", "max_batch": 8,
                  "preprocess": {"size": size, "channels": 1, "color_order": "GRAY"}},
        "outputs": ["score", "anomaly_map"], "output_meaning": {}, "parity": None, "calibration": calibration,
        "engine": {"file": path.name, "format": "onnx", "sha256": sha256_file(path)},
        "onnx": {"file": path.name, "sha256": sha256_file(path), "opset": 13},
    }
    manifest_path(path).write_text(json.dumps(manifest))
    return path
