"""``edge-export``: a run's model -> one ONNX inference graph, checked against torch.

The graph (any run kind: LAMP, two-head or hybrid):
* input ``images``: float32 (batch, C, H, W) in [0, 1] at the model size, batch
  dynamic. Resizing and uint8 -> [0, 1] scaling happen before the graph, on the
  edge, in ``edge.preprocess.to_model_input`` (the code the model was trained
  with); any further normalisation (the scorer's ImageNet statistics) is inside.
* outputs: the fields of the model's output NamedTuple, in order: ``score``
  (batch,) and ``anomaly_map`` (batch, 1, H, W) always first; a hybrid adds
  ``member_scores`` (batch, members; names in the report's ``member_names``).

Parity: ONNX Runtime (CPU) and torch score the same held-out images (the run's
validation good images, up to 8); every output must agree within
|onnx - torch| <= PARITY_ATOL + PARITY_RTOL * |torch|, else the export fails. The
measured differences go to ``model.onnx.json`` beside the graph.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from pathlib import Path

import numpy as np

PARITY_ATOL = 1e-3
PARITY_RTOL = 1e-3
INPUT_NAME = "images"
OPSET = 18
MAX_BATCH = 64


class ParityError(RuntimeError):
    pass


@contextlib.contextmanager
def _quiet_onnx_exporter():
    """Silence two harmless messages of torch's ONNX exporter (and nothing else) during the export.

    * torch/onnx/_internal/exporter/_registration.py logs the warning "torchvision is not installed.
      Skipping torchvision::nms" (and roi_align, roi_pool, deform_conv2d) while it builds its op
      registry: torchvision's ops are optional and never used by these models.
    * torch.utils._pytree's deprecated ``LeafSpec`` warns "`isinstance(treespec, LeafSpec)` is
      deprecated" (FutureWarning) when the exporter copies a tree spec: torch internals, not ours.
    """
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")

    def drop(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("torchvision is not installed. Skipping torchvision::")

    logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                    category=FutureWarning)
            yield
    finally:
        logger.removeFilter(drop)


def export_onnx(run_dir: Path, out: Path, parity_images: int = 8) -> dict:
    import torch

    from trainer.artifacts import sha256_file, write_json
    from trainer.runs import open_run, run_samples
    from trainer.tensors import load_images

    run = open_run(run_dir)
    model, meta = run["model"].eval(), run["meta"]
    size, channels = meta["preprocess"]["size"], meta["preprocess"]["channels"]
    val_good, _, _ = run_samples(run["split_doc"])
    images = load_images(val_good[:parity_images], size, channels) if val_good else torch.rand(2, channels, size, size)
    with torch.no_grad():
        reference = model(images)
    names = list(reference._fields)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with _quiet_onnx_exporter():
        torch.onnx.export(model, (images[:2],), tmp, input_names=[INPUT_NAME], output_names=names,
                          opset_version=OPSET, dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},),
                          verbose=False, external_data=False)  # weights inside: one file, one sha256
    import onnx
    onnx.checker.check_model(str(tmp))
    diffs = parity(tmp, images.numpy(), [t.numpy() for t in reference], names)
    tmp.replace(out)
    report = {"format_version": 1, "onnx": out.name, "onnx_sha256": sha256_file(out), "opset": OPSET,
              "input": {"name": INPUT_NAME, "shape": ["batch", channels, size, size], "dtype": "float32",
                        "range": [0, 1], "layout": "NCHW", "preprocess": meta["preprocess"],
                        "max_batch": MAX_BATCH},
              "outputs": names, "model_kind": meta["kind"], "checkpoint_sha256": run["checkpoint_sha256"],
              **({"member_names": list(model.names)} if hasattr(model, "names") else {}),
              "parity": {"images": len(images), "atol": PARITY_ATOL, "rtol": PARITY_RTOL, "max_abs_diff": diffs,
                         "runtime": "onnxruntime CPUExecutionProvider"}}
    write_json(out.with_name(out.name + ".json"), report)
    return report


def parity(onnx_path: Path, images: np.ndarray, reference: list[np.ndarray], names: list[str]) -> dict:
    import onnxruntime as ort
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(names, {INPUT_NAME: images})
    diffs = {}
    for name, a, b in zip(names, got, reference):
        if a.shape != b.shape:
            raise ParityError(f"output {name}: ONNX shape {a.shape} != torch shape {b.shape}")
        diffs[name] = float(np.abs(a - b).max())
        if not np.all(np.abs(a - b) <= PARITY_ATOL + PARITY_RTOL * np.abs(b)):
            raise ParityError(f"output {name}: ONNX Runtime differs from torch by up to {diffs[name]:.3g} "
                              f"(bound {PARITY_ATOL} + {PARITY_RTOL} x |torch|): the graph is not exported faithfully")
    return diffs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="run directory (ae, scorer or hybrid)")
    p.add_argument("--out", type=Path, required=True, help="ONNX file to write, e.g. model.onnx")
    p.add_argument("--triton", type=Path, default=None, metavar="DIR",
                   help="also write a Triton Inference Server model repository (DIR/edge_inspect/...)")
    p.add_argument("--calibration", type=Path, default=None,
                   help="calibration.json to embed in the manifest (default: RUN/calibration.json if present)")
    args = p.parse_args(argv)
    from deploy.manifest import write_manifest
    calibration = args.calibration or (args.run / "calibration.json")
    try:
        report = export_onnx(args.run, args.out)
        manifest = write_manifest(args.out, report, args.run, calibration if calibration.is_file() else None)
        if args.triton:
            from deploy.triton import write_triton_repository
            triton_config = write_triton_repository(args.out, args.triton)
    except (ParityError, ValueError, FileNotFoundError) as e:
        print(f"edge-export: error: {e}", file=sys.stderr)
        return 2
    d = report["parity"]["max_abs_diff"]
    print(f"wrote {args.out} ({report['model_kind']}; outputs {', '.join(report['outputs'])}); parity vs torch on "
          f"{report['parity']['images']} images: " + ", ".join(f"{k} {v:.2g}" for k, v in d.items()))
    if args.triton:
        print(f"Triton repository: {triton_config.parent} (config.pbtxt, 1/model.onnx)")
    print(f"manifest: {args.out}.manifest.json (model {manifest['model_version']}, calibration "
          f"{'embedded' if manifest['calibration'] else 'none: run edge-calibrate first for alert thresholds'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
