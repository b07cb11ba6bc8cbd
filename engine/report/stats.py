"""The statistics of the A/B report, delegated to statsmodels and scipy.

Nothing here is a hand-rolled formula: Wilson intervals, Newcombe (hybrid score) intervals for a
difference of proportions, the pooled two-proportion z-test (equal to Pearson's chi-square on the
2x2 table), Holm's step-down adjustment, the sample-ratio-mismatch chi-square, the minimum
detectable effect from statsmodels' power solver (Cohen's h), and for paired runs (simulations:
every customer meets every arm) McNemar's mid-p test with Newcombe's paired interval (method 10,
built on statsmodels' Wilson intervals).
Degenerate inputs (no units, or both arms at 0% or 100%) give defined, conservative answers
instead of NaN: an empty interval is (0, 1), a test without variation has p = 1.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportions_ztest,
)

ALPHA = 0.05
# What the report says it used, per kind of run.
TWO_SAMPLE_TEST = "two-sided pooled two-proportion z-test"
TWO_SAMPLE_INTERVAL = "Newcombe hybrid score"
PAIRED_TEST = "McNemar mid-p test (paired by customer)"
PAIRED_INTERVAL = "Newcombe paired score (method 10)"
POWER = 0.8
SRM_ALPHA = 0.001  # GrowthBook's and most platforms' alarm level: SRM is checked on every look


@dataclass(frozen=True)
class Proportion:
    count: int
    n: int
    rate: float | None  # None when n == 0
    low: float
    high: float


@dataclass(frozen=True)
class Difference:
    """Treatment minus control."""

    diff: float | None
    low: float | None
    high: float | None
    p_value: float | None


def wilson(count: int, n: int, alpha: float = ALPHA) -> Proportion:
    """Proportion with its Wilson score interval."""
    if n <= 0:
        return Proportion(count, n, None, 0.0, 1.0)
    low, high = proportion_confint(count, n, alpha=alpha, method="wilson")
    return Proportion(count, n, count / n, float(max(low, 0.0)), float(min(high, 1.0)))


def newcombe(c1: int, n1: int, c0: int, n0: int, alpha: float = ALPHA) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p1 - p0 (method 10 of Newcombe 1998)."""
    low, high = confint_proportions_2indep(
        c1, n1, c0, n0, method="newcomb", compare="diff", alpha=alpha
    )
    return float(low), float(high)


def two_proportion_test(c1: int, n1: int, c0: int, n0: int) -> float:
    """Two-sided p-value of the pooled z-test of p1 == p0."""
    if n1 == 0 or n0 == 0:
        return 1.0
    pooled = (c1 + c0) / (n1 + n0)
    if pooled in (0.0, 1.0):
        return 1.0  # no variation at all: no evidence of a difference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _, p = proportions_ztest([c1, c0], [n1, n0], alternative="two-sided")
    return float(p)


def compare(c1: int, n1: int, c0: int, n0: int, alpha: float = ALPHA) -> Difference:
    """Difference, Newcombe interval and two-sided p-value of treatment (1) vs control (0)."""
    if n1 == 0 or n0 == 0:
        return Difference(None, None, None, None)
    low, high = newcombe(c1, n1, c0, n0, alpha)
    return Difference(c1 / n1 - c0 / n0, low, high, two_proportion_test(c1, n1, c0, n0))


def holm(p_values: Sequence[float | None], alpha: float = ALPHA) -> list[float | None]:
    """Holm-adjusted p-values; None entries (no test) stay None and are not counted."""
    present = [i for i, p in enumerate(p_values) if p is not None]
    adjusted: list[float | None] = [None] * len(p_values)
    if present:
        _, corrected, _, _ = multipletests([p_values[i] for i in present], alpha, method="holm")
        for i, value in zip(present, corrected, strict=True):
            adjusted[i] = float(value)
    return adjusted


@dataclass(frozen=True)
class SampleRatio:
    observed: tuple[int, ...]
    expected: tuple[float, ...]
    chi2: float
    p_value: float
    mismatch: bool  # p < SRM_ALPHA


def sample_ratio_mismatch(
    observed: Sequence[int], weights: Sequence[float], alpha: float = SRM_ALPHA
) -> SampleRatio:
    """Pearson chi-square goodness of fit of the arm counts to the declared weights."""
    total = sum(observed)
    share = np.asarray(weights, dtype=float) / float(sum(weights))
    expected = share * total
    if total == 0 or len(observed) < 2:
        return SampleRatio(tuple(observed), tuple(map(float, expected)), 0.0, 1.0, False)
    chi2, p = sps.chisquare(np.asarray(observed, dtype=float), expected)
    return SampleRatio(
        tuple(observed), tuple(map(float, expected)), float(chi2), float(p), bool(p < alpha)
    )


def minimum_detectable_effect(
    baseline: float, n_control: int, n_treatment: int, alpha: float = ALPHA, power: float = POWER
) -> float | None:
    """Smallest absolute increase over ``baseline`` a two-sided test at ``alpha`` detects with
    ``power`` at these sample sizes (normal approximation on Cohen's h, as statsmodels solves
    it). None when there are no units or the baseline leaves no room to increase."""
    if n_control <= 0 or n_treatment <= 0 or not 0.0 <= baseline < 1.0:
        return None
    h = NormalIndPower().solve_power(
        effect_size=None,
        nobs1=n_treatment,
        alpha=alpha,
        power=power,
        ratio=n_control / n_treatment,
        alternative="two-sided",
    )
    angle = 2 * math.asin(math.sqrt(baseline)) + float(h)
    if angle >= math.pi:
        return 1.0 - baseline
    return math.sin(angle / 2) ** 2 - baseline


@dataclass(frozen=True)
class Paired:
    """McNemar's test on paired binary outcomes (same persona and seed in both arms)."""

    pairs: int
    both: int
    only_a: int
    only_b: int
    neither: int
    rate_a: float | None
    rate_b: float | None
    diff: float | None  # rate_b - rate_a
    statistic: float
    p_value: float
    method: str  # mid-p | exact | chi2
    low: float | None = None  # Newcombe's paired interval of diff (see newcombe_paired)
    high: float | None = None

    @property
    def exact(self) -> bool:
        return self.method != "chi2"


MCNEMAR_METHODS = ("mid-p", "exact", "chi2")


def newcombe_paired(
    both: int, only_1: int, only_2: int, neither: int, alpha: float = ALPHA
) -> tuple[float, float] | None:
    """Newcombe's square-and-add interval for p1 - p2 from paired binary outcomes: method 10 of
    Newcombe, "Improved confidence intervals for the difference between binomial proportions
    based on paired data", Stat Med 1998;17:2635-50.

    It combines the Wilson intervals of the two marginal rates, corrected for their correlation
    (phi of the 2x2 table, with Newcombe's continuity adjustment of its numerator). Fagerland,
    Lydersen and Laake (Stat Med 2014;33:2850-75, "Recommended tests and confidence intervals
    for paired binomial proportions") recommend it next to Tango's score interval, and McNemar's
    mid-p test as the matching test; their book's worked example (Cavo et al. 2012: 59, 6, 16,
    80) gives -0.0621 (-0.1186 to -0.0046), which tests/test_stats.py checks. statsmodels has no
    paired difference interval, so only the phi step is written here. ``only_1``: units that
    succeeded under 1 only. None when there are no units.
    """
    n = both + only_1 + only_2 + neither
    if n == 0:
        return None
    s1, s2 = both + only_1, both + only_2  # successes under 1 and under 2
    p1, p2 = s1 / n, s2 / n
    l1, u1 = (float(x) for x in proportion_confint(s1, n, alpha=alpha, method="wilson"))
    l2, u2 = (float(x) for x in proportion_confint(s2, n, alpha=alpha, method="wilson"))
    margins = s1 * (n - s1) * s2 * (n - s2)
    phi = 0.0
    if margins > 0:
        a = both * neither - only_1 * only_2
        if a > n / 2:
            phi = (a - n / 2) / math.sqrt(margins)
        elif a < 0:
            phi = a / math.sqrt(margins)
    d = p1 - p2
    low = d - math.sqrt(max((p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2), 0))
    high = d + math.sqrt(max((p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1), 0))
    return max(low, -1.0), min(high, 1.0)


def mcnemar_paired(
    a: Sequence[bool], b: Sequence[bool], method: str = "mid-p", alpha: float = ALPHA
) -> Paired:
    """McNemar's test of a vs b over the same units, with Newcombe's paired interval of the
    difference b - a (:func:`newcombe_paired`).

    ``mid-p`` (the default) is the exact conditional binomial test minus half the probability
    of the observed split: the exact test's p-values are so discrete with the few discordant
    pairs of a sales A/B (often under 10) that its real false-positive rate falls far below
    alpha (measured: 1% at alpha 5% in benchmarks/simulation_aa.py); mid-p keeps close to the
    nominal rate, and Fagerland, Lydersen and Laake (BMC Med Res Methodol 2013, "The McNemar
    test for binary matched-pairs data: mid-p and asymptotic are better than exact conditional")
    recommend it. ``exact`` is the exact binomial test, ``chi2`` the chi-square test with
    continuity correction.
    """
    if method not in MCNEMAR_METHODS:
        raise ValueError(f"unknown McNemar method {method!r} (known: {', '.join(MCNEMAR_METHODS)})")
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need equal lengths, got {len(a)} and {len(b)}")
    both = sum(1 for x, y in zip(a, b, strict=True) if x and y)
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    neither = len(a) - both - only_a - only_b
    discordant = only_a + only_b
    n = len(a)
    rate_a = (both + only_a) / n if n else None
    rate_b = (both + only_b) / n if n else None
    if discordant == 0:
        statistic, p = 0.0, 1.0
    elif method == "mid-p":
        k = min(only_a, only_b)
        statistic = float(k)
        p = 2 * (sps.binom.cdf(k, discordant, 0.5) - 0.5 * sps.binom.pmf(k, discordant, 0.5))
    else:
        table = [[both, only_a], [only_b, neither]]
        result = mcnemar(table, exact=method == "exact", correction=True)
        statistic, p = float(result.statistic), float(result.pvalue)
    interval = newcombe_paired(both, only_b, only_a, neither, alpha)
    return Paired(
        pairs=n,
        both=both,
        only_a=only_a,
        only_b=only_b,
        neither=neither,
        rate_a=rate_a,
        rate_b=rate_b,
        diff=None if n == 0 else (only_b - only_a) / n,
        statistic=statistic,
        p_value=min(float(p), 1.0),
        method=method,
        low=interval[0] if interval else None,
        high=interval[1] if interval else None,
    )


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 90, 95, 99)) -> list[float]:
    """Linear-interpolation percentiles (numpy's default); empty input gives no numbers."""
    if len(values) == 0:
        return []
    return [float(v) for v in np.percentile(np.asarray(values, dtype=float), qs)]


def chi_square_independence(table: Sequence[Sequence[int]]) -> float | None:
    """p-value of Pearson's chi-square test of independence (e.g. variant x continued); None
    when a row or column is empty so the test is undefined."""
    array = np.asarray(table, dtype=float)
    if array.shape[0] < 2 or (array.sum(axis=1) == 0).any() or (array.sum(axis=0) == 0).any():
        return None
    _, p, _, _ = sps.chi2_contingency(array, correction=False)
    return float(p)
