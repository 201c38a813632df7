"""Backend selection, the manifest check, and the ONNX Runtime backend on a real exported model."""
import json
import shutil

import numpy as np
import pytest
import torch

from edge.backends import BackendError, open_backend
from edge.manifest import ManifestError, load_manifest
from tests.synthetic import export_tiny_autoencoder
from trainer.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("backend")
    export_tiny_autoencoder(root, root / "run", root / "model.onnx")
    return root


def test_onnx_backend_matches_torch(exported):
    backend = open_backend(exported / "model.onnx")
    assert backend.input_shape == (1, 32, 32) and backend.output_names[:2] == ["score", "anomaly_map"]
    x = np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)
    out = backend.infer(x)
    model, _ = load_checkpoint(exported / "run" / "checkpoint.pt")
    with torch.no_grad():
        ref = model(torch.from_numpy(x))
    np.testing.assert_allclose(out["score"], ref.score.numpy(), atol=1e-4, rtol=1e-4)
    assert out["anomaly_map"].shape == (3, 1, 32, 32)
    manifest = load_manifest(exported / "model.onnx")
    assert manifest["model_version"].startswith("run-") and manifest["calibration"] is None


@pytest.mark.parametrize("bad, match", [
    (np.zeros((1, 1, 32, 32), np.float64), "float32"),
    (np.zeros((1, 3, 32, 32), np.float32), "got \\(1, 3, 32, 32\\)"),
    (np.zeros((0, 1, 32, 32), np.float32), "1..64"),
])
def test_bad_batches_are_refused(exported, bad, match):
    with pytest.raises(BackendError, match=match):
        open_backend(exported / "model.onnx").infer(bad)


def test_tampered_truncated_and_unmanifested_engines(exported, tmp_path):
    for name in ("model.onnx", "model.onnx.manifest.json"):
        shutil.copy(exported / name, tmp_path / name)
    engine = tmp_path / "model.onnx"
    engine.write_bytes(engine.read_bytes()[:-100])
    with pytest.raises(ManifestError, match="sha256 differs"):
        open_backend(engine)
    (tmp_path / "model.onnx.manifest.json").unlink()
    with pytest.raises(ManifestError, match="no manifest"):
        open_backend(engine)


def test_not_a_model_and_unknown_suffix(exported, tmp_path):
    engine = tmp_path / "model.onnx"
    engine.write_bytes(b"this is not an onnx model")
    doc = json.loads((exported / "model.onnx.manifest.json").read_text())
    from edge.manifest import sha256_file
    doc["engine"]["sha256"] = sha256_file(engine)
    (tmp_path / "model.onnx.manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BackendError, match="not a loadable ONNX model"):
        open_backend(engine)
    with pytest.raises(BackendError, match="engines end in .onnx or .plan"):
        open_backend(tmp_path / "model.pt")


def test_manifest_of_another_version_is_refused(exported, tmp_path):
    for name in ("model.onnx", "model.onnx.manifest.json"):
        shutil.copy(exported / name, tmp_path / name)
    doc = json.loads((tmp_path / "model.onnx.manifest.json").read_text())
    doc["format_version"] = 99
    (tmp_path / "model.onnx.manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match="format 99"):
        load_manifest(tmp_path / "model.onnx")
