"""A run's time by phase, for ``summary.json``: every round's ``timings`` gathered, and each method's CPU seconds.

A round's ``timings`` (written by :class:`~advsample.loop.ActiveLearning` into its ``metrics.json``)
holds each phase's wall seconds (``sample_s``, ``select_s``, ``label_s``, ``train_s``,
``metrics_s``, ...), where measured the phase's CPU seconds (``<phase>_cpu_s``), and the whole
round's wall ``round_s`` and CPU ``cpu_s`` (this process: labels computed on an executor's
workers show in ``label_s``, not in ``cpu_s``). Round 0 has no sampling, selection or labels.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence


def _seconds(timings: Mapping | None) -> dict[str, float]:
    """The finite numbers of one round's timings (anything else dropped)."""
    return {key: float(value) for key, value in (timings or {}).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


def run_timings(timings: Sequence[Mapping | None], rounds: Sequence[int] | None = None) -> dict:
    """One run's timings: ``timings`` is each round's ``metrics["timings"]`` (round 0 first; None for
    a round without them), ``rounds`` their round numbers (default 0, 1, ...).

    Returns {"per_round": [{"round": k, key: seconds, ...}], "total": {key: sum over the rounds that
    have it}, "cpu_s": the run's CPU seconds (``total["cpu_s"]``, None if no round has it),
    "later_rounds_cpu_s": the same over rounds >= 1 (the rounds that sample and label)}.
    """
    rounds = list(range(len(timings))) if rounds is None else list(rounds)
    if len(rounds) != len(timings):
        raise ValueError(f"rounds must give one round number per timings entry: {len(rounds)} != {len(timings)}")
    per_round = [{"round": int(k), **_seconds(t)} for k, t in zip(rounds, timings)]
    total: dict[str, float] = {}
    for row in per_round:
        for key, value in row.items():
            if key != "round":
                total[key] = total.get(key, 0.0) + value
    later = [row["cpu_s"] for row in per_round if row["round"] >= 1 and "cpu_s" in row]
    return {"per_round": per_round, "total": total, "cpu_s": total.get("cpu_s"),
            "later_rounds_cpu_s": sum(later) if later else None}


def method_cpu_seconds(rows: Sequence[Mapping]) -> dict:
    """Each method's CPU seconds from comparison rows (:func:`advsample.compare.run_comparison`, or
    :func:`~advsample.compare.read_rows`: one row a method, seed and round, with ``cpu_s``): the run's total over its rounds, per seed, and the mean,
    min and max over seeds: {method: {"mean", "min", "max", "per_seed": {seed: seconds}}}. Rows
    without a finite ``cpu_s`` (a CSV from before the rounds were timed) count as missing; a method
    with none has mean/min/max None."""
    runs: dict[str, dict] = {}
    for row in rows:
        per_seed = runs.setdefault(row["method"], {})
        value = _seconds({"cpu_s": row.get("cpu_s")}).get("cpu_s")
        if value is not None:
            per_seed[row["seed"]] = per_seed.get(row["seed"], 0.0) + value
    result = {}
    for method, per_seed in runs.items():
        values = list(per_seed.values())
        result[method] = {"mean": sum(values) / len(values) if values else None,
                          "min": min(values) if values else None, "max": max(values) if values else None,
                          "per_seed": per_seed}
    return result
