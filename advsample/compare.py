"""Compare samplers on a system at equal cost - reference labels, or reference calls - over several random seeds.

One *method* is a sampler with the system's settings for it (``adversarial``, ``random``,
``random_scored``, ``md``, ``mixed``, any other name :func:`advsample.samplers.make_sampler`
knows, and ``adversarial_kT<x>`` for the temperature sweep), built by
:func:`advsample.samplers.make_method`. Every run starts from the
system's initial data, is tested on its fixed test set, and spends the same budget per
round - ``budget_unit="labels"`` (each round adds ``budget`` labels; reference calls are
reported beside them) or ``"reference_calls"`` (each round pays exactly ``budget`` reference
calls, failed and outside-window ones included, and keeps the labels they give: the cost a
user pays); it differs only in the method and the seed (committee initialisation,
validation split, sampler randomness).

    system = get_system("double_well_2d")        # or a System of your own, or "module:factory"
    rows = run_comparison(system, ["adversarial", "random"], seeds=[0, 1, 2], rounds=5, out_dir="runs")
    summary = aggregate(rows, system)            # raises UnequalCostError if budgets/labels (calls) differ
    label_ratio(summary, "random", "adversarial")
    comparison_figure(summary)

``rows`` are flat dicts, one per (method, seed, round) (:data:`ROW_FIELDS` and every metric
the system declares), written to and read from CSV with :func:`write_rows` / :func:`read_rows`.
``labels`` counts the new reference labels beyond the initial data, ``reference_calls``
every call paid for them. Systems built by name go to worker processes as their name and
options (not pickled).
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .samplers import check_methods, method_name, parse_method
from .systems import TEST_METRICS, Metric, System, get_system, resolve_factory

ROW_FIELDS = [
    "system", "method", "sampler", "kT", "seed", "round", "labels", "budget", "budget_unit", "n_train",
    "reference_calls", "reference_calls_failed", "reference_calls_outside_window",
    "energy_unit", "force_mae", "energy_mae", "force_rmse", "force_spearman", "force_miscalibration_area",
    "force_coverage", "force_coverage_stated", "selected_energy_mean", "selected_energy_max", "selected_energy_median",
    "sample_s", "select_s", "label_s", "train_s",
]
_TEXT = ("system", "method", "sampler", "energy_unit", "budget_unit")
_INTEGERS = ("seed", "round", "labels", "budget", "n_train", "reference_calls", "reference_calls_failed",
             "reference_calls_outside_window")
_BOOKKEEPING = {*ROW_FIELDS} - {m.name for m in TEST_METRICS} - {"selected_energy_mean"}
SMOKE_RUN = {"budget": 4, "epochs": 15}
# the benchmark's and plan()'s default methods: the five measured since the project began (the
# field's biased samplers udd, biased_md and md_attack are run by naming them: see docs/baselines.md)
DEFAULT_METHODS = ("adversarial", "random", "random_scored", "md", "mixed")  # a run's cap in smoke mode, for systems without smoke settings of their own


class UnequalCostError(ValueError):
    """Runs being compared did not spend the same budget (labels, or reference calls) per round."""


# -- runs ----------------------------------------------------------------------------------
def _row(system: System, method: str, kT: float, seed: int, selection, metrics: dict) -> dict:
    test = metrics.get("test", {})
    extra = metrics.get("extra", {})
    timings = metrics.get("timings", {})
    energies = np.asarray(metrics.get("selected_reference_energies", []), dtype=float)
    row = {
        "system": system.name,
        "method": method,
        "sampler": parse_method(method)[0],
        "kT": kT,
        "seed": seed,
        "round": metrics["round"],
        "labels": metrics["labels_used"],
        "budget": selection.budget,
        "budget_unit": selection.budget_unit,
        "n_train": metrics["n_train"],
        "reference_calls": metrics.get("reference_calls", math.nan),
        "reference_calls_failed": metrics.get("reference_calls_failed", math.nan),
        "reference_calls_outside_window": metrics.get("reference_calls_outside_window", math.nan),
        "energy_unit": system.energy_unit,
        **{m.name: test.get(m.name, math.nan) for m in TEST_METRICS},
        # the test force errors inside the round's calibrated interval, and the coverage it states (issue 36)
        "force_coverage": test.get("force_coverage", math.nan),
        "force_coverage_stated": test.get("force_coverage_stated", math.nan),
        "selected_energy_mean": float(energies.mean()) if energies.size else math.nan,
        "selected_energy_max": float(energies.max()) if energies.size else math.nan,
        "selected_energy_median": float(np.median(energies)) if energies.size else math.nan,
        **{m.name: float(extra.get(m.name, math.nan)) for m in system.metrics},
        **{key: timings.get(key, math.nan) for key in ("sample_s", "select_s", "label_s", "train_s", "metrics_s",
                                                       "round_s", "cpu_s")},
        "regression_flagged": int(bool(metrics.get("regression", {}).get("flagged", False))),  # 1: flagged (issue 32)
    }
    if metrics["round"] == 0:
        row["train_s"] = metrics.get("training", {}).get("train_s", math.nan)
    return row


def _settings(system: System, budget: int | None, epochs: int | None, selection: dict | None = None) -> dict:
    """ActiveLearning overrides of a run: the comparison's budget and epochs, other SelectionConfig fields."""
    overrides = {**({"budget": int(budget)} if budget else {}), **(selection or {})}
    selection = replace(system.selection, **overrides)
    train = replace(system.train, epochs=int(epochs)) if epochs else system.train
    return {"selection": selection, "train_config": train}


def run_one(system: "System | tuple[str, dict] | str", method: str, seed: int, rounds: int, run_dir: str | Path,
            budget: int | None = None, epochs: int | None = None, threads: int | None = 1,
            selection: dict | None = None) -> list[dict]:
    """One active-learning run; returns one row per round (0..rounds). Resumes from ``run_dir``.

    ``system``: a System, a name, or a ``(name, options)`` spec (rebuilt in this process).
    ``budget`` / ``epochs``: override the system's budget per round / training epochs;
    ``selection``: other :class:`~advsample.select.SelectionConfig` fields (``budget_unit``,
    ``energy_ceiling``, ``window_sigmas`` ...).
    """
    import torch

    from .loop import ActiveLearning

    if threads:
        torch.set_num_threads(threads)
    if isinstance(system, tuple):
        system = get_system(system[0], **system[1])
    system = get_system(system)
    settings = _settings(system, budget, epochs, selection)
    loop = ActiveLearning.from_system(system, run_dir, method, seed=seed, progress=False, **settings)
    return [_row(system, method, loop.objective.kT, seed, settings["selection"], record.metrics)
            for record in loop.irun(rounds)]


def run_comparison(system: "System | str", methods: Sequence[str], seeds: Sequence[int], rounds: int,
                   out_dir: str | Path, budget: int | None = None, epochs: int | None = None, workers: int = 1,
                   log: Callable[[str], None] | None = print, budget_unit: str | None = None) -> list[dict]:
    """Every (method, seed) run on a system; rows sorted by method, seed, round. Run directories under ``out_dir``.

    ``system``: a :class:`System` or a name / ``"module:factory"`` (:func:`get_system`).
    ``budget`` / ``epochs``: labels per round and training epochs (default: the system's);
    ``budget_unit="reference_calls"``: the budget counts reference calls (default: the system's, labels).
    ``workers`` > 1 runs in a process pool (one torch thread each); the system then goes to
    the workers by its ``spec`` (a system built by :func:`get_system`).
    """
    system = get_system(system)
    methods = check_methods(methods)
    if not seeds or rounds < 1:
        raise ValueError(f"a comparison needs at least one seed and one round, got seeds={list(seeds)}, rounds={rounds}")
    if workers > 1 and system.spec is None:
        raise ValueError(f"system {system.name!r} was built by hand: worker processes cannot rebuild it; use "
                         "workers=1, or build it with get_system(name or 'module:factory', ...)")
    out_dir = Path(out_dir)
    selection = {"budget_unit": budget_unit} if budget_unit else None
    jobs = [(m, s) for m in methods for s in seeds]
    rows: list[dict] = []
    start = time.perf_counter()

    def done(method, seed, result):
        rows.extend(result)
        if log:
            final = result[-1]
            log(f"{method:>18} seed {seed}: labels {final['labels']:4d} (reference calls {final['reference_calls']})  "
                f"test force MAE {result[0]['force_mae']:.3g} -> {final['force_mae']:.3g}   "
                f"[{time.perf_counter() - start:.0f} s]")

    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            futures = {(m, s): pool.submit(run_one, system.spec, m, s, rounds, out_dir / f"{m}_seed{s}", budget,
                                           epochs, 1, selection) for m, s in jobs}
            for (m, s), future in futures.items():
                done(m, s, future.result())
    else:
        for m, s in jobs:
            done(m, s, run_one(system, m, s, rounds, out_dir / f"{m}_seed{s}", budget, epochs, 1, selection))
    order = {m: i for i, m in enumerate(methods)}
    rows.sort(key=lambda r: (order[r["method"]], r["seed"], r["round"]))
    return rows


@dataclass
class Plan:
    """A comparison to run: the system, methods (samplers + sweep), seeds, rounds, budget per round
    (labels, or reference calls with ``budget_unit="reference_calls"``), epochs."""

    system: System
    methods: list[str]
    seeds: list[int]
    rounds: int
    budget: int
    epochs: int
    workers: int = 1
    budget_unit: str = "labels"

    def run(self, out_dir: str | Path, log: Callable[[str], None] | None = print) -> list[dict]:
        """:func:`run_comparison` of this plan, run directories under ``out_dir``."""
        return run_comparison(self.system, self.methods, self.seeds, self.rounds, out_dir, budget=self.budget,
                              epochs=self.epochs, workers=self.workers, log=log, budget_unit=self.budget_unit)

    def __str__(self) -> str:
        unit = "reference calls" if self.budget_unit == "reference_calls" else "labels"
        return (f"{self.system.name}: methods {self.methods}, {len(self.seeds)} seed(s), {self.rounds} round(s) x "
                f"{self.budget} {unit}, {self.epochs} epochs max, {self.workers} worker(s)")


def plan(system: "System | str", samplers: "str | Sequence[str]" = DEFAULT_METHODS, kT_sweep="default",
         n_seeds: int = 3, rounds: int = 4, budget: int | None = None, epochs: int | None = None, workers: int = 1,
         smoke: bool = False, budget_unit: str | None = None) -> Plan:
    """The comparison the benchmark and notebook 04 run, checked before anything runs.

    ``samplers``: comma-separated or a list; ``kT_sweep``: extra attack temperatures
    (comma-separated, a list, ``"default"``/None for the system's, ``""`` for none);
    ``budget`` / ``epochs`` 0 or None: the system's; ``budget_unit``: "labels" or
    "reference_calls" (None: the system's). ``smoke``: the system's smoke version,
    at most 2 seeds, 1 round, one sweep temperature, :data:`SMOKE_RUN` labels and epochs.
    """
    if isinstance(system, str):
        system = get_system(system, smoke=True) if smoke else get_system(system)
    names = samplers.split(",") if isinstance(samplers, str) else list(samplers)
    if kT_sweep in (None, "default"):
        sweep = list(system.kT_sweep)
    else:
        sweep = [float(v) for v in (kT_sweep.split(",") if isinstance(kT_sweep, str) else kT_sweep) if str(v).strip()]
    if n_seeds < 1 or rounds < 1 or workers < 1 or (budget or 0) < 0 or (epochs or 0) < 0:
        raise ValueError(f"n_seeds, rounds and workers must be >= 1 and budget, epochs >= 0; got n_seeds={n_seeds}, "
                         f"rounds={rounds}, workers={workers}, budget={budget}, epochs={epochs}")
    budget, epochs = budget or system.selection.budget, epochs or system.train.epochs
    budget_unit = replace(system.selection, budget_unit=budget_unit or system.selection.budget_unit).budget_unit
    if smoke:
        n_seeds, rounds, workers, sweep = min(n_seeds, 2), 1, 1, sweep[:1]
        budget, epochs = min(budget, SMOKE_RUN["budget"]), min(epochs, SMOKE_RUN["epochs"])
    methods = check_methods([*names, *(method_name("adversarial", kT) for kT in sweep)])
    return Plan(system, methods, list(range(n_seeds)), rounds, budget, epochs, workers, budget_unit)


def find_csv(path: str | Path) -> Path:
    """``path``, or the same path inside the advsample checkout (e.g. ``docs/results/...``); clear error if neither exists."""
    path = Path(path)
    if path.exists():
        return path
    in_checkout = Path(__file__).resolve().parents[1] / path
    if in_checkout.exists():
        return in_checkout
    raise FileNotFoundError(f"rows CSV {str(path)!r} not found (nor {in_checkout})")


# -- CSV -----------------------------------------------------------------------------------
def row_fields(rows: Sequence[dict]) -> list[str]:
    """:data:`ROW_FIELDS`, then every other column the rows carry (the system's metrics), in order."""
    return list(dict.fromkeys([*ROW_FIELDS, *(k for row in rows for k in row)]))


def write_rows(rows: Sequence[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=row_fields(rows))
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_rows(path: str | Path) -> list[dict]:
    """Rows from :func:`write_rows`, numbers parsed back."""
    rows = []
    with open(path, newline="") as handle:
        for raw in csv.DictReader(handle):
            row = {}
            for key, value in raw.items():
                if key in _TEXT:
                    row[key] = value
                elif key in _INTEGERS and value not in ("", None, "nan"):
                    row[key] = int(float(value))
                else:
                    row[key] = float(value) if value not in ("", None) else math.nan
            rows.append(row)
    return rows


# -- aggregation ---------------------------------------------------------------------------
def cost_unit(rows: Sequence[dict]) -> str:
    """The budget unit every row shares ("labels" for rows written before the unit existed);
    raises :class:`UnequalCostError` when runs counted their budgets in different units."""
    units = {r.get("budget_unit") or "labels" for r in rows}
    if len(units) > 1:
        raise UnequalCostError(f"runs with budgets in different units cannot be compared: {sorted(units)}")
    return units.pop() if units else "labels"


def check_equal_cost(rows: Sequence[dict]) -> dict[int, int]:
    """{round: cost} shared by every run; raises :class:`UnequalCostError` otherwise.

    The cost is the rows' budget unit: new labels (``budget_unit="labels"``) or reference
    calls paid (``"reference_calls"``). Every run must have the same budget per round, the
    same rounds, and have spent the same cost at each round (a run that could not fill its
    budget is not comparable at equal cost).
    """
    if not rows:
        raise ValueError("no runs to compare")
    systems = {r["system"] for r in rows}
    if len(systems) > 1:
        raise UnequalCostError(f"runs on different systems cannot be compared: {sorted(systems)}")
    unit = cost_unit(rows)
    key, words = ("reference_calls", "reference calls") if unit == "reference_calls" else ("labels", "reference labels")
    budgets = {r["budget"] for r in rows}
    if len(budgets) > 1:
        raise UnequalCostError(f"runs with different budgets per round ({words}): {sorted(budgets)}")
    runs: dict[tuple, dict[int, int]] = {}
    for r in rows:
        runs.setdefault((r["method"], r["seed"]), {})[int(r["round"])] = int(r[key])
    reference_run, reference = next(iter(runs.items()))
    for run, spent in runs.items():
        if spent != reference:
            differing = sorted(k for k in set(spent) | set(reference) if spent.get(k) != reference.get(k))
            raise UnequalCostError(
                f"run {run[0]} seed {run[1]} used {words} {[spent.get(k) for k in differing]} at rounds {differing}, "
                f"run {reference_run[0]} seed {reference_run[1]} used {[reference.get(k) for k in differing]}: "
                f"samplers are compared only at equal {words}"
            )
    return reference


def _factory_or_none(name: str):
    try:
        return resolve_factory(name)
    except (TypeError, ValueError):
        return None


def declared_metrics(system: "System | str", rows: Sequence[dict] = ()) -> list[Metric]:
    """What a system reports: its declared metrics (a System, or a built-in factory's
    ``metrics``), else the rows' own metric columns, after the test errors."""
    if isinstance(system, System):
        return system.all_metrics()
    declared = getattr(_factory_or_none(system), "metrics", None)
    if declared is not None:
        return [*TEST_METRICS, *declared]
    known = {m.name for m in TEST_METRICS} | _BOOKKEEPING | {"selected_energy_mean"}
    extra = [k for k in dict.fromkeys(k for row in rows for k in row) if k not in known]
    return [*TEST_METRICS, *(Metric(name) for name in extra)]


def aggregate(rows: Sequence[dict], system: "System | str | None" = None) -> dict:
    """Mean, std, min, max over seeds per method and round, after :func:`check_equal_cost`.

    ``system``: the System (or name) the rows come from, for its metric declarations
    (default: the rows' system name). Returns {"system", "energy_unit", "budget_unit",
    "cost": [shared cost per round: labels or reference calls], "labels": [L per round] (None
    at equal reference calls, where each method's labels are in its "labels" entry),
    "rounds", "reference_calls": {method: [mean per round]}, "metrics": [declared metrics as
    dicts], "methods": {method: {metric: {"mean": [...], "std": [...], "min": [...], "max":
    [...]}, "n_seeds": n, "kT": kT}}}.
    """
    cost_by_round = check_equal_cost(rows)
    unit = cost_unit(rows)
    rounds = sorted(cost_by_round)
    cost = [cost_by_round[k] for k in rounds]
    declared = declared_metrics(system if system is not None else rows[0]["system"], rows)
    energy_unit = rows[0].get("energy_unit") or (system.energy_unit if isinstance(system, System) else "") or \
        getattr(_factory_or_none(rows[0]["system"]), "energy_unit", "arb. units")
    summary = {"system": rows[0]["system"], "energy_unit": energy_unit, "budget_unit": unit, "cost": cost,
               "labels": cost if unit == "labels" else None, "rounds": rounds,
               "metrics": [asdict(m) for m in declared], "methods": {}, "reference_calls": {}}
    names = [m.name for m in declared] + ["selected_energy_mean", "reference_calls", "reference_calls_failed",
                                          "reference_calls_outside_window", "labels", "force_coverage"]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        entry = {"n_seeds": len({r["seed"] for r in mine}), "kT": mine[0]["kT"]}
        for metric in names:
            stats = {"mean": [], "std": [], "min": [], "max": []}
            for k in rounds:
                values = np.array([float(r.get(metric, math.nan)) for r in mine if r["round"] == k], dtype=float)
                values = values[np.isfinite(values)]
                for name, fn in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max)):
                    stats[name].append(float(fn(values)) if values.size else math.nan)
            entry[metric] = stats
        summary["methods"][method] = entry
        summary["reference_calls"][method] = entry["reference_calls"]["mean"]
    return summary


def _metrics_of(summary: dict) -> list[Metric]:
    return [Metric(**m) for m in summary.get("metrics", [asdict(m) for m in TEST_METRICS])]


def report_metrics(summary: dict) -> list[str]:
    """What the comparison plot shows: test force/energy error and calibration, then every
    metric the system declares (rare-event and thermal figures)."""
    own = [m.name for m in _metrics_of(summary) if m.kind != "test"]
    return ["force_mae", "energy_mae", "force_spearman", *own]


def labels_to_reach(labels: Sequence[float], errors: Sequence[float], target: float) -> float | None:
    """Labels at which a (mean) learning curve first reaches ``target``; log-linear between rounds.

    None when it never does within the curve.
    """
    labels, errors = np.asarray(labels, float), np.asarray(errors, float)
    for k in range(len(errors)):
        if errors[k] <= target:
            if k == 0:
                return float(labels[0])
            e0, e1 = math.log(errors[k - 1]), math.log(errors[k])
            t = (e0 - math.log(target)) / (e0 - e1) if e0 != e1 else 1.0
            return float(labels[k - 1] + t * (labels[k] - labels[k - 1]))
    return None


def label_ratio(summary: dict, baseline: str = "random", method: str = "adversarial", metric: str = "force_mae") -> dict:
    """Labels ``baseline`` needs / labels ``method`` needs to reach ``method``'s final mean test error.

    ``target`` = the final mean ``metric`` of ``method``; each curve's labels come from
    :func:`labels_to_reach` (first crossing, log-linear between rounds). ``ratio`` > 1:
    the baseline needs more labels; < 1: fewer. None when the baseline never reaches the
    target within the budget (then ``ratio_at_least`` = budget / labels ``method`` needs,
    a lower bound) or when the target is not below the round-0 error. At equal reference
    calls (``summary["budget_unit"]``, also in ``unit``) the same ratio counts reference calls.
    """
    labels = summary["cost"]
    a = summary["methods"][method][metric]["mean"]
    b = summary["methods"][baseline][metric]["mean"]
    target = a[-1]
    need_a = labels_to_reach(labels, a, target)
    need_b = labels_to_reach(labels, b, target)
    defined = bool(need_a) and target < a[0] and target < b[0]
    ratio = need_b / need_a if defined and need_b is not None else None
    at_least = labels[-1] / need_a if defined and need_b is None else None
    return {
        "method": method,
        "baseline": baseline,
        "metric": metric,
        "unit": summary.get("budget_unit", "labels"),
        "target": target,
        "labels_method": need_a,
        "labels_baseline": need_b,
        "ratio": ratio,
        "ratio_at_least": at_least,
        "method_final": a[-1],
        "baseline_final": b[-1],
    }


def _finite_or_none(value: float) -> float | None:
    """``value``, or None where it was not measured (NaN: e.g. no round calibrated, so no coverage)."""
    return float(value) if math.isfinite(value) else None


def final_table(summary: dict, metric: str = "force_mae") -> list[dict]:
    """One line per method: initial and final mean ± std of ``metric``, the labels and
    reference calls used, and the final mean ± std of every metric the system declares."""
    own = [m.name for m in _metrics_of(summary) if m.kind != "test"]
    out = []
    for method, entry in summary["methods"].items():
        stats = entry[metric]
        calls = entry.get("reference_calls", {}).get("mean", [math.nan])
        line = {
            "method": method,
            "kT": entry["kT"],
            "n_seeds": entry["n_seeds"],
            "labels": entry["labels"]["mean"][-1],
            "reference_calls": calls[-1],
            "calls_failed": entry.get("reference_calls_failed", {}).get("mean", [math.nan])[-1],
            "calls_outside_window": entry.get("reference_calls_outside_window", {}).get("mean", [math.nan])[-1],
            f"{metric}_initial": stats["mean"][0],
            f"{metric}_final": stats["mean"][-1],
            f"{metric}_final_std": stats["std"][-1],
            "improvement": stats["mean"][0] / stats["mean"][-1] if stats["mean"][-1] > 0 else math.nan,
            "energy_mae_final": entry["energy_mae"]["mean"][-1],
            "spearman_final": entry["force_spearman"]["mean"][-1],
            "miscalibration_final": entry["force_miscalibration_area"]["mean"][-1],
            "coverage_final": _finite_or_none(entry.get("force_coverage", {}).get("mean", [math.nan])[-1]),
            "selected_energy_mean": float(np.nanmean(entry["selected_energy_mean"]["mean"][1:]))
            if len(summary["cost"]) > 1 else math.nan,
        }
        for extra in own:
            if extra in entry:
                line.update({f"{extra}_final": entry[extra]["mean"][-1], f"{extra}_final_std": entry[extra]["std"][-1]})
        out.append(line)
    return out


def markdown_table(table: Sequence[dict], digits: int = 3) -> str:
    """A Markdown table of :func:`final_table` lines."""
    if not table:
        return ""
    keys = list(dict.fromkeys(k for line in table for k in line))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for line in table:
        cells = [f"{v:.{digits}g}" if isinstance(v, float) else "—" if v is None else str(v)  # None: not measured
                 for v in (line.get(k, math.nan) for k in keys)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- plots ---------------------------------------------------------------------------------
def comparison_figure(summary: dict, metrics: Sequence[str] | None = None, methods: Sequence[str] | None = None):
    """Learning curves vs the cost (reference labels, or calls): mean (line) and min–max over seeds (band).

    ``metrics``: names (default :func:`report_metrics`); axis labels, units (the summary's
    energy unit) and log scales come from the system's metric declarations.
    """
    from matplotlib.figure import Figure

    declared = {m.name: m for m in _metrics_of(summary)}
    declared["selected_energy_mean"] = Metric("selected_energy_mean", "{E}", label="mean selected energy above min")
    declared["reference_calls"] = Metric("reference_calls", "", label="reference calls")
    declared["labels"] = Metric("labels", "", label="new reference labels")
    metrics = list(metrics or report_metrics(summary))
    methods = list(methods or summary["methods"])
    unit = summary.get("energy_unit", "arb. units")
    n_cols = min(len(metrics), 3)
    n_rows = math.ceil(len(metrics) / n_cols)
    fig = Figure(figsize=(4.2 * n_cols, 3.4 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    x = np.asarray(summary["cost"], float)
    by_calls = summary.get("budget_unit") == "reference_calls"
    for ax, metric in zip(axes, metrics):
        for method in methods:
            stats = summary["methods"][method][metric]
            mean = np.asarray(stats["mean"], float)
            (line,) = ax.plot(x, mean, marker="o", ms=3, label=f"{method} (n={summary['methods'][method]['n_seeds']})")
            ax.fill_between(x, stats["min"], stats["max"], color=line.get_color(), alpha=0.15, linewidth=0)
        declaration = declared.get(metric, Metric(metric))
        if declaration.log_scale:
            ax.set_yscale("log")
        ax.set_xlabel("reference calls paid" if by_calls else "new reference labels")
        ax.set_ylabel(declaration.axis_label(unit))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{summary['system']}: mean over seeds, band = min–max", fontsize=10)
    return fig


def save_summary(summary: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1, default=float))
    return path


def default_workers() -> int:
    """Two workers on a machine with ≥ 2 cores, else one."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1
