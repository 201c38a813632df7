"""The false-alarm guarantee, checked on scores from known distributions."""
import math

import numpy as np
import pytest

from calibration.thresholds import (TooFewImagesError, binom_cdf, clopper_pearson_upper, fit_threshold,
                                    min_calibration_size, miss_rate)


def normal_sf(t):
    return 0.5 * math.erfc(t / math.sqrt(2))


def test_binom_cdf_against_direct_sum():
    for n, p in [(10, 0.3), (300, 0.01), (50, 0.5)]:
        for j in (0, 1, 3, 7):
            direct = sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(j + 1))
            assert binom_cdf(j, n, p) == pytest.approx(direct, rel=1e-9)


def test_min_calibration_size():
    assert min_calibration_size(0.01, 0.95) == 299    # ln(0.05) / ln(0.99) = 298.07
    assert min_calibration_size(0.005, 0.95) == 598
    assert min_calibration_size(0.05, 0.95) == 59
    assert min_calibration_size(0.01, guarantee="marginal") == 99


@pytest.mark.parametrize("n, far, confidence", [(300, 0.01, 0.95), (1000, 0.01, 0.9), (200, 0.05, 0.95)])
def test_pac_bound_holds_on_fresh_draws(n, far, confidence):
    """Over many calibration sets from N(0, 1), the share whose threshold has a true
    false-alarm rate above the target stays within 1 - confidence (plus Monte-Carlo slack)."""
    rng = np.random.default_rng(0)
    trials = 3000
    exceed = 0
    for _ in range(trials):
        fit = fit_threshold(rng.standard_normal(n), far, confidence)
        exceed += normal_sf(fit.threshold) > far
    rate = exceed / trials
    slack = 3 * math.sqrt((1 - confidence) * confidence / trials)
    assert rate <= (1 - confidence) + slack, rate
    # and the bound is not vacuous: the achieved rate is close to the target on average
    assert normal_sf(fit.threshold) < 3 * far


def test_fresh_draws_false_alarms_at_the_threshold():
    """The operational reading: new good parts scored against one fitted threshold."""
    rng = np.random.default_rng(1)
    fit = fit_threshold(rng.exponential(size=600), 0.01, 0.95)
    fresh = rng.exponential(size=200_000)
    assert np.mean(fresh > fit.threshold) <= 0.01 + 0.001  # true FAR = exp(-t) here


def test_marginal_guarantee_holds_on_average():
    rng = np.random.default_rng(2)
    fars = [normal_sf(fit_threshold(rng.standard_normal(150), 0.02, guarantee="marginal").threshold)
            for _ in range(3000)]
    assert np.mean(fars) <= 0.02 + 3 * np.std(fars) / math.sqrt(len(fars))


def test_too_few_images_says_how_many():
    with pytest.raises(TooFewImagesError, match="at least 299 held-out good images, got 113"):
        fit_threshold(np.arange(113.0), 0.01, 0.95)
    with pytest.raises(TooFewImagesError, match="at least 99"):
        fit_threshold(np.arange(50.0), 0.01, guarantee="marginal")


def test_fit_threshold_order_statistic_and_ties():
    s = np.arange(1, 301, dtype=float)  # 1..300
    fit = fit_threshold(s, 0.01, 0.95)
    # j = largest with BinomCDF(j; 300, 0.01) <= 0.05: j = 0 (cdf(0) = 0.049, cdf(1) = 0.197)
    assert fit.exceedances_allowed == 0 and fit.threshold == 300.0 and fit.empirical_far == 0.0
    fit = fit_threshold(np.r_[s, s, s, s], 0.01, 0.95)  # n = 1200, ties everywhere
    assert fit.exceedances_allowed >= 5 and fit.empirical_far <= 0.01
    with pytest.raises(ValueError, match="finite"):
        fit_threshold([1.0, float("nan")], 0.5)


def test_miss_rate_and_upper_bound():
    r = miss_rate([0.1, 0.5, 2.0, 3.0], threshold=1.0)
    assert r["missed"] == 2 and r["estimate"] == 0.5 and r["n_defective"] == 4
    assert 0.5 < r["upper_95"] < 1
    # Clopper-Pearson with 0 of n: 1 - 0.05 ** (1 / n)
    assert clopper_pearson_upper(0, 20) == pytest.approx(1 - 0.05 ** (1 / 20), rel=1e-6)


def test_the_smallest_guaranteed_rate_and_the_images_a_target_needs_are_stated():
    from calibration.thresholds import smallest_guaranteed_far
    rng = np.random.default_rng(0)
    fit = fit_threshold(rng.normal(size=71), 0.05)   # the case: 71 validation good images
    assert fit.exceedances_allowed == 0 and fit.images_needed == 59
    assert fit.smallest_guaranteed_far == pytest.approx(1 - 0.05 ** (1 / 71))   # 4.13%
    assert "down to 4.13%" in fit.sample_size_note and "order statistic 71 of 71" in fit.sample_size_note
    assert "--good DIR" in fit.sample_size_note
    for n in (59, 299, 1000):   # the inverse of min_calibration_size
        assert min_calibration_size(smallest_guaranteed_far(n) * (1 + 1e-9)) <= n
        assert min_calibration_size(smallest_guaranteed_far(n) * 0.99) > n
    assert smallest_guaranteed_far(99, guarantee="marginal") == pytest.approx(0.01)
    with pytest.raises(TooFewImagesError, match="the smallest rate 58 can guarantee is 5.0"):
        fit_threshold(rng.normal(size=58), 0.05)
