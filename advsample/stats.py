"""Statistics that can decide: intervals, survival curves, tests and sample sizes for NN-MD stability.

A stability evaluation runs R trajectories; each either survives its full length (censored
at that length) or fails at a time. From that:

* :func:`wilson_interval` — the stable fraction k/n with a Wilson score interval (scipy's
  ``binomtest(...).proportion_ci(method="wilson")``), which keeps its coverage near 0 and 1
  where the normal (Wald) interval does not;
* :func:`kaplan_meier` — the survival curve S(t) with censoring (scipy's ``ecdf`` on
  ``CensoredData``), with a pointwise 95 % band (Greenwood, log-log);
* :func:`logrank` — the log-rank test between two arms (the textbook statistic,
  χ² with one degree of freedom, p from ``scipy.stats.chi2``; equal to ``scipy.stats.logrank``);
  :func:`stratified_logrank` the same within strata (e.g. committee seeds), summed;
* :func:`trajectories_needed` — how many trajectories per arm a two-sided two-proportion
  comparison needs at a given α and power (normal approximation, pooled variance under H0);
* :func:`summary` — one line, e.g. ``"0.92 [0.86, 0.96] (n=128)"``;
* :func:`rank_reliability` — how well the stable fractions of many committees (k of n runs each) rank
  the committees at all: the split-half Spearman between random halves of each committee's runs,
  its Spearman–Brown step-up to all n runs, and the ceiling √(reliability) on the Spearman ρ any
  predictor (an audit) can reach against those fractions — the NN-MD's own noise.

scipy does the distributions and the rank correlation; the formulas are the standard ones (Fleiss, *Statistical
Methods for Rates and Proportions*, for the sample size; Spearman 1904 for the correction for
attenuation) and are written out where scipy has
no function with this interface.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as _scipy


def _check_counts(k: int, n: int) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"n (number of trajectories) must be a positive integer, got {n}")
    if int(k) != k or not 0 <= k <= n:
        raise ValueError(f"k (stable trajectories) must be an integer in [0, n={n}], got {k}")


def _check_level(confidence: float, name: str = "confidence") -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"{name} must be in (0, 1), got {confidence}")


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (lower, upper) of a proportion k/n at ``confidence`` (two-sided)."""
    _check_counts(k, n)
    _check_level(confidence)
    ci = _scipy.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def summary(k: int, n: int, confidence: float = 0.95, digits: int = 2) -> str:
    """``"k/n [low, high] (n=...)"`` as one line: the fraction and its Wilson interval."""
    low, high = wilson_interval(k, n, confidence)
    return f"{k / n:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}] (n={n})"


def failure_times(result: dict) -> tuple[np.ndarray, np.ndarray]:
    """(times_fs [R], failed [R] bool) of an ``md_stability`` result: a stable run is censored at
    its full length n_steps × timestep_fs."""
    full = float(result["n_steps"]) * float(result["timestep_fs"])
    times = np.array([full if t is None else float(t) for t in result["time_to_failure_fs"]])
    failed = np.array([t is not None for t in result["time_to_failure_fs"]])
    return times, failed


def _check_times(times, failed) -> tuple[np.ndarray, np.ndarray]:
    times = np.asarray(times, dtype=float)
    failed = np.asarray(failed, dtype=bool)
    if times.ndim != 1 or times.shape != failed.shape or len(times) == 0:
        raise ValueError(f"times and failed must be two 1-D arrays of the same non-zero length, "
                         f"got shapes {times.shape} and {failed.shape}")
    if not np.all(np.isfinite(times)) or np.any(times < 0):
        raise ValueError("times must be finite and non-negative")
    return times, failed


@dataclass
class SurvivalCurve:
    """Kaplan–Meier estimate: S(t) is ``survival[k]`` for ``times[k] <= t < times[k+1]``.

    times [K] (starting at 0), survival [K], low/high [K] (pointwise band at ``confidence``),
    at_risk [K] (runs alive just before each time), n (runs), n_failed.
    """

    times: np.ndarray
    survival: np.ndarray
    low: np.ndarray
    high: np.ndarray
    at_risk: np.ndarray
    n: int
    n_failed: int
    confidence: float


def kaplan_meier(times: Sequence[float], failed: Sequence[bool], confidence: float = 0.95) -> SurvivalCurve:
    """Kaplan–Meier survival curve of runs that failed at ``times`` (``failed`` True) or were
    censored there (``failed`` False: survived at least that long).

    The band is Greenwood's variance on the log-log scale (never outside [0, 1]); where S = 0
    or 1 it collapses to S (as scipy's ``ecdf`` gives it)."""
    times, failed = _check_times(times, failed)
    _check_level(confidence)
    data = _scipy.CensoredData(uncensored=times[failed], right=times[~failed])
    sf = _scipy.ecdf(data).sf
    band = sf.confidence_interval(confidence_level=confidence, method="log-log")
    with np.errstate(invalid="ignore"):
        low = np.nan_to_num(band.low.probabilities, nan=0.0)
        high = np.nan_to_num(band.high.probabilities, nan=1.0)
    event_times = np.asarray(sf.quantiles, dtype=float)
    at_risk = np.array([(times >= t).sum() for t in event_times], dtype=int)
    survival = np.asarray(sf.probabilities, dtype=float)
    keep = np.isin(event_times, times[failed])  # scipy also lists censoring times: keep the failures
    exact = (survival == 1) | (survival == 0)
    low, high = np.where(exact, survival, low), np.where(exact, survival, high)
    return SurvivalCurve(
        times=np.concatenate([[0.0], event_times[keep]]), survival=np.concatenate([[1.0], survival[keep]]),
        low=np.concatenate([[1.0], low[keep]]), high=np.concatenate([[1.0], high[keep]]),
        at_risk=np.concatenate([[len(times)], at_risk[keep]]), n=len(times), n_failed=int(failed.sum()),
        confidence=confidence,
    )


@dataclass
class LogRank:
    """Log-rank test of two arms: statistic (χ², 1 degree of freedom), two-sided p-value,
    observed and expected failures per arm."""

    statistic: float
    p_value: float
    observed: tuple[int, int]
    expected: tuple[float, float]


def _logrank_terms(times_a, failed_a, times_b, failed_b) -> tuple[tuple[int, int], float, float]:
    """((O_a, O_b), E_a, V) of the log-rank test of two arms (see :func:`logrank`)."""
    ta, fa = _check_times(times_a, failed_a)
    tb, fb = _check_times(times_b, failed_b)
    times = np.concatenate([ta, tb])
    failed = np.concatenate([fa, fb])
    in_a = np.concatenate([np.ones(len(ta), bool), np.zeros(len(tb), bool)])
    expected_a = variance = 0.0
    for t in np.unique(times[failed]):
        at_risk = times >= t
        n, n_a = at_risk.sum(), (at_risk & in_a).sum()
        d = (failed & (times == t)).sum()
        expected_a += d * n_a / n
        if n > 1:
            variance += d * (n_a / n) * (1 - n_a / n) * (n - d) / (n - 1)
    return (int(fa.sum()), int(fb.sum())), float(expected_a), float(variance)


def _logrank_of(observed: tuple[int, int], expected_a: float, variance: float) -> LogRank:
    expected = (expected_a, float(observed[0] + observed[1] - expected_a))
    if variance == 0:  # no failures, or no information: nothing distinguishes the arms
        return LogRank(0.0, 1.0, observed, expected)
    statistic = float((observed[0] - expected_a) ** 2 / variance)
    return LogRank(statistic, float(_scipy.chi2.sf(statistic, df=1)), observed, expected)


def logrank(times_a, failed_a, times_b, failed_b) -> LogRank:
    """Log-rank test that arms a and b have the same survival (Mantel–Haenszel variance, ties
    allowed: at each failure time t with d failures among n at risk, n_a of them in arm a,
    E_a += d n_a / n and V += d (n_a/n)(1 − n_a/n)(n − d)/(n − 1)); χ² = (O_a − E_a)² / V."""
    return _logrank_of(*_logrank_terms(times_a, failed_a, times_b, failed_b))


def stratified_logrank(strata: Sequence[tuple]) -> LogRank:
    """Log-rank test of arms a and b within strata: ``strata`` is a sequence of
    ``(times_a, failed_a, times_b, failed_b)``, one per stratum (e.g. per committee seed, where
    both arms grew from the same parent committee); O_a, E_a and V are summed over the strata and
    χ² = (ΣO_a − ΣE_a)² / ΣV (one degree of freedom). Runs are compared only with runs of their
    own stratum, so strata of different baseline survival, unevenly represented in the two arms,
    do not make a difference between the arms (as pooling them does). A stratum with an empty
    arm adds nothing."""
    observed, expected_a, variance = [0, 0], 0.0, 0.0
    for times_a, failed_a, times_b, failed_b in strata:
        if len(times_a) == 0 or len(times_b) == 0:
            continue
        (o_a, o_b), e_a, v = _logrank_terms(times_a, failed_a, times_b, failed_b)
        observed[0] += o_a
        observed[1] += o_b
        expected_a += e_a
        variance += v
    return _logrank_of((observed[0], observed[1]), expected_a, variance)


def logrank_results(a: dict, b: dict) -> LogRank:
    """:func:`logrank` of two ``md_stability`` results (stable runs censored at full length)."""
    return logrank(*failure_times(a), *failure_times(b))


def trajectories_needed(p1: float, p2: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Trajectories per arm for a two-sided two-proportion z-test at level ``alpha`` to detect
    stable fractions ``p1`` vs ``p2`` with probability ``power``:
    n = [z_{1−α/2} √(2 p̄ q̄) + z_{power} √(p1 q1 + p2 q2)]² / (p1 − p2)², p̄ = (p1 + p2)/2
    (no continuity correction; 0.80 vs 0.92 needs 131, 0.92 vs 0.97 needs 326)."""
    for name, p in (("p1", p1), ("p2", p2)):
        if not 0 <= p <= 1:
            raise ValueError(f"{name} must be a fraction in [0, 1], got {p}")
    if p1 == p2:
        raise ValueError(f"p1 and p2 must differ to be told apart, got {p1} and {p2}")
    _check_level(alpha, "alpha")
    _check_level(power, "power")
    mean = (p1 + p2) / 2
    z_alpha, z_power = _scipy.norm.ppf(1 - alpha / 2), _scipy.norm.ppf(power)
    root = z_alpha * np.sqrt(2 * mean * (1 - mean)) + z_power * np.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return int(np.ceil(root**2 / (p1 - p2) ** 2))


@dataclass
class Reliability:
    """How reliably stable fractions rank committees (:func:`rank_reliability`): the mean
    Spearman ρ between the fractions of two random halves of each committee's runs
    (``split_half``), stepped up to all the runs by Spearman–Brown (``full`` = 2r/(1 + r)), and
    ``ceiling`` = √full, the largest Spearman ρ a predictor can be expected to reach against
    the measured fractions (a perfect one: the noise of n runs alone); ``n_committees``,
    ``n_splits``."""

    split_half: float
    full: float
    ceiling: float
    n_committees: int
    n_splits: int

    def disattenuated(self, rho: float) -> float:
        """``rho`` against the measured fractions corrected for their noise: ρ / ceiling (Spearman's
        correction for attenuation; NaN when the fractions rank nothing)."""
        return float(rho / self.ceiling) if self.ceiling > 0 else float("nan")


def rank_reliability(stable: Sequence[int], runs: Sequence[int], n_splits: int = 500,
                     seed: int = 0) -> Reliability:
    """Split-half reliability of committees' stable fractions (committee i: ``stable[i]`` of
    ``runs[i]`` runs stable). Runs of one committee are exchangeable, so a random split of them
    into halves of ⌊n/2⌋ (an odd run left out) puts a hypergeometric number of the stable ones in
    each half; the Spearman ρ between the halves' fractions, averaged over ``n_splits`` random
    splits (``seed``), is stepped up to n runs by Spearman–Brown. Near 0: the committees' fractions
    differ by chance alone and no predictor can rank them; near 1: they rank the committees
    reproducibly. Splits whose halves are constant are skipped (NaN when all are)."""
    stable, runs = np.asarray(stable), np.asarray(runs)
    if stable.shape != runs.shape or stable.ndim != 1:
        raise ValueError(f"stable and runs must be two equal-length sequences, got shapes {stable.shape} and {runs.shape}")
    if len(stable) < 3:
        raise ValueError(f"a rank reliability needs at least 3 committees, got {len(stable)}")
    for k, n in zip(stable, runs):
        _check_counts(k, n)
        if n < 2:
            raise ValueError(f"each committee needs at least 2 runs to be split in halves, got n={n}")
    if n_splits < 1:
        raise ValueError(f"n_splits must be a positive integer, got {n_splits}")
    rng = np.random.default_rng(seed)
    half = runs // 2
    rhos = []
    for _ in range(n_splits):
        first = rng.hypergeometric(stable, runs - stable, half)  # stable runs drawn into the first half
        left = stable - first  # the other half: the rest, an odd run dropped at random
        dropped = rng.random(len(runs)) < np.where(runs % 2 == 1, left / np.maximum(runs - half, 1), 0)
        second = left - dropped
        if np.ptp(first) == 0 or np.ptp(second) == 0:
            continue
        rhos.append(_scipy.spearmanr(first / half, second / half).statistic)
    r = float(np.mean(rhos)) if rhos else float("nan")
    full = 2 * r / (1 + r) if np.isfinite(r) and r > -1 else float("nan")
    ceiling = float(np.sqrt(full)) if np.isfinite(full) and full > 0 else 0.0 if np.isfinite(full) else float("nan")
    return Reliability(r, float(full), ceiling, int(len(stable)), int(n_splits))
