"""``edge-build``: an exported ONNX graph -> a TensorRT engine (``model.plan``) + its manifest.

Run it on the machine that will run the engine (or one with the same GPU and TensorRT): a
TensorRT engine runs only with the TensorRT version that built it, on the GPU architecture
it was built for. The edge refuses any other and prints this command to rebuild.

Precision lives in the ONNX graph, and the network is built strongly typed
(TensorRT's BuilderFlag.FP16/INT8 are deprecated since 10.12 and removed in 11.0):
  fp32  the exported graph as it is;
  fp16  the graph converted to FP16, inputs, outputs and the score computation kept FP32
        (needs `pip install onnxconverter-common`), written as MODEL.fp16.onnx beside the plan;
  int8  explicit Q/DQ nodes inserted by NVIDIA ModelOpt from the INT8 calibration set
        (needs `pip install "nvidia-modelopt[onnx]"` and `edge-calibrate --int8 512` first),
        written as MODEL.int8.onnx beside the plan.
The same path works on TensorRT 10 and 11.

Examples:
  # datacenter GPU (e.g. A100/H100/L4), FP16, batches up to 16, timing cache kept for rebuilds
  edge-build --onnx model.onnx --out model.plan --precision fp16 --max-batch 16 \\
             --timing-cache model.timing.cache

  # Jetson AGX Orin, INT8 on DLA core 0 (layers DLA cannot run fall back to the GPU),
  # small workspace because the Jetson's GPU shares the system memory
  edge-build --onnx model.onnx --out model.plan --precision int8 \\
             --calibration runs/hybrid/calibration.json --dla-core 0 --max-batch 4 --workspace 512

  # Jetson Orin Nano (no DLA), FP16 on the GPU
  edge-build --onnx model.onnx --out model.plan --precision fp16 --max-batch 4 --workspace 512

Writes MODEL.plan, MODEL.plan.manifest.json (what the edge reads: input, outputs, calibration
from MODEL.onnx.manifest.json, plus the build: TensorRT version, GPU, compute capability,
precision, batch range, ...), the precision graph (fp16/int8) and the timing cache.
See docs/tensorrt.md.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_MAX_BATCH = 8
DEFAULT_WORKSPACE_MB = 1024


class BuildError(ValueError):
    """A refused option, input or build, with what to do about it."""


@dataclass(frozen=True)
class BuildOptions:
    onnx: Path
    out: Path
    precision: str = "fp32"
    max_batch: int = DEFAULT_MAX_BATCH
    opt_batch: int | None = None          # None: = max_batch
    workspace_mb: int = DEFAULT_WORKSPACE_MB
    timing_cache: Path | None = None       # None: MODEL.timing.cache beside the plan
    dla_core: int | None = None
    calibration: Path | None = None        # calibration.json; the INT8 set lies beside it
    good: tuple = ()                        # (camera, folder) pairs to re-fit on the built engine


# ---- pure, CPU-testable parts ------------------------------------------------------------

def check_options(opts: BuildOptions, onnx_max_batch: int) -> BuildOptions:
    """Refuse bad combinations (saying what to do) and fill in the defaults; never 'correct' silently."""
    if opts.precision not in PRECISIONS:
        raise BuildError(f"--precision must be one of {', '.join(PRECISIONS)}, got {opts.precision!r}")
    if opts.out.suffix != ".plan":
        raise BuildError(f"--out must end in .plan (the edge picks the TensorRT backend by suffix), got {opts.out}")
    if not 1 <= opts.max_batch <= onnx_max_batch:
        raise BuildError(f"--max-batch must be between 1 and {onnx_max_batch} (the batch range the ONNX graph "
                         f"was exported for), got {opts.max_batch}")
    opt = opts.max_batch if opts.opt_batch is None else opts.opt_batch
    if not 1 <= opt <= opts.max_batch:
        raise BuildError(f"--opt-batch must be between 1 and --max-batch ({opts.max_batch}), got {opt}")
    if opts.workspace_mb < 1:
        raise BuildError(f"--workspace must be a positive number of MiB, got {opts.workspace_mb}")
    if opts.dla_core is not None:
        if opts.dla_core < 0:
            raise BuildError(f"--dla-core must be 0 or more, got {opts.dla_core}")
        if opts.precision == "fp32":
            # DLA has no FP32 kernels: an FP32 network would fall back to the GPU layer by layer.
            raise BuildError("DLA runs FP16 and INT8 only: add --precision fp16 or --precision int8 to --dla-core")
    if opts.precision == "int8" and opts.calibration is None:
        raise BuildError("--precision int8 needs --calibration calibration.json, with the INT8 calibration set "
                         "beside it (edge-calibrate --run RUN ... --int8 512 writes int8_calibration.npz)")
    cache = opts.timing_cache or opts.out.with_name(opts.out.stem + ".timing.cache")
    return replace(opts, opt_batch=opt, timing_cache=cache)


def profile_shapes(chw: tuple[int, int, int], opt_batch: int, max_batch: int) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) input shapes of the one optimisation profile: batch 1 .. max_batch, tuned for opt_batch."""
    return tuple((b, *map(int, chw)) for b in (1, opt_batch, max_batch))


def check_onnx_model(path: Path, manifest: dict):
    """Load and check the graph with the ``onnx`` package before TensorRT sees it; return the model."""
    import onnx
    try:
        onnx.checker.check_model(str(path))   # by path: works for graphs with external weights too
        model = onnx.load(str(path))
    except Exception as e:  # onnx raises protobuf DecodeError, ValidationError, OSError... for a bad file
        raise BuildError(f"{path} is not a valid ONNX model ({type(e).__name__}: {e}); export it again "
                         f"with edge-export") from e
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != [manifest["input"]["name"]] or outputs != list(manifest["outputs"]):
        raise BuildError(f"{path} has inputs {inputs} and outputs {outputs}, its manifest says "
                         f"[{manifest['input']['name']}] and {manifest['outputs']}: export it again with edge-export")
    return model


def score_only_nodes(model, map_output: str = "anomaly_map") -> list[str]:
    """Names of the nodes that compute the score outputs but not the anomaly map.

    These (pooling of the map into one score, the hybrid's z-normalisation and fusion, a
    scorer head) stay FP32 in the FP16 graph: the score is what the alert threshold is compared
    with, and a reduction over H x W pixels or a sum of z-scores is where FP16's 11-bit
    mantissa loses most. The map itself, most of the compute, goes to FP16.
    """
    producer = {out: node for node in model.graph.node for out in node.output}

    def ancestors(tensor: str) -> set[str]:
        seen, stack = set(), [tensor]
        while stack:
            node = producer.get(stack.pop())
            if node is not None and node.name not in seen:
                seen.add(node.name)
                stack.extend(node.input)
        return seen

    scores = set().union(*(ancestors(o.name) for o in model.graph.output if o.name != map_output))
    return sorted(scores - ancestors(map_output))


def convert_to_fp16(model):
    """An FP16 copy of ``model``: FP32 inputs/outputs, score nodes FP32 (``score_only_nodes``)."""
    try:
        from onnxconverter_common.float16 import convert_float_to_float16
    except ImportError as e:
        raise BuildError("--precision fp16 needs the ONNX FP16 converter: pip install onnxconverter-common") from e
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    # ConstantOfShape without a `value` makes float32 zeros by the ONNX spec; the converter
    # declares its output FP16 but leaves the node alone, so the graph stops type-checking.
    # An explicit float32 value is converted together with the rest.
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape" and not any(a.name == "value" for a in node.attribute):
            node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.zeros(1, np.float32))))
    was_fp32 = {o.name for o in model.graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT}
    fp16 = convert_float_to_float16(model, keep_io_types=True, node_block_list=score_only_nodes(model))
    # onnxconverter-common's keep_io_types misses outputs made by a blocked (FP32) node: it casts
    # them to FP16 and declares them FP16. Turn that last Cast back to FP32.
    cast_of = {n.output[0]: n for n in fp16.graph.node if n.op_type == "Cast"}
    for out in fp16.graph.output:
        if out.name in was_fp32 and out.type.tensor_type.elem_type != TensorProto.FLOAT:
            for attr in cast_of[out.name].attribute:
                if attr.name == "to":
                    attr.i = TensorProto.FLOAT
            out.type.tensor_type.elem_type = TensorProto.FLOAT
    return fp16


def int8_calibration_set(calibration: Path, input_name: str, chw: tuple[int, int, int]) -> Path:
    """The INT8 calibration set beside ``calibration.json``, checked against the graph's input."""
    import json

    from calibration.int8 import CALIBRATION_JSON, CALIBRATION_NPZ
    folder = Path(calibration).parent
    npz, meta_path = folder / CALIBRATION_NPZ, folder / CALIBRATION_JSON
    if not npz.is_file() or not meta_path.is_file():
        raise BuildError(f"no INT8 calibration set beside {calibration} ({CALIBRATION_NPZ} + {CALIBRATION_JSON}): "
                         f"write it with `edge-calibrate --run RUN ... --int8 512`")
    meta = json.loads(meta_path.read_text())
    if meta.get("input_name") != input_name or tuple(meta.get("shape", ())[1:]) != tuple(chw):
        raise BuildError(f"{npz} holds {meta.get('input_name')!r} images of shape {meta.get('shape')}, the graph "
                         f"takes {input_name!r} (N, {', '.join(map(str, chw))}): it was made for another model")
    return npz


def quantize_int8(src: Path, dst: Path, calibration_npz: Path, input_name: str, for_dla: bool) -> None:
    """Explicit INT8 Q/DQ nodes by NVIDIA ModelOpt's ONNX PTQ, calibrated on good training images."""
    try:
        from modelopt.onnx.quantization import quantize
    except ImportError as e:
        raise BuildError('--precision int8 needs NVIDIA ModelOpt: pip install "nvidia-modelopt[onnx]" '
                         "(on the build machine; it is not part of edge-inspect's extras)") from e
    import numpy as np
    with np.load(calibration_npz, allow_pickle=False) as archive:
        data = {input_name: archive[input_name]}
    # high_precision_dtype fp32: what is not quantized (the residual, the score) stays FP32
    # instead of ModelOpt's default FP16; I/O types stay FP32 (direct_io_types defaults False).
    # Calibration on the CPU provider: always available, and ranges do not depend on the provider.
    quantize(str(src), quantize_mode="int8", calibration_data=data, calibration_method="entropy",
             calibration_eps=["cpu"], high_precision_dtype="fp32", target_dla=for_dla, output_path=str(dst))


def precision_graph(opts: BuildOptions, model, input_name: str, calibration_npz: Path | None) -> Path:
    """The ONNX file TensorRT parses: the exported graph (fp32) or its converted copy beside the plan."""
    if opts.precision == "fp32":
        return opts.onnx
    import onnx
    dst = opts.out.with_name(f"{opts.out.stem}.{opts.precision}.onnx")
    if opts.precision == "fp16":
        onnx.save(convert_to_fp16(model), str(dst))
    else:
        quantize_int8(opts.onnx, dst, calibration_npz, input_name, opts.dla_core is not None)
    onnx.checker.check_model(str(dst))
    return dst


def build_info(opts: BuildOptions, tensorrt_version: str, device: dict, graph: Path,
               calibration_npz: Path | None = None) -> dict:
    """The manifest's ``engine.build``: everything that must match to run the engine, or to rebuild it."""
    from edge.manifest import sha256_file
    return {
        "tensorrt_version": tensorrt_version,
        "gpu": device["name"],
        "compute_capability": device["compute_capability"],
        "precision": opts.precision,
        "strongly_typed": True,
        "max_batch": opts.max_batch,
        "opt_batch": opts.opt_batch,
        "dla_core": opts.dla_core,
        "workspace_mb": opts.workspace_mb,
        "timing_cache": opts.timing_cache.name if opts.timing_cache else None,
        "onnx": {"file": graph.name, "sha256": sha256_file(graph)},   # the graph TensorRT parsed
        "int8_calibration": ({"file": calibration_npz.name, "sha256": sha256_file(calibration_npz)}
                             if calibration_npz else None),
    }


# ---- TensorRT (needs tensorrt and a GPU) --------------------------------------------------

def import_tensorrt():
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:
        raise BuildError(f"TensorRT is not importable here ({e}): install the trt extra "
                         "(pip install 'edge-inspect[trt]'), or on Jetson use JetPack's TensorRT") from e
    return trt


def _parse(trt, builder, logger, graph: Path):
    # Strongly typed: every tensor's type comes from the graph, so the precision chosen above is
    # exactly what runs. TensorRT 11 always builds strongly typed and keeps the flag only for
    # compatibility; look it up by name so a release that drops it still works.
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(graph)):   # by path, so external weight files are found
        errors = "\n  ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT's ONNX parser refused {graph} ({parser.num_errors} error(s)):\n  {errors}")
    return network, parser


def check_dla(builder, core: int) -> None:
    """Refuse --dla-core where there is no such DLA core (checked before any slow conversion)."""
    available = builder.num_DLA_cores
    if available == 0:
        raise BuildError("this platform has no DLA (Deep Learning Accelerator; Jetson AGX/NX Orin and Xavier have "
                         "one or two): drop --dla-core to build for the GPU")
    if core >= available:
        raise BuildError(f"--dla-core {core}: this platform has DLA cores 0..{available - 1}")


def _use_dla(trt, config, core: int) -> None:
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)   # layers DLA cannot run go to the GPU, not an error


def _timing_cache(config, path: Path) -> bool:
    """Load the timing cache (kernel timings) from ``path`` if present: rebuilds skip re-timing."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    # ignore_mismatch=False: a cache timed on another GPU or TensorRT version is refused, not trusted
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise BuildError(f"timing cache {path} was made on another GPU or TensorRT version: delete it or pass "
                         f"another --timing-cache")
    return bool(data)


def build_engine(trt, builder, logger, opts: BuildOptions, graph: Path, input_name: str,
                 chw: tuple[int, int, int]) -> tuple[bytes, bool]:
    """Serialized engine bytes, and whether an existing timing cache was reused."""
    network, _parser = _parse(trt, builder, logger, graph)   # the parser must outlive the build
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mb << 20)
    # TF32 is on by default (Ampere and later) and would run the graph's FP32 convolutions with
    # a 10-bit mantissa; precision is the graph's to say, so FP32 stays FP32.
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, *profile_shapes(chw, opts.opt_batch, opts.max_batch))
    config.add_optimization_profile(profile)
    if opts.dla_core is not None:
        _use_dla(trt, config, opts.dla_core)
    reused = _timing_cache(config, opts.timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(f"TensorRT could not build an engine from {graph}: its messages above say why")
    _write_atomic(opts.timing_cache, memoryview(config.get_timing_cache().serialize()))
    return bytes(memoryview(serialized)), reused


def _write_atomic(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def build(opts: BuildOptions) -> tuple[dict, bool]:
    """Check, convert, build, write plan + manifest; return the manifest and whether the timing cache was reused."""
    from deploy.manifest import read_calibration, write_derived_manifest
    from edge.backends.tensorrt_backend import cuda_device
    from edge.manifest import ManifestError, load_manifest
    try:
        manifest = load_manifest(opts.onnx)
    except ManifestError as e:
        raise BuildError(str(e)) from e
    opts = check_options(opts, int(manifest["input"]["max_batch"]))
    model = check_onnx_model(opts.onnx, manifest)
    if opts.calibration is not None:   # a calibration of another checkpoint is refused now, not after the build
        read_calibration(opts.calibration, manifest["checkpoint_sha256"])
    name, chw = manifest["input"]["name"], tuple(manifest["input"]["shape"][1:])
    npz = int8_calibration_set(opts.calibration, name, chw) if opts.precision == "int8" else None
    trt = import_tensorrt()
    device = cuda_device()   # before the slow conversions: no GPU, no build
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if opts.dla_core is not None:
        check_dla(builder, opts.dla_core)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    graph = precision_graph(opts, model, name, npz)
    plan, reused = build_engine(trt, builder, logger, opts, graph, name, chw)
    _write_atomic(opts.out, plan)
    info = build_info(opts, trt.__version__, device, graph, npz)
    doc = write_derived_manifest(opts.out, opts.onnx, "tensorrt", info, max_batch=opts.max_batch,
                                 calibration=opts.calibration)
    for camera, folder in opts.good:
        doc = recalibrate_on_engine(opts.out, doc, camera, folder)
    return doc, reused


def parse_good(text: str) -> tuple[str, Path]:
    """``--good [CAMERA=]DIR``: the camera (default '*') to re-fit on the built engine, from DIR."""
    camera, eq, folder = text.partition("=")
    return (camera, Path(folder)) if eq and camera and "/" not in camera else ("*", Path(text))


def recalibrate_on_engine(plan: Path, manifest: dict, camera: str, folder: Path) -> dict:
    """Re-fit ``camera`` on the built engine's own scores of the good images in ``folder``, with the
    target, confidence and guarantee of the entry it replaces (calibration/manifest_update.py keeps
    the fp32 entry in the history). Needs the engine to run: on the build machine, that is the GPU."""
    from calibration.calibrate import calibrate_engine
    from calibration.images import folder_samples
    old = ((manifest.get("calibration") or {}).get("cameras") or {}).get(camera)
    if old is None:
        raise BuildError(f"--good {camera}={folder}: the manifest has no calibration of camera {camera!r} to "
                         f"re-fit (edge-calibrate --engine {plan} --good DIR --camera '{camera}' --update ...)")
    im = old["image"]
    calibrate_engine(plan, folder_samples(folder, 0), im["target_far"], confidence=im.get("confidence") or 0.95,
                     guarantee=im.get("guarantee", "pac"), pixel_far=old.get("pixel", {}).get("target_far"),
                     min_region_area=old.get("pixel", {}).get("min_region_area"), camera=camera, plots=False,
                     update=Path(str(plan) + ".manifest.json"))
    from edge.manifest import load_manifest
    return load_manifest(plan)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-build", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", type=Path, required=True,
                   help="exported graph (edge-export), with its MODEL.onnx.manifest.json beside it")
    p.add_argument("--out", type=Path, required=True, help="engine to write, e.g. model.plan")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default), fp16 (Tensor Core speed; score kept FP32) or int8 "
                        "(explicit Q/DQ, needs --calibration); recalibrate thresholds on the engine's scores")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help=f"largest batch the engine accepts (default {DEFAULT_MAX_BATCH}; at most the ONNX's max_batch)")
    p.add_argument("--opt-batch", type=int, default=None,
                   help="batch size TensorRT tunes kernels for (default: --max-batch; 1 for one camera, "
                        "lowest latency)")
    p.add_argument("--workspace", type=int, default=DEFAULT_WORKSPACE_MB, dest="workspace_mb", metavar="MB",
                   help=f"scratch memory TensorRT may use while building and running (default {DEFAULT_WORKSPACE_MB}; "
                        "Jetson shares GPU and system memory: 256-512)")
    p.add_argument("--timing-cache", type=Path, default=None, metavar="FILE",
                   help="kernel timing cache, read if present and written after the build (default "
                        "MODEL.timing.cache beside the plan); same GPU + TensorRT: rebuilds take seconds")
    p.add_argument("--dla-core", type=int, default=None, metavar="K",
                   help="run on Jetson's DLA core K (fp16/int8 only; unsupported layers fall back to the GPU)")
    p.add_argument("--calibration", type=Path, default=None, metavar="calibration.json",
                   help="calibration.json to embed (default: the one in the ONNX manifest); for int8 the INT8 "
                        "calibration set beside it (int8_calibration.npz, from edge-calibrate --int8 N) is used")
    p.add_argument("--good", type=parse_good, action="append", default=[], metavar="[CAMERA=]DIR",
                   help="re-fit this camera's thresholds (default '*') on the built engine's own scores of the good "
                        "images in DIR (repeatable); without it an fp16/int8 manifest says 'calibrated on fp32, "
                        "not re-checked' and edge-run warns at start")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    opts = BuildOptions(**{**vars(args), "good": tuple(args.good)})
    from edge.backends import BackendError
    try:
        doc, reused = build(opts)
    except (BuildError, BackendError, ValueError, FileNotFoundError) as e:
        print(f"edge-build: error: {e}", file=sys.stderr)
        return 2
    b = doc["engine"]["build"]
    print(f"wrote {opts.out} (TensorRT {b['tensorrt_version']}, {b['gpu']}, compute capability "
          f"{b['compute_capability']}, {b['precision']} from {b['onnx']['file']}, batch 1..{b['max_batch']} "
          f"tuned for {b['opt_batch']}" + (f", DLA core {b['dla_core']}" if b["dla_core"] is not None else "") + ")")
    print(f"timing cache: {b['timing_cache']} ({'reused' if reused else 'new'})")
    print(f"manifest: {opts.out}.manifest.json (model {doc['model_version']}, calibration "
          f"{'embedded' if doc['calibration'] else 'none: run edge-calibrate for alert thresholds'})")
    unchecked = [c for c, e in ((doc.get("calibration") or {}).get("cameras") or {}).items()
                 if e.get("engine_check") and (e.get("engine") or {}).get("sha256") != doc["engine"]["sha256"]]
    if unchecked:
        print(f"WARNING: {b['precision']} shifts scores and the thresholds of camera(s) {', '.join(unchecked)} were "
              f"fitted on fp32, not re-checked on this engine (edge-run will warn): re-fit them with "
              f"edge-build ... --good DIR, or edge-calibrate --engine {opts.out} --good DIR --update "
              f"{opts.out}.manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
