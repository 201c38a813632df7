"""Short real runs of the two-head scorer (both pseudo-defect generators) and the hybrid."""
import json

import numpy as np
import pytest
import torch

from tests.synthetic import make_mvtec_tree
from trainer.checkpoint import load_checkpoint
from trainer.cli import main
from trainer.data import load_dataset
from trainer.evaluate import predict
from trainer.tensors import load_images

SIZE = "112"  # 112 / output stride 16 = 7x7, the smallest map the residual module accepts
AE = ["ae", "--size", SIZE, "--depth", "2", "--base-channels", "4", "--latent-channels", "4", "--epochs", "8",
      "--batch-size", "8", "--lr", "3e-3", "--blur-sigma", "2"]
# the ResNet-18 path (from scratch, width 8): small and fast enough for a real run in a test
SCORER = ["scorer", "--backbone", "resnet18", "--size", SIZE, "--width", "8", "--epochs", "4", "--steps-per-epoch",
          "10", "--n-normal", "12", "--n-anomaly", "6", "--lr", "1e-3", "--k", "4"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hybrid")
    data = make_mvtec_tree(root / "parts", n_train_good=24, n_test_good=8, n_defect=12, size=112, seed=5)
    common = ["--data", str(data), "--seed", "0", "--quiet", "--threads", "2"]
    assert main([*AE, *common, "--out", str(root / "ae")]) == 0
    for aug in ("cutpaste", "saliencycut"):
        assert main([*SCORER, *common, "--augmentation", aug, "--out", str(root / aug)]) == 0
    assert main(["hybrid", "--ae", str(root / "ae"), "--scorer", str(root / "saliencycut"),
                 "--out", str(root / "hybrid")]) == 0
    return data, root


@pytest.mark.parametrize("aug", ["cutpaste", "saliencycut"])
def test_scorer_separates_obvious_defects(runs, aug):
    m = json.loads((runs[1] / aug / "metrics.json").read_text())
    assert m["augmentation"] == aug and m["k"] == 4
    assert m["test"]["image"]["n_defective"] == 8  # 12 defects - 4 labelled for training
    assert m["test"]["image"]["auroc"] >= 0.9, m["test"]
    log = [json.loads(x) for x in (runs[1] / aug / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and all(np.isfinite(r["loss"]) for r in log)


def test_scorer_checkpoint_round_trip(runs):
    data, root = runs
    model, meta = load_checkpoint(root / "saliencycut" / "checkpoint.pt", "two_head_scorer")
    assert meta["augmentation"] == "saliencycut" and meta["preprocess"]["size"] == 112
    saved = np.load(root / "saliencycut" / "test_scores.npz")
    by_path = {s.path.relative_to(data).as_posix(): s for s in load_dataset(data).samples}
    scores, maps = predict(model, load_images([by_path[p] for p in saved["paths"]], 112, 1))
    np.testing.assert_allclose(scores, saved["scores"], rtol=1e-4, atol=1e-5)
    assert maps.shape == (len(scores), 112, 112)


def test_hybrid_refuses_mismatched_runs(runs, tmp_path, capsys):
    data, root = runs
    common = ["--data", str(data), "--quiet", "--threads", "2"]
    assert main([*SCORER, *common, "--seed", "1", "--epochs", "1", "--steps-per-epoch", "1",
                 "--out", str(tmp_path / "other")]) == 0
    assert main(["hybrid", "--ae", str(root / "ae"), "--scorer", str(tmp_path / "other"),
                 "--out", str(tmp_path / "h")]) == 2
    assert "same --seed" in capsys.readouterr().err
    assert main(["hybrid", "--ae", str(root / "saliencycut"), "--scorer", str(root / "ae"),
                 "--out", str(tmp_path / "h")]) == 2
    assert "the lamp member needs a 'lamp_autoencoder' run" in capsys.readouterr().err


def test_scorer_rejects_too_small_input(tmp_path, capsys):
    assert main(["scorer", "--data", str(tmp_path), "--size", "64", "--out", str(tmp_path / "r")]) == 2
    assert "too small" in capsys.readouterr().err


def test_scorer_trains_from_local_pretrained_weights(tmp_path):
    """The --pretrained path: a torchvision-layout state dict on disk seeds the backbone."""
    from trainer.twohead.backbone import ResNet18Features
    source = ResNet18Features(3, 64, 32)
    torch.save({**source.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)},
               tmp_path / "resnet18.pth")
    data = make_mvtec_tree(tmp_path / "parts", n_train_good=8, n_test_good=3, n_defect=4, size=112, seed=2)
    out = tmp_path / "run"
    assert main(["scorer", "--data", str(data), "--k", "1", "--backbone", "resnet18", "--size", SIZE, "--width", "64",
                 "--epochs", "1", "--steps-per-epoch", "1", "--n-normal", "4", "--n-anomaly", "2", "--lr", "0",
                 "--pretrained", str(tmp_path / "resnet18.pth"), "--quiet", "--out", str(out)]) == 0
    model, _ = load_checkpoint(out / "checkpoint.pt", "two_head_scorer")
    # lr 0: the trained backbone still holds the file's weights (conv1 summed over RGB for gray input)
    torch.testing.assert_close(model.backbone.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.backbone.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert json.loads((out / "config.json").read_text())["pretrained"].endswith("resnet18.pth")
