"""The two-head scorer on the EfficientNet-Lite0 backbone: model, ImageNet loading, CLI, checkpoints."""
import json

import numpy as np
import pytest
import torch

from tests.synthetic import make_mvtec_tree
from trainer.backbones import STAGE_CHANNELS, normalize_for_lite
from trainer.backbones.efficientnet_lite import WeightsNotFound, pretrained_lite0
from trainer.checkpoint import SCORER_KIND, build_model, load_checkpoint
from trainer.cli import main
from trainer.config import ScorerModelConfig, ScorerTrainConfig
from trainer.data import load_dataset
from trainer.evaluate import predict
from trainer.tensors import load_images
from trainer.twohead.backbone import Lite0Features, ResNet18Features, load_lite0_imagenet
from trainer.twohead.torch_model import TwoHeadScorer

SIZE = 112  # 112 / stride 16 = 7x7, the smallest map the residual module accepts


@pytest.fixture(autouse=True)
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def imagenet():
    try:
        return pretrained_lite0()
    except WeightsNotFound as e:
        pytest.skip(str(e))


def test_lite0_is_the_default_and_reads_stage_4():
    model = TwoHeadScorer(1, scales=(1.0,)).eval()
    assert isinstance(model.backbone, Lite0Features) and model.stride == 16
    assert model.backbone.out_channels == STAGE_CHANNELS[4] == 112
    # only what runs is built: no deeper blocks, no 1280-channel head, no classifier
    keys = model.state_dict().keys()
    assert not any(k.startswith(("backbone._fc", "backbone._conv_head", "backbone._bn1")) for k in keys)
    assert len(model.backbone._blocks) == model.backbone.stage_ends[4] + 1
    assert model.min_input_size() == 97
    with torch.no_grad():
        out = model(torch.rand(2, 1, SIZE, SIZE))
    assert out.score.shape == (2,) and out.anomaly_map.shape == (2, 1, SIZE, SIZE)


def test_grey_input_is_three_equal_channels_with_lite_normalisation():
    torch.manual_seed(0)
    grey, rgb = TwoHeadScorer(1, scales=(1.0,)).eval(), TwoHeadScorer(3, scales=(1.0,)).eval()
    rgb.load_state_dict(grey.state_dict())
    x = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        a, b = grey(x), rgb(x.repeat(1, 3, 1, 1))
        torch.testing.assert_close(a.score, b.score)
        # (255 x - 127) / 128, not ImageNet mean/std
        torch.testing.assert_close(grey.normalize(x), normalize_for_lite(x.repeat(1, 3, 1, 1)))
    assert float(grey.normalize(torch.zeros(1, 1, 2, 2)).min()) == pytest.approx(-127 / 128)


def test_two_scales_need_twice_the_size():
    model = TwoHeadScorer(1, scales=(1.0, 0.5)).eval()
    assert model.min_input_size() == 194
    with pytest.raises(ValueError, match=r"at scale 0.5 .*too small .*at least 194 px"):
        with torch.no_grad():
            model(torch.rand(1, 1, 160, 160))


def test_backbone_options_are_refused_across_backbones():
    with pytest.raises(ValueError, match="ResNet-18 options"):
        TwoHeadScorer(1, width=8)
    with pytest.raises(ValueError, match="EfficientNet-Lite0 option"):
        TwoHeadScorer(1, backbone="resnet18", stage=4)
    with pytest.raises(ValueError, match="unknown backbone"):
        TwoHeadScorer(1, backbone="vgg")
    with pytest.raises(ValueError, match="ResNet-18 options"):
        ScorerModelConfig(width=16)
    with pytest.raises(ValueError, match="needs backbone resnet18"):
        ScorerTrainConfig(pretrained="resnet18.pth")
    # resolved defaults: what a checkpoint stores
    assert ScorerModelConfig().stage == 4 and ScorerModelConfig().width is None
    old = ScorerModelConfig(backbone="resnet18")
    assert (old.width, old.output_stride, old.stage) == (16, 16, None)
    assert ScorerTrainConfig().imagenet_weights is True
    assert ScorerTrainConfig(model=old).imagenet_weights is False


def test_constructor_and_rebuild_never_read_the_weight_file(monkeypatch):
    def no_file(*_, **__):
        raise AssertionError("the weight file was read")
    monkeypatch.setattr("trainer.backbones.efficientnet_lite.default_weights_path", no_file)
    monkeypatch.setattr("trainer.twohead.backbone.load_imagenet_weights", no_file)
    model = TwoHeadScorer(1, scales=(1.0,)).eval()
    cfg = ScorerModelConfig(image_size=SIZE)
    payload = {"kind": SCORER_KIND, "model_config": {**cfg.__dict__, "scales": list(cfg.scales)},
               "state_dict": model.state_dict()}
    rebuilt = build_model(payload)
    x = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x).score, model(x).score, rtol=0, atol=0)


def test_imagenet_weights_load_into_the_cut_network(imagenet):
    backbone = Lite0Features(4)
    left_out = load_lite0_imagenet(backbone)
    assert left_out > 0  # deeper blocks, head and classifier of the file
    full = imagenet.state_dict()
    for k, v in backbone.state_dict().items():
        torch.testing.assert_close(v, full[k], rtol=0, atol=0)
    x = normalize_for_lite(torch.rand(1, 3, SIZE, SIZE))
    with torch.no_grad():
        torch.testing.assert_close(backbone.eval()(x), imagenet.features(x, (4,))[0])
    assert all(m.momentum == 0.1 for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_old_checkpoint_without_backbone_key_rebuilds_as_resnet18():
    torch.manual_seed(0)
    model = TwoHeadScorer(1, width=8, output_stride=16, scales=(1.0,), backbone="resnet18").eval()
    old_config = {"in_channels": 1, "image_size": SIZE, "width": 8, "output_stride": 16, "scales": [1.0],
                  "topk_fraction": 0.1}  # the model_config of checkpoints written before lite0
    rebuilt = build_model({"kind": SCORER_KIND, "model_config": old_config, "state_dict": model.state_dict()})
    assert isinstance(rebuilt.backbone, ResNet18Features)
    x = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x).score, model(x).score, rtol=0, atol=0)


def test_lite0_scorer_trains_and_its_checkpoint_round_trips(tmp_path, imagenet):
    data = make_mvtec_tree(tmp_path / "parts", n_train_good=8, n_test_good=3, n_defect=4, size=SIZE, seed=3)
    out = tmp_path / "run"
    assert main(["scorer", "--data", str(data), "--k", "1", "--size", str(SIZE), "--epochs", "1",
                 "--steps-per-epoch", "2", "--n-normal", "4", "--n-anomaly", "2", "--threads", "1",
                 "--quiet", "--out", str(out)]) == 0
    model, meta = load_checkpoint(out / "checkpoint.pt", SCORER_KIND)
    assert meta["model_config"]["backbone"] == "lite0" and meta["model_config"]["stage"] == 4
    assert meta["model_config"]["width"] is None and meta["model_config"]["output_stride"] is None
    config = json.loads((out / "config.json").read_text())
    assert config["imagenet_weights"] is True and config["pretrained"] is None
    # started from ImageNet and was trained: two Adam steps of 2e-4 move each weight a little
    trained, start = model.backbone._conv_stem.weight, imagenet._conv_stem.weight
    assert not torch.equal(trained, start)
    assert (trained - start).abs().max() < 2e-3
    # the rebuilt model scores the test images as the run did
    saved = np.load(out / "test_scores.npz")
    by_path = {s.path.relative_to(data).as_posix(): s for s in load_dataset(data).samples}
    scores, maps = predict(model, load_images([by_path[p] for p in saved["paths"]], SIZE, 1))
    np.testing.assert_allclose(scores, saved["scores"], rtol=1e-4, atol=1e-5)
    assert maps.shape == (len(scores), SIZE, SIZE)


@pytest.mark.parametrize("args, message", [
    (["--width", "8"], "--width is a ResNet-18 option"),
    (["--output-stride", "32", "--pretrained", "r.pth"], "--output-stride and --pretrained are ResNet-18 options"),
    (["--backbone", "resnet18", "--stage", "5"], "--stage is an EfficientNet-Lite0 option"),
    (["--backbone", "resnet18", "--from-scratch"], "--from-scratch is an EfficientNet-Lite0 option"),
])
def test_cli_refuses_options_of_the_other_backbone(tmp_path, capsys, args, message):
    assert main(["scorer", "--data", str(tmp_path), *args, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and "--backbone" in err
    assert not (tmp_path / "r").exists()  # refused before anything was written
