"""Power of the paired comparisons: the noncentral t against a normal approximation, statsmodels
and a simulation."""

import math

import numpy as np
import pytest
import scipy.stats

from bts_jax.experiments import power


def _pairs(n, sd, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(0.6, 0.05, n)
    d = rng.normal(0.0, 1.0, n)
    d = (d - d.mean()) / d.std(ddof=1) * sd  # exactly the spread asked for
    return a, a + d


def test_detectable_difference_approaches_the_normal_approximation_for_many_pairs():
    a, b = _pairs(400, sd=0.02)
    alpha = 0.05 / 6
    z = scipy.stats.norm.ppf(1 - alpha / 2) + scipy.stats.norm.ppf(0.8)
    expected = z * 0.02 / math.sqrt(400)
    assert power.detectable_difference(a, b, alpha) == pytest.approx(expected, rel=0.01)


def test_few_seeds_detect_only_large_differences_and_the_seed_count_inverts_it():
    a, b = _pairs(5, sd=0.03)
    alpha = 0.05 / 6
    detectable = power.detectable_difference(a, b, alpha)
    # With 5 seeds at a Bonferroni-strict level the t-test needs d_z of about 2.76.
    assert detectable == pytest.approx(2.76 * 0.03, rel=0.01)
    assert power.pairs_needed(a, b, detectable, alpha) == 5
    needed = power.pairs_needed(a, b, 0.01, alpha)
    assert needed > 5
    # The count is the smallest n whose detectable difference is at most 0.01.
    more_a, more_b = _pairs(int(needed), sd=0.03)
    fewer_a, fewer_b = _pairs(int(needed) - 1, sd=0.03)
    assert power.detectable_difference(more_a, more_b, alpha) <= 0.01
    assert power.detectable_difference(fewer_a, fewer_b, alpha) > 0.01


@pytest.mark.parametrize(
    ("n", "alpha"), [(2, 0.05 / 18), (3, 0.05 / 18), (3, 0.05 / 6), (38, 0.05 / 36)]
)
def test_few_pairs_at_a_strict_level_get_the_effect_that_has_the_power(n, alpha):
    """Where statsmodels' solve_power stops short (3 pairs at 0.05/18: effect 5.5, power 0.22)."""
    from statsmodels.stats.power import TTestPower

    a, b = _pairs(n, sd=0.02)
    detectable = power.detectable_difference(a, b, alpha)
    # At the detectable difference, statsmodels' power function (where finite) and a simulation
    # of the paired t-test both give power 0.8.
    effect = detectable / 0.02
    reached = TTestPower().power(effect_size=effect, nobs=n, alpha=alpha)
    if (n, alpha) != (3, 0.05 / 6):  # statsmodels' power is NaN there (its nct.cdf tail)
        assert reached == pytest.approx(0.8, abs=1e-6)
    rng = np.random.default_rng(1)
    differences = rng.normal(detectable, 0.02, (20_000, n))
    rejected = scipy.stats.ttest_1samp(differences, 0.0, axis=1).pvalue < alpha
    assert rejected.mean() == pytest.approx(0.8, abs=0.015)


def test_degenerate_inputs_give_nan():
    assert math.isnan(power.detectable_difference([0.5], [0.6], 0.05))
    assert math.isnan(power.detectable_difference([0.5, 0.6], [0.5, 0.6], 0.05))  # no spread
    assert math.isnan(power.pairs_needed([0.5], [0.6], 0.01, 0.05))
    # Pairs with a missing value are dropped, as in the tests themselves.
    a, b = _pairs(6, sd=0.02)
    b_missing = np.append(b[:5], np.nan)
    assert power.detectable_difference(a, b_missing, 0.05) == power.detectable_difference(
        a[:5], b[:5], 0.05
    )
