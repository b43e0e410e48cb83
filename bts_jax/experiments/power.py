"""Power of the paired comparisons (docs/design.md section 7): what a test could have detected.

A "not significant" comparison says little without its power. `detectable_difference` is the
smallest difference the paired test would detect with probability 0.8 at its level, from the
spread observed; `pairs_needed` the number of seeds (or images) a given difference would need.
Both solve the power of the two-sided paired t-test (the noncentral t, ``scipy.stats.nct``)
for the effect with ``scipy.optimize.brentq``. statsmodels' ``TTestPower.solve_power`` is not
used: for few pairs at a small level it stops short (3 pairs at alpha 0.0028 gave an effect at
which the test has power 0.22; for some inputs it returns an array), which would understate what
a few seeds cannot detect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.optimize
import scipy.stats

from bts_jax.experiments import stats

POWER = 0.8


def _sd_of_differences(a, b) -> tuple[np.ndarray, float]:
    d = stats.paired_differences(a, b)
    return d, float(np.std(d, ddof=1)) if len(d) > 1 else math.nan


def detectable_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    alpha: float,
    power: float = POWER,
) -> float:
    """The smallest paired difference a two-sided paired t-test detects, from the observed spread.

    ``d * sd`` where ``sd`` is the standard deviation of the paired differences ``b - a`` and
    ``d`` the standardised effect at which the test over ``n`` pairs at level ``alpha`` has the
    given power (`_effect`: the noncentral t). A "not significant"
    comparison then reads as "no difference larger than this, with that power". For paired
    images (a Wilcoxon test) it is the t-test's figure, which the Wilcoxon test matches to within
    its asymptotic relative efficiency (0.955 for normal differences).

    Args:
      a: values of the reference, paired with ``b`` (pairs with a non-finite value are dropped).
      b: values of the other variant.
      alpha: the (adjusted) significance level.
      power: the probability of detecting a true difference of that size.

    Returns:
      The difference in the metric's units; NaN with fewer than 2 pairs or no spread.
    """
    d, sd = _sd_of_differences(a, b)
    if not (len(d) > 1 and sd > 0):
        return math.nan
    return _effect(len(d), alpha, power) * sd


def _power(effect: float, nobs: int, alpha: float) -> float:
    """Power of a two-sided paired t-test over ``nobs`` pairs at standardised ``effect``.

    Both rejection tails of the noncentral t (``scipy.stats.nct``); the lower one is written as
    the upper tail at ``-nc``, where scipy stays finite (its ``cdf`` far in the tail is NaN).
    """
    df = nobs - 1
    critical = scipy.stats.t.ppf(1.0 - alpha / 2.0, df)
    noncentrality = effect * math.sqrt(nobs)
    return float(
        scipy.stats.nct.sf(critical, df, noncentrality)
        + scipy.stats.nct.sf(critical, df, -noncentrality)
    )


def _effect(nobs: int, alpha: float, power: float) -> float:
    """The standardised effect a two-sided paired t-test over ``nobs`` pairs detects with ``power``.

    Power rises with the effect from ``alpha`` at zero, so the root is bracketed by doubling.
    """
    high = 1.0
    while _power(high, nobs, alpha) < power:
        high *= 2.0
        if high > 1e9:
            return math.inf
    return float(
        scipy.optimize.brentq(
            lambda effect: _power(effect, nobs, alpha) - power, 0.0, high, xtol=1e-12
        )
    )


def pairs_needed(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    difference: float,
    alpha: float,
    power: float = POWER,
) -> float:
    """Pairs (seeds) a paired t-test would need to detect ``difference`` at the observed spread.

    The smallest n whose detectable standardised effect (`detectable_difference`'s) is at most
    ``difference / sd``, found by bisection over n (a root finder for n itself, as statsmodels'
    ``solve_power``, fails to converge far from its starting point).

    Args:
      a: values of the reference, paired with ``b``.
      b: values of the other variant.
      difference: the difference to detect, in the metric's units (e.g. 0.01 Dice).
      alpha: the (adjusted) significance level.
      power: the probability of detecting it.

    Returns:
      The number of pairs (at least 2); NaN with fewer than 2 pairs or no spread.
    """
    d, sd = _sd_of_differences(a, b)
    if not (len(d) > 1 and sd > 0 and difference > 0):
        return math.nan
    wanted = difference / sd
    low, high = 1, 2
    while _effect(high, alpha, power) > wanted:
        low, high = high, 2 * high
        if high > 1 << 30:
            return math.inf
    while high - low > 1:  # the smallest n in (low, high] that detects it
        middle = (low + high) // 2
        if _effect(middle, alpha, power) > wanted:
            low = middle
        else:
            high = middle
    return float(high)
