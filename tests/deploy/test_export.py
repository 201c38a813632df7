"""ONNX export of every run kind, checked with the real ONNX Runtime."""
import json
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from deploy.export import ParityError, export_onnx, main, parity
from tests.synthetic import make_mvtec_tree
from trainer.checkpoint import load_checkpoint
from trainer.cli import main as train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = make_mvtec_tree(root / "parts", n_train_good=16, n_test_good=4, n_defect=6, size=112, seed=8)
    common = ["--data", str(data), "--seed", "0", "--quiet", "--threads", "2", "--size", "112"]
    assert train(["ae", *common, "--depth", "2", "--base-channels", "4", "--latent-channels", "4", "--epochs", "2",
                  "--out", str(root / "ae")]) == 0
    assert train(["scorer", *common, "--k", "2", "--backbone", "resnet18", "--width", "8", "--epochs", "1",
                  "--steps-per-epoch", "2", "--n-normal", "8", "--n-anomaly", "4", "--out", str(root / "sc")]) == 0
    assert train(["hybrid", "--ae", str(root / "ae"), "--scorer", str(root / "sc"), "--out", str(root / "hy")]) == 0
    return root


def test_hybrid_export_dynamic_batch_and_parity(runs, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["--run", str(runs / "hy"), "--out", str(out)]) == 0
    assert "parity vs torch" in capsys.readouterr().out
    report = json.loads((tmp_path / "model.onnx.json").read_text())
    assert report["outputs"] == ["score", "anomaly_map", "member_scores"]
    assert report["member_names"] == ["lamp", "two_head"]
    graph = onnx.load(str(out)).graph
    assert [o.name for o in graph.output] == report["outputs"] and graph.input[0].name == "images"
    # every weight is inside the one file the manifest's sha256 covers (no external .data file)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.json", "model.onnx.manifest.json"]
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in graph.initializer)
    model, _ = load_checkpoint(runs / "hy" / "checkpoint.pt")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 7):  # dynamic batch, sizes the export never saw
        x = torch.rand(batch, 1, 112, 112, generator=torch.Generator().manual_seed(batch))
        got = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            ref = model(x)
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a, b.numpy(), atol=1e-3, rtol=1e-3)
        assert got[0].shape == (batch,) and got[1].shape == (batch, 1, 112, 112)


@pytest.mark.parametrize("kind", ["ae", "sc"])
def test_member_exports(runs, tmp_path, kind):
    report = export_onnx(runs / kind, tmp_path / "m.onnx")
    assert report["outputs"][:2] == ["score", "anomaly_map"]
    assert max(report["parity"]["max_abs_diff"].values()) <= 1e-3 * 10


def test_parity_catches_a_wrong_graph(runs, tmp_path):
    export_onnx(runs / "ae", tmp_path / "m.onnx")
    x = np.random.default_rng(0).random((2, 1, 112, 112), dtype=np.float32)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    score, amap = sess.run(None, {"images": x})
    with pytest.raises(ParityError, match="score"):
        parity(tmp_path / "m.onnx", x, [score + 0.01, amap], ["score", "anomaly_map"])


def test_export_of_a_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["--run", str(tmp_path / "nope"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "not a complete run directory" in capsys.readouterr().err


def test_triton_repository_layout_and_config(runs, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2
    out = tmp_path / "model.onnx"
    assert main(["--run", str(runs / "hy"), "--out", str(out), "--triton", str(tmp_path / "repo")]) == 0
    model_dir = tmp_path / "repo" / "edge_inspect"
    assert (model_dir / "1" / "model.onnx").read_bytes() == out.read_bytes()
    assert (model_dir / "1" / "model.onnx.manifest.json").is_file()
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    graph = onnx.load(str(out)).graph
    assert config.name == "edge_inspect" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
    assert [i.name for i in config.input] == [i.name for i in graph.input] == ["images"]
    assert list(config.input[0].dims) == [1, 112, 112]
    assert [o.name for o in config.output] == [o.name for o in graph.output]
    by_name = {o.name: o for o in config.output}
    assert list(by_name["score"].dims) == [1] and list(by_name["score"].reshape.shape) == []
    assert list(by_name["anomaly_map"].dims) == [1, 112, 112]
    assert config.HasField("dynamic_batching")


def test_export_prints_no_torch_exporter_noise(tmp_path, capfd):
    """torch's ONNX exporter logs "torchvision is not installed. Skipping torchvision::nms" (4 ops) and
    warns "`isinstance(treespec, LeafSpec)` is deprecated" (FutureWarning); users read them as errors,
    so edge-export silences exactly those two (deploy.export._quiet_onnx_exporter), nothing else."""
    import warnings

    from tests.synthetic import export_tiny_autoencoder

    # torch's loggers do not propagate to the root logger (caplog sees nothing) and torch's stderr handler
    # was bound before capfd started, so the exporter's log records are collected here as well
    class Collect(logging.Handler):
        def __init__(self):
            super().__init__()
            self.records = []

        def emit(self, record):
            self.records.append(record.getMessage())

    collect, onnx_logger = Collect(), logging.getLogger("torch.onnx")
    onnx_logger.addHandler(collect)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # pytest would otherwise record warnings instead of printing them
            export_tiny_autoencoder(tmp_path, tmp_path / "run", tmp_path / "m.onnx")
    finally:
        onnx_logger.removeHandler(collect)
    out, err = capfd.readouterr()
    assert "parity vs torch" in out
    for text in (out, err, "\n".join(collect.records), "\n".join(str(w.message) for w in caught)):
        assert "torchvision is not installed" not in text
        assert "LeafSpec" not in text
    # the log filter is scoped to the export: the exporter's logger is left as it was found
    assert not logging.getLogger("torch.onnx._internal.exporter._registration").filters
