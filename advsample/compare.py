"""Compare samplers at an equal number of reference labels, over several random seeds.

One *method* is a sampler with its settings (``adversarial``, ``random``, ``random_scored``,
``md``, ``mixed``, and ``adversarial_kT<x>`` for the temperature sweep). Every run starts
from the same initial data, is tested on the same fixed test set, and labels the same
budget per round; it differs only in the method and the seed (committee initialisation,
validation split, sampler randomness).

    problem = make_problem("double_well_2d")
    rows = run_comparison(problem, ["adversarial", "random"], seeds=[0, 1, 2], rounds=5, out_dir="runs")
    summary = aggregate(rows)           # raises UnequalLabelsError if budgets/labels differ
    label_ratio(summary, "random", "adversarial")
    comparison_figure(summary)

``rows`` are flat dicts, one per (method, seed, round) (:data:`ROW_FIELDS`), written to
and read from CSV with :func:`write_rows` / :func:`read_rows`. ``labels`` counts the new
reference labels beyond the initial data. Problems are built by name and options (not
pickled), so runs can go to a process pool.
"""
from __future__ import annotations

import csv
import functools
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from ase import Atoms, units

from .committee import Committee, default_device
from .models import MLPCommittee
from .samplers import MixedSampler, Sampler, make_sampler
from .select import SelectionConfig
from .train import TrainConfig

SAMPLERS = ("adversarial", "random", "random_scored", "md", "mixed")
SYSTEMS = ("double_well_2d", "double_well_1d", "ammonia", "ethanol")
METRICS = ("force_mae", "energy_mae", "force_spearman", "force_miscalibration_area")

ROW_FIELDS = [
    "system", "method", "sampler", "kT", "seed", "round", "labels", "budget", "n_train",
    "force_mae", "energy_mae", "force_rmse", "force_spearman", "force_miscalibration_area",
    "selected_energy_mean", "selected_energy_max", "selected_energy_median",
    "barrier_error_kcal_mol", "barrier_abs_error_kcal_mol", "path_force_mae", "path_energy_mae",
    "md_stable_fraction", "sample_s", "select_s", "label_s", "train_s",
]


class UnequalLabelsError(ValueError):
    """Runs being compared did not use the same reference labels per round."""


# -- problems ------------------------------------------------------------------------------
@dataclass
class Problem:
    """Everything a run needs besides the method and the seed.

    ``make_committee(seed)`` builds a fresh committee; ``extra_metrics(committee)`` adds
    problem figures (the NH3 barrier); ``displacement`` is the random samplers' step (Å);
    ``attack_options`` go to :class:`advsample.attack.AttackConfig`. The molecules use
    ``validation_fraction = 0``: their initial data cover one basin only, so a validation
    set drawn from it cannot reward fitting what the rounds add (measured on NH3:
    docs/results.md).
    """

    name: str
    reference: object
    initial: list[Atoms]
    test: list[Atoms]
    make_committee: Callable[[int], Committee]
    kT: float
    train_config: TrainConfig
    selection: SelectionConfig
    displacement: float
    attack_options: dict = field(default_factory=dict)
    md_options: dict = field(default_factory=dict)
    extra_metrics: Callable[[Committee], dict] | None = None
    validation_fraction: float = 0.1  # of the initial data, held out to stop training early (0: training loss)
    options: dict = field(default_factory=dict)  # how it was built (make_problem arguments)


TOY_REGIONS = {"double_well_2d": [(-1.5, 0.0), (-1.2, 1.2)], "double_well_1d": [(-1.6, 0.0)]}


def _toy_problem(name, n_initial=128, n_test=400, test_max_energy=4.0, epochs=1500, hidden=(64, 64, 64),
                 budget=20, kT=1.0, displacement=0.2, n_members=5, attack_steps=60, md_steps=200) -> Problem:
    from .surfaces import get_surface

    surface = get_surface(name)
    initial = surface.sample(n_initial, seed=0, max_energy=0.0, region=TOY_REGIONS[name])
    test = surface.sample(n_test, seed=5, max_energy=test_max_energy)
    axes = tuple(range(surface.n_dims))
    hidden = tuple(hidden)

    def make_committee(seed: int) -> Committee:
        return Committee(MLPCommittee(n_members, hidden, input_axes=axes, seed=seed)).to(default_device())

    return Problem(
        name=name,
        reference=surface,
        initial=initial,
        test=test,
        make_committee=make_committee,
        kT=kT,
        train_config=TrainConfig(epochs=epochs, progress=False),
        selection=SelectionConfig(budget=budget, kT=kT, min_distance=0.02),
        displacement=displacement,
        attack_options={"learning_rate": 0.02, "n_steps": attack_steps},
        # the toy's energy unit read as eV (as ASE MD does): T such that k_B T = kT
        md_options={"temperature_K": kT / units.kB, "timestep_fs": 1.0, "n_steps": md_steps, "interval": 5, "n_seeds": 8},
    )


def _ammonia_problem(epochs=3000, n_features=32, budget=20, kT=0.1, energy_ceiling=0.4,
                     displacement=0.1, n_members=5, n_path=21, uncertainty="energy", stability_md_runs=8,
                     stability_md_steps=400) -> Problem:
    """NH3 with GFN2-xTB labels and a SchNet committee, the settings of ``ammonia_al``.

    Extra metrics (:func:`advsample.ammonia_al.committee_metrics`): barrier error, errors
    along the inversion path, and the 1500 K MD-stable fraction (``stability_md_runs`` runs of ``stability_md_steps``).
    (An MLP on the 12 raw Cartesian coordinates, as in DESIGN.md's prototype, is not
    rotation invariant: measured here its test energy error was 5–14 eV on held-out
    geometries in other orientations, so it cannot rank samplers.)
    """
    from .ammonia_al import AmmoniaALConfig, committee_metrics
    from .models.schnet import SchNetCommittee
    from .molecules import ammonia_splits, xtb_calculator

    reference = xtb_calculator()
    initial, test = ammonia_splits(seed=0, n_path=n_path, calculator=reference)
    path = [a for a in test if a.info.get("subset") == "inversion_path"]
    config = AmmoniaALConfig(kT=kT, energy_ceiling=energy_ceiling, uncertainty=uncertainty, n_members=n_members,
                             n_features=n_features, epochs=epochs, md_runs=stability_md_runs,
                             md_steps=stability_md_steps)

    def make_committee(seed: int) -> Committee:
        model = SchNetCommittee(n_members=n_members, species=(1, 7), n_features=n_features, seed=seed)
        return Committee(model).to(default_device())

    return Problem(
        name="ammonia",
        reference=reference,
        initial=initial,
        test=test,
        make_committee=make_committee,
        kT=kT,
        train_config=TrainConfig(epochs=epochs, patience=config.patience, progress=False),
        validation_fraction=config.validation_fraction,
        selection=SelectionConfig(budget=budget, kT=kT, min_distance=0.01, energy_ceiling=energy_ceiling),
        displacement=displacement,
        attack_options={"learning_rate": 0.01, "n_steps": 40, "min_distance": 0.6, "uncertainty": uncertainty},
        md_options={"temperature_K": 1500.0, "timestep_fs": 0.5, "n_steps": 200, "interval": 5, "n_seeds": 8},
        extra_metrics=committee_metrics(config, initial[:stability_md_runs], reference=reference, path=path),
    )


def _ethanol_problem(n_initial=100, n_scan=24, n_test_thermal=20, epochs=1000, patience=200, n_members=5,
                     n_features=32, budget=10, kT=0.1, energy_ceiling=0.5, displacement=0.05, attack_steps=60,
                     attack_learning_rate=0.01, uncertainty="forces", n_attack_seeds=None, md_steps=200,
                     data_seed=0, validation_fraction=0.0, stability_md_runs=8, stability_md_steps=400,
                     stability_temperature_K=1000.0, stability_energy_tolerance_eV=0.05) -> Problem:
    """Ethanol with GFN2-xTB labels and a SchNet committee (species H, C, O).

    Initial data: ``n_initial`` 300 K MD frames of the anti conformer only (H–O–C–C torsion
    within 40° of 180°); test: the relaxed torsion scan (both gauche basins, the barriers,
    cis) plus held-out thermal frames near anti and both gauche minima
    (:func:`advsample.molecules.ethanol_dataset`). Labels through a
    :class:`~advsample.label.CalculatorSpec` of :func:`~advsample.molecules.xtb_calculator`.
    Extra metrics on the scan: force MAE (``path_force_mae``, eV/Å), energy-profile MAE
    relative to the anti point (``path_energy_mae``, eV) and the anti→gauche barrier error
    at the scan geometries (``barrier_error_kcal_mol``); thermal: the fraction of
    ``stability_md_runs`` committee-MD runs (``stability_md_steps`` × 0.5 fs at
    ``stability_temperature_K`` from anti training frames) that stay bonded and within
    ``stability_energy_tolerance_eV`` of xTB (``md_stable_fraction``).
    """
    from .label import CalculatorSpec
    from .metrics import md_stability, test_errors
    from .models.schnet import SchNetCommittee
    from .molecules import ethanol_dataset, torsion_profile_errors, xtb_calculator

    initial, test = ethanol_dataset(n_initial, seed=data_seed, n_scan=n_scan, n_test_thermal=n_test_thermal,
                                    calculator=xtb_calculator())
    scan = [a for a in test if a.info.get("subset") == "torsion_scan"]

    def make_committee(seed: int) -> Committee:
        model = SchNetCommittee(n_members=n_members, species=(1, 6, 8), n_features=n_features, seed=seed)
        return Committee(model).to(default_device())

    reference = xtb_calculator()

    def extra_metrics(committee: Committee) -> dict:
        out = {}
        if scan:
            out = torsion_profile_errors(lambda atoms: committee.predict(atoms)["energy_mean"], scan)
            out["path_energy_mae"] = out.pop("profile_mae")
            out["path_force_mae"] = test_errors(committee, scan)["force_mae"]
        out.update(md_stability(committee, initial[:stability_md_runs], temperature_K=stability_temperature_K,
                                n_runs=stability_md_runs, n_steps=stability_md_steps, reference=reference,
                                energy_tolerance_eV=stability_energy_tolerance_eV, n_check_frames=5))
        return out

    return Problem(
        name="ethanol",
        reference=CalculatorSpec("advsample.molecules:xtb_calculator", {}),
        initial=initial,
        test=test,
        make_committee=make_committee,
        kT=kT,
        train_config=TrainConfig(epochs=epochs, patience=patience, progress=False),
        selection=SelectionConfig(budget=budget, kT=kT, min_distance=0.01, energy_ceiling=energy_ceiling),
        displacement=displacement,
        attack_options={"learning_rate": attack_learning_rate, "n_steps": attack_steps, "min_distance": 0.6,
                        "uncertainty": uncertainty, "n_seeds": n_attack_seeds},
        md_options={"temperature_K": 300.0, "timestep_fs": 0.5, "n_steps": md_steps, "interval": 5, "n_seeds": 8},
        extra_metrics=extra_metrics,
        validation_fraction=validation_fraction,
    )


@functools.lru_cache(maxsize=4)
def _cached_problem(name: str, options_json: str) -> Problem:
    options = json.loads(options_json)
    if name in TOY_REGIONS:
        problem = _toy_problem(name, **options)
    elif name == "ammonia":
        problem = _ammonia_problem(**options)
    elif name == "ethanol":
        problem = _ethanol_problem(**options)
    else:
        raise ValueError(f"unknown system {name!r}; choose one of {SYSTEMS}")
    problem.options = options
    return problem


def make_problem(name: str, **options) -> Problem:
    """The comparison problem by name (:data:`SYSTEMS`); built once per process and options.

    Toys: 128 points of the left well below E = 0 (initial), 400 test points below E = 4
    over both wells, 5 MLPs 3 × 64, kT = 1, 20 labels per round. ``ammonia``: the 118-structure
    xTB train pool, test = 20 held-out geometries + the relaxed inversion path, SchNet
    committee, energy-variance attack at kT = 0.1 eV, selection ceiling 0.4 eV above the
    training minimum (as in ``ammonia_al``). ``ethanol``: 100 anti-conformer 300 K
    MD frames (xTB), test = relaxed H–O–C–C torsion scan + thermal frames near anti and
    gauche, SchNet committee (H, C, O), kT = 0.1 eV, ceiling 0.5 eV, 10 labels per round.
    """
    return _cached_problem(name, json.dumps(options, sort_keys=True))


# -- methods -------------------------------------------------------------------------------
def parse_method(method: str) -> tuple[str, float | None]:
    """"adversarial_kT0.5" -> ("adversarial", 0.5); "random" -> ("random", None)."""
    if "_kT" in method:
        name, value = method.split("_kT", 1)
        return name, float(value)
    return method, None


def method_name(sampler: str, kT: float | None = None) -> str:
    return sampler if kT is None else f"{sampler}_kT{kT:g}"


def make_method(problem: Problem, method: str) -> tuple[Sampler, SelectionConfig, float]:
    """(sampler, selection settings, kT) of a method on a problem."""
    name, kT = parse_method(method)
    kT = problem.kT if kT is None else kT
    selection = replace(problem.selection, kT=kT)
    kind = problem.attack_options.get("uncertainty", "forces")  # every method scores with the attack's σ²

    def adversarial():
        return make_sampler("adversarial", kT=kT, **problem.attack_options)

    def random(ranking):
        return make_sampler(ranking, kT=kT, displacement=problem.displacement, uncertainty_kind=kind)

    if name == "adversarial":
        sampler = adversarial()
    elif name == "random":
        sampler = random("random")
        selection = replace(selection, uncertainty_percentile=None)  # picked at random, no σ filter
    elif name == "random_scored":
        sampler = random("random_scored")
    elif name == "md":
        sampler = make_sampler("md", kT=kT, uncertainty_kind=kind, **problem.md_options)
    elif name == "mixed":
        sampler = MixedSampler(adversarial(), random("random"), share=0.5)
    else:
        raise ValueError(f"unknown method {method!r}; samplers are {SAMPLERS}, sweeps 'adversarial_kT<x>'")
    return sampler, selection, kT


# -- runs ----------------------------------------------------------------------------------
def _row(problem: Problem, method: str, kT: float, seed: int, metrics: dict) -> dict:
    test = metrics.get("test", {})
    extra = metrics.get("extra", {})
    timings = metrics.get("timings", {})
    energies = np.asarray(metrics.get("selected_reference_energies", []), dtype=float)
    row = {
        "system": problem.name,
        "method": method,
        "sampler": parse_method(method)[0],
        "kT": kT,
        "seed": seed,
        "round": metrics["round"],
        "labels": metrics["labels_used"],
        "budget": problem.selection.budget,
        "n_train": metrics["n_train"],
        **{key: test.get(key, math.nan) for key in ("force_mae", "energy_mae", "force_rmse", "force_spearman",
                                                     "force_miscalibration_area")},
        "selected_energy_mean": float(energies.mean()) if energies.size else math.nan,
        "selected_energy_max": float(energies.max()) if energies.size else math.nan,
        "selected_energy_median": float(np.median(energies)) if energies.size else math.nan,
        "barrier_error_kcal_mol": extra.get("barrier_error_kcal_mol", math.nan),
        "barrier_abs_error_kcal_mol": abs(extra.get("barrier_error_kcal_mol", math.nan)),
        "path_force_mae": extra.get("path_force_mae", math.nan),
        "path_energy_mae": extra.get("path_energy_mae", math.nan),
        "md_stable_fraction": extra.get("md_stable_fraction", math.nan),
        **{key: timings.get(key, math.nan) for key in ("sample_s", "select_s", "label_s", "train_s")},
    }
    if metrics["round"] == 0:
        row["train_s"] = metrics.get("training", {}).get("train_s", math.nan)
    return row


def run_one(system: str, options: dict, method: str, seed: int, rounds: int, run_dir: str | Path,
            threads: int | None = 1) -> list[dict]:
    """One active-learning run; returns one row per round (0..rounds). Resumes from ``run_dir``."""
    import torch

    from .loop import ActiveLearning

    if threads:
        torch.set_num_threads(threads)
    problem = make_problem(system, **options)
    sampler, selection, kT = make_method(problem, method)
    loop = ActiveLearning(
        run_dir,
        problem.make_committee(seed),
        problem.reference,
        problem.initial,
        sampler,
        test=problem.test,
        selection=selection,
        train_config=problem.train_config,
        validation_fraction=problem.validation_fraction,
        seed=seed,
        extra_metrics=problem.extra_metrics,
        progress=False,
    )
    return [_row(problem, method, kT, seed, record.metrics) for record in loop.irun(rounds)]


def run_comparison(system: str, methods: Sequence[str], seeds: Sequence[int], rounds: int, out_dir: str | Path,
                   options: dict | None = None, workers: int = 1, log: Callable[[str], None] | None = print) -> list[dict]:
    """Every (method, seed) run; rows sorted by method, seed, round. Run directories under ``out_dir``.

    ``workers`` > 1 runs in a process pool (one torch thread each).
    """
    options = dict(options or {})
    out_dir = Path(out_dir)
    jobs = [(m, s) for m in methods for s in seeds]
    rows: list[dict] = []
    start = time.perf_counter()

    def done(method, seed, result):
        rows.extend(result)
        if log:
            final = result[-1]
            log(f"{method:>18} seed {seed}: labels {final['labels']:4d}  test force MAE "
                f"{result[0]['force_mae']:.3g} -> {final['force_mae']:.3g}   [{time.perf_counter() - start:.0f} s]")

    if workers > 1:
        make_problem(system, **options)  # fail early on a bad system/options
        with ProcessPoolExecutor(workers) as pool:
            futures = {(m, s): pool.submit(run_one, system, options, m, s, rounds, out_dir / f"{m}_seed{s}")
                       for m, s in jobs}
            for (m, s), future in futures.items():
                done(m, s, future.result())
    else:
        for m, s in jobs:
            done(m, s, run_one(system, options, m, s, rounds, out_dir / f"{m}_seed{s}"))
    order = {m: i for i, m in enumerate(methods)}
    rows.sort(key=lambda r: (order[r["method"]], r["seed"], r["round"]))
    return rows


# -- CSV -----------------------------------------------------------------------------------
def write_rows(rows: Sequence[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=ROW_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_rows(path: str | Path) -> list[dict]:
    """Rows from :func:`write_rows`, numbers parsed back."""
    integers = {"seed", "round", "labels", "budget", "n_train"}
    rows = []
    with open(path, newline="") as handle:
        for raw in csv.DictReader(handle):
            row = {}
            for key, value in raw.items():
                if key in ("system", "method", "sampler"):
                    row[key] = value
                elif key in integers:
                    row[key] = int(float(value))
                else:
                    row[key] = float(value) if value not in ("", None) else math.nan
            rows.append(row)
    return rows


# -- aggregation ---------------------------------------------------------------------------
def check_equal_labels(rows: Sequence[dict]) -> dict[int, int]:
    """{round: labels} shared by every run; raises :class:`UnequalLabelsError` otherwise.

    Every run must have the same budget per round, the same rounds, and have used the same
    number of reference labels at each round (a run that could not fill its budget is not
    comparable at equal labels).
    """
    if not rows:
        raise ValueError("no runs to compare")
    systems = {r["system"] for r in rows}
    if len(systems) > 1:
        raise UnequalLabelsError(f"runs on different systems cannot be compared: {sorted(systems)}")
    budgets = {r["budget"] for r in rows}
    if len(budgets) > 1:
        raise UnequalLabelsError(f"runs with different label budgets per round: {sorted(budgets)}")
    runs: dict[tuple, dict[int, int]] = {}
    for r in rows:
        runs.setdefault((r["method"], r["seed"]), {})[int(r["round"])] = int(r["labels"])
    reference_run, reference = next(iter(runs.items()))
    for run, labels in runs.items():
        if labels != reference:
            differing = sorted(k for k in set(labels) | set(reference) if labels.get(k) != reference.get(k))
            raise UnequalLabelsError(
                f"run {run[0]} seed {run[1]} used labels {[labels.get(k) for k in differing]} at rounds {differing}, "
                f"run {reference_run[0]} seed {reference_run[1]} used {[reference.get(k) for k in differing]}: "
                "samplers are compared only at equal reference labels"
            )
    return reference


def aggregate(rows: Sequence[dict], metrics: Sequence[str] = (*METRICS, "selected_energy_mean",
                                                                 "barrier_error_kcal_mol",
                                                                 "barrier_abs_error_kcal_mol", "path_force_mae",
                                                                 "path_energy_mae", "md_stable_fraction")) -> dict:
    """Mean, std, min, max over seeds per method and round, after :func:`check_equal_labels`.

    Returns {"labels": [L per round], "methods": {method: {metric: {"mean": [...], "std": [...],
    "min": [...], "max": [...]}, "n_seeds": n}}}.
    """
    labels_by_round = check_equal_labels(rows)
    rounds = sorted(labels_by_round)
    summary = {"system": rows[0]["system"], "labels": [labels_by_round[k] for k in rounds], "rounds": rounds,
               "methods": {}}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        entry = {"n_seeds": len({r["seed"] for r in mine}), "kT": mine[0]["kT"]}
        for metric in metrics:
            stats = {"mean": [], "std": [], "min": [], "max": []}
            for k in rounds:
                values = np.array([float(r.get(metric, math.nan)) for r in mine if r["round"] == k], dtype=float)
                values = values[np.isfinite(values)]
                for name, fn in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max)):
                    stats[name].append(float(fn(values)) if values.size else math.nan)
            entry[metric] = stats
        summary["methods"][method] = entry
    return summary


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
    a lower bound) or when the target is not below the round-0 error.
    """
    labels = summary["labels"]
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
        "target": target,
        "labels_method": need_a,
        "labels_baseline": need_b,
        "ratio": ratio,
        "ratio_at_least": at_least,
        "method_final": a[-1],
        "baseline_final": b[-1],
    }


def final_table(summary: dict, metric: str = "force_mae") -> list[dict]:
    """One line per method: initial and final mean ± std of ``metric`` and the labels used.

    Molecules add the final mean ± std of their rare-event and thermal figures
    (those :func:`report_metrics` plots beyond the test errors) that the runs recorded.
    """
    extras = [m for m in report_metrics(summary["system"]) if m not in METRICS]
    out = []
    for method, entry in summary["methods"].items():
        stats = entry[metric]
        line = {
            "method": method,
            "kT": entry["kT"],
            "n_seeds": entry["n_seeds"],
            "labels": summary["labels"][-1],
            f"{metric}_initial": stats["mean"][0],
            f"{metric}_final": stats["mean"][-1],
            f"{metric}_final_std": stats["std"][-1],
            "improvement": stats["mean"][0] / stats["mean"][-1] if stats["mean"][-1] > 0 else math.nan,
            "energy_mae_final": entry["energy_mae"]["mean"][-1],
            "spearman_final": entry["force_spearman"]["mean"][-1],
            "miscalibration_final": entry["force_miscalibration_area"]["mean"][-1],
            "selected_energy_mean": float(np.nanmean(entry["selected_energy_mean"]["mean"][1:]))
            if len(summary["labels"]) > 1 else math.nan,
        }
        for extra in extras:
            if extra in entry and np.isfinite(entry[extra]["mean"][-1]):
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
        cells = [f"{v:.{digits}g}" if isinstance(v, float) else str(v) for v in (line.get(k, math.nan) for k in keys)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- plots ---------------------------------------------------------------------------------
def comparison_figure(summary: dict, metrics: Sequence[str] = ("force_mae", "energy_mae", "force_spearman"),
                      methods: Sequence[str] | None = None, energy_unit: str = "arb. units", length_unit: str = "Å"):
    """Learning curves vs reference labels: mean (line) and min–max over seeds (band), log y for errors."""
    from matplotlib.figure import Figure

    labels = {
        "force_mae": f"test force MAE ({energy_unit}/{length_unit})",
        "energy_mae": f"test energy MAE ({energy_unit})",
        "force_rmse": f"test force RMSE ({energy_unit}/{length_unit})",
        "force_spearman": "Spearman ρ (force σ vs error)",
        "force_miscalibration_area": "miscalibration area",
        "barrier_error_kcal_mol": "barrier error (kcal/mol)",
        "path_force_mae": f"path force MAE ({energy_unit}/{length_unit})",
        "path_energy_mae": f"path energy-profile MAE ({energy_unit})",
        "barrier_abs_error_kcal_mol": "|barrier error| (kcal/mol)",
        "md_stable_fraction": "hot committee-MD stable fraction",  # NH3 1500 K, ethanol 1000 K
        "selected_energy_mean": f"mean selected energy above min ({energy_unit})",
    }
    methods = list(methods or summary["methods"])
    n_cols = min(len(metrics), 3)
    n_rows = math.ceil(len(metrics) / n_cols)
    fig = Figure(figsize=(4.2 * n_cols, 3.4 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    x = np.asarray(summary["labels"], float)
    for ax, metric in zip(axes, metrics):
        for method in methods:
            stats = summary["methods"][method][metric]
            mean = np.asarray(stats["mean"], float)
            (line,) = ax.plot(x, mean, marker="o", ms=3, label=f"{method} (n={summary['methods'][method]['n_seeds']})")
            ax.fill_between(x, stats["min"], stats["max"], color=line.get_color(), alpha=0.15, linewidth=0)
        if metric in ("force_mae", "energy_mae", "force_rmse", "path_force_mae", "path_energy_mae"):
            ax.set_yscale("log")
        ax.set_xlabel("new reference labels")
        ax.set_ylabel(labels.get(metric, metric))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{summary['system']}: mean over seeds, band = min–max", fontsize=10)
    return fig


def save_summary(summary: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1, default=float))
    return path


# -- per-system settings of the benchmark and the notebook ---------------------------------
MOLECULES = ("ammonia", "ethanol")
DEFAULT_EPOCHS = {"double_well_2d": 600, "double_well_1d": 600, "ammonia": 3000, "ethanol": 1000}
DEFAULT_KT_SWEEP = {"double_well_2d": (0.3, 3.0), "double_well_1d": (0.3, 3.0), "ammonia": (0.02, 0.3),
                    "ethanol": (0.05, 0.2)}  # extra attack temperatures besides each problem's kT
_SMOKE_TOY = {"n_initial": 24, "n_test": 40, "attack_steps": 6, "md_steps": 10}
SMOKE_OPTIONS = {
    "double_well_2d": _SMOKE_TOY,
    "double_well_1d": _SMOKE_TOY,
    "ammonia": {"stability_md_runs": 2, "stability_md_steps": 20},
    # a barely trained committee: a wide energy window so that every run fills its budget
    "ethanol": {"n_initial": 12, "n_scan": 6, "n_test_thermal": 3, "attack_steps": 6, "md_steps": 10,
                "n_features": 8, "n_members": 3, "patience": 15, "energy_ceiling": 20.0,
                "stability_md_runs": 2, "stability_md_steps": 20},
}


def smoke_options(system: str, budget: int = 4) -> dict:
    """Problem options that make one run take seconds (tests, ``smoke``): at most 4 labels, 15 epochs."""
    if system not in SMOKE_OPTIONS:
        raise ValueError(f"unknown system {system!r}; choose one of {SYSTEMS}")
    return {"budget": min(budget, 4), "epochs": 15, **SMOKE_OPTIONS[system]}


def energy_unit(system: str) -> str:
    return "eV" if system in MOLECULES else "arb. units"


def report_metrics(system: str) -> list[str]:
    """What the comparison plot shows: test errors and calibration, plus the molecules'
    rare-event (barrier, path errors) and thermal (MD stability) figures."""
    metrics = ["force_mae", "energy_mae", "force_spearman"]
    if system == "ammonia":
        metrics += ["barrier_abs_error_kcal_mol", "path_force_mae", "md_stable_fraction"]
    elif system == "ethanol":
        metrics += ["path_force_mae", "path_energy_mae", "barrier_abs_error_kcal_mol", "md_stable_fraction"]
    return metrics


def default_workers() -> int:
    """Two workers on a machine with ≥ 2 cores, else one."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1
