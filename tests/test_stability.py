"""Survival curves of md_stability results; the MD-stability benchmark (--quick --json)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from advsample.metrics import stability_metrics, survival_curve

ROOT = Path(__file__).resolve().parents[1]


def test_survival_curve_steps_down_at_each_failure():
    result = {"n_runs": 4, "n_steps": 100, "timestep_fs": 2.0, "time_to_failure_fs": [50.0, None, 10.0, 50.0]}
    times, fraction = survival_curve(result)
    assert times.tolist() == [0.0, 10.0, 50.0, 50.0, 200.0]
    assert fraction.tolist() == [1.0, 0.75, 0.5, 0.25, 0.25]
    stable = survival_curve({**result, "time_to_failure_fs": [None] * 4})
    assert stable[0].tolist() == [0.0, 200.0] and stable[1].tolist() == [1.0, 1.0]


def test_stability_metrics_carry_the_interval_and_nve_runs_report_it():
    from ase.build import molecule

    from advsample.committee import Committee
    from advsample.metrics import md_stability
    from advsample.models.schnet import SchNetCommittee

    committee = Committee(SchNetCommittee(n_members=2, n_features=8, n_interactions=1, seed=0))
    result = md_stability(committee, [molecule("NH3")], temperature_K=300, n_runs=4, n_steps=10, integrator="nve")
    assert result["integrator"] == "nve" and result["n_runs"] == 4
    low, high = result["md_stable_fraction_interval"]
    assert 0 <= low <= result["md_stable_fraction"] <= high <= 1
    metrics = stability_metrics(result)
    assert metrics["stability"]["md_stable_fraction_summary"] == result["md_stable_fraction_summary"]
    times, fraction = survival_curve(metrics["stability"])
    assert times[-1] == 10 * 0.5 and fraction[0] == 1.0


def test_md_stability_benchmark_quick(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "md_stability.py"), "--quick", "--json",
                              "--workers", "2", "--out", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads(process.stdout.strip().splitlines()[-1])
    assert set(result["summary"]) == {"md", "adversarial"}
    assert result["barrier_reference_eV"] == pytest.approx(0.374, abs=0.002)
    for lines in result["summary"].values():
        assert [line["round"] for line in lines] == [0, 1]
        assert lines[1]["labels"] == result["labels_per_round"]  # equal labels for both methods
        assert lines[1]["reference_calls"] >= lines[1]["labels"]
        assert 0.0 <= lines[1]["md_stable_fraction"]["mean"] <= 1.0
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert len(rows) == 4 and all(np.isfinite(r["force_mae"]) for r in rows)
    assert set(result["cost_to_reach_md_final"]) == {"md_stable_fraction", "mean_time_to_failure_fs",
                                                     "barrier_error_eV"}  # every declared figure
    assert (tmp_path / "md_stability.png").stat().st_size > 0 and result["workers"] == 2
    final = result["final_round_stability"]  # pooled over seeds, with its interval and the log-rank test
    for line in final["methods"].values():
        low, high = line["interval"]
        assert low <= line["n_stable"] / line["n_runs"] <= high and f"(n={line['n_runs']})" in line["summary"]
    assert final["comparison"]["arms"] == ["md", "adversarial"] and 0 <= final["comparison"]["logrank_p"] <= 1


def test_md_stability_benchmark_at_equal_reference_calls_with_other_samplers(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "md_stability.py"), "--quick", "--json",
                              "--samplers", "udd,random", "--budget-unit", "reference_calls", "--out", str(tmp_path)],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads(process.stdout.strip().splitlines()[-1])
    assert set(result["summary"]) == {"udd", "random"} and result["budget_unit"] == "reference_calls"
    for lines in result["summary"].values():  # every method paid exactly the round's calls
        assert lines[1]["reference_calls"] == result["labels_per_round"] >= lines[1]["labels"]
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "md_stability.py"), "--quick", "--json",
                            "--samplers", "udd,random", "--budget-unit", "reference_calls", "--reuse", str(tmp_path),
                            "--out", str(tmp_path / "again")], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    reused = json.loads(again.stdout.strip().splitlines()[-1])  # every run read back, none paid again
    assert reused["reused"]["jobs"] == [["random", 0], ["udd", 0]] and reused["summary"] == result["summary"]
    other = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "md_stability.py"), "--quick", "--samplers", "udd",
                            "--budget-unit", "labels", "--reuse", str(tmp_path), "--out", str(tmp_path / "other")],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert other.returncode != 0 and "written at other settings" in other.stderr and "budget_unit" in other.stderr
