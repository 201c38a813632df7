"""edge-build and the TensorRT backend: everything that can be checked without TensorRT or a GPU.

The real builds and inference are in test_tensorrt_gpu.py (marked gpu, skipped here).
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from deploy.build import (BuildError, BuildOptions, build_info, check_onnx_model, check_options, convert_to_fp16,
                          int8_calibration_set, main, profile_shapes, quantize_int8, score_only_nodes)
from deploy.manifest import write_derived_manifest
from edge.backends import BackendError, open_backend
from edge.manifest import ManifestError, check_tensorrt_build, load_manifest, sha256_file
from tests.synthetic import export_tiny_autoencoder, make_mvtec_tree

DEVICE = {"name": "NVIDIA Jetson AGX Orin", "compute_capability": "8.7"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    export_tiny_autoencoder(root, root / "run", root / "model.onnx")
    return root


def _copy_model(exported: Path, dst: Path) -> Path:
    for f in exported.iterdir():   # the graph, its manifest and its external weights file
        if f.name.startswith("model.onnx"):
            shutil.copy(f, dst / f.name)
    return dst / "model.onnx"


def _opts(tmp_path, **kw) -> BuildOptions:
    return BuildOptions(onnx=tmp_path / "model.onnx", out=tmp_path / "model.plan", **kw)


# ---- argument checks ---------------------------------------------------------------------

def test_defaults_are_filled_in(tmp_path):
    opts = check_options(_opts(tmp_path, max_batch=4), onnx_max_batch=64)
    assert opts.opt_batch == 4 and opts.timing_cache == tmp_path / "model.timing.cache"
    assert profile_shapes((1, 32, 32), opts.opt_batch, opts.max_batch) == ((1, 1, 32, 32), (4, 1, 32, 32),
                                                                           (4, 1, 32, 32))


@pytest.mark.parametrize("kw, match", [
    (dict(max_batch=65), "between 1 and 64"),
    (dict(max_batch=0), "between 1 and 64"),
    (dict(max_batch=4, opt_batch=8), "--opt-batch must be between 1 and --max-batch \\(4\\)"),
    (dict(workspace_mb=0), "--workspace"),
    (dict(dla_core=0), "DLA runs FP16 and INT8 only"),
    (dict(dla_core=-1, precision="fp16"), "--dla-core must be 0 or more"),
    (dict(precision="int8"), "needs --calibration"),
    (dict(precision="bf16"), "--precision must be one of"),
])
def test_bad_options_are_refused(tmp_path, kw, match):
    with pytest.raises(BuildError, match=match):
        check_options(_opts(tmp_path, **kw), onnx_max_batch=64)


def test_out_must_be_a_plan(tmp_path):
    with pytest.raises(BuildError, match="must end in .plan"):
        check_options(BuildOptions(onnx=tmp_path / "m.onnx", out=tmp_path / "m.engine"), onnx_max_batch=64)


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--dla-core 0" in text and "Jetson" in text and "datacenter" in text and "strongly typed" in text


# ---- the command line, up to where TensorRT is needed -------------------------------------

def test_max_batch_above_the_onnx_is_refused(exported, tmp_path, capsys):
    assert main(["--onnx", str(exported / "model.onnx"), "--out", str(tmp_path / "m.plan"), "--max-batch", "65"]) == 2
    assert "--max-batch must be between 1 and 64" in capsys.readouterr().err


def test_not_a_model_is_refused_before_tensorrt(exported, tmp_path, capsys, monkeypatch):
    onnx_file = _copy_model(exported, tmp_path)
    onnx_file.write_bytes(b"this is not an onnx model")
    doc = json.loads(Path(str(onnx_file) + ".manifest.json").read_text())
    doc["engine"]["sha256"] = sha256_file(onnx_file)   # a consistent manifest: only the graph is bad
    Path(str(onnx_file) + ".manifest.json").write_text(json.dumps(doc))
    monkeypatch.setitem(sys.modules, "tensorrt", None)   # proves the check comes before TensorRT
    assert main(["--onnx", str(onnx_file), "--out", str(tmp_path / "m.plan")]) == 2
    err = capsys.readouterr().err
    assert "is not a valid ONNX model" in err and "edge-export" in err


def test_onnx_without_manifest_is_refused(exported, tmp_path, capsys):
    onnx_file = _copy_model(exported, tmp_path)
    Path(str(onnx_file) + ".manifest.json").unlink()
    assert main(["--onnx", str(onnx_file), "--out", str(tmp_path / "m.plan")]) == 2
    assert "no manifest" in capsys.readouterr().err


def test_graph_names_must_match_the_manifest(exported):
    manifest = load_manifest(exported / "model.onnx")
    check_onnx_model(exported / "model.onnx", manifest)
    with pytest.raises(BuildError, match="its manifest says"):
        check_onnx_model(exported / "model.onnx", {**manifest, "outputs": ["score"]})


def test_calibration_problems_are_refused_before_tensorrt(exported, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    cal = tmp_path / "calibration.json"
    cal.write_text(json.dumps({"model": {"checkpoint_sha256": "0" * 64}}))
    base = ["--onnx", str(exported / "model.onnx"), "--out", str(tmp_path / "m.plan"), "--calibration", str(cal)]
    assert main(base) == 2
    assert "another checkpoint" in capsys.readouterr().err
    manifest = load_manifest(exported / "model.onnx")
    cal.write_text(json.dumps({"model": {"checkpoint_sha256": manifest["checkpoint_sha256"]}}))
    assert main([*base, "--precision", "int8"]) == 2   # no int8_calibration.npz beside it
    assert "no INT8 calibration set beside" in capsys.readouterr().err


def test_without_tensorrt_the_build_says_what_to_install(exported, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)   # as on this CPU machine, also where it is installed
    assert main(["--onnx", str(exported / "model.onnx"), "--out", str(tmp_path / "m.plan")]) == 2
    assert "install the trt extra" in capsys.readouterr().err
    assert not (tmp_path / "m.plan").exists()


# ---- precision graphs --------------------------------------------------------------------

def test_score_nodes_are_the_pooling_only(exported):
    model = onnx.load(str(exported / "model.onnx"))
    ops = sorted(n.op_type for n in model.graph.node if n.name in set(score_only_nodes(model)))
    assert ops == ["ReduceMean", "Reshape", "TopK"]   # LAMP: top-k mean of the map (the map stays FP16)


def test_fp16_graph_keeps_float32_io_and_agrees_with_fp32(exported, tmp_path):
    pytest.importorskip("onnxconverter_common", reason="onnxconverter-common (the dev/trt extras) not installed")
    model = onnx.load(str(exported / "model.onnx"))
    fp16 = convert_to_fp16(model)
    onnx.checker.check_model(fp16)
    float32 = onnx.TensorProto.FLOAT
    assert [i.type.tensor_type.elem_type for i in fp16.graph.input] == [float32]
    assert [o.type.tensor_type.elem_type for o in fp16.graph.output] == [float32, float32]
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in fp16.graph.initializer)   # really FP16
    onnx.save(fp16, str(tmp_path / "model.fp16.onnx"))
    x = np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)
    cpu = ["CPUExecutionProvider"]
    ref = ort.InferenceSession(str(exported / "model.onnx"), providers=cpu).run(None, {"images": x})
    got = ort.InferenceSession(str(tmp_path / "model.fp16.onnx"), providers=cpu).run(None, {"images": x})
    for a, b in zip(got, ref):
        assert a.dtype == np.float32 and a.shape == b.shape
        # FP16 keeps 11 significant bits (relative step 2^-11 ~ 5e-4); a few layers accumulate a few steps
        np.testing.assert_allclose(a, b, atol=2e-3 * (1 + np.abs(b).max()), rtol=0)


def test_fp16_without_the_converter_names_the_package(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxconverter_common", None)
    monkeypatch.setitem(sys.modules, "onnxconverter_common.float16", None)
    with pytest.raises(BuildError, match="pip install onnxconverter-common"):
        convert_to_fp16(onnx.load(str(exported / "model.onnx")))


def test_int8_without_modelopt_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "modelopt", None)
    with pytest.raises(BuildError, match=r'pip install "nvidia-modelopt\[onnx\]"'):
        quantize_int8(tmp_path / "model.onnx", tmp_path / "model.int8.onnx", tmp_path / "x.npz", "images", False)


def test_int8_calibration_set_is_found_beside_calibration_json_and_checked(tmp_path):
    from calibration.int8 import CalibrationSetSpec, build_int8_calibration_set
    from trainer.data import Sample
    with pytest.raises(BuildError, match="edge-calibrate"):
        int8_calibration_set(tmp_path / "calibration.json", "images", (1, 32, 32))
    parts = make_mvtec_tree(tmp_path / "parts", n_train_good=4, n_test_good=1, n_defect=1, size=32, seed=2)
    good = [Sample(path=p, label=0, defect_type="good") for p in sorted((parts / "train" / "good").iterdir())]
    build_int8_calibration_set(good, 32, 1, tmp_path, spec=CalibrationSetSpec(count=4))
    found = int8_calibration_set(tmp_path / "calibration.json", "images", (1, 32, 32))
    assert found == tmp_path / "int8_calibration.npz"
    with pytest.raises(BuildError, match="made for another model"):
        int8_calibration_set(tmp_path / "calibration.json", "images", (3, 32, 32))


# ---- the engine's manifest ---------------------------------------------------------------

def _fake_engine_manifest(exported: Path, tmp_path: Path, precision: str = "fp16") -> tuple[Path, dict]:
    onnx_file = _copy_model(exported, tmp_path)
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"serialized engine bytes")   # the manifest does not look inside
    opts = check_options(BuildOptions(onnx=onnx_file, out=plan, precision=precision, max_batch=4, opt_batch=2,
                                      dla_core=0), onnx_max_batch=64)
    graph = tmp_path / "model.fp16.onnx"
    shutil.copy(onnx_file, graph)
    info = build_info(opts, "10.3.0.30", DEVICE, graph)
    return plan, write_derived_manifest(plan, onnx_file, "tensorrt", info, max_batch=opts.max_batch)


def test_build_dict_and_derived_manifest_round_trip(exported, tmp_path):
    plan, written = _fake_engine_manifest(exported, tmp_path)
    doc = load_manifest(plan)   # really reloaded and checksum-verified
    assert doc == json.loads(json.dumps(written))
    build = doc["engine"]["build"]
    assert doc["engine"]["format"] == "tensorrt" and doc["engine"]["file"] == "model.plan"
    assert build == {"tensorrt_version": "10.3.0.30", "gpu": "NVIDIA Jetson AGX Orin", "compute_capability": "8.7",
                     "precision": "fp16", "strongly_typed": True, "max_batch": 4, "opt_batch": 2, "dla_core": 0,
                     "workspace_mb": 1024, "timing_cache": "model.timing.cache",
                     "onnx": {"file": "model.fp16.onnx", "sha256": sha256_file(tmp_path / "model.fp16.onnx")},
                     "int8_calibration": None}
    source = load_manifest(tmp_path / "model.onnx")
    assert doc["input"] == {**source["input"], "max_batch": 4}   # the engine's batch limit, not the graph's
    for key in ("model_version", "model_kind", "checkpoint_sha256", "outputs", "parity", "calibration", "onnx"):
        assert doc[key] == source[key]


def test_derived_manifest_refuses_a_calibration_of_another_checkpoint(exported, tmp_path):
    onnx_file = _copy_model(exported, tmp_path)
    (tmp_path / "model.plan").write_bytes(b"x")
    (tmp_path / "calibration.json").write_text(json.dumps({"model": {"checkpoint_sha256": "0" * 64}}))
    with pytest.raises(ValueError, match="another checkpoint"):
        write_derived_manifest(tmp_path / "model.plan", onnx_file, "tensorrt", {},
                               calibration=tmp_path / "calibration.json")


def test_check_tensorrt_build(exported, tmp_path):
    _, doc = _fake_engine_manifest(exported, tmp_path)
    check_tensorrt_build(doc, "10.3.0.30", "8.7")   # same TensorRT, same GPU architecture: fine
    with pytest.raises(ManifestError, match="TensorRT 10.3.0.30, this machine has TensorRT 10.7.0.23") as e:
        check_tensorrt_build(doc, "10.7.0.23", "8.7")
    assert ("edge-build --onnx model.onnx --out model.plan --precision fp16 --max-batch 4 --dla-core 0"
            in str(e.value))
    with pytest.raises(ManifestError, match="compute capability 8.7 .*this GPU has 9.0.*edge-build --onnx model.onnx"):
        check_tensorrt_build(doc, "10.3.0.30", "9.0")
    onnx_doc = load_manifest(tmp_path / "model.onnx")
    with pytest.raises(ManifestError, match="describes no TensorRT build.*edge-build"):
        check_tensorrt_build(onnx_doc, "10.3.0.30", "8.7")


# ---- the backend, without TensorRT -------------------------------------------------------

def test_plan_without_tensorrt_is_a_clear_backend_error(exported, tmp_path, monkeypatch):
    plan, _ = _fake_engine_manifest(exported, tmp_path)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendError, match="install the trt extra .*JetPack's TensorRT, or use the .onnx model"):
        open_backend(plan)


def test_tensorrt_backend_imports_without_tensorrt_or_torch():
    code = ("import sys, edge.backends.tensorrt_backend\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorrt', 'trainer', 'deploy')]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
