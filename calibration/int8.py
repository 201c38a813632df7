"""The INT8 calibration image set: good training images, in the model's exact input format.

Why a tensor file and not a TensorRT calibrator: TensorRT's implicit-quantisation
calibrators (``IInt8EntropyCalibrator2`` and friends) are deprecated since
TensorRT 10.1 and removed in 11.0, together with ``BuilderFlag.INT8``. The path
that works on TensorRT 10 and 11 is explicit quantisation: Q/DQ nodes in the ONNX
graph, inserted by NVIDIA ModelOpt's ONNX post-training quantisation
(``modelopt.onnx.quantization.quantize(onnx_path, quantize_mode="int8",
calibration_data=...)``). ModelOpt takes the calibration data as a numpy array
or a dict ``{input name: array}``; its command line
(``python -m modelopt.onnx.quantization --calibration_data_path x.npz``) loads an
``.npz`` into exactly that dict, one entry per archive key
(NVIDIA/TensorRT-Model-Optimizer, modelopt/onnx/quantization/__main__.py), and
its ``CalibrationDataProvider`` splits each array along axis 0 into batches of
the model's batch size (modelopt/onnx/quantization/calib_utils.py). So the
artifact is one ``.npz`` whose single key is the ONNX input name and whose array
is (N, C, H, W) float32 in [0, 1], made by the same ``edge.preprocess.
to_model_input`` the line runs, so INT8 ranges are measured on what the engine
will actually see (the TensorRT samples' rule: one preprocessing for calibrator
and inference).

How many images: ModelOpt's ONNX PTQ example states "TensorRT recommends
calibration data size to be at least 500 for CNN and ViT models"
(examples/onnx_ptq/README.md; the older TensorRT developer guide: "about 500
images are sufficient for calibrating ImageNet classification networks"). The
default 512 is the first power of two above 500, so any power-of-two
calibration batch size divides it. Cost: 512 x 3 x 256 x 256 float32 is 384 MiB
on disk and in memory (128 MiB for mono); lower ``count`` for big inputs only
knowingly.

Which images: good training images only. They are representative of production
(almost every part on the line is good) and are never test images, so the test
metrics of the INT8 engine stay unbiased.
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.preprocess import to_model_input
from trainer.artifacts import sha256_file, write_json
from trainer.data import Sample, read_image

__all__ = ["CALIBRATION_JSON", "CALIBRATION_NPZ", "CalibrationSetSpec", "build_int8_calibration_set",
           "select_calibration_images"]

CALIBRATION_NPZ = "int8_calibration.npz"
CALIBRATION_JSON = "int8_calibration.json"
FORMAT_VERSION = 1
RECOMMENDED_MIN = 500   # ModelOpt examples/onnx_ptq/README.md
QUANTISATION = "explicit Q/DQ (ModelOpt ONNX PTQ); TensorRT implicit INT8 calibrators are removed in 11.0"


@dataclass(frozen=True)
class CalibrationSetSpec:
    """How many good training images to calibrate with, and the draw's seed.

    ``count`` 512: NVIDIA recommends at least 500 calibration images for CNN and
    ViT models (ModelOpt examples/onnx_ptq/README.md); 512 is the next power of
    two, so power-of-two calibration batches divide it evenly.
    """

    count: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.count) != self.count or self.count < 1:
            raise ValueError(f"count must be a positive integer, got {self.count!r}")
        if int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")


def _good_sorted(samples: Sequence[Sample]) -> list[Sample]:
    """The good samples, one per path, sorted by path (so the draw does not depend on list order)."""
    by_path: dict[str, Sample] = {}
    for s in samples:
        if s.label == 0:
            by_path.setdefault(Path(s.path).as_posix(), s)
    return [by_path[k] for k in sorted(by_path)]


def select_calibration_images(samples: Sequence[Sample], count: int, seed: int) -> list[Sample]:
    """Up to ``count`` good images (label 0) of ``samples``, drawn without replacement.

    Pass the GOOD TRAINING images (representative of production, never test
    images); defective samples in the list are ignored. The good samples are
    sorted by path before the draw (``np.random.default_rng(seed).choice``), so
    the result depends only on the set of files and the seed, not on the order
    of the list. When there are ``count`` or fewer good images, all are returned.
    The result is sorted by path.
    """
    if int(count) != count or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    good = _good_sorted(samples)
    if len(good) <= count:
        return good
    idx = np.random.default_rng(seed).choice(len(good), size=int(count), replace=False)
    return [good[i] for i in sorted(int(i) for i in idx)]


def _write_npz(path: Path, name: str, array: np.ndarray) -> None:
    """An uncompressed .npz holding ``array`` under key ``name``, written via a temporary file.

    Same archive layout as ``np.savez`` (a zip of ``<name>.npy`` members written
    with ``np.lib.format.write_array``), but any input name is allowed (``np.savez``
    cannot take a key called "file"), and a crash never leaves half a file.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        with zipfile.ZipFile(tmp, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open(name + ".npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def build_int8_calibration_set(samples: Sequence[Sample], size: int, channels: int, out_dir,
                               input_name: str = "images",
                               spec: CalibrationSetSpec = CalibrationSetSpec()) -> dict:
    """Write ``out_dir/int8_calibration.npz`` and ``out_dir/int8_calibration.json``; return the JSON dict.

    The npz holds one float32 array (N, channels, size, size) in [0, 1] under key
    ``input_name`` (the ONNX model's input name, which ModelOpt matches), each
    image read with ``trainer.data.read_image`` and converted with
    ``edge.preprocess.to_model_input`` - the inference preprocessing, byte for
    byte. ``count`` in the JSON is what was used, ``requested`` what
    ``spec.count`` asked for; when fewer good images were given, all are used and
    ``note`` says so (``note`` is null otherwise).

    Raises ValueError when ``samples`` holds no good image.
    """
    if not isinstance(input_name, str) or not input_name:
        raise ValueError(f"input_name must be the ONNX model's input name, got {input_name!r}")
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    chosen = select_calibration_images(samples, spec.count, spec.seed)
    if not chosen:
        raise ValueError(
            "no good image given for INT8 calibration: pass the good TRAINING images (Sample.label == 0, "
            "e.g. the good samples of the training split), never test images")

    batch = np.empty((len(chosen), channels, int(size), int(size)), dtype=np.float32)
    for i, s in enumerate(chosen):
        batch[i] = to_model_input(read_image(s.path, channels), int(size), channels)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    npz = out / CALIBRATION_NPZ
    _write_npz(npz, input_name, batch)

    n, requested = len(chosen), int(spec.count)
    note = None
    if n < requested:
        note = (f"only {n} good image(s) given, fewer than the {requested} requested: all {n} were used")
        if n < RECOMMENDED_MIN:
            note += f" (NVIDIA recommends at least {RECOMMENDED_MIN} calibration images)"
    meta = {
        "format_version": FORMAT_VERSION,
        "input_name": input_name,
        "shape": list(batch.shape),
        "dtype": "float32",
        "value_range": [0, 1],
        "count": n,
        "requested": requested,
        "seed": int(spec.seed),
        "source": "good training images",
        "files": [Path(s.path).as_posix() for s in chosen],
        "npz": CALIBRATION_NPZ,
        "sha256": sha256_file(npz),
        "preprocessing": "trainer.data.read_image + edge.preprocess.to_model_input",
        "quantisation": QUANTISATION,
        "note": note,
    }
    write_json(out / CALIBRATION_JSON, meta)
    return meta
