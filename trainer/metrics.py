"""Evaluation metrics for anomaly detection (image level and pixel level).

All functions take array-likes (converted with :func:`numpy.asarray`), validate
their inputs, raise :class:`ValueError` with a readable message on bad input,
and return a plain Python ``float``.  Only numpy is needed, plus OpenCV
(``cv2``, imported lazily) for the connected components of :func:`pro_score`.

Conventions: label/mask 1 (or ``True``) = defective = positive class,
0 = good = negative class.  Higher score = more anomalous.

Metrics
-------
* :func:`auroc`       - image-level area under the ROC curve, exact with ties
  (Mann-Whitney U statistic, Hanley & McNeil, Radiology 143(1), 1982).
* :func:`auprc`       - average precision, the step-wise area under the
  precision-recall curve as defined by ``sklearn.metrics.average_precision_score``.
* :func:`pixel_auroc` - ROC AUC over all pixels of a set of anomaly maps.
* :func:`pro_score`   - normalised area under the Per-Region-Overlap curve up to
  a false-positive rate of ``max_fpr`` (Bergmann et al., "The MVTec Anomaly
  Detection Dataset", IJCV 129, 2021, Sec. on the PRO metric).
"""

from __future__ import annotations

import numpy as np

__all__ = ["auroc", "auprc", "fnr_at_far", "pixel_auroc", "pro_score"]

# Positives are processed in chunks of this many elements in the rank-sum
# computation so that the temporary index arrays stay small (a few MB) even for
# tens of millions of pixels.
_CHUNK = 1 << 20


# --------------------------------------------------------------------------- #
# validation helpers
# --------------------------------------------------------------------------- #
def _as_scores(x, name: str) -> np.ndarray:
    """Return ``x`` as a real numeric array with only finite values."""
    arr = np.asarray(x)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be real numbers; got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        if not finite.all():
            n_nan = int(np.isnan(arr).sum())
            n_inf = int(arr.size - finite.sum()) - n_nan
            raise ValueError(
                f"{name} must be finite; found {n_nan} NaN and {n_inf} inf value(s)"
            )
    return arr


def _as_binary(x, name: str) -> np.ndarray:
    """Return ``x`` as a boolean array; every value must be 0/1 (or bool)."""
    arr = np.asarray(x)
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be 0/1 or bool; got dtype {arr.dtype}")
    is_one = arr == 1
    ok = is_one | (arr == 0)
    if not ok.all():
        bad = np.unique(arr[~ok])
        shown = ", ".join(repr(v.item()) for v in bad[:5])
        more = "" if bad.size <= 5 else f" (+{bad.size - 5} more)"
        hint = " (a 0/255 mask? divide it by 255)" if 255 in bad else ""
        raise ValueError(
            f"{name} must contain only 0 (good) and 1 (defective); "
            f"found {shown}{more}{hint}"
        )
    return is_one


def _check_both_classes(n_pos: int, n_neg: int, metric: str) -> None:
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"{metric} needs both good (0) and defective (1) samples; got only "
            f"{n_neg} good (0) and {n_pos} defective (1)"
        )


def _validate_1d(scores, labels, metric: str) -> tuple[np.ndarray, np.ndarray]:
    s = _as_scores(scores, "scores")
    y = _as_binary(labels, "labels")
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(
            f"{metric}: scores and labels must be 1-D; got shapes {s.shape} and {y.shape}"
        )
    if s.shape != y.shape:
        raise ValueError(
            f"{metric}: scores and labels must have the same length; "
            f"got {s.shape[0]} scores and {y.shape[0]} labels"
        )
    n_pos = int(np.count_nonzero(y))
    _check_both_classes(n_pos, y.size - n_pos, metric)
    return s, y


def _validate_maps(maps, masks, metric: str) -> tuple[np.ndarray, np.ndarray]:
    m = _as_scores(maps, "maps")
    g = _as_binary(masks, "masks")
    if m.shape != g.shape:
        raise ValueError(
            f"{metric}: maps and masks must have the same shape; "
            f"got maps {m.shape} and masks {g.shape}"
        )
    return m, g


# --------------------------------------------------------------------------- #
# core computations
# --------------------------------------------------------------------------- #
def _rank_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(pos > neg) + 0.5 * P(pos == neg), computed exactly.

    This is the Mann-Whitney U statistic divided by ``n_pos * n_neg``, which
    equals the area under the empirical ROC curve with ties interpolated
    linearly (i.e. average ranks).  Negatives are sorted once; each positive is
    located with two binary searches (#neg < s and #neg <= s).  Cost:
    O((P + N) log N) time, no extra memory beyond the two copies (``neg`` is
    sorted in place, so it must be a copy the caller owns) and per-chunk index
    arrays; no O(n^2) structure and no int64 argsort over the full data.
    """
    neg.sort()  # in place: callers pass a fresh copy (boolean-index result)
    less = 0  # sum over positives of #neg < s
    less_eq = 0  # sum over positives of #neg <= s
    for i in range(0, pos.size, _CHUNK):
        chunk = pos[i : i + _CHUNK]
        less += int(np.searchsorted(neg, chunk, side="left").sum(dtype=np.int64))
        less_eq += int(np.searchsorted(neg, chunk, side="right").sum(dtype=np.int64))
    # U = #(pos > neg) + 0.5 #(pos == neg) = (less + less_eq) / 2; Python ints are exact.
    return (less + less_eq) / (2 * pos.size * neg.size)


# --------------------------------------------------------------------------- #
# public API
# --------------------------------------------------------------------------- #
def auroc(scores, labels) -> float:
    """Image-level area under the ROC curve.

    Computed as the normalised Mann-Whitney U statistic,
    ``AUROC = P(s_pos > s_neg) + 0.5 * P(s_pos == s_neg)``
    (Hanley & McNeil, Radiology 1982), which is exactly the trapezoidal area
    under the empirical ROC curve with tied scores handled by average ranks.
    Identical to ``sklearn.metrics.roc_auc_score`` for binary labels.

    Args:
        scores: 1-D array-like of finite anomaly scores (higher = more anomalous).
        labels: 1-D array-like of the same length; 1 = defective (positive),
            0 = good (negative); bool accepted.

    Returns:
        AUROC in [0, 1] (1 = perfect, 0.5 = chance / all tied, 0 = reversed).

    Raises:
        ValueError: labels not all 0/1, not 1-D, lengths differ, non-finite
            scores, or only one class present.
    """
    s, y = _validate_1d(scores, labels, "AUROC")
    return float(_rank_auc(s[y], s[~y]))


def auprc(scores, labels) -> float:
    """Average precision (step-wise area under the precision-recall curve).

    Uses the definition of ``sklearn.metrics.average_precision_score``::

        AP = sum_n (R_n - R_{n-1}) * P_n

    where ``n`` runs over the distinct score values taken as thresholds in
    decreasing order (a sample is predicted defective when ``score >= t``;
    tied scores enter together), ``P_n``/``R_n`` are precision and recall at
    that threshold and ``R_0 = 0``.  No linear interpolation between points
    (which would be optimistic; see Davis & Goadrich, ICML 2006).  A random
    scorer has AP close to the fraction of defective samples.

    Args:
        scores: 1-D array-like of finite anomaly scores (higher = more anomalous).
        labels: 1-D array-like, 1 = defective (positive), 0 = good.

    Returns:
        AP in [0, 1].

    Raises:
        ValueError: same validation as :func:`auroc`.
    """
    s, y = _validate_1d(scores, labels, "AUPRC")
    order = np.argsort(s, kind="stable")[::-1]  # decreasing score
    s_sorted = s[order]
    y_sorted = y[order]
    # Index of the last element of each group of tied scores.
    last = np.flatnonzero(np.diff(s_sorted) != 0)
    last = np.append(last, s_sorted.size - 1)
    tps = np.cumsum(y_sorted, dtype=np.int64)[last]
    predicted = last + 1  # tp + fp at each threshold
    precision = tps / predicted
    recall = tps / tps[-1]
    d_recall = np.diff(recall, prepend=0.0)
    return float(np.sum(d_recall * precision))


def pixel_auroc(maps, masks) -> float:
    """Pixel-level ROC AUC over all pixels of all images.

    Equivalent to ``auroc(maps.ravel(), masks.ravel())`` (same exact tie
    handling), but memory-frugal: the defective and good pixels are copied out
    once and the good ones sorted; no argsort index array or pairwise
    structure is built, so ~50M pixels need roughly one extra copy of the maps
    plus a boolean mask. Float32 maps are kept in float32.

    Args:
        maps: float array-like, usually (N, H, W), of per-pixel anomaly scores.
        masks: bool / 0-1 array-like of the same shape; 1 = defective pixel.

    Returns:
        Pixel AUROC in [0, 1].

    Raises:
        ValueError: shape mismatch (message names both shapes), non-binary
            masks, non-finite maps, or masks that are all 0 or all 1.
    """
    m, g = _validate_maps(maps, masks, "pixel AUROC")
    n_pos = int(np.count_nonzero(g))
    _check_both_classes(n_pos, g.size - n_pos, "pixel AUROC")
    pos = m[g]
    neg = m[~g]
    return float(_rank_auc(pos, neg))


def pro_score(maps, masks, max_fpr: float = 0.3, num_thresholds: int = 200) -> float:
    """Normalised area under the Per-Region-Overlap (PRO) curve up to ``max_fpr``.

    Definition (Bergmann, Batzner, Fauser, Sattlegger, Steger, "The MVTec
    Anomaly Detection Dataset: A Comprehensive Real-World Dataset for
    Unsupervised Anomaly Detection", IJCV 129:1038-1059, 2021): for a
    threshold ``t``,

    * ``PRO(t)`` = mean over every connected ground-truth region ``C_k``
      (8-connectivity, found per image, pooled over all images) of
      ``|C_k ∩ {map >= t}| / |C_k|`` - every defect counts equally regardless
      of its size;
    * ``FPR(t)`` = fraction of good pixels (mask == 0, all images) with
      ``map >= t``.

    The curve PRO vs FPR is anchored at (0, 0) (the limit of a threshold above
    every value), integrated with the trapezoid rule over ``FPR in [0,
    max_fpr]`` - the last segment is linearly interpolated at exactly
    ``FPR = max_fpr`` - and divided by ``max_fpr``, so a perfect map scores
    1.0 and an uninformative (random or constant) map about ``max_fpr / 2``
    (0.15 for the default 0.3), since then ``PRO(t) ≈ FPR(t)``.

    Threshold choice: ``num_thresholds`` values evenly spaced (``np.linspace``)
    between the minimum and maximum of ``maps`` (both included).  The official
    MVTec evaluation code uses every distinct map value instead; the grid is a
    discretisation of the same curve and converges to it as ``num_thresholds``
    grows (the default 200 is usually within ~1e-2; raise it for final
    numbers).  Because the grid is uniform in map values, the result is only
    approximately invariant to monotone transforms of the maps.

    Implementation: each pixel is binned once into the threshold grid
    (``searchsorted``), and per-image histograms of good pixels and of each
    region give all counts at every threshold, so memory is O(H*W) per image
    plus O(num_regions * num_thresholds), and the cost does not grow with
    ``num_thresholds`` times the pixel count.

    Args:
        maps: float array-like (N, H, W) of anomaly maps.
        masks: bool / 0-1 array-like (N, H, W), 1 = defective pixel.
        max_fpr: integration limit on the FPR axis, in (0, 1]. MVTec AD uses 0.3.
        num_thresholds: number of grid thresholds, >= 2.

    Returns:
        Normalised AU-PRO in [0, 1].

    Raises:
        ValueError: shape mismatch, not 3-D, non-binary masks, non-finite maps,
            no defect region in ``masks``, no good pixel, or bad ``max_fpr`` /
            ``num_thresholds``.
    """
    import cv2  # lazy: the rest of this module needs numpy only

    if not (0.0 < float(max_fpr) <= 1.0):
        raise ValueError(f"max_fpr must be in (0, 1]; got {max_fpr}")
    if int(num_thresholds) != num_thresholds or num_thresholds < 2:
        raise ValueError(f"num_thresholds must be an integer >= 2; got {num_thresholds}")
    max_fpr = float(max_fpr)
    num_thresholds = int(num_thresholds)

    m, g = _validate_maps(maps, masks, "PRO")
    if m.ndim != 3:
        raise ValueError(
            f"PRO: maps and masks must be 3-D (N, H, W); got shape {m.shape} "
            "(use maps[None] / masks[None] for a single image)"
        )
    if not g.any():
        raise ValueError("PRO needs at least one defect region in masks; all masks are 0")
    n_good = int(g.size - np.count_nonzero(g))
    if n_good == 0:
        raise ValueError("PRO needs good (0) pixels to compute the FPR; all masks are 1")

    lo = float(m.min())
    hi = float(m.max())
    thresholds = np.linspace(lo, hi, num_thresholds)  # endpoints are exact
    T = num_thresholds
    # bin k = number of thresholds <= value; a pixel is >= thresholds[j] iff k > j.
    good_hist = np.zeros(T + 1, dtype=np.int64)
    region_sum = np.zeros(T, dtype=np.float64)  # sum over regions of overlap(t_j)
    n_regions = 0
    for img, msk in zip(m, g):
        k = np.searchsorted(thresholds, img.astype(np.float64, copy=False), side="right")
        good_hist += np.bincount(k[~msk], minlength=T + 1)
        if not msk.any():
            continue
        n_lab, lab = cv2.connectedComponents(
            np.ascontiguousarray(msk, dtype=np.uint8), connectivity=8
        )
        n_r = n_lab - 1  # label 0 is the background (good pixels)
        if n_r == 0:
            continue
        in_region = lab > 0
        # 2-D histogram (region, bin) of the defective pixels.
        hist = np.bincount(
            (lab[in_region].astype(np.int64) - 1) * (T + 1) + k[in_region],
            minlength=n_r * (T + 1),
        ).reshape(n_r, T + 1)
        sizes = hist.sum(axis=1)
        # count >= thresholds[j] = sum over bins k > j (reverse cumulative sum).
        ge = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]
        region_sum += (ge / sizes[:, None]).sum(axis=0)
        n_regions += n_r

    fpr = np.cumsum(good_hist[::-1])[::-1][1:] / n_good
    pro = region_sum / n_regions
    # Thresholds are increasing, so fpr/pro are non-increasing: reverse them and
    # anchor at (0, 0).
    x = np.concatenate(([0.0], fpr[::-1]))
    y = np.concatenate(([0.0], pro[::-1]))
    return float(_trapezoid_upto(x, y, max_fpr) / max_fpr)


def _trapezoid_upto(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid-rule area under (x, y) for x in [x[0], x_max].

    ``x`` must be non-decreasing (repeated values = vertical steps) and end at
    or beyond ``x_max``; the segment crossing ``x_max`` is linearly
    interpolated there.
    """
    beyond = np.flatnonzero(x > x_max)
    if beyond.size:
        i = int(beyond[0])  # x[i-1] <= x_max < x[i]; i >= 1 because x[0] = 0 <= x_max
        x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        x = np.append(x[:i], x_max)
        y = np.append(y[:i], y_at)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def fnr_at_far(scores, labels, far: float = 0.05) -> dict:
    """Miss rate at a fixed false-alarm rate.

    The threshold t is the smallest score value that flags at most ``far`` of the
    good images (a part is flagged when score > t); returned with the achieved
    false-alarm rate and the false-negative rate (share of defective images with
    score <= t). The papers' FNR@FPR operating point; it ranks models, it is not
    a calibrated threshold (that is calibration/'s job, on held-out data).
    """
    if not 0 <= far < 1:
        raise ValueError(f"far must be in [0, 1), got {far}")
    s, y = _validate_1d(scores, labels, "FNR@FAR")
    s = s.astype(np.float64)
    good = np.sort(s[y == 0])
    n_good = len(good)
    allowed = int(np.floor(far * n_good + 1e-9))  # good images that may exceed t
    t = good[n_good - allowed - 1]  # exactly `allowed` goods lie strictly above t, unless ties
    return {"far_target": far, "threshold": float(t), "far": float(np.mean(good > t)),
            "fnr": float(np.mean(s[y == 1] <= t))}
