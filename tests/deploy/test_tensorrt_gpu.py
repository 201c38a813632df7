"""Real TensorRT engines on a real GPU: edge-build -> open_backend -> compare with ONNX Runtime.

Skipped (with the reason) where TensorRT, cuda-python or a CUDA device is missing, as on CI.
Run on a GPU machine with the trt extra: pytest -q -m gpu tests/deploy/test_tensorrt_gpu.py
"""
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install -e '.[trt]', or JetPack's)")


def _cuda_devices() -> int:
    try:
        from edge.backends.tensorrt_backend import import_cudart
        cudart = import_cudart()
    except Exception:  # BackendError: cuda-python missing
        return 0
    err, count = cudart.cudaGetDeviceCount()
    return count if err == cudart.cudaError_t.cudaSuccess else 0


if _cuda_devices() == 0:
    pytest.skip("no CUDA device (or no cuda-python) on this machine", allow_module_level=True)

from deploy.build import main as edge_build  # noqa: E402
from deploy.export import main as export  # noqa: E402
from edge.backends import BackendError, open_backend  # noqa: E402
from edge.backends.tensorrt_backend import TensorRTBackend, cuda_device  # noqa: E402
from edge.manifest import ManifestError, sha256_file  # noqa: E402
from tests.synthetic import export_tiny_autoencoder, make_mvtec_tree  # noqa: E402
from trainer.cli import main as train  # noqa: E402

pytestmark = pytest.mark.gpu



def bound(precision: str, ref: np.ndarray) -> np.ndarray:
    """Allowed |TensorRT - ONNX Runtime| per element.

    fp32: other kernels, same arithmetic (edge-build turns TF32 off): the export's parity bound,
    1e-3 + 1e-3 |ref|. fp16: the graph runs with 11 significant bits (relative step 2^-11 ~ 5e-4)
    through a few convolutions: 1% of the output's range.
    """
    if precision == "fp32":
        return 1e-3 + 1e-3 * np.abs(ref)
    return np.full(ref.shape, 1e-2 * (1 + np.abs(ref).max()))


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Exported to ONNX: a tiny LAMP autoencoder (32 px); a LAMP + two-head hybrid (112 px); the one command's
    default hybrid (Lite2 patch kNN with its memory bank + patch head, 112 px); and the bundled demo model as it
    ships (re-trained Lite0 stages, weighted per-look constants)."""
    root = tmp_path_factory.mktemp("trt")
    export_tiny_autoencoder(root / "small", root / "ae32", root / "ae" / "model.onnx")
    big = make_mvtec_tree(root / "big", n_train_good=16, n_test_good=4, n_defect=6, size=112, seed=8)
    common = ["--data", str(big), "--seed", "0", "--quiet", "--size", "112"]
    assert train(["ae", *common, "--depth", "2", "--base-channels", "4", "--latent-channels", "4", "--epochs", "1",
                  "--out", str(root / "ae112")]) == 0
    assert train(["scorer", *common, "--k", "2", "--backbone", "resnet18", "--width", "8", "--epochs", "1",
                  "--steps-per-epoch", "2", "--n-normal", "8", "--n-anomaly", "4", "--out", str(root / "sc112")]) == 0
    assert train(["hybrid", "--ae", str(root / "ae112"), "--scorer", str(root / "sc112"),
                  "--out", str(root / "hy112")]) == 0
    assert export(["--run", str(root / "hy112"), "--out", str(root / "hybrid" / "model.onnx")]) == 0
    assert train(["hybrid", "--data", str(big), "--k", "2", "--size", "112", "--seed", "0", "--quiet",
                  "--out", str(root / "default112")]) == 0
    assert export(["--run", str(root / "default112"), "--out", str(root / "default" / "model.onnx")]) == 0
    (root / "bundled").mkdir()
    for f in ("model.onnx", "model.onnx.manifest.json"):
        shutil.copy(ROOT / "edge" / "bundled" / f, root / "bundled" / f)
    return root


def _build(folder: Path, *args: str) -> Path:
    plan = folder / "model.plan"
    assert edge_build(["--onnx", str(folder / "model.onnx"), "--out", str(plan), *args]) == 0
    return plan


def _onnxruntime(onnx_file: Path, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"]).run(None, {"images": x})


@pytest.mark.parametrize("kind", ["ae", "hybrid", "default", "bundled"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_matches_onnxruntime(models, tmp_path, kind, precision):
    folder = tmp_path / kind
    shutil.copytree(models / kind, folder)
    plan = _build(folder, "--precision", precision, "--max-batch", "4", "--opt-batch", "2")
    backend = open_backend(plan)
    assert isinstance(backend, TensorRTBackend) and backend.max_batch == 4
    build = backend.manifest["engine"]["build"]
    assert build["tensorrt_version"] == trt.__version__
    assert build["compute_capability"] == cuda_device()["compute_capability"] and build["precision"] == precision
    if precision == "fp16":
        assert build["onnx"]["file"] == "model.fp16.onnx" and (folder / "model.fp16.onnx").is_file()
    c, h, w = backend.input_shape
    rng = np.random.default_rng(0)
    for batch in (1, 3, 4, 2):   # the profile's range, in an order that shrinks and grows
        x = rng.random((batch, c, h, w), dtype=np.float32)
        got = backend.infer(x)
        ref = _onnxruntime(folder / "model.onnx", x)
        assert list(got) == backend.output_names
        for name, b in zip(backend.output_names, ref):
            a = got[name]
            assert a.dtype == np.float32 and a.shape == b.shape, name
            assert np.all(np.abs(a - b) <= bound(precision, b)), (name, float(np.abs(a - b).max()))
    with pytest.raises(BackendError, match="1..4"):
        backend.infer(np.zeros((5, c, h, w), np.float32))
    backend.close()
    backend.close()   # idempotent


def test_int8_engine(models, tmp_path):
    pytest.importorskip("modelopt.onnx.quantization", reason='NVIDIA ModelOpt not installed '
                        '(pip install "nvidia-modelopt[onnx]")')
    from calibration.int8 import CalibrationSetSpec, build_int8_calibration_set
    from trainer.data import Sample
    folder = tmp_path / "ae"
    shutil.copytree(models / "ae", folder)
    good = [Sample(path=p, label=0, defect_type="good")
            for p in sorted((models / "small" / "train" / "good").iterdir())]
    build_int8_calibration_set(good, 32, 1, folder, spec=CalibrationSetSpec(count=len(good)))
    plan = _build(folder, "--precision", "int8", "--calibration", str(folder / "calibration.json"),
                  "--max-batch", "4")
    backend = open_backend(plan)
    x = np.stack([np.load(folder / "int8_calibration.npz")["images"][i] for i in range(4)])
    got, ref = backend.infer(x), _onnxruntime(folder / "model.onnx", x)
    # INT8 has 256 levels per tensor: allow 5% of each output's range.
    for name, b in zip(backend.output_names, ref):
        assert np.abs(got[name] - b).max() <= 5e-2 * (1 + np.abs(b).max()), name
    assert backend.manifest["engine"]["build"]["int8_calibration"]["file"] == "int8_calibration.npz"
    backend.close()


@pytest.fixture(scope="module")
def engine(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine")
    for f in (models / "ae").iterdir():
        shutil.copy(f, folder / f.name)
    _build(folder, "--max-batch", "2")
    return folder


def _copy_engine(engine: Path, dst: Path) -> Path:
    for f in engine.iterdir():
        shutil.copy(f, dst / f.name)
    return dst / "model.plan"


def test_truncated_plan_is_refused(engine, tmp_path):
    plan = _copy_engine(engine, tmp_path)
    plan.write_bytes(plan.read_bytes()[: plan.stat().st_size // 2])
    with pytest.raises(ManifestError, match="sha256 differs"):
        open_backend(plan)
    manifest = Path(str(plan) + ".manifest.json")
    doc = json.loads(manifest.read_text())
    doc["engine"]["sha256"] = sha256_file(plan)   # the checksum agrees: TensorRT itself must refuse it
    manifest.write_text(json.dumps(doc))
    with pytest.raises(BackendError, match="not a loadable TensorRT engine"):
        open_backend(plan)


@pytest.mark.parametrize("field, value, match", [
    ("tensorrt_version", "0.0.0.0", "built with TensorRT 0.0.0.0"),
    ("compute_capability", "1.0", "built for compute capability 1.0"),
])
def test_tampered_manifest_is_refused(engine, tmp_path, field, value, match):
    plan = _copy_engine(engine, tmp_path)
    manifest = Path(str(plan) + ".manifest.json")
    doc = json.loads(manifest.read_text())
    doc["engine"]["build"][field] = value
    manifest.write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match=match) as e:
        open_backend(plan)
    assert "edge-build --onnx model.onnx --out model.plan --precision fp32 --max-batch 2" in str(e.value)


def test_timing_cache_is_written_and_reused(models, tmp_path, capsys):
    folder = tmp_path / "ae"
    shutil.copytree(models / "ae", folder)
    cache = tmp_path / "gpu.timing.cache"
    _build(folder, "--timing-cache", str(cache))
    assert "(new)" in capsys.readouterr().out and cache.stat().st_size > 0
    first = cache.read_bytes()
    _build(folder, "--timing-cache", str(cache), "--precision", "fp16")
    assert "(reused)" in capsys.readouterr().out and cache.stat().st_size >= len(first)
    build = json.loads((folder / "model.plan.manifest.json").read_text())["engine"]["build"]
    assert build["timing_cache"] == cache.name


def test_dla_refused_where_there_is_none(models, tmp_path, capsys):
    if trt.Builder(trt.Logger(trt.Logger.WARNING)).num_DLA_cores > 0:
        pytest.skip("this platform has a DLA (Jetson): the refusal is for machines without one")
    folder = tmp_path / "ae"
    shutil.copytree(models / "ae", folder)
    assert edge_build(["--onnx", str(folder / "model.onnx"), "--out", str(folder / "model.plan"),
                       "--precision", "fp16", "--dla-core", "0"]) == 2
    assert "this platform has no DLA" in capsys.readouterr().err
    assert not (folder / "model.plan").exists()
