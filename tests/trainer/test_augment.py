"""SaliencyCut and CutPaste: shapes, ranges, and pixels changed only inside the chosen region."""
import pytest
import torch
import torch.nn.functional as F

from trainer.twohead.augment import bspline_kernel, cut_paste, pick_donors, saliency_cut, smooth_saliency


def batch(n=6, c=1, h=64, w=64, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("s", [1, 2, 5, 7])
def test_bspline_kernel(s):
    k = bspline_kernel(s, 2)
    # a box of width s convolved twice (full convolution): 3s - 2 taps
    assert k.shape == (1, 1, 3 * s - 2, 3 * s - 2)
    assert torch.all(k >= 0)
    torch.testing.assert_close(k, k.flip(-1).flip(-2))
    assert k.sum().item() == pytest.approx(s * s, rel=1e-5)
    # a constant grid upsampled stays constant in the interior
    up = F.conv_transpose2d(torch.full((1, 1, 10, 10), 0.7), k, stride=s, padding=(k.shape[-1] - 1) // 2)
    m = 3 * s
    assert torch.allclose(up[..., m:-m, m:-m], torch.tensor(0.7), atol=1e-5)


@pytest.mark.parametrize("h, w", [(128, 128), (64, 64), (96, 128)])
def test_smooth_saliency_range_shape_and_location(h, w):
    grad = torch.zeros(2, 3, h, w)
    grad[0, :, : h // 4, : w // 4] = 1.0     # top-left corner
    grad[1, :, -h // 4:, -w // 4:] = -2.0    # bottom-right corner, sign irrelevant
    s = smooth_saliency(grad)
    assert s.shape == (2, 1, h, w)
    for i in range(2):
        assert s[i].min().item() == pytest.approx(0.0, abs=1e-6) and s[i].max().item() == pytest.approx(1.0)
    y, x = divmod(int(s[0, 0].argmax()), w)
    assert y < h // 2 and x < w // 2
    y, x = divmod(int(s[1, 0].argmax()), w)
    assert y >= h // 2 and x >= w // 2


def test_saliency_cut_changes_only_the_salient_region():
    x = batch()
    saliency = torch.zeros(6, 1, 64, 64)
    saliency[2, :, 10:30, 20:40] = 0.9
    saliency[3, :, 5:8, 5:8] = 0.41
    before = x.clone()
    new, masks = saliency_cut(x, saliency, torch.tensor([0, 1]), torch.tensor([2, 3]))
    assert new.shape == (2, 1, 64, 64) and new.dtype == x.dtype
    assert 0 <= new.min() and new.max() <= 1
    torch.testing.assert_close(x, before)  # inputs untouched
    assert masks[0].sum() == 20 * 20 and masks[1].sum() == 9
    for i, (cand, donor) in enumerate([(0, 2), (1, 3)]):
        m = masks[i].expand_as(new[i])
        assert torch.equal(new[i][~m], x[donor][~m])  # donor everywhere else
        assert torch.equal(new[i][m], x[cand][m])     # candidate inside the salient region


def test_cut_paste_moves_one_rectangle():
    x = batch(8, 3)
    before = x.clone()
    new, masks = cut_paste(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(x, before)
    assert new.shape == x.shape and 0 <= new.min() and new.max() <= 1
    for i in range(8):
        m = masks[i, 0]
        ys, xs = torch.nonzero(m, as_tuple=True)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert m.sum() == h * w                       # one filled rectangle
        assert 0.02 * 64 * 64 * 0.7 <= m.sum() <= 0.15 * 64 * 64 * 1.3  # area bounds up to rounding
        assert torch.equal(new[i][:, ~m], x[i][:, ~m])  # untouched outside
        pasted = new[i][:, m].view(3, int(h), int(w))
        # the pasted block is a block of the original image found elsewhere
        windows = x[i].unfold(1, int(h), 1).unfold(2, int(w), 1)  # (3, H-h+1, W-w+1, h, w)
        hits = (windows == pasted[:, None, None]).all(-1).all(-1).all(0).nonzero()
        assert any((int(a), int(b)) != (int(ys.min()), int(xs.min())) for a, b in hits)


def test_cut_paste_is_deterministic_per_generator():
    x = batch()
    a, _ = cut_paste(x, torch.Generator().manual_seed(5))
    b, _ = cut_paste(x, torch.Generator().manual_seed(5))
    c, _ = cut_paste(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pick_donors():
    g = torch.Generator().manual_seed(0)
    is_normal = torch.tensor([True, True, False, True, False])
    for _ in range(20):
        d = pick_donors(is_normal, torch.tensor([0, 2, 4, 3]), g)
        assert all(is_normal[d])
        assert d[0] != 0 and d[3] != 3
    with pytest.raises(ValueError, match="no good image"):
        pick_donors(torch.zeros(3, dtype=torch.bool), torch.tensor([0]), g)
