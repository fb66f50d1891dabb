"""benchmarks/round_speed.py on the host–guest system: its options, and a smoke-sized run of both modes.

The slab's ``--quick`` run is in tests/test_rounds.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import round_speed  # noqa: E402


def test_round_speed_system_options():
    full = round_speed.system_options("host_guest", quick=False)
    # the headline's network on a Gen1-like 600 K initial set
    assert (full["n_features"], full["n_interactions"], full["md_temperature_K"]) == (16, 1, 600.0)
    assert "smoke" not in full
    assert round_speed.system_options("host_guest", quick=True) == {"smoke": True}
    assert round_speed.system_options("ammonia", quick=False) == {}
    # --option goes on top of the defaults
    assert round_speed.system_options("host_guest", False, {"n_initial": 5})["n_initial"] == 5
    assert round_speed.system_options("host_guest", True, {"n_initial": 5}) == {"smoke": True, "n_initial": 5}


def test_round_speed_with_training_replaces_train_config_fields():
    from advsample.systems import get_system

    system = get_system("double_well_1d")
    longer = round_speed.with_training(system, {"continue_patience": 25, "epochs": 7})
    assert (longer.train.continue_patience, longer.train.epochs) == (25, 7)
    assert longer.train.continued().patience == min(25, longer.train.patience)
    assert system.train.continue_patience is None and round_speed.with_training(system, {}) is system
    with pytest.raises(ValueError, match="continue_pateince"):
        round_speed.with_training(system, {"continue_pateince": 25})


def test_round_speed_rejects_an_option_without_a_value(capsys):
    with pytest.raises(SystemExit):
        round_speed.main(["--quick", "--systems", "host_guest", "--option", "n_initial"])
    assert "--option" in capsys.readouterr().err


def test_round_speed_host_guest_quick(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "ADVSAMPLE_CACHE": str(tmp_path / "cache")}
    process = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "round_speed.py"), "--quick", "--json", "--systems", "host_guest",
         "--seeds", "1", "--rounds", "1", "--option", 'cells=["SOD:water"]'],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads(process.stdout.strip().splitlines()[-1])
    cell = result["systems"]["host_guest"]
    assert cell["options"] == {"smoke": True, "cells": ["SOD:water"]}
    assert cell["rare_event_metric"] == "window_force_mae" and cell["thermal_metric"] == "md_stable_fraction"
    runs = {mode: cell["per_seed"][mode][0] for mode in ("scratch", "continued")}
    for mode, run in runs.items():
        assert [row["round"] for row in run] == [0, 1]
        assert np.isfinite(run[1]["test_force_mae"]) and np.isfinite(run[1]["rare_event"])
        assert 0.0 <= run[1]["thermal"] <= 1.0
        assert np.isfinite(cell[mode]["final_rare_event"]["mean"])
    # the same round 0 and the same label budget in both modes
    assert runs["scratch"][0]["test_force_mae"] == runs["continued"][0]["test_force_mae"]
    assert runs["scratch"][1]["labels_used"] == runs["continued"][1]["labels_used"] > 0

    # --merge: runs over other seeds (here the same rows as seed 1) summarized as one run; mismatches refused
    (tmp_path / "seed0.out").write_text(process.stdout)
    other = {**result, "first_seed": 1}
    (tmp_path / "seed1.out").write_text("a progress line\n" + json.dumps(other) + "\n")
    merged = round_speed.main(["--merge", str(tmp_path / "seed1.out"), str(tmp_path / "seed0.out")])
    assert merged["seeds"] == 2 and merged["seed_list"] == [0, 1] and len(merged["merged_from"]) == 2
    both = merged["systems"]["host_guest"]
    assert both["options"] == cell["options"] and len(both["per_seed"]["continued"]) == 2
    assert both["scratch"]["final_test_force_mae"]["values"] == 2 * cell["scratch"]["final_test_force_mae"]["values"]
    assert both["speedup_later_rounds"] == pytest.approx(cell["speedup_later_rounds"])
    with pytest.raises(ValueError, match="a seed appears twice"):
        round_speed.merge_results([result, result])
    with pytest.raises(ValueError, match="'rounds'"):
        round_speed.merge_results([result, {**other, "rounds": 3}])
