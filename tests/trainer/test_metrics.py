"""Tests for trainer.metrics (AUROC, AP, pixel AUROC, AU-PRO)."""

import numpy as np
import pytest

from trainer.metrics import auprc, auroc, pixel_auroc, pro_score


# --------------------------------------------------------------------------- #
# independent reference implementations (slow, obviously correct)
# --------------------------------------------------------------------------- #
def _auroc_pairwise(scores, labels):
    """P(s_pos > s_neg) + 0.5 P(s_pos == s_neg) by brute force, O(n^2)."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels).astype(bool)
    pos, neg = s[y], s[~y]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def _ap_loop(scores, labels):
    """AP = sum (R_n - R_{n-1}) P_n over distinct thresholds, descending."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels).astype(bool)
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(s.tolist()), reverse=True):
        pred = s >= t
        tp = np.sum(pred & y)
        precision = tp / np.sum(pred)
        recall = tp / np.sum(y)
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


def _pro_reference(maps, regions, good, max_fpr, num_thresholds):
    """AU-PRO with explicitly given regions (list of (img, bool HxW)) by looping thresholds."""
    thresholds = np.linspace(maps.min(), maps.max(), num_thresholds)
    fprs, pros = [0.0], [0.0]
    for t in thresholds[::-1]:
        above = maps >= t
        fprs.append(np.sum(above & good) / np.sum(good))
        pros.append(np.mean([np.sum(above[i] & r) / np.sum(r) for i, r in regions]))
    x, y = np.array(fprs), np.array(pros)
    area = 0.0
    for i in range(1, len(x)):
        x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
        if x1 <= max_fpr:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            if x0 < max_fpr:
                ym = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
                area += (max_fpr - x0) * (y0 + ym) / 2
            break
    return area / max_fpr


# --------------------------------------------------------------------------- #
# auroc
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("n,levels,seed", [(2, 3, 0), (7, 2, 1), (50, 5, 2), (333, 20, 3), (1000, 1000, 4)])
def test_auroc_matches_pairwise_reference_with_ties(n, levels, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[0], labels[-1] = 0, 1  # both classes present
    scores = rng.integers(0, levels, n) / levels  # heavy ties for small `levels`
    scores = scores + 0.3 * labels  # make it informative, not just 0.5
    got = auroc(scores, labels)
    assert isinstance(got, float)
    assert got == pytest.approx(_auroc_pairwise(scores, labels), abs=1e-12)


def test_auroc_hand_values():
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5] * 6, [0, 1, 0, 1, 1, 0]) == 0.5
    # one tie between a positive and a negative: (3 + 0.5) / 4
    assert auroc([0.1, 0.5, 0.5, 0.9], [0, 0, 1, 1]) == pytest.approx(0.875)
    # bool labels and integer scores accepted
    assert auroc(np.array([1, 2, 3]), np.array([False, True, True])) == 1.0


# --------------------------------------------------------------------------- #
# auprc
# --------------------------------------------------------------------------- #
def test_auprc_sklearn_documented_example():
    assert auprc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.8333333333)


@pytest.mark.parametrize("n,levels,seed", [(5, 2, 0), (40, 4, 1), (300, 10, 2), (500, 10_000, 3)])
def test_auprc_matches_loop_reference(n, levels, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[0], labels[-1] = 0, 1
    scores = rng.integers(0, levels, n) / levels + 0.2 * labels
    got = auprc(scores, labels)
    assert isinstance(got, float)
    assert got == pytest.approx(_ap_loop(scores, labels), abs=1e-12)


def test_auprc_hand_values():
    assert auprc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    # all tied: single threshold, precision = prevalence, recall 1
    assert auprc([0.3] * 4, [0, 1, 0, 0]) == pytest.approx(0.25)
    # tie across classes at the top: P=1/2 at R=1/2, then P=2/3 at R=1
    assert auprc([0.9, 0.9, 0.5, 0.1], [1, 0, 1, 0]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)


# --------------------------------------------------------------------------- #
# pixel_auroc
# --------------------------------------------------------------------------- #
def test_pixel_auroc_equals_flat_auroc():
    rng = np.random.default_rng(7)
    masks = rng.random((3, 16, 20)) < 0.1
    maps = (rng.integers(0, 8, masks.shape) + 2 * masks).astype(np.float32)  # ties + signal
    got = pixel_auroc(maps, masks)
    assert isinstance(got, float)
    assert got == pytest.approx(auroc(maps.ravel(), masks.ravel()), abs=1e-12)
    assert got == pytest.approx(_auroc_pairwise(maps.ravel(), masks.ravel()), abs=1e-12)
    assert pixel_auroc(maps, masks.astype(np.uint8)) == got


def test_pixel_auroc_perfect_and_reversed():
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 2:4, 2:5] = True
    assert pixel_auroc(masks.astype(float), masks) == 1.0
    assert pixel_auroc(-masks.astype(float), masks) == 0.0


# --------------------------------------------------------------------------- #
# pro_score
# --------------------------------------------------------------------------- #
def _two_regions():
    masks = np.zeros((1, 32, 32), dtype=np.uint8)
    masks[0, 4:12, 4:12] = 1  # region A, 64 px
    masks[0, 20:28, 20:28] = 1  # region B, 64 px
    return masks


def test_pro_perfect_map_is_one():
    masks = _two_regions()
    assert pro_score(masks.astype(float), masks) == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(0)
    noisy = masks + 0.4 * rng.random(masks.shape)  # still perfectly separable
    assert pro_score(noisy, masks) == pytest.approx(1.0, abs=1e-12)


def test_pro_half_of_one_region_covered():
    # Map flags half of region A; good pixels get spread-out scores in (0.05, 0.5),
    # the other region pixels get 0.  For every threshold > 0 only that half of A
    # is covered: PRO = (0.5 + 0) / 2 = 0.25 while FPR sweeps 0 -> 1, so the
    # normalised area is 0.25.
    masks = _two_regions()
    rng = np.random.default_rng(1)
    maps = np.where(masks == 0, rng.uniform(0.05, 0.5, masks.shape), 0.0)
    maps[0, 4:12, 4:8] = 1.0
    assert pro_score(maps, masks) == pytest.approx(0.25, abs=1e-9)
    # Same map but good pixels tied with the uncovered region pixels at 0: the
    # curve goes (0,0) -> (0,0.25) -> (1,1) linearly, so at FPR 0.3 PRO = 0.475
    # and the normalised area is (0.25 + 0.475) / 2 = 0.3625.
    maps2 = np.zeros(masks.shape)
    maps2[0, 4:12, 4:8] = 1.0
    assert pro_score(maps2, masks) == pytest.approx(0.3625, abs=1e-9)


def test_pro_uses_8_connectivity_and_per_region_mean():
    # A 3x3 block and one pixel touching it diagonally: one 10-pixel region with
    # 8-connectivity (covering the block -> overlap 0.9), two regions with
    # 4-connectivity (mean overlap 0.5).  Curve (0,0)->(0,0.9)->(1,1): area
    # (0.9 + 0.93) / 2 = 0.915.
    masks = np.zeros((1, 10, 10), dtype=bool)
    masks[0, 2:5, 2:5] = True
    masks[0, 5, 5] = True
    maps = np.zeros(masks.shape)
    maps[0, 2:5, 2:5] = 1.0
    assert pro_score(maps, masks) == pytest.approx(0.915, abs=1e-9)


def test_pro_regions_do_not_join_across_images():
    # Region at the bottom edge of image 0 (4 px, fully flagged) and at the top
    # edge of image 1 (12 px, not flagged): two regions -> PRO 0.5 for t > 0,
    # (a merged 16-px region would give 0.25).  Curve (0,0)->(0,0.5)->(1,1).
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 7, 2:6] = True
    masks[1, 0:3, 2:6] = True
    maps = np.zeros(masks.shape)
    maps[0, 7, 2:6] = 1.0
    assert pro_score(maps, masks) == pytest.approx((0.5 + 0.65) / 2, abs=1e-9)


def test_pro_matches_threshold_loop_reference():
    rng = np.random.default_rng(3)
    masks = np.zeros((3, 24, 24), dtype=bool)
    regions = []
    for i, (r0, r1, c0, c1) in enumerate([(2, 6, 2, 9), (14, 22, 10, 13), (5, 7, 15, 22)]):
        masks[i, r0:r1, c0:c1] = True
        regions.append((i, masks[i].copy()))
    masks[0, 16:20, 16:20] = True  # second region in image 0
    regions.append((0, np.pad(np.ones((4, 4), bool), ((16, 4), (16, 4)))))
    maps = rng.normal(size=masks.shape) + 1.5 * masks * rng.random(masks.shape)
    for max_fpr, nt in [(0.3, 200), (0.05, 37), (1.0, 10)]:
        want = _pro_reference(maps, regions, ~masks, max_fpr, nt)
        got = pro_score(maps, masks, max_fpr=max_fpr, num_thresholds=nt)
        assert got == pytest.approx(want, abs=1e-9)


def test_pro_random_map_is_near_chance():
    rng = np.random.default_rng(5)
    masks = np.zeros((4, 64, 64), dtype=bool)
    for i in range(4):
        masks[i, 8:24, 8 + 8 * i : 30 + 8 * i] = True
        masks[i, 40:56, 40:50] = True
    maps = rng.random(masks.shape)
    assert pro_score(maps, masks) == pytest.approx(0.15, abs=0.02)
    # constant map: uninformative, exactly the diagonal
    assert pro_score(np.ones(masks.shape), masks) == pytest.approx(0.15, abs=1e-12)


def test_pro_nearly_invariant_to_monotone_transform_and_converges():
    rng = np.random.default_rng(6)
    masks = np.zeros((4, 48, 48), dtype=bool)
    masks[:, 10:20, 10:30] = True
    masks[:, 30:40, 5:12] = True
    maps = rng.normal(size=masks.shape) + 1.0 * masks
    base = pro_score(maps, masks, num_thresholds=200)
    transformed = pro_score(np.exp(maps), masks, num_thresholds=200)
    assert 0.3 < base < 0.95
    assert transformed == pytest.approx(base, abs=0.02)
    # finer grids converge: the transformed/untransformed gap shrinks
    fine_base = pro_score(maps, masks, num_thresholds=5000)
    fine_tr = pro_score(np.exp(maps), masks, num_thresholds=5000)
    assert abs(fine_tr - fine_base) < abs(transformed - base)
    assert abs(fine_tr - fine_base) < 5e-3


def test_pro_accepts_float32_maps():
    masks = _two_regions()
    maps = masks.astype(np.float32) * 0.5 + np.float32(0.1)
    assert pro_score(maps, masks) == pytest.approx(1.0)


# --------------------------------------------------------------------------- #
# errors
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("fn", [auroc, auprc])
def test_scalar_metric_errors(fn):
    with pytest.raises(ValueError, match=r"needs both good \(0\) and defective \(1\) samples; got only"):
        fn([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(ValueError, match=r"got only 3 good \(0\) and 0 defective"):
        fn([0.1, 0.2, 0.3], [0, 0, 0])
    with pytest.raises(ValueError, match=r"labels must contain only 0 .* found 2"):
        fn([0.1, 0.2, 0.3], [0, 1, 2])
    with pytest.raises(ValueError, match=r"same length; got 3 scores and 2 labels"):
        fn([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match=r"must be finite; found 1 NaN and 0 inf"):
        fn([0.1, float("nan"), 0.3], [0, 1, 1])
    with pytest.raises(ValueError, match=r"must be finite; found 0 NaN and 1 inf"):
        fn([0.1, float("-inf"), 0.3], [0, 1, 1])
    with pytest.raises(ValueError, match=r"must be 1-D"):
        fn([[0.1, 0.2]], [[0, 1]])


def test_auroc_error_message_prefix():
    with pytest.raises(ValueError, match=r"^AUROC needs both good \(0\) and defective \(1\) samples; got only"):
        auroc([0.2, 0.4], [1, 1])


def test_pixel_metric_errors():
    maps = np.zeros((2, 4, 4))
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 1, 1] = True
    for fn in (pixel_auroc, pro_score):
        with pytest.raises(ValueError, match=r"maps \(2, 4, 4\) and masks \(2, 4, 5\)"):
            fn(maps, np.zeros((2, 4, 5)))
        with pytest.raises(ValueError, match=r"found 255 .*divide it by 255"):
            fn(maps, masks * np.uint8(255))
        bad = maps.copy()
        bad[1, 2, 3] = np.nan
        with pytest.raises(ValueError, match=r"maps must be finite"):
            fn(bad, masks)
    with pytest.raises(ValueError, match=r"needs both good \(0\) and defective \(1\) samples"):
        pixel_auroc(maps, np.zeros_like(masks))
    with pytest.raises(ValueError, match=r"at least one defect region"):
        pro_score(maps, np.zeros_like(masks))
    with pytest.raises(ValueError, match=r"needs good \(0\) pixels"):
        pro_score(maps, np.ones_like(masks))
    with pytest.raises(ValueError, match=r"must be 3-D"):
        pro_score(maps[0], masks[0])
    with pytest.raises(ValueError, match=r"max_fpr must be in \(0, 1\]"):
        pro_score(maps, masks, max_fpr=0.0)
    with pytest.raises(ValueError, match=r"num_thresholds must be an integer >= 2"):
        pro_score(maps, masks, num_thresholds=1)


def test_fnr_at_far_by_hand():
    from trainer.metrics import fnr_at_far
    good = np.arange(20, dtype=float)  # 0..19
    bad = np.array([25.0, 19.0, 18.5, 3.0])
    scores = np.r_[good, bad]
    labels = np.r_[np.zeros(20), np.ones(4)].astype(int)
    r = fnr_at_far(scores, labels, 0.05)  # 1 of 20 goods may be flagged -> t = 18
    assert r["threshold"] == 18.0 and r["far"] == 0.05
    assert r["fnr"] == 0.25  # only 3.0 is missed; 18.5 and 19 are above 18
    r0 = fnr_at_far(scores, labels, 0.0)  # nothing good flagged -> t = 19
    assert r0["threshold"] == 19.0 and r0["far"] == 0.0 and r0["fnr"] == 0.75  # 19, 18.5, 3 missed
    with pytest.raises(ValueError, match="far must be"):
        fnr_at_far(scores, labels, 1.0)
