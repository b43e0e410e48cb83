"""Statistics for comparing trained variants (docs/design.md section 7): small functions over numpy.

- `mean_ci`: mean, standard deviation and t confidence interval of one metric over seeds.
- `paired_ttest`: variant b against variant a over seeds (paired by seed).
- `wilcoxon_paired`: b against a over test images (paired by image).
- `holm`: Holm's step-down adjustment of a family of p-values.

The tests come from ``scipy.stats``; this module adds the conventions around them (degenerate
inputs, effect sizes, intervals). Differences are always ``b - a``: with a = the baseline, a
positive estimate means the variant scores higher. Pairs where either value is not finite (NaN,
inf) are dropped before testing; ``n`` counts the pairs that were used.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import numpy as np
import scipy.stats

# Bootstrap resamples for the Hodges-Lehmann interval: the percentile interval's end points move by
# well under 1% of its width between seeds at this count, and a 300-image test split takes ~1 s.
_BOOTSTRAP_RESAMPLES = 2000
# Resamples evaluated at once: each holds n (n + 1) / 2 Walsh averages (45k floats at n = 300).
_BOOTSTRAP_BATCH = 50


@dataclasses.dataclass(frozen=True)
class Summary:
    """A metric over runs: ``mean`` +- ``std`` with a ``confidence`` t interval.

    Attributes:
      n: number of finite values used.
      mean: their mean (NaN when n = 0).
      std: sample standard deviation (ddof=1; NaN when n < 2).
      ci_low: lower end of the t interval of the mean (NaN when n < 2).
      ci_high: upper end (NaN when n < 2).
      confidence: the interval's confidence level.
    """

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    confidence: float


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """One paired comparison of b against a (differences b - a).

    Attributes:
      test: "paired t-test" or "Wilcoxon signed-rank".
      n: number of pairs used (finite on both sides).
      estimate: location of b - a: the mean difference (t-test) or the Hodges-Lehmann estimate
        (Wilcoxon).
      ci_low: lower end of the ``confidence`` interval of ``estimate``.
      ci_high: upper end.
      statistic: the test statistic scipy reports (t; for Wilcoxon, the smaller of the two signed
        rank sums).
      pvalue: two-sided p-value (NaN when the test is undefined, e.g. n < 2).
      effect: standardised effect size: Cohen's d_z (t-test) or the matched-pairs rank-biserial
        correlation (Wilcoxon), positive when b tends to be larger.
      effect_name: "cohens_dz" or "rank_biserial".
      confidence: the interval's confidence level.
    """

    test: str
    n: int
    estimate: float
    ci_low: float
    ci_high: float
    statistic: float
    pvalue: float
    effect: float
    effect_name: str
    confidence: float


def _finite(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}.")
    return array[np.isfinite(array)]


def paired_differences(a, b) -> np.ndarray:
    """``b - a`` over the pairs where both are finite (1-D arrays of one length; else an error)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"a and b must be one-dimensional and of the same length, got shapes {a.shape} and "
            f"{b.shape}."
        )
    keep = np.isfinite(a) & np.isfinite(b)
    return b[keep] - a[keep]


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Summary:
    """Mean, standard deviation and Student-t confidence interval of the mean.

    The interval is ``mean +- t_{(1 + confidence) / 2, n - 1} * std / sqrt(n)``
    (``scipy.stats.t``). Non-finite values are dropped. With n = 1 the spread is unknown, so std
    and the interval are NaN; with all values equal the interval is [mean, mean].

    Args:
      values: (n,) one metric, one value per run (e.g. per seed).
      confidence: the interval's confidence level, in (0, 1).

    Returns:
      A `Summary`.
    """
    _check_confidence(confidence)
    x = _finite(values, "values")
    n = len(x)
    nan = math.nan
    if n == 0:
        return Summary(0, nan, nan, nan, nan, confidence)
    mean = float(np.mean(x))
    if n == 1:
        return Summary(1, mean, nan, nan, nan, confidence)
    std = float(np.std(x, ddof=1))
    if std == 0.0:
        return Summary(n, mean, 0.0, mean, mean, confidence)
    low, high = scipy.stats.t.interval(confidence, n - 1, loc=mean, scale=std / math.sqrt(n))
    return Summary(n, mean, std, float(low), float(high), confidence)


def paired_ttest(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> PairedComparison:
    """Paired t-test of b against a (``scipy.stats.ttest_rel`` on b - a), e.g. over seeds.

    Effect size: Cohen's d_z = mean(d) / std(d, ddof=1) of the differences d = b - a. Interval: the
    t interval of the mean difference. Degenerate inputs, where scipy returns NaN or warns:

    - all differences zero (identical models): p = 1, d_z = 0, interval [0, 0];
    - all differences equal but not zero: the t statistic is infinite and the test undefined:
      p and d_z are NaN, the interval is [d, d];
    - fewer than 2 pairs: p, d_z and the interval are NaN.

    Args:
      a: (n,) values of the reference (e.g. the baseline), one per seed.
      b: (n,) values of the compared variant, paired with ``a`` by position.
      confidence: the interval's confidence level.

    Returns:
      A `PairedComparison` (test "paired t-test", effect "cohens_dz").
    """
    _check_confidence(confidence)
    d = paired_differences(a, b)
    n = len(d)
    nan = math.nan

    # result(estimate, ci_low, ci_high, statistic, pvalue, effect): the fields that vary.
    result = functools.partial(
        PairedComparison, "paired t-test", n, effect_name="cohens_dz", confidence=confidence
    )

    if n < 2:
        return result(float(d[0]) if n else nan, nan, nan, nan, nan, nan)
    mean = float(np.mean(d))
    if np.ptp(d) == 0.0:
        if mean == 0.0:
            return result(0.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        return result(mean, mean, mean, math.copysign(math.inf, mean), nan, nan)
    # ttest_rel(b, a) is the one-sample t-test of b - a: pass the differences against zeros so
    # the pairs dropped for non-finite values stay dropped.
    test = scipy.stats.ttest_rel(d, np.zeros_like(d))
    interval = test.confidence_interval(confidence)
    return result(
        mean,
        float(interval.low),
        float(interval.high),
        float(test.statistic),
        float(test.pvalue),
        mean / float(np.std(d, ddof=1)),
    )


def rank_biserial(differences: Sequence[float] | np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation of paired differences (Kerby 2014).

    ``r = (R+ - R-) / (R+ + R-)``, with R+ and R- the sums of the ranks of ``|d|`` (average ranks
    for ties) over the positive and negative differences. Zero differences get ranks too, split
    half to each side (as in the "zsplit" Wilcoxon test), so images where the models agree pull r
    towards 0. r is in [-1, 1]; 1 means every nonzero difference is positive.

    Args:
      differences: (n,) paired differences b - a; non-finite entries are dropped.

    Returns:
      r, or 0.0 when every difference is zero, NaN when there are none.
    """
    d = _finite(differences, "differences")
    if len(d) == 0:
        return math.nan
    if not d.any():
        return 0.0
    ranks = scipy.stats.rankdata(np.abs(d))
    zero_half = 0.5 * ranks[d == 0].sum()
    plus = ranks[d > 0].sum() + zero_half
    minus = ranks[d < 0].sum() + zero_half
    return float((plus - minus) / (plus + minus))


def hodges_lehmann(differences: Sequence[float] | np.ndarray) -> float:
    """Hodges-Lehmann location of paired differences: the median of their Walsh averages.

    Walsh averages are ``(d_i + d_j) / 2`` for all i <= j; their median is the location estimate
    that goes with the Wilcoxon signed-rank test (the shift that makes the test statistic balance).

    Args:
      differences: (n,) paired differences; non-finite entries are dropped.

    Returns:
      The estimate (NaN when there are no differences).
    """
    d = _finite(differences, "differences")
    if len(d) == 0:
        return math.nan
    return float(_walsh_median(d))


def _walsh_median(d: np.ndarray, axis: int = -1) -> np.ndarray:
    """Median of the Walsh averages of ``d`` along ``axis`` (vectorised for the bootstrap)."""
    d = np.moveaxis(np.asarray(d), axis, -1)
    i, j = np.triu_indices(d.shape[-1])
    return np.median((d[..., i] + d[..., j]) / 2.0, axis=-1)


def wilcoxon_paired(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    *,
    n_resamples: int = _BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> PairedComparison:
    """Wilcoxon signed-rank test of b against a (``scipy.stats.wilcoxon``), e.g. over test images.

    Zero differences use ``zero_method="zsplit"``: an image on which both models score the same
    (e.g. both miss a tumour: Dice 0 and 0) is evidence of no difference, so it keeps its rank,
    split half to each side, instead of being dropped ("wilcox", scipy's default), which would
    test only the images where the models differ and overstate the effect. Tied ``|d|`` get average
    ranks; scipy then uses the normal approximation with its tie correction where the exact
    distribution does not apply (``method="auto"``).

    Effect size: the matched-pairs rank-biserial correlation (`rank_biserial`, on the same ranks).
    Location and interval: the Hodges-Lehmann estimate (`hodges_lehmann`) with a percentile
    bootstrap interval over images (``scipy.stats.bootstrap``, ``n_resamples`` resamples drawn
    from ``seed``, so the interval is reproducible).

    All differences zero (identical models): p = 1, r = 0, estimate and interval 0. Fewer than 2
    pairs: the interval is NaN.

    Args:
      a: (n,) per-image values of the reference (e.g. the baseline, averaged over seeds).
      b: (n,) per-image values of the compared variant, paired with ``a`` by position.
      confidence: the interval's confidence level.
      n_resamples: bootstrap resamples for the interval.
      seed: seed of the bootstrap resampling.

    Returns:
      A `PairedComparison` (test "Wilcoxon signed-rank", effect "rank_biserial").
    """
    _check_confidence(confidence)
    d = paired_differences(a, b)
    n = len(d)
    nan = math.nan

    # result(estimate, ci_low, ci_high, statistic, pvalue, effect): the fields that vary.
    result = functools.partial(
        PairedComparison,
        "Wilcoxon signed-rank",
        n,
        effect_name="rank_biserial",
        confidence=confidence,
    )

    if n == 0:
        return result(nan, nan, nan, nan, nan, nan)
    if not d.any():
        return result(0.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    test = scipy.stats.wilcoxon(d, zero_method="zsplit")
    low = high = nan
    if n >= 2:
        interval = scipy.stats.bootstrap(
            (d,),
            _walsh_median,
            n_resamples=n_resamples,
            batch=_BOOTSTRAP_BATCH,
            vectorized=True,
            confidence_level=confidence,
            method="percentile",
            random_state=np.random.default_rng(seed),
        ).confidence_interval
        low, high = float(interval.low), float(interval.high)
    return result(
        hodges_lehmann(d), low, high, float(test.statistic), float(test.pvalue), rank_biserial(d)
    )


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979), controlling the family-wise error rate.

    With the m finite p-values sorted, p_(1) <= ... <= p_(m), the adjusted value of p_(i) is
    ``max_{j <= i} min(1, (m - j + 1) p_(j))``: monotone in p and capped at 1. Rejecting where the
    adjusted p is below alpha is Holm's procedure at level alpha. NaN entries (tests that could not
    be made) are not counted in m and stay NaN.

    Args:
      pvalues: (m,) raw p-values of one family of comparisons.

    Returns:
      (m,) adjusted p-values, in the input order.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be one-dimensional, got shape {p.shape}.")
    finite = ~np.isnan(p)
    if ((p[finite] < 0) | (p[finite] > 1)).any():
        raise ValueError(f"p-values must be in [0, 1], got {p[finite].tolist()}.")
    adjusted = np.full(p.shape, np.nan)
    index = np.flatnonzero(finite)
    order = index[np.argsort(p[index], kind="stable")]
    m = len(order)
    scaled = (m - np.arange(m)) * p[order]
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted
