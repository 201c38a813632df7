"""Autoencoder, anomaly map and pooling: shapes, values and contracts."""
import pytest
import torch

from trainer.lamp import AnomalyMapConfig, AnomalyMapGenerator, LampAutoencoder, LampDetector, LampOutput
from trainer.lamp.anomaly_map import gaussian_kernel1d


@pytest.mark.parametrize("channels, size, depth", [(1, 32, 2), (3, 64, 3), (1, 64, 1)])
def test_autoencoder_shapes_and_range(channels, size, depth):
    ae = LampAutoencoder(channels, size, base_channels=4, depth=depth, latent_channels=4).eval()
    x = torch.rand(3, channels, size, size)
    with torch.no_grad():
        y = ae(x)
    assert y.shape == x.shape
    assert float(y.min()) >= 0 and float(y.max()) <= 1


def test_autoencoder_rejects_size_not_divisible():
    with pytest.raises(ValueError, match="divisible by 2\\*\\*depth = 16"):
        LampAutoencoder(1, 100, depth=4)
    with pytest.raises(ValueError, match="in_channels"):
        LampAutoencoder(2, 64)


def test_detector_output_is_typed_and_shaped():
    det = LampDetector(LampAutoencoder(1, 32, 4, 2, 4), AnomalyMapConfig(blur_sigma=1.0)).eval()
    out = det(torch.rand(5, 1, 32, 32))
    assert isinstance(out, LampOutput) and out._fields == ("score", "anomaly_map")
    assert out.score.shape == (5,) and out.anomaly_map.shape == (5, 1, 32, 32)


def test_gaussian_kernel_is_normalised_and_symmetric():
    k = gaussian_kernel1d(2.0)
    assert k.numel() == 13 and k.sum().item() == pytest.approx(1.0)
    assert torch.allclose(k, k.flip(0))


def test_map_is_residual_when_unblurred_and_blur_preserves_mass_inside():
    gen = AnomalyMapGenerator(AnomalyMapConfig(blur_sigma=0))
    x = torch.zeros(1, 3, 16, 16)
    r = x.clone()
    r[0, :, 5, 7] = torch.tensor([0.3, 0.6, 0.9])
    m = gen(x, r)
    assert m.shape == (1, 1, 16, 16)
    assert m[0, 0, 5, 7].item() == pytest.approx((0.09 + 0.36 + 0.81) / 3)
    assert m.sum().item() == pytest.approx(m[0, 0, 5, 7].item())
    blurred = AnomalyMapGenerator(AnomalyMapConfig(blur_sigma=1.0))(x, r)
    assert blurred.sum().item() == pytest.approx(m.sum().item(), rel=1e-5)  # away from the border
    assert blurred[0, 0, 5, 7] == blurred.max()


def test_pooling_modes():
    m = torch.zeros(2, 1, 10, 10)
    m[0, 0, 0, :] = torch.arange(10, dtype=torch.float32)  # top values 9, 8, ...
    m[1] = 1.0
    assert AnomalyMapGenerator(AnomalyMapConfig(pooling="max")).pool(m).tolist() == [9.0, 1.0]
    assert AnomalyMapGenerator(AnomalyMapConfig(pooling="mean")).pool(m).tolist() == pytest.approx([0.45, 1.0])
    # top 3% of 100 pixels = 3 pixels: (9 + 8 + 7) / 3
    topk = AnomalyMapGenerator(AnomalyMapConfig(pooling="topk_mean", topk_fraction=0.03)).pool(m)
    assert topk.tolist() == pytest.approx([8.0, 1.0])


@pytest.mark.parametrize("kwargs", [{"pooling": "median"}, {"topk_fraction": 0}, {"blur_sigma": -1}])
def test_bad_map_config(kwargs):
    with pytest.raises(ValueError):
        AnomalyMapConfig(**kwargs)
