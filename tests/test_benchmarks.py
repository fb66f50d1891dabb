"""Benchmarks run with --quick --json and print one JSON object last; the comparison notebook runs; equal labels enforced.

No timing assertions: the scripts are started together (they mostly wait on a shared
CPU), each test then reads its own script's output.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from advsample import compare

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {  # name: (script in benchmarks/, extra arguments)
    "committee_speed": ("committee_speed", []),
    "speed": ("speed", []),
    "double_well": ("double_well", []),
    "double_well_1d": ("double_well", ["--surface", "double_well_1d"]),
    "sample_efficiency": ("sample_efficiency", []),
    "sample_efficiency_ammonia": ("sample_efficiency", ["--system", "ammonia", "--samplers", "adversarial,random",
                                                        "--kT-sweep", ""]),
    "energy_window": ("energy_window", ["--sigmas", "0,2", "--workers", "1"]),
    "energy_window_udd": ("energy_window", ["--sampler", "udd", "--sigmas", "2", "--workers", "1"]),
}


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Every benchmark started at once with --quick --json; {name: Popen}."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    processes = {}
    for name, (script, extra) in SCRIPTS.items():
        script = ROOT / "benchmarks" / f"{script}.py"
        out = tmp_path_factory.mktemp(name)
        args = [sys.executable, str(script), "--quick", "--json", *extra]
        if name.startswith(("sample_efficiency", "energy_window")):
            args += ["--out", str(out)]
        processes[name] = (subprocess.Popen(args, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True), out)
    yield processes
    for process, _ in processes.values():
        if process.poll() is None:
            process.kill()


def result_of(launched, name) -> tuple[dict, Path]:
    process, out = launched[name]
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, f"{name} failed:\n{stderr[-3000:]}"
    last = stdout.strip().splitlines()[-1]
    return json.loads(last), out


def test_committee_speed(launched):
    result, _ = result_of(launched, "committee_speed")
    for key in ("speedup_train_step", "speedup_train_step_schnet", "ms_batched", "ms_loop", "speedup_training_ammonia",
                "speedup_training_ethanol", "speedup_training_slab"):
        assert result[key] > 0 and math.isfinite(result[key])
    assert result["machine"]["torch_threads"] == 1
    slab = result["training_round"]["slab"]  # also per-forward with ASE's lists: the same losses
    assert slab["speedup_vs_ase_lists"] > 0 and slab["final_train_loss_per_forward_ase"] == pytest.approx(
        slab["final_train_loss_per_forward"], rel=1e-4)
    for lists in result["neighbour_lists"].values():  # ASE and vesin side by side, the same pairs
        assert lists["same_pairs"] and lists["n_pairs"] > 0 and lists["ms_ase"] > 0 and lists["ms_vesin"] > 0


def test_speed(launched):
    result, _ = result_of(launched, "speed")
    assert result["speedup_train_step"] > 0 and result["speedup_attack"] > 0
    for md in result["md_replicas"].values():  # batched and one-ASE-run-per-seed MD make the same frames
        assert md["speedup"] > 0 and md["frames_batched"] == md["frames_sequential"] > 0
    assert result["device"] in ("cpu", "cuda")
    for system in ("double_well_2d", "ammonia"):
        timings = result["al_round"][system]["mean"]
        assert {"train_s", "sample_s", "select_s", "label_s"} <= set(timings)
        assert result["al_round"][system]["per_round"][0]["new_labels"] > 0


@pytest.mark.parametrize("name", ["double_well", "double_well_1d"])
def test_double_well(launched, name):
    result, _ = result_of(launched, name)
    assert result["rounds"] == 1 and result["labels"] == result["labels_per_round"]
    assert result["test_force_mae_final"] > 0
    assert result["improvement"] == pytest.approx(result["test_force_mae_initial"] / result["test_force_mae_final"])
    assert len(result["test_force_mae_per_round"]) == 2


def test_sample_efficiency(launched):
    result, out = result_of(launched, "sample_efficiency")
    assert set(compare.DEFAULT_METHODS) <= set(result["final"])
    assert any("_kT" in m for m in result["final"])
    assert len({line["labels"] for line in result["final"].values()}) == 1  # equal labels
    assert "label_ratio_random_over_adversarial" in result
    rows = compare.read_rows(out / "rows.csv")
    assert {r["method"] for r in rows} == set(result["final"])
    assert (out / "comparison.png").stat().st_size > 0 and (out / "kT_sweep.png").exists()


def test_energy_window_compares_the_bound_at_equal_reference_calls(launched):
    result, out = result_of(launched, "energy_window")
    assert set(result["final"]) == {"adversarial_ucb0", "adversarial_ucb2"} and result["energy_ceiling"] > 0
    for line in result["final"].values():
        assert line["reference_calls"] == result["calls_per_round"]  # equal calls per round
        assert line["labels"] + line["calls_outside_window"] + line["calls_failed"] == line["reference_calls"]
    rows = compare.read_rows(out / "rows.csv")
    assert {r["budget_unit"] for r in rows} == {"reference_calls"}
    udd, _ = result_of(launched, "energy_window_udd")  # the bound filters the biased MD's frames alike
    assert udd["sampler"] == "udd" and set(udd["final"]) == {"udd_ucb2"}
    assert udd["final"]["udd_ucb2"]["reference_calls"] == udd["calls_per_round"]


def test_sample_efficiency_ammonia_reports_rare_event_and_thermal_metrics(launched):
    """NH3: every round records the barrier error, errors along the inversion path and MD stability."""
    result, out = result_of(launched, "sample_efficiency_ammonia")
    assert set(result["final"]) == {"adversarial", "random"}
    rows = compare.read_rows(out / "rows.csv")
    assert len(rows) == 2 * 2 * 2  # methods x seeds x rounds (0 and 1)
    for row in rows:
        assert 0.0 <= row["md_stable_fraction"] <= 1.0
        assert row["path_force_mae"] > 0
        if math.isfinite(row["barrier_error_kcal_mol"]):
            assert row["barrier_abs_error_kcal_mol"] == pytest.approx(abs(row["barrier_error_kcal_mol"]))
    line = result["final"]["adversarial"]
    assert {"md_stable_fraction_final", "path_force_mae_final"} <= set(line)
    # as in the NH3 study: no validation split of the pyramidal-only pool (it picked worse weights)
    settings = json.loads((out / "runs" / "adversarial_seed0" / "settings.json").read_text())
    assert settings["validation_fraction"] == 0


@pytest.mark.parametrize("system", ["double_well_2d", "ammonia"])
def test_notebook_smoke(tmp_path, system):
    import papermill as pm

    notebook = ROOT / "notebooks" / "04_sampler_comparison.ipynb"
    pm.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"),
                        parameters={"smoke": True, "system": system, "samplers": "adversarial,random"},
                        kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["smoke"] is True and summary["system"] == system
    assert summary["labels"][0] == 0 and summary["labels"][-1] > 0
    assert "adversarial" in summary["final_force_mae"] and "random" in summary["final_force_mae"]
    assert (tmp_path / "sampler_comparison" / "comparison.png").exists()


def test_notebook_loads_a_molecule_csv(tmp_path):
    """The measured NH3 comparison loads with its own system (units, barrier/MD panels), not the parameter's."""
    import papermill as pm

    notebook = ROOT / "notebooks" / "04_sampler_comparison.ipynb"
    pm.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"),
                        parameters={"csv_path": "docs/results/sample_efficiency_nh3/rows.csv"},
                        kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["system"] == "ammonia" and summary["labels"] == [0, 10, 20, 30] and summary["n_seeds"] == 3
    assert {"adversarial", "random", "random_scored", "md", "mixed"} <= set(summary["final_force_mae"])  # measured before udd, biased_md, md_attack


def _rows(labels_by_run: dict[tuple[str, int], list[int]], budget: int = 10) -> list[dict]:
    rows = []
    for (method, seed), labels in labels_by_run.items():
        for k, n in enumerate(labels):
            rows.append({"system": "toy", "method": method, "sampler": method, "kT": 1.0, "seed": seed, "round": k,
                         "labels": n, "budget": budget, "n_train": 100 + n, "force_mae": 1.0 / (1 + n),
                         "energy_mae": 0.5, "force_spearman": 0.5, "force_miscalibration_area": 0.1,
                         "selected_energy_mean": 1.0, "barrier_error_kcal_mol": math.nan, "path_force_mae": math.nan})
    return rows


def test_unequal_labels_refused():
    equal = _rows({("adversarial", 0): [0, 10, 20], ("random", 0): [0, 10, 20]})
    assert compare.check_equal_cost(equal) == {0: 0, 1: 10, 2: 20}
    with pytest.raises(compare.UnequalCostError, match="equal reference labels"):
        compare.aggregate(_rows({("adversarial", 0): [0, 10, 20], ("random", 0): [0, 10, 17]}))
    with pytest.raises(compare.UnequalCostError, match="budgets"):
        compare.aggregate(_rows({("adversarial", 0): [0, 10]}, budget=10) + _rows({("random", 0): [0, 10]}, budget=5))
    with pytest.raises(compare.UnequalCostError):  # a run with fewer rounds
        compare.aggregate(_rows({("adversarial", 0): [0, 10, 20], ("random", 0): [0, 10]}))


def _call_rows(calls_by_run: dict[tuple[str, int], list[int]], labels: list[int]) -> list[dict]:
    rows = _rows({run: labels for run in calls_by_run})
    for row in rows:
        row.update(budget_unit="reference_calls", reference_calls=calls_by_run[(row["method"], row["seed"])][row["round"]])
    return rows


def test_unequal_reference_calls_refused():
    equal = _call_rows({("adversarial", 0): [0, 10, 20], ("random", 0): [0, 10, 20]}, labels=[0, 7, 12])
    assert compare.check_equal_cost(equal) == {0: 0, 1: 10, 2: 20}
    summary = compare.aggregate(equal)
    assert summary["budget_unit"] == "reference_calls" and summary["cost"] == [0, 10, 20] and summary["labels"] is None
    assert summary["methods"]["random"]["labels"]["mean"] == [0, 7, 12]  # labels reported beside the calls
    assert compare.final_table(summary)[0]["labels"] == 12
    with pytest.raises(compare.UnequalCostError, match="equal reference calls"):
        compare.aggregate(_call_rows({("adversarial", 0): [0, 10, 23], ("random", 0): [0, 10, 20]}, labels=[0, 7, 12]))
    with pytest.raises(compare.UnequalCostError, match="different units"):
        compare.aggregate(equal + _rows({("md", 0): [0, 10, 20]}))


def test_label_ratio():
    summary = {"cost": [0, 10, 20], "labels": [0, 10, 20], "methods": {
        "adversarial": {"force_mae": {"mean": [4.0, 1.0, 0.5]}},
        "random": {"force_mae": {"mean": [4.0, 2.0, 1.0]}},
        "better": {"force_mae": {"mean": [4.0, 0.5, 0.25]}},
    }}
    slow = compare.label_ratio(summary, "random", "adversarial")
    assert slow["ratio"] is None and slow["ratio_at_least"] == pytest.approx(1.0)
    assert compare.label_ratio(summary, "better", "adversarial")["ratio"] == pytest.approx(0.5)
    assert compare.labels_to_reach([0, 10, 20], [4.0, 2.0, 1.0], 2.0) == pytest.approx(10.0)
    assert compare.labels_to_reach([0, 10], [4.0, 2.0], 1.0) is None


def test_ethanol_dataset_and_torsion():
    """Ethanol: torsion on built geometries; a tiny dataset (anti-only train, scan + gauche test), profile metric.

    The full ``--system ethanol --quick`` comparison takes ~20 s on a shared core and is run by hand
    (docs/results.md), not here.
    """
    import numpy as np
    from ase.build import molecule

    from advsample.systems.ethanol import (ethanol_dataset, torsion_angle, torsion_angles, torsion_indices,
                                           torsion_profile_errors)

    atoms = molecule("CH3CH2OH")  # anti: H–O–C–C = 180°
    assert abs(abs(torsion_angle(atoms)) - 180.0) < 1e-6
    h, o, ca, cb = torsion_indices(atoms)
    atoms.set_dihedral(cb, ca, o, h, 60.0, indices=[h])
    assert torsion_angle(atoms) == pytest.approx(60.0, abs=1e-6)
    atoms.set_dihedral(cb, ca, o, h, 290.0, indices=[h])
    assert torsion_angle(atoms) == pytest.approx(-70.0, abs=1e-6)
    with pytest.raises(ValueError, match="ethanol"):
        torsion_indices(molecule("NH3"))

    train, test = ethanol_dataset(6, seed=1, n_scan=4, n_test_thermal=2)
    assert len(train) == 6 and len(test) == 4 + 3 * 2
    assert all(len(a) == 9 and a.get_forces().shape == (9, 3) for a in train + test)
    assert np.all(np.abs(torsion_angles(train)) >= 140.0)  # one basin only
    scan = [a for a in test if a.info["subset"] == "torsion_scan"]
    assert [round(a.info["torsion"]) % 360 for a in scan] == [180, 90, 0, 270]
    gauche = torsion_angles([a for a in test if a.info["subset"] == "gauche_md"])
    assert np.all(np.abs(gauche) <= 110.0) and (gauche > 0).any() and (gauche < 0).any()
    exact = torsion_profile_errors(lambda s: [a.get_potential_energy() for a in s], scan)
    assert exact["profile_mae"] == pytest.approx(0.0) and exact["barrier_error_kcal_mol"] == pytest.approx(0.0)
    shifted = torsion_profile_errors(lambda s: [a.get_potential_energy() + 1.0 for a in s], scan)
    assert shifted["profile_mae"] == pytest.approx(0.0, abs=1e-9)  # profiles are relative to anti


def test_a_comparison_at_equal_reference_calls_runs_and_reports_labels_beside_them(tmp_path):
    plan = compare.plan("double_well_1d", "adversarial,random", "", n_seeds=1, rounds=1, smoke=True,
                        budget_unit="reference_calls")
    assert plan.budget_unit == "reference_calls" and "reference calls" in str(plan)
    rows = plan.run(tmp_path, log=None)
    final = [r for r in rows if r["round"] == 1]
    assert {r["reference_calls"] for r in final} == {plan.budget}  # every run paid exactly the budget
    assert all(0 < r["labels"] <= plan.budget and r["budget_unit"] == "reference_calls" for r in final)
    summary = compare.aggregate(compare.read_rows(compare.write_rows(rows, tmp_path / "rows.csv")))
    assert summary["cost"] == [0, plan.budget] and summary["budget_unit"] == "reference_calls"
    assert compare.comparison_figure(summary).axes[0].get_xlabel() == "reference calls paid"
    with pytest.raises(ValueError, match="unknown budget_unit 'euros'"):
        compare.plan("double_well_1d", "random", budget_unit="euros")


def test_the_comparison_reports_each_rounds_calibrated_coverage():
    """A round's test-set coverage of its calibrated force intervals (issue 36) reaches the comparison's rows, and
    its mean over seeds the summary and the final table; a round whose calibration was not fitted has none (NaN),
    left out of the mean."""
    from types import SimpleNamespace

    system = SimpleNamespace(name="toy", energy_unit="eV", metrics=[])
    budget = SimpleNamespace(budget=10, budget_unit="labels")
    fitted = {"round": 1, "labels_used": 10, "n_train": 110,
              "test": {"force_mae": 0.2, "force_coverage": 0.93, "force_coverage_stated": 0.95}}
    row = compare._row(system, "adversarial", 1.0, 0, budget, fitted)
    assert row["force_coverage"] == 0.93 and row["force_coverage_stated"] == 0.95
    unfitted = compare._row(system, "adversarial", 1.0, 0, budget, {**fitted, "round": 0, "labels_used": 0,
                                                                      "test": {"force_mae": 0.3}})
    assert math.isnan(unfitted["force_coverage"])
    rows = _rows({("adversarial", 0): [0, 10], ("adversarial", 1): [0, 10]})
    for r, coverage in zip(rows, (math.nan, 0.91, math.nan, 0.97)):
        r["force_coverage"] = coverage
    summary = compare.aggregate(rows)
    assert math.isnan(summary["methods"]["adversarial"]["force_coverage"]["mean"][0])
    assert summary["methods"]["adversarial"]["force_coverage"]["mean"][1] == pytest.approx(0.94)
    assert compare.final_table(summary)[0]["coverage_final"] == pytest.approx(0.94)
    for r in rows:  # no round calibrated (the loop had no validation set): no coverage, and None says so
        r["force_coverage"] = math.nan
    table = compare.final_table(compare.aggregate(rows))
    assert table[0]["coverage_final"] is None and " — " in compare.markdown_table(table).splitlines()[2]
