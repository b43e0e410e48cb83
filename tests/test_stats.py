"""experiments.stats against scipy.stats and numbers by hand: small n, ties, zeros, equal runs."""

import math

import numpy as np
import pytest
import scipy.stats

from bts_jax.experiments import stats


def test_mean_ci_matches_hand_computed_t_interval():
    s = stats.mean_ci([1.0, 2.0, 3.0, 4.0])
    assert s.n == 4 and s.mean == 2.5
    assert s.std == pytest.approx(math.sqrt(5 / 3))
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2  # t_{0.975, 3} from a t table
    assert (s.ci_low, s.ci_high) == pytest.approx((2.5 - half, 2.5 + half))
    wide = stats.mean_ci([1.0, 2.0, 3.0, 4.0], confidence=0.99)
    assert wide.ci_low < s.ci_low and wide.ci_high > s.ci_high


def test_mean_ci_agrees_with_scipy_and_drops_nan():
    x = np.array([0.71, 0.74, 0.69, np.nan, 0.75, 0.7])
    s = stats.mean_ci(x, confidence=0.9)
    kept = x[~np.isnan(x)]
    low, high = scipy.stats.t.interval(0.9, 4, loc=kept.mean(), scale=scipy.stats.sem(kept))
    assert s.n == 5 and s.mean == pytest.approx(kept.mean())
    assert (s.ci_low, s.ci_high) == pytest.approx((low, high))


def test_mean_ci_degenerate_inputs():
    one = stats.mean_ci([0.8])
    assert one.n == 1 and one.mean == 0.8
    assert math.isnan(one.std) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    assert math.isnan(stats.mean_ci([]).mean)
    same = stats.mean_ci([0.5, 0.5, 0.5])
    assert (same.std, same.ci_low, same.ci_high) == (0.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="confidence"):
        stats.mean_ci([1.0, 2.0], confidence=95)


def test_paired_ttest_hand_computed():
    # d = b - a = [1, 2, 2]: mean 5/3, sd 1/sqrt(3), t = 5 with 2 df.
    r = stats.paired_ttest([1.0, 2.0, 3.0], [2.0, 4.0, 5.0])
    assert r.n == 3 and r.estimate == pytest.approx(5 / 3)
    assert r.statistic == pytest.approx(5.0)
    p = 2 * (0.5 - 5 / (2 * math.sqrt(2 + 25)))  # t(2) survival: 1/2 - t / (2 sqrt(2 + t^2))
    assert r.pvalue == pytest.approx(p)
    assert r.effect == pytest.approx((5 / 3) * math.sqrt(3)) and r.effect_name == "cohens_dz"
    half = 4.302652729911275 * (1 / math.sqrt(3)) / math.sqrt(3)  # t_{0.975, 2} sd / sqrt(n)
    assert (r.ci_low, r.ci_high) == pytest.approx((5 / 3 - half, 5 / 3 + half))


def test_paired_ttest_agrees_with_scipy_and_sign_follows_b_minus_a():
    rng = np.random.default_rng(0)
    a = rng.normal(0.7, 0.02, 5)
    b = a - rng.normal(0.01, 0.01, 5)
    r = stats.paired_ttest(a, b)
    ref = scipy.stats.ttest_rel(b, a)
    ci = ref.confidence_interval(0.95)
    assert r.statistic == pytest.approx(ref.statistic) and r.pvalue == pytest.approx(ref.pvalue)
    assert (r.ci_low, r.ci_high) == pytest.approx((ci.low, ci.high))
    assert r.estimate < 0 and r.effect < 0
    swapped = stats.paired_ttest(b, a)
    assert swapped.pvalue == pytest.approx(r.pvalue) and swapped.effect == pytest.approx(-r.effect)


def test_paired_ttest_degenerate_inputs():
    same = stats.paired_ttest([0.7, 0.8, 0.75], [0.7, 0.8, 0.75])
    assert (same.pvalue, same.effect, same.estimate, same.ci_low, same.ci_high) == (1, 0, 0, 0, 0)
    shifted = stats.paired_ttest([1.0, 2.0, 3.0], [1.5, 2.5, 3.5])
    assert shifted.estimate == 0.5 and shifted.statistic == math.inf
    assert math.isnan(shifted.pvalue) and math.isnan(shifted.effect)
    single = stats.paired_ttest([0.7], [0.8])
    assert single.n == 1 and math.isnan(single.pvalue)
    dropped = stats.paired_ttest([1.0, 2.0, np.nan, 3.0], [2.0, 4.0, 1.0, 5.0])
    assert dropped.n == 3 and dropped.statistic == pytest.approx(5.0)
    with pytest.raises(ValueError, match="same length"):
        stats.paired_ttest([1.0, 2.0], [1.0, 2.0, 3.0])


def test_wilcoxon_hand_computed_exact():
    # Five positive differences: the exact two-sided p is 2 / 2^5; all ranks positive: r = 1.
    r = stats.wilcoxon_paired([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 4.0, 6.0, 8.0, 10.0])
    assert r.pvalue == pytest.approx(2 / 32) and r.statistic == 0.0
    assert r.effect == 1.0 and r.effect_name == "rank_biserial"
    assert r.estimate == 3.0  # median of the Walsh averages of 1..5
    assert r.ci_low <= r.estimate <= r.ci_high


def test_wilcoxon_zeros_split_and_ties_hand_computed():
    # d = [0, 0, 1, 2, 3]: |d| ranks 1.5, 1.5, 3, 4, 5; zsplit gives R+ = 12 + 1.5, R- = 1.5.
    r = stats.wilcoxon_paired([0.0, 0.0, 0.0, 1.0, 2.0], [0.0, 0.0, 1.0, 3.0, 5.0])
    assert r.statistic == 1.5 and r.effect == pytest.approx((13.5 - 1.5) / 15)
    assert r.pvalue == pytest.approx(
        scipy.stats.wilcoxon([0, 0, 1, 2, 3], zero_method="zsplit").pvalue
    )
    assert stats.rank_biserial([0.0, 0.0, 1.0, -1.0]) == 0.0  # tie in |d|, opposite signs


@pytest.mark.parametrize("n", [6, 40, 80])
def test_wilcoxon_agrees_with_scipy_with_ties_and_zeros(n):
    rng = np.random.default_rng(n)
    a = np.round(rng.random(n), 1)  # coarse values: many ties and zero differences
    b = np.round(np.clip(a + rng.normal(0.05, 0.15, n), 0, 1), 1)
    d = b - a
    assert (d == 0).any() and len(np.unique(np.abs(d))) < n
    r = stats.wilcoxon_paired(a, b, n_resamples=500)
    ref = scipy.stats.wilcoxon(d, zero_method="zsplit")
    assert r.pvalue == pytest.approx(ref.pvalue) and r.statistic == ref.statistic
    # R+ from scipy's one-sided statistic gives the rank-biserial correlation.
    plus = scipy.stats.wilcoxon(d, zero_method="zsplit", alternative="greater").statistic
    total = n * (n + 1) / 2
    assert r.effect == pytest.approx((2 * plus - total) / total)
    assert r.ci_low <= r.estimate <= r.ci_high


def test_wilcoxon_identical_models_and_reproducible_interval():
    x = np.linspace(0.2, 0.9, 12)
    same = stats.wilcoxon_paired(x, x)
    assert (same.pvalue, same.effect, same.estimate, same.ci_low, same.ci_high) == (1, 0, 0, 0, 0)
    y = x + np.linspace(-0.05, 0.1, 12)
    first = stats.wilcoxon_paired(x, y, n_resamples=300, seed=1)
    assert first == stats.wilcoxon_paired(x, y, n_resamples=300, seed=1)
    assert first.n == 12 and first.ci_low < first.ci_high
    assert stats.wilcoxon_paired([np.nan, 0.1], [0.2, np.nan]).n == 0


def test_hodges_lehmann_is_the_median_of_walsh_averages():
    # Walsh averages of [1, 2, 10]: 1, 2, 10, 1.5, 5.5, 6 -> median (2 + 5.5) / 2.
    assert stats.hodges_lehmann([1.0, 2.0, 10.0]) == 3.75
    assert math.isnan(stats.hodges_lehmann([]))


def test_holm_hand_computed():
    # Sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> 0.06 (monotone)
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_keeps_nan_out_of_the_count_and_is_monotone():
    np.testing.assert_allclose(stats.holm([0.5, 0.6]), [1.0, 1.0])
    adjusted = stats.holm([0.02, np.nan, 0.01])
    assert math.isnan(adjusted[1])
    np.testing.assert_allclose(adjusted[[0, 2]], [0.02, 0.02])  # m = 2 finite p-values
    p = np.random.default_rng(0).random(20)
    adjusted = stats.holm(p)
    order = np.argsort(p)
    assert (np.diff(adjusted[order]) >= 0).all() and (adjusted >= p).all() and adjusted.max() <= 1
    assert stats.holm([]).shape == (0,)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.holm([0.5, 1.5])
