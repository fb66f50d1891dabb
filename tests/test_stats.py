"""Wilson interval, Kaplan–Meier, log-rank and sample sizes against known values."""
import re

import numpy as np
import pytest
from scipy import stats as scipy_stats

from advsample import stats


def test_wilson_interval_known_values():
    # statsmodels proportion_confint(8, 10, method="wilson") and the closed form
    assert stats.wilson_interval(8, 10) == pytest.approx((0.4901625, 0.9433178), abs=1e-6)
    k, n, z = 118, 128, scipy_stats.norm.ppf(0.975)
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    assert stats.wilson_interval(k, n) == pytest.approx((centre - half, centre + half), rel=1e-9)
    low, high = stats.wilson_interval(10, 10)  # all stable: the interval still has width
    assert high == pytest.approx(1.0) and low == pytest.approx(0.7224672, abs=1e-6)
    assert stats.summary(118, 128) == "0.92 [0.86, 0.96] (n=128)"
    narrower = stats.wilson_interval(8, 10, confidence=0.5)
    assert narrower[0] > 0.4901625 and narrower[1] < 0.9433178


def test_kaplan_meier_by_hand():
    # failures at 1, 3, 3, 5; censored at 2, 6, 6: S = 6/7, then x 3/5 (2 of 5 at risk fail), then x 2/3
    curve = stats.kaplan_meier([1, 3, 3, 5, 2, 6, 6], [1, 1, 1, 1, 0, 0, 0])
    assert curve.times.tolist() == [0, 1, 3, 5]
    assert curve.survival == pytest.approx([1, 6 / 7, 6 / 7 * 3 / 5, 6 / 7 * 3 / 5 * 2 / 3])
    assert curve.at_risk.tolist() == [7, 7, 5, 3] and curve.n == 7 and curve.n_failed == 4
    assert np.all(curve.low <= curve.survival) and np.all(curve.survival <= curve.high)
    assert np.all(curve.low[1:] < curve.survival[1:])  # a real band where S is strictly between 0 and 1
    none_failed = stats.kaplan_meier([10.0, 10.0], [False, False])
    assert none_failed.times.tolist() == [0.0] and none_failed.survival.tolist() == [1.0]


def test_logrank_textbook_and_scipy():
    # hand computation: at t=1: n=13 (7 in a), d=1 -> E_a 7/13; t=3: n=11 (5), d=2 -> 10/11;
    # t=4: n=9 (3), d=1 -> 3/9; t=5: n=8 (3), d=1 -> 3/8; t=8: n=4 (0), d=1 -> 0
    a_t, a_f = [1, 3, 3, 5, 2, 6, 6], [1, 1, 1, 1, 0, 0, 0]
    b_t, b_f = [4, 6, 8, 9, 9, 9], [1, 0, 1, 0, 0, 0]
    result = stats.logrank(a_t, a_f, b_t, b_f)
    expected_a = 7 / 13 + 10 / 11 + 3 / 9 + 3 / 8
    assert result.expected[0] == pytest.approx(expected_a)
    assert result.observed == (4, 2)
    variance = (7 / 13 * 6 / 13) + 2 * (5 / 11) * (6 / 11) * 9 / 10 + (3 / 9) * (6 / 9) + (3 / 8) * (5 / 8)
    assert result.statistic == pytest.approx((4 - expected_a) ** 2 / variance)
    reference = scipy_stats.logrank(
        scipy_stats.CensoredData(uncensored=[1, 3, 3, 5], right=[2, 6, 6]),
        scipy_stats.CensoredData(uncensored=[4, 8], right=[6, 9, 9, 9]))
    assert result.statistic == pytest.approx(reference.statistic**2) and result.p_value == pytest.approx(reference.pvalue)
    same = stats.logrank([5, 10], [True, False], [5, 10], [True, False])
    assert same.statistic == pytest.approx(0.0) and same.p_value == pytest.approx(1.0)


def test_stratified_logrank_sums_strata_and_is_not_fooled_by_uneven_strata():
    a_t, a_f = [1, 3, 3, 5, 2, 6, 6], [1, 1, 1, 1, 0, 0, 0]
    b_t, b_f = [4, 6, 8, 9, 9, 9], [1, 0, 1, 0, 0, 0]
    one = stats.logrank(a_t, a_f, b_t, b_f)
    assert stats.stratified_logrank([(a_t, a_f, b_t, b_f)]).statistic == pytest.approx(one.statistic)
    # two copies of the stratum: O - E and V both double, so chi2 doubles
    twice = stats.stratified_logrank([(a_t, a_f, b_t, b_f)] * 2)
    assert twice.statistic == pytest.approx(2 * one.statistic) and twice.observed == (8, 4)
    # within each stratum the arms are identical, but arm a has most runs of the fragile stratum:
    # pooled, a looks worse; stratified, nothing distinguishes them
    fragile = ([1.0, 2.0, 3.0, 10.0] * 10, [1, 1, 1, 0] * 10)
    sturdy = ([5.0, 10.0, 10.0, 10.0] * 10, [1, 0, 0, 0] * 10)
    small = lambda arm: (arm[0][:4], arm[1][:4])  # noqa: E731
    strata = [(*fragile, *small(fragile)), (*small(sturdy), *sturdy)]
    pooled = stats.logrank(fragile[0] + sturdy[0][:4], fragile[1] + sturdy[1][:4],
                           fragile[0][:4] + sturdy[0], fragile[1][:4] + sturdy[1])
    assert pooled.p_value < 1e-4
    assert stats.stratified_logrank(strata).p_value > 0.9
    assert stats.stratified_logrank([([], [], b_t, b_f)]).p_value == 1.0  # an empty arm adds nothing


def test_logrank_of_md_stability_results():
    full = {"n_steps": 100, "timestep_fs": 1.0}
    good = {**full, "time_to_failure_fs": [None] * 30 + [80.0, 90.0]}
    bad = {**full, "time_to_failure_fs": [10.0 * (k % 9 + 1) for k in range(20)] + [None] * 12}
    times, failed = stats.failure_times(good)
    assert times.tolist()[:2] == [100.0, 100.0] and failed.sum() == 2
    assert stats.logrank_results(good, bad).p_value < 1e-4


def test_trajectories_needed_matches_the_issue():
    assert stats.trajectories_needed(0.80, 0.92) == 131  # "about 130 per arm"
    assert stats.trajectories_needed(0.92, 0.97) == 326  # "about 325 per arm"
    assert stats.trajectories_needed(0.92, 0.97, power=0.9) > 326
    assert stats.trajectories_needed(0.97, 0.92) == 326  # symmetric


def _binomial_committees(true_fractions, n_runs, seed=0):
    rng = np.random.default_rng(seed)
    return rng.binomial(n_runs, true_fractions), np.full(len(true_fractions), n_runs)


def test_rank_reliability_tells_chance_from_real_differences():
    # 60 committees of one true stability: their fractions differ by chance only, nothing ranks them
    same = stats.rank_reliability(*_binomial_committees(np.full(60, 0.7), 55), n_splits=200)
    assert abs(same.split_half) < 0.15 and same.ceiling < 0.5
    # true stabilities spread over 0.1-0.9 with 55 runs each: halves agree, the ceiling is near 1
    spread = np.linspace(0.1, 0.9, 60)
    wide = stats.rank_reliability(*_binomial_committees(spread, 55), n_splits=200)
    assert wide.split_half > 0.8 and wide.full > wide.split_half and wide.ceiling > 0.93
    # the ceiling is what a perfect predictor (the true fractions) reaches against the measured ones
    narrow_truth = np.linspace(0.75, 0.95, 60)
    narrow = stats.rank_reliability(*_binomial_committees(narrow_truth, 55, seed=1), n_splits=300)
    rhos = [scipy_stats.spearmanr(narrow_truth, _binomial_committees(narrow_truth, 55, seed=s)[0]).statistic
            for s in range(2, 202)]
    assert narrow.ceiling == pytest.approx(np.mean(rhos), abs=0.1)
    assert narrow.ceiling < wide.ceiling
    # more runs per committee: a more reliable ranking; Spearman's correction divides by the ceiling
    more = stats.rank_reliability(*_binomial_committees(narrow_truth, 550, seed=1), n_splits=300)
    assert more.ceiling > narrow.ceiling
    assert narrow.disattenuated(0.4) == pytest.approx(0.4 / narrow.ceiling)
    # a seed gives the same numbers twice
    assert stats.rank_reliability([3, 9, 20, 30], [40, 40, 41, 41], seed=3) == \
        stats.rank_reliability([3, 9, 20, 30], [40, 40, 41, 41], seed=3)


@pytest.mark.parametrize("call, message", [
    (lambda: stats.wilson_interval(11, 10), "k (stable trajectories)"),
    (lambda: stats.wilson_interval(1, 0), "n (number of trajectories)"),
    (lambda: stats.wilson_interval(1, 2, confidence=1.5), "confidence"),
    (lambda: stats.trajectories_needed(0.9, 0.9), "must differ"),
    (lambda: stats.trajectories_needed(1.2, 0.9), "p1"),
    (lambda: stats.kaplan_meier([1, -2], [1, 0]), "non-negative"),
    (lambda: stats.kaplan_meier([1, 2], [1]), "same non-zero length"),
    (lambda: stats.rank_reliability([1, 2], [5, 5]), "at least 3 committees"),
    (lambda: stats.rank_reliability([1, 2, 9], [5, 5, 5]), "k (stable trajectories)"),
    (lambda: stats.rank_reliability([1, 2, 1], [5, 5, 1]), "at least 2 runs"),
    (lambda: stats.rank_reliability([1, 2, 1], [5, 5]), "equal-length"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()
