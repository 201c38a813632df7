"""A Triton Inference Server model repository for an exported model.

    DIR/<name>/config.pbtxt
    DIR/<name>/1/model.onnx
    DIR/<name>/1/model.onnx.manifest.json   (the edge manifest, for provenance)

so a plant that outgrows one box serves the same graph from a Triton cluster
(ONNX Runtime backend; Triton picks GPU instances where it has them). The
config is written from the exported graph's own input/output names and shapes.
Outputs whose only dimension is the batch (``score``) use Triton's documented
pattern for that case: ``dims: [ 1 ]`` with ``reshape: { shape: [ ] }``.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from edge.manifest import load_manifest, manifest_path

TRITON_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _dims(shape: list) -> list[int]:
    return [int(d) for d in shape[1:]]  # drop the batch dimension (max_batch_size > 0)


def config_pbtxt(name: str, input_spec: dict, outputs: dict[str, list[int]], max_batch: int) -> str:
    lines = [f'name: "{name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {max_batch}",
             "input [", "  {", f'    name: "{input_spec["name"]}"', "    data_type: TYPE_FP32",
             f"    dims: [ {', '.join(str(d) for d in _dims(input_spec['shape']))} ]", "  }", "]", "output ["]
    entries = []
    for out_name, dims in outputs.items():
        body = [f'    name: "{out_name}"', "    data_type: TYPE_FP32"]
        body += [f"    dims: [ {', '.join(map(str, dims))} ]"] if dims else ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
        entries.append("  {\n" + "\n".join(body) + "\n  }")
    lines.append(",\n".join(entries))
    lines += ["]", "dynamic_batching { }"]
    return "\n".join(lines) + "\n"


def write_triton_repository(onnx_path: Path, repository: Path, name: str = "edge_inspect") -> Path:
    """Write the model directory under ``repository``; returns the path of config.pbtxt."""
    import onnx
    if not TRITON_NAME.match(name):
        raise ValueError(f"Triton model name {name!r} may use letters, digits, '_', '.', '-' only")
    manifest = load_manifest(onnx_path)
    graph = onnx.load(str(onnx_path)).graph
    outputs = {}
    for o in graph.output:
        dims = [d.dim_value for d in o.type.tensor_type.shape.dim][1:]
        if any(d <= 0 for d in dims):
            raise ValueError(f"output {o.name} has a dynamic non-batch dimension {dims}: Triton needs fixed dims")
        outputs[o.name] = dims
    if list(outputs) != manifest["outputs"]:
        raise ValueError(f"{onnx_path} outputs {list(outputs)} differ from its manifest {manifest['outputs']}")
    model_dir = Path(repository) / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, model_dir / "1" / "model.onnx")
    shutil.copyfile(manifest_path(onnx_path), model_dir / "1" / "model.onnx.manifest.json")
    config = model_dir / "config.pbtxt"
    config.write_text(config_pbtxt(name, manifest["input"], outputs, int(manifest["input"]["max_batch"])))
    return config
