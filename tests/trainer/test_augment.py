"""SaliencyCut and CutPaste: shapes, ranges, and pixels changed only inside the chosen region."""
import pytest
import torch
import torch.nn.functional as F

from trainer.twohead.augment import _shift_off, bspline_kernel, cut_paste, pick_donors, saliency_cut, smooth_saliency


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


@pytest.mark.parametrize("s", [2, 3, 7])
def test_bspline_kernel_matches_the_zero_padded_reference_construction(s):
    # the code SaliencyCut builds on pads step i by i*s (not s - 1): a bigger kernel with zero rings
    box = torch.ones(1, 1, s, s)
    ref = box
    for i in (1, 2):
        ref = F.conv2d(ref, box, padding=i * s) / (s * s)
    k = bspline_kernel(s, 2)
    assert ref.shape[-1] == 5 * s + 2
    pad = (ref.shape[-1] - k.shape[-1]) // 2
    torch.testing.assert_close(ref[..., pad:-pad, pad:-pad], k)
    assert ref.sum().item() == pytest.approx(k.sum().item(), rel=1e-6)
    grid = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(s))
    up_ref = F.conv_transpose2d(grid, ref, stride=s, padding=(ref.shape[-1] - 1) // 2)
    up = F.conv_transpose2d(grid, k, stride=s, padding=(k.shape[-1] - 1) // 2)
    torch.testing.assert_close(up, up_ref)


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


def test_smooth_saliency_small_images_pure_and_flat_gradient():
    grad = torch.zeros(2, 1, 12, 16)   # 12 // 18 == 0: spacing 1
    grad[0, 0, 2, 3] = 5.0
    grad.requires_grad_(True)
    before = grad.detach().clone()
    s = smooth_saliency(grad)
    assert s.shape == (2, 1, 12, 16) and not s.requires_grad
    torch.testing.assert_close(grad.detach(), before)
    assert s[0].min().item() == pytest.approx(0.0, abs=1e-6) and s[0].max().item() == pytest.approx(1.0)
    y, x = divmod(int(s[0, 0].argmax()), 16)
    assert abs(y - 2) <= 1 and abs(x - 3) <= 1
    # no variation at all: eps / eps = 1, the whole map is salient (reference behaviour)
    assert torch.all(s[1] == 1)


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
    with pytest.raises(ValueError):
        saliency_cut(x, saliency, torch.tensor([0, 1]), torch.tensor([2]))


def test_saliency_cut_rgb_float64():
    x = batch(4, 3).double()
    saliency = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    new, masks = saliency_cut(x, saliency, torch.tensor([1, 1, 2]), torch.tensor([0, 3, 3]), threshold=0.5)
    assert new.shape == (3, 3, 64, 64) and new.dtype == torch.float64 and masks.dtype == torch.bool
    assert torch.equal(masks, saliency[[0, 3, 3]] > 0.5)
    torch.testing.assert_close(new, torch.where(masks, x[[1, 1, 2]], x[[0, 3, 3]]), rtol=0, atol=0)


def test_cut_paste_moves_one_rectangle():
    x = batch(8, 3)
    before = x.clone()
    new, masks = cut_paste(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(x, before)
    assert new.shape == x.shape and new.dtype == x.dtype and masks.dtype == torch.bool
    assert masks.shape == (8, 1, 64, 64) and 0 <= new.min() and new.max() <= 1
    for i in range(8):
        m = masks[i, 0]
        ys, xs = torch.nonzero(m, as_tuple=True)
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert m.sum() == h * w                       # one filled rectangle
        assert 0.02 * 64 * 64 * 0.7 <= m.sum() <= 0.15 * 64 * 64 * 1.3  # area bounds up to rounding
        assert torch.equal(new[i][:, ~m], x[i][:, ~m])  # untouched outside
        pasted = new[i][:, m].view(3, int(h), int(w))
        # the pasted block is a block of the original image found elsewhere
        h, w = int(h), int(w)
        # candidate source corners: where the block's top-left pixel occurs, then compare whole blocks
        hits = [(int(a), int(b)) for a, b in (x[i, 0, : 64 - h + 1, : 64 - w + 1] == pasted[0, 0, 0]).nonzero()]
        assert any((a, b) != (int(ys.min()), int(xs.min())) and torch.equal(x[i, :, a:a + h, b:b + w], pasted)
                   for a, b in hits)


def test_cut_paste_never_pastes_in_place():
    # unique pixel values: the pasted block occurs exactly once in the original, at its source
    n, h, w = 150, 6, 9
    x = (torch.randperm(n * h * w, generator=torch.Generator().manual_seed(0)).float() / (n * h * w)).view(n, 1, h, w)
    new, masks = cut_paste(x, torch.Generator().manual_seed(2))
    for i in range(n):
        m = masks[i, 0]
        ys, xs = torch.nonzero(m, as_tuple=True)
        rh, rw = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        block = new[i, 0, int(ys.min()):int(ys.min()) + rh, int(xs.min()):int(xs.min()) + rw]
        windows = x[i, 0].unfold(0, rh, 1).unfold(1, rw, 1)
        (src,) = (windows == block).all(-1).all(-1).nonzero().tolist()
        assert tuple(src) != (int(ys.min()), int(xs.min()))
        assert not torch.equal(new[i], x[i])
    with pytest.raises(ValueError):
        cut_paste(torch.zeros(1, 1, 1, 8), torch.Generator())


def test_shift_off_always_moves_within_bounds():
    # old rule (d + rw // 2) % (w - rw + 1) stayed put e.g. for w = 224, rw = 150 (75 % 75 == 0)
    for w in range(2, 60):
        for rw in range(1, w):
            n = w - rw + 1
            for d in range(n):
                e = _shift_off(d, rw, w)
                assert e != d and 0 <= e < n
    assert _shift_off(0, 150, 224) != 0


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
    # the only normal image may donate to itself
    assert pick_donors(torch.tensor([False, True]), torch.tensor([1, 0]), g).tolist() == [1, 1]
    with pytest.raises(ValueError, match="no good image"):
        pick_donors(torch.zeros(3, dtype=torch.bool), torch.tensor([0]), g)
