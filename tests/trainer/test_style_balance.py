"""Style-balanced loss weights: under them a cluster of look says nothing about the label."""
import pytest
import torch

from trainer.patchhead.style_balance import style_balanced_weights


def two_looks(seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(40, 6, generator=g) * 0.1 + torch.tensor([5.0, 0, 0, 0, 0, 0])   # look A
    b = torch.randn(40, 6, generator=g) * 0.1 - torch.tensor([5.0, 0, 0, 0, 0, 0])   # look B
    # look A: 4 good, 36 defective; look B: 36 good, 4 defective (the look predicts the label)
    labels = torch.tensor([0.0] * 4 + [1.0] * 36 + [0.0] * 36 + [1.0] * 4)
    return torch.cat([a, b]), labels


def test_weights_make_the_label_independent_of_the_look():
    looks, labels = two_looks()
    w, summary = style_balanced_weights(looks, labels, clusters=2, seed=0, clip=100.0)
    assert sorted((c["good"], c["defective"]) for c in summary) == [(4, 36), (36, 4)]
    for part in (slice(0, 40), slice(40, 80)):
        y, wp = labels[part], w[part]
        defective_share = float((wp * y).sum() / wp.sum())
        assert defective_share == pytest.approx(0.5, abs=1e-5)  # the data set's share, in both looks
    unweighted = [float(labels[:40].mean()), float(labels[40:].mean())]
    assert unweighted == pytest.approx([0.9, 0.1])  # ... where the plain loss sees 90 % and 10 %


def test_clip_bounds_and_seeded_determinism():
    looks, labels = two_looks()
    w, _ = style_balanced_weights(looks, labels, clusters=2, seed=3, clip=2.0)
    assert float(w.max()) <= 2.0 + 1e-6 and float(w.min()) >= 0.5 - 1e-6
    again, _ = style_balanced_weights(looks, labels, clusters=2, seed=3, clip=2.0)
    assert torch.equal(w, again)
    with pytest.raises(ValueError, match="at least 2 clusters"):
        style_balanced_weights(looks, labels, clusters=1, seed=0)


def test_one_class_cluster_keeps_weight_one():
    looks, labels = two_looks()
    labels = torch.zeros_like(labels)
    labels[:36] = 1.0  # look A: 36 defective + 4 good; look B: only good
    labels[:4] = 0.0
    labels[4:40] = 1.0
    labels[40:] = 0.0
    w, summary = style_balanced_weights(looks, labels, clusters=2, seed=0)
    only_good = [c for c in summary if c["defective"] == 0][0]
    assert only_good["weight_good"] == 1.0
