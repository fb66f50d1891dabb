"""Your own system everywhere: a user surface and a user molecule (tests/user_systems.py, public imports
only) through ActiveLearning.from_system, run_comparison, the benchmark script and notebook 04."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from advsample import compare
from advsample.loop import ActiveLearning
from advsample.samplers import make_sampler
from advsample.systems import Metric, System, get_system, register_system, resolve_factory, system_names

ROOT = Path(__file__).resolve().parents[1]
USER = {"tilted_well": "right_well_force_mae", "hydrogen_peroxide": "scan_barrier_abs_error_eV"}


def user_system(name):
    return get_system(f"tests.user_systems:{name}", smoke=True)


@pytest.mark.parametrize("name", sorted(USER))
def test_user_system_runs_through_active_learning(tmp_path, name):
    system = user_system(name)
    assert system.spec == (f"tests.user_systems:{name}", {"smoke": True})
    loop = ActiveLearning.from_system(system, tmp_path / "run", make_sampler("adversarial"), progress=False)
    records = loop.run(1)
    assert records[-1].metrics["labels_used"] == system.selection.budget
    assert np.isfinite(records[-1].metrics["extra"][USER[name]])
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())
    assert f"kT={system.kT}" in settings["objective"]  # the system's kT, given once


@pytest.mark.parametrize("name", sorted(USER))
def test_user_system_comparison_carries_its_own_metric(tmp_path, name):
    """2 samplers x 2 seeds; the metric only this system declares is a CSV column, a table column and a panel."""
    system = user_system(name)
    metric = USER[name]
    rows = compare.run_comparison(system, ["adversarial", "random"], [0, 1], 1, tmp_path / "runs", log=None)
    assert len(rows) == 2 * 2 * 2
    compare.write_rows(rows, tmp_path / "rows.csv")
    header = (tmp_path / "rows.csv").read_text().splitlines()[0].split(",")
    assert metric in header and "reference_calls" in header
    loaded = compare.read_rows(tmp_path / "rows.csv")
    assert all(np.isfinite(r[metric]) for r in loaded)
    # from the System (its declared label and unit), or from the CSV alone (the column's name)
    for summary, label in ((compare.aggregate(rows, system), system.metric(metric).axis_label(system.energy_unit)),
                           (compare.aggregate(loaded), metric)):
        table = compare.final_table(summary)
        assert all(f"{metric}_final" in line for line in table)
        assert metric in compare.report_metrics(summary)
        fig = compare.comparison_figure(summary)
        assert label in [ax.get_ylabel() for ax in fig.axes if ax.get_visible()]
    assert summary["energy_unit"] == system.energy_unit


@pytest.mark.parametrize("name", sorted(USER))
def test_benchmark_script_takes_a_user_system(tmp_path, name):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sample_efficiency.py"), "--system", f"tests.user_systems:{name}",
         "--samplers", "adversarial,random", "--quick", "--json", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["system"] == name
    assert f"{USER[name]}_final" in result["final"]["adversarial"]
    assert USER[name] in (tmp_path / "rows.csv").read_text().splitlines()[0]
    assert (tmp_path / "comparison.png").stat().st_size > 0


@pytest.mark.parametrize("name", sorted(USER))
def test_notebook_04_takes_a_user_system(tmp_path, monkeypatch, name):
    import papermill as pm

    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the user's module must be importable by the kernel
    pm.execute_notebook(str(ROOT / "notebooks" / "04_sampler_comparison.ipynb"), str(tmp_path / "out.ipynb"),
                        parameters={"smoke": True, "system": f"tests.user_systems:{name}",
                                    "samplers": "adversarial,random"},
                        kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["system"] == name and summary["labels"][-1] > 0
    assert f"{USER[name]}_final" in summary["final"]["adversarial"]
    header = (tmp_path / "sampler_comparison" / "rows.csv").read_text().splitlines()[0]
    assert USER[name] in header


def test_registry_names_and_errors():
    assert {"double_well_2d", "double_well_1d", "ammonia", "ethanol"} <= set(system_names())
    with pytest.raises(ValueError, match="unknown system 'h2o2'"):
        get_system("h2o2")
    with pytest.raises(ValueError, match="cannot import module"):
        get_system("no_such_module:factory")
    with pytest.raises(ValueError, match="has no 'nope'"):
        get_system("tests.user_systems:nope")
    with pytest.raises(TypeError, match="JSON"):
        get_system("double_well_2d", n_initial=object())
    factory = resolve_factory("tests.user_systems:tilted_well")
    register_system("my_tilted", lambda: factory(smoke=True))
    assert get_system("my_tilted").name == "tilted_well"


def test_system_checks_its_declaration():
    base = get_system("double_well_1d", smoke=True)
    with pytest.raises(ValueError, match="kT must be a positive"):
        System("x", base.reference, base.initial, base.test, base.make_committee, kT=0.0)
    with pytest.raises(ValueError, match="no evaluate"):
        System("x", base.reference, base.initial, base.test, base.make_committee, metrics=[Metric("m")])
    with pytest.raises(ValueError, match="twice"):
        System("x", base.reference, base.initial, base.test, base.make_committee, metrics=[Metric("force_mae")],
               evaluate=lambda c: {})
    with pytest.raises(ValueError, match="empty training set"):
        System("x", base.reference, [], base.test, base.make_committee)
    with pytest.raises(ValueError, match="built by hand"):
        hand = System("x", base.reference, base.initial, base.test, base.make_committee)
        compare.run_comparison(hand, ["random"], [0], 1, "unused", workers=2)


def test_user_system_goes_to_worker_processes_by_name(tmp_path):
    """workers=2 rebuilds the user's system from its spec in each process: the same rows as in-process."""
    system = user_system("tilted_well")
    here = compare.run_comparison(system, ["random"], [0, 1], 1, tmp_path / "a", log=None)
    pooled = compare.run_comparison(system, ["random"], [0, 1], 1, tmp_path / "b", workers=2, log=None)
    assert [r["force_mae"] for r in pooled] == [r["force_mae"] for r in here]
    assert [r["right_well_force_mae"] for r in pooled] == [r["right_well_force_mae"] for r in here]


def test_report_takes_a_user_system(tmp_path, monkeypatch):
    """`advsample report -p system module:factory` started beside the user's module: notebook 04 runs on it."""
    from advsample import cli

    monkeypatch.chdir(ROOT)
    out = tmp_path / "report"
    rc = cli.main(["report", "--notebooks", "04_sampler_comparison", "--smoke", "-p", "system",
                   "tests.user_systems:tilted_well", "-p", "samplers", "adversarial,random", "-o", str(out),
                   "--no-progress"])
    assert rc == 0
    summary = json.loads((out / "04_sampler_comparison" / "summary.json").read_text())
    assert summary["system"] == "tilted_well" and "right_well_force_mae_final" in summary["final"]["adversarial"]
