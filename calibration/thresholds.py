"""Alert thresholds from good parts alone, with a finite-sample false-alarm guarantee.

A part is flagged when its score is above the threshold t. The false-alarm rate
of t is FAR(t) = P(score of a new good part > t). We only see n held-out good
scores, so t is an order statistic of them, chosen so that FAR is bounded:

* ``guarantee="pac"`` (default): with probability >= ``confidence`` over the draw
  of the calibration set, FAR(t) <= target. If t is the order statistic with
  exactly j calibration scores above it, then for continuous scores
  P(FAR(t) > a) = P(Binomial(n, a) <= j)   [the number of the n scores above the
  (1 - a)-quantile is Binomial(n, a); FAR(t) > a iff at most j of them are];
  we take the largest j with BinomCDF(j; n, a) <= 1 - confidence. With j = 0 that
  needs (1 - a)^n <= 1 - confidence, i.e. n >= ln(1 - confidence) / ln(1 - a):
  299 good parts for a = 1% at 95%, 598 for 0.5%.
* ``guarantee="marginal"`` (split conformal, Vovk et al. 2005; Angelopoulos & Bates,
  arXiv 2107.07511, Sec. 1): t = the ceil((n + 1)(1 - a))-th smallest score gives
  E[FAR(t)] <= a averaged over calibration sets; needs n >= 1/a - 1.

Ties at t only lower the rate (a tied part is not flagged), so both bounds hold
for discrete scores too. Fitting uses good parts only (no defect is needed to
set a false-alarm rate: the anomalib users' complaint about F1-fitted thresholds).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

GUARANTEES = ("pac", "marginal")


class TooFewImagesError(ValueError):
    """Not enough held-out good images for the requested rate and confidence."""


def binom_cdf(j: int, n: int, p: float) -> float:
    """P(Binomial(n, p) <= j), summed in log space (exact for the n used here)."""
    if j < 0:
        return 0.0
    if j >= n or p <= 0:
        return 1.0
    if p >= 1:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(j + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def min_calibration_size(far: float, confidence: float = 0.95, guarantee: str = "pac") -> int:
    """Fewest good images for which a threshold with the guarantee exists."""
    _check(far, confidence, guarantee)
    if guarantee == "marginal":
        return math.ceil(1 / far - 1 - 1e-12)
    return math.ceil(math.log(1 - confidence) / math.log1p(-far) - 1e-12)


def smallest_guaranteed_far(n: int, confidence: float = 0.95, guarantee: str = "pac") -> float:
    """The lowest false-alarm rate that ``n`` good images can guarantee (inverse of
    ``min_calibration_size``): pac 1 - (1 - c)^(1/n), with the threshold at the highest good
    score; marginal 1 / (n + 1)."""
    if n < 1:
        raise ValueError("need at least one good image")
    if guarantee == "marginal":
        return 1.0 / (n + 1)
    return -math.expm1(math.log(1 - confidence) / n)


def _check(far: float, confidence: float, guarantee: str) -> None:
    if not 0 < far < 1:
        raise ValueError(f"target false-alarm rate must be in (0, 1), got {far}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if guarantee not in GUARANTEES:
        raise ValueError(f"guarantee must be one of {', '.join(GUARANTEES)}, got {guarantee!r}")


@dataclass(frozen=True)
class ThresholdFit:
    threshold: float
    target_far: float
    confidence: float | None     # pac only
    guarantee: str
    n_good: int
    exceedances_allowed: int     # calibration scores allowed above the threshold (order statistic n - j)
    empirical_far: float         # share of calibration scores above the threshold
    statement: str
    smallest_guaranteed_far: float   # the lowest target these n images could have guaranteed
    images_needed: int               # the fewest good images the asked-for target needs
    sample_size_note: str            # the two above, and what to do, in plain words

    def to_dict(self) -> dict:
        return asdict(self)


def fit_threshold(good_scores, far: float, confidence: float = 0.95, guarantee: str = "pac") -> ThresholdFit:
    """Threshold for ``far`` from held-out good scores (see the module docstring)."""
    _check(far, confidence, guarantee)
    s = np.sort(np.asarray(good_scores, dtype=np.float64).ravel())
    if s.size == 0 or not np.all(np.isfinite(s)):
        raise ValueError("good scores must be a non-empty set of finite numbers")
    n = s.size
    needed = min_calibration_size(far, confidence, guarantee)
    if n < needed:
        what = (f"{confidence:.0%} confidence" if guarantee == "pac" else "the marginal (conformal) guarantee")
        raise TooFewImagesError(
            f"a false-alarm rate of {far:g} with {what} needs at least {needed} held-out good images, "
            f"got {n} (the smallest rate {n} can guarantee is {smallest_guaranteed_far(n, confidence, guarantee):.2%}): "
            f"add good images the model never saw (--good DIR, or --data), raise --target-far, "
            + ("or lower --confidence / use --guarantee marginal" if guarantee == "pac" else "or both"))
    if guarantee == "marginal":
        rank = math.ceil((n + 1) * (1 - far) - 1e-12)  # 1-based rank
        j = n - rank
        statement = (f"averaged over calibration sets, the false-alarm rate on new good parts is <= {far:g} "
                     f"(split conformal, n = {n})")
    else:
        j = 0
        while binom_cdf(j + 1, n, far) <= 1 - confidence:
            j += 1
        statement = (f"with probability >= {confidence:g} over the calibration draw, the false-alarm rate on "
                     f"new good parts is <= {far:g} (order statistic {n - j} of {n}, binomial bound)")
    t = float(s[n - j - 1])
    floor = smallest_guaranteed_far(n, confidence, guarantee)
    note = (f"{n} good images guarantee a false-alarm rate down to {floor:.2%}; the target {far:g} needs at "
            f"least {needed}")
    if j == 0:
        note += (f"; with {n} images no good score may lie above the threshold, so it is the highest good score "
                 f"(order statistic {n} of {n}): a tighter, more sensitive threshold needs more good images the "
                 f"model never saw (--good DIR)")
    return ThresholdFit(threshold=t, target_far=far, confidence=confidence if guarantee == "pac" else None,
                        guarantee=guarantee, n_good=n, exceedances_allowed=j,
                        empirical_far=float(np.mean(s > t)), statement=statement,
                        smallest_guaranteed_far=floor, images_needed=needed, sample_size_note=note)


def clopper_pearson_upper(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided exact upper confidence bound for a binomial proportion k/n."""
    if n <= 0:
        raise ValueError("need at least one trial")
    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):  # bisection on P(Binomial(n, p) <= k) = 1 - confidence
        mid = (lo + hi) / 2
        if binom_cdf(k, n, mid) > 1 - confidence:
            lo = mid
        else:
            hi = mid
    return hi


def miss_rate(defect_scores, threshold: float, confidence: float = 0.95) -> dict:
    """Share of held-out defective parts not flagged (score <= t), with an exact upper bound."""
    d = np.asarray(defect_scores, dtype=np.float64).ravel()
    missed = int(np.sum(d <= threshold))
    return {"estimate": missed / d.size, "missed": missed, "n_defective": int(d.size),
            f"upper_{round(confidence * 100)}": clopper_pearson_upper(missed, d.size, confidence)}
