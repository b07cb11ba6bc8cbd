"""engine.report.stats against independent computations (scipy, or the textbook formula on scipy's
building blocks), so a wrong call into statsmodels cannot go unnoticed."""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize

from engine.report import stats

CASES = [(30, 100, 20, 100), (7, 40, 15, 45), (0, 25, 3, 30), (120, 1000, 151, 1010), (9, 9, 5, 9)]


def scipy_wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return ci.low, ci.high


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (37, 120), (501, 1000)])
def test_wilson_matches_scipy(k, n):
    p = stats.wilson(k, n)
    assert p.rate == k / n and (p.count, p.n) == (k, n)
    assert (p.low, p.high) == pytest.approx(scipy_wilson(k, n), abs=1e-12)
    assert (stats.wilson(k, n, alpha=0.1).low, stats.wilson(k, n, alpha=0.1).high) == (
        pytest.approx(scipy_wilson(k, n, 0.9), abs=1e-12)
    )


def test_wilson_without_units_is_the_whole_range():
    assert stats.wilson(0, 0) == stats.Proportion(0, 0, None, 0.0, 1.0)


@pytest.mark.parametrize("c1,n1,c0,n0", CASES)
def test_newcombe_matches_the_formula_on_scipy_wilson_limits(c1, n1, c0, n0):
    """Newcombe (1998) method 10: the difference's limits from the two Wilson intervals."""
    p1, p0 = c1 / n1, c0 / n0
    l1, u1 = scipy_wilson(c1, n1)
    l0, u0 = scipy_wilson(c0, n0)
    d = p1 - p0
    low = d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    result = stats.compare(c1, n1, c0, n0)
    assert result.diff == pytest.approx(d)
    assert (result.low, result.high) == pytest.approx((low, high), abs=1e-9)


@pytest.mark.parametrize("c1,n1,c0,n0", CASES)
def test_two_sided_test_equals_pearson_chi_square(c1, n1, c0, n0):
    table = [[c1, n1 - c1], [c0, n0 - c0]]
    expected = sps.chi2_contingency(table, correction=False)[1]
    assert stats.two_proportion_test(c1, n1, c0, n0) == pytest.approx(expected, rel=1e-9)


def test_tests_without_variation_have_p_one_and_no_nan():
    assert stats.two_proportion_test(0, 50, 0, 60) == 1.0
    assert stats.two_proportion_test(50, 50, 60, 60) == 1.0
    empty = stats.compare(3, 10, 0, 0)
    assert empty == stats.Difference(None, None, None, None)


def hand_holm(ps: list[float]) -> list[float]:
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    adjusted, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def test_holm_matches_the_step_down_procedure():
    rng = random.Random(3)
    for _ in range(20):
        ps = [rng.random() ** 3 for _ in range(rng.randint(1, 9))]
        assert stats.holm(ps) == pytest.approx(hand_holm(ps), abs=1e-12)
    assert stats.holm([0.01, None, 0.04, 0.03]) == pytest.approx([0.03, None, 0.06, 0.06])
    assert stats.holm([None]) == [None]


def test_sample_ratio_mismatch_is_pearson_goodness_of_fit():
    observed, weights = [5210, 4790], [0.5, 0.5]
    expected = [5000, 5000]
    chi2 = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    srm = stats.sample_ratio_mismatch(observed, weights)
    assert srm.chi2 == pytest.approx(chi2)
    assert srm.p_value == pytest.approx(sps.chi2.sf(chi2, df=1))
    assert srm.mismatch  # p ~ 2.7e-5 < 0.001
    fine = stats.sample_ratio_mismatch([2010, 7990], [0.2, 0.8])
    assert not fine.mismatch and fine.expected == pytest.approx((2000.0, 8000.0))
    three = stats.sample_ratio_mismatch([100, 210, 290], [1, 2, 3])
    assert three.p_value == pytest.approx(sps.chisquare([100, 210, 290], [100, 200, 300]).pvalue)


@pytest.mark.parametrize("baseline,n0,n1", [(0.2, 1000, 1000), (0.05, 400, 800), (0.5, 60, 50)])
def test_minimum_detectable_effect_has_the_declared_power(baseline, n0, n1):
    mde = stats.minimum_detectable_effect(baseline, n0, n1)
    assert mde is not None and 0 < mde < 1 - baseline
    h = proportion_effectsize(baseline + mde, baseline)
    power = NormalIndPower().power(h, nobs1=n1, alpha=0.05, ratio=n0 / n1)
    assert power == pytest.approx(0.8, abs=1e-4)  # the solver stops within 1e-5
    # Independent normal approximation on Cohen's h (ignoring the far tail): within 1e-3.
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)
    h_approx = z * math.sqrt(1 / n1 + 1 / n0)
    p1 = math.sin(math.asin(math.sqrt(baseline)) + h_approx / 2) ** 2
    assert mde == pytest.approx(p1 - baseline, abs=1e-3)
    assert stats.minimum_detectable_effect(baseline, 0, n1) is None


def test_mcnemar_exact_mid_p_and_chi_square_match_independent_computations():
    rng = random.Random(11)
    a = [rng.random() < 0.3 for _ in range(200)]
    b = [x if rng.random() < 0.85 else not x for x in a]
    result = stats.mcnemar_paired(a, b, method="exact")
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    assert (result.only_a, result.only_b, result.pairs) == (only_a, only_b, 200)
    assert result.p_value == pytest.approx(sps.binomtest(only_a, only_a + only_b, 0.5).pvalue)
    chi = stats.mcnemar_paired(a, b, method="chi2")
    statistic = (abs(only_a - only_b) - 1) ** 2 / (only_a + only_b)
    assert chi.statistic == pytest.approx(statistic)
    assert chi.p_value == pytest.approx(sps.chi2.sf(statistic, 1))
    assert result.diff == pytest.approx(sum(b) / 200 - sum(a) / 200)
    assert stats.mcnemar_paired([True, False], [True, False]).p_value == 1.0
    # mid-p, the default: 2 * (P(X < k) + P(X = k) / 2) for X ~ Binomial(discordant, 1/2)
    k, n = min(only_a, only_b), only_a + only_b
    below = sum(math.comb(n, i) for i in range(k)) / 2**n
    mid = stats.mcnemar_paired(a, b)
    assert mid.method == "mid-p" and mid.p_value == pytest.approx(
        2 * (below + math.comb(n, k) / 2**n / 2)
    )
    assert mid.p_value < result.p_value
    # 1 vs 0 discordant: the exact test says p = 1, mid-p says 0.5; 3 vs 0: 0.25 and 0.125
    one = stats.mcnemar_paired([True, False], [False, False])
    assert one.p_value == pytest.approx(0.5)
    assert stats.mcnemar_paired([True, False], [False, False], "exact").p_value == 1.0
    three = stats.mcnemar_paired([True] * 3 + [False], [False] * 4)
    assert three.p_value == pytest.approx(0.125)
    with pytest.raises(ValueError, match="unknown McNemar method"):
        stats.mcnemar_paired([True], [True], method="fisher")
    with pytest.raises(ValueError):
        stats.mcnemar_paired([True], [True, False])


def test_percentiles_match_inclusive_quantiles():
    rng = random.Random(5)
    values = [rng.lognormvariate(3, 1) for _ in range(333)]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    p50, p90, p95, p99 = stats.percentiles(values)
    assert (p50, p90, p95, p99) == pytest.approx([cuts[49], cuts[89], cuts[94], cuts[98]])
    assert stats.percentiles([]) == []


def test_chi_square_independence_matches_the_z_test_on_two_rows():
    table = [[20, 7], [26, 10]]
    assert stats.chi_square_independence(table) == pytest.approx(
        stats.two_proportion_test(20, 27, 26, 36)
    )
    three = [[20, 7], [26, 10], [5, 9]]
    chi2 = sps.chi2_contingency(np.array(three), correction=False)
    assert stats.chi_square_independence(three) == pytest.approx(chi2[1])
    assert stats.chi_square_independence([[3, 0], [4, 0]]) is None
