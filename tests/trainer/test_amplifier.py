"""LAMP amplifiers against values computed by hand."""
import math

import pytest
import torch

from trainer.lamp import AmplifierConfig, amplify, lamp_loss


@pytest.mark.parametrize("name, alpha, l, expected, slope", [
    ("identity", 10.0, 0.3, 0.3, 1.0),
    # (e^1 - 1) / 10 and slope e^(10 * 0.1) = e
    ("exp", 10.0, 0.1, (math.e - 1) / 10, math.e),
    ("exp", 10.0, 0.2, (math.e ** 2 - 1) / 10, math.e ** 2),
    ("exp", 2.0, 0.5, (math.e - 1) / 2, math.e),
    ("exp", 10.0, 0.0, 0.0, 1.0),
    # -log(1 - 0.5) = ln 2, slope 1 / (1 - 0.5) = 2
    ("lmse", 10.0, 0.5, math.log(2), 2.0),
    ("lmse", 10.0, 0.75, math.log(4), 4.0),
])
def test_amplifier_value_and_slope(name, alpha, l, expected, slope):
    x = torch.tensor([l], dtype=torch.float64, requires_grad=True)
    y = amplify(x, AmplifierConfig(name, alpha))
    y.sum().backward()
    assert y.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert x.grad.item() == pytest.approx(slope, rel=1e-9)


def test_lmse_is_finite_at_error_one():
    y = amplify(torch.tensor([1.0], dtype=torch.float64), AmplifierConfig("lmse"))
    assert y.item() == pytest.approx(-math.log(1e-6), rel=1e-6)


def test_amplifiers_never_shrink_the_loss():
    l = torch.linspace(0, 0.99, 200, dtype=torch.float64)
    for cfg in (AmplifierConfig("exp", 0.5), AmplifierConfig("exp", 10), AmplifierConfig("lmse")):
        a = amplify(l, cfg)
        assert torch.all(a >= l - 1e-12), cfg
        assert torch.all(a[1:] > a[:-1]), f"{cfg} is not strictly increasing"


def test_exp_tends_to_identity_for_small_alpha():
    l = torch.tensor([0.05, 0.2, 0.6], dtype=torch.float64)
    assert torch.allclose(amplify(l, AmplifierConfig("exp", 1e-6)), l, atol=1e-6)


def test_identity_loss_is_mse():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 1, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g)
    assert lamp_loss(x, y, AmplifierConfig("identity")).item() == pytest.approx(
        torch.nn.functional.mse_loss(y, x).item())


def test_amplified_loss_is_elementwise_not_of_the_mean():
    # one big error among small ones: amplifying each pixel exceeds amplifying the mean
    x = torch.zeros(1, 1, 1, 4, dtype=torch.float64)
    y = torch.tensor([[[[0.0, 0.0, 0.0, 0.6]]]], dtype=torch.float64)
    cfg = AmplifierConfig("exp", 10)
    per_pixel = (math.expm1(10 * 0.36)) / 10 / 4
    assert lamp_loss(x, y, cfg).item() == pytest.approx(per_pixel)
    assert per_pixel > math.expm1(10 * 0.09) / 10


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "cube"}, "unknown amplifier"),
    ({"name": "exp", "alpha": 0.0}, "alpha > 0"),
    ({"name": "exp", "alpha": float("nan")}, "alpha > 0"),
])
def test_bad_amplifier_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AmplifierConfig(**kwargs)


def test_lmse_is_the_published_log_mse_and_neglog_still_reads():
    """LMSE (arXiv 2201.05748): mean(-log(1 - x^2)) on the residual x, for |x| < 1."""
    x = torch.tensor([0.0, 0.1, -0.5, 0.9], dtype=torch.float64)
    ours = amplify(x * x, AmplifierConfig("lmse")).mean()
    assert float(ours) == pytest.approx(float((-torch.log(1 - x * x + 1e-30)).mean()), rel=1e-9)
    assert AmplifierConfig("neglog").name == "lmse"  # configs written before the rename
