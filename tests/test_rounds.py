"""Rounds: continued training (warm start) and the check that a round never makes the committee worse unnoticed.

* continued training starts from the given weights, keeps the normalisation, stops early when
  the validation loss stalls, and keeps the members distinct (σ > 0 on held-out structures);
* early stopping stops on a loss that only creeps down (the old rule never stopped);
* the loop: a continued round starts from the previous members' weights; a round that makes the
  committee worse on the fixed validation set (a small periodic EMT cell) is flagged in its
  record and, by default, the better committee is carried forward;
* benchmarks/round_speed.py --quick --json runs and reports both modes side by side.
"""
from __future__ import annotations

import copy
import itertools
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from advsample.committee import Committee
from advsample.models import MLPCommittee
from advsample.structures import labeled, labels_of
from advsample.train import TrainConfig, _EarlyStopping, _Targets, member_errors, regression_check, train_committee

ROOT = Path(__file__).resolve().parents[1]


def clone(committee: Committee) -> Committee:
    return copy.deepcopy(committee)


@pytest.fixture(scope="module")
def converged(left_well_data):
    """An MLP committee trained from scratch on 60 left-well points (20 for validation)."""
    committee = Committee(MLPCommittee(4, (16, 16), seed=0))
    train_committee(committee, left_well_data[:60], left_well_data[60:80],
                    TrainConfig(epochs=200, patience=100, progress=False, seed=1))
    return committee


def test_continued_schedule_is_short_and_bounded():
    full = TrainConfig(epochs=3000, patience=300, learning_rate=5e-3, lr_patience=100)
    short = full.continued()
    assert (short.epochs, short.patience, short.learning_rate) == (750, 75, pytest.approx(1e-3))
    assert short.lr_patience == 37 and short.min_learning_rate <= short.learning_rate
    assert short.warmup_epochs == 75 and short.stop_on == "validation+train" and full.warmup_epochs == 0
    own = TrainConfig(epochs=20, patience=10, continue_epochs=500, continue_patience=400, continue_learning_rate=2e-4)
    assert (own.continued().epochs, own.continued().patience) == (20, 10)  # never longer than a full round
    assert own.continued().learning_rate == 2e-4
    for bad in (dict(continue_epochs=0), dict(continue_learning_rate=0.0), dict(min_improvement=1.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainConfig(**bad)


def test_continued_training_starts_from_the_given_weights(converged, left_well_data):
    train, validation = left_well_data[:70], left_well_data[70:80]
    committee = clone(converged)
    shift, scale = float(committee.energy_shift), float(committee.energy_scale)
    config = TrainConfig(epochs=200, patience=100, progress=False, seed=2).continued()
    assert config.stop_on == "validation+train" and config.warmup_epochs == 5
    expected = sum(_Targets(part, committee).member_losses(committee, config, create_graph=False).detach()
                   for part in (train, validation))  # the start's validation + training loss
    history = train_committee(committee, train, validation, config, warm_start=True)
    np.testing.assert_allclose(history.start_validation_loss, expected.numpy(), rtol=1e-6)
    # normalisation kept; no member ends worse (validation + training loss) than it started
    assert (float(committee.energy_shift), float(committee.energy_scale)) == (shift, scale)
    assert np.all(np.array(history.best_validation_loss) <= np.array(history.start_validation_loss))
    # from fresh weights the first epochs are far worse: the start really was the trained committee
    fresh = Committee(MLPCommittee(4, (16, 16), seed=0))
    fresh_history = train_committee(fresh, train, validation, config)
    assert fresh_history.validation_loss[0] > 5 * sum(history.start_validation_loss)


def test_continued_training_stops_when_validation_stalls(converged, left_well_data):
    """Validation labels that training cannot reach (each point carries another point's labels):
    the loss stalls, and a continued round stops after its patience, not at its epoch limit."""
    points = left_well_data[60:80]
    energies, forces = labels_of(points)
    order = np.roll(np.arange(len(points)), 7)
    stalled = [labeled(a, energies[j], forces[j:j + 1]) for a, j in zip(points, order)]
    committee = clone(converged)
    config = TrainConfig(epochs=800, patience=200, progress=False, seed=3).continued()  # 200 epochs, patience 50
    history = train_committee(committee, left_well_data[:60], stalled, config, warm_start=True)
    assert history.stopped_early and len(history.epoch) < config.epochs
    # with the old rule (any improvement, however small, restarts the patience) it runs longer or to the limit
    old_rule = train_committee(clone(converged), left_well_data[:60], stalled,
                               replace(config, min_improvement=0.0), warm_start=True)
    assert len(old_rule.epoch) >= len(history.epoch)


def test_early_stopping_stops_on_a_creeping_loss():
    """A loss that falls by 1e-5 (relative) per epoch, every epoch: the old rule (any improvement resets
    patience) never stops; with min_improvement=1e-3 a member waits `patience` epochs, then stops."""
    committee = Committee(MLPCommittee(2, (4,), seed=0))
    stopping = _EarlyStopping(committee, TrainConfig(patience=20, min_improvement=1e-3))
    epoch = 0
    while not stopping.update(committee, torch.full((2,), (1 - 1e-5) ** epoch), epoch):
        epoch += 1
    assert epoch == 20  # epoch 0 sets the anchor, 20 epochs without 0.1 % progress follow
    assert stopping.best_epoch.tolist() == [20, 20]  # best weights still follow every improvement
    stopping = _EarlyStopping(committee, TrainConfig(patience=20, min_improvement=1e-3))
    falling = [stopping.update(committee, torch.full((2,), 0.99 ** epoch), epoch) for epoch in range(200)]
    assert not any(falling)  # 1 % per epoch is progress


def test_continued_members_keep_distinct_predictions(converged, left_well_data, surface_2d):
    held_out = surface_2d.sample(40, seed=11, max_energy=2.0)
    scratch = Committee(MLPCommittee(4, (16, 16), seed=5))
    train_committee(scratch, left_well_data[:70], left_well_data[70:80],
                    TrainConfig(epochs=200, patience=100, progress=False, seed=5))
    continued = clone(converged)
    for step in range(3):  # three continued rounds on the same data: the members must not collapse
        train_committee(continued, left_well_data[:70], left_well_data[70:80],
                        TrainConfig(epochs=200, patience=100, progress=False, seed=6 + step).continued(),
                        warm_start=True)
    sigma_continued = continued.predict(held_out)["forces_std"]
    sigma_scratch = scratch.predict(held_out)["forces_std"]
    assert np.all(sigma_continued > 0)
    assert np.median(sigma_continued) > 0.3 * np.median(sigma_scratch)


def test_regression_check_flags_a_worse_committee(converged, left_well_data):
    validation = left_well_data[60:80]
    same = regression_check(converged, clone(converged), validation)
    assert not same["flagged"] and same["worse"] == []
    worse = clone(converged)
    with torch.no_grad():
        for parameter in worse.model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    check = regression_check(converged, worse, validation)
    assert check["flagged"] and "force_mae" in check["worse"]
    assert check["now"]["force_mae"] - check["previous"]["force_mae"] > check["spread"]["force_mae"] > 0
    assert not regression_check(worse, converged, validation)["flagged"]  # better is never flagged
    assert check["n_structures"] == 20 and check["p_value"]["force_mae"] < 0.05


def earlier_rule(previous: Committee, committee: Committee, atoms_list) -> bool:
    """The rule before the validation set's size counted: a rise of the members' mean force or energy
    MAE beyond max(previous σ, std of its members' errors, 1 % of their mean)."""
    before, after = member_errors(previous, atoms_list), member_errors(committee, atoms_list)
    for figure in ("force_mae", "energy_mae"):
        old, new = np.asarray(before[figure]), np.asarray(after[figure])
        allowed = max(before[figure.replace("_mae", "_sigma")], old.std(), 0.01 * old.mean())
        if new.mean() - old.mean() > allowed:
            return True
    return False


def test_noise_on_two_validation_structures_is_not_flagged(converged, left_well_data):
    """Two committees of equal quality (the same data, other seeds): neither is worse than the other on
    the 20 validation structures, yet on some pairs of them the earlier rule flagged one. A paired test
    over 2 structures (t = 6.31 at 95 %) does not flag those pairs, and flags at most its 5 % overall."""
    validation = left_well_data[60:80]
    other = Committee(MLPCommittee(4, (16, 16), seed=1))
    train_committee(other, left_well_data[:60], validation, TrainConfig(epochs=200, patience=100, progress=False, seed=2))
    assert not regression_check(converged, other, validation)["flagged"]
    assert not regression_check(other, converged, validation)["flagged"]
    pairs = [[validation[i], validation[j]] for i, j in itertools.combinations(range(len(validation)), 2)]
    earlier = [earlier_rule(converged, other, pair) for pair in pairs]
    checks = [regression_check(converged, other, pair) for pair in pairs]
    assert sum(earlier) >= 1  # the case this rule is for: noise the earlier rule called a regression
    assert not any(c["flagged"] for c, flagged in zip(checks, earlier) if flagged)
    assert sum(c["flagged"] for c in checks) <= 0.05 * len(pairs)
    noisy = checks[earlier.index(True)]
    assert noisy["n_structures"] == 2 and noisy["t"] == pytest.approx(6.314, abs=1e-3)
    assert noisy["p_value"]["force_mae"] > 0.05 or noisy["p_value"]["energy_mae"] > 0.05
    assert noisy["spread"]["force_mae"] > noisy["tolerance"]["force_mae"]
    # confidence=0.5 (t = 0) is the earlier rule on any set
    assert [regression_check(converged, other, pair, confidence=0.5)["flagged"] for pair in pairs] == earlier
    with pytest.raises(ValueError, match="confidence"):
        regression_check(converged, other, pairs[0], confidence=1.0)


def test_regression_check_on_one_structure_or_none(converged, left_well_data):
    """No structure: nothing to check. One: no standard error, so only a non-finite error is flagged
    (the loop checks on the last training set instead: next test)."""
    worse = clone(converged)
    with torch.no_grad():
        for parameter in worse.model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    assert regression_check(converged, worse, left_well_data[60:80])["flagged"]  # worse on 20 structures
    empty = regression_check(converged, worse, [])
    assert not empty["flagged"] and empty["n_structures"] == 0 and "no structures" in empty["undecided"]
    one = regression_check(converged, worse, left_well_data[60:61])
    assert not one["flagged"] and one["n_structures"] == 1 and "1 structure" in one["undecided"]
    assert one["now"]["force_mae"] > one["previous"]["force_mae"] and one["spread"]["force_mae"] is None
    broken = clone(converged)
    with torch.no_grad():
        next(broken.model.parameters()).fill_(float("nan"))
    assert regression_check(converged, broken, left_well_data[60:61])["worse"] == ["force_mae", "energy_mae"]


def test_round_speed_benchmark_quick(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "round_speed.py"), "--quick", "--json", "--systems", "adatom",
         "--seeds", "2", "--rounds", "2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads(process.stdout.strip().splitlines()[-1])
    slab = result["systems"]["adatom"]
    assert result["benchmark"] == "round_speed" and result["machine"]["torch_threads"] == 1
    assert slab["rare_event_metric"] == "barrier_error_eV"
    for mode in ("scratch", "continued"):
        runs = slab["per_seed"][mode]
        assert len(runs) == 2 and all(len(run) == 3 for run in runs)  # rounds 0..2 per seed
        for run in runs:
            assert [row["round"] for row in run] == [0, 1, 2]
            assert run[1]["labels_used"] == 2 and run[2]["labels_used"] == 4  # the same labels in both modes
            for row in run[1:]:
                assert set(row["phases_s"]) >= {"sample_s", "select_s", "label_s", "train_s", "metrics_s"}
                assert row["wall_s"] > 0 and np.isfinite(row["test_force_mae"])
        assert np.isfinite(slab[mode]["final_test_force_mae"]["mean"])
    # round 0 is trained once and shared: both modes start from the same committee
    assert [run[0]["test_force_mae"] for run in slab["per_seed"]["scratch"]] == \
        [run[0]["test_force_mae"] for run in slab["per_seed"]["continued"]]
    assert slab["speedup_later_rounds"] > 0


# -- the loop ----------------------------------------------------------------------------
PHASES = {"sample_s", "select_s", "label_s", "train_s", "metrics_s", "round_s", "cpu_s"}


def test_a_continued_round_starts_from_the_last_members(tmp_path, monkeypatch):
    from advsample import loop
    from advsample.loop import ActiveLearning
    from advsample.samplers import make_sampler
    from advsample.select import SelectionConfig
    from advsample.surfaces import double_well_1d

    started = []
    original = loop.train_committee

    def spy(committee, *args, **kwargs):
        started.append(({k: v.clone() for k, v in committee.state_dict().items()}, kwargs.get("warm_start")))
        return original(committee, *args, **kwargs)

    monkeypatch.setattr(loop, "train_committee", spy)
    surface = double_well_1d()
    run = ActiveLearning(
        tmp_path / "run", Committee(MLPCommittee(3, (16,), input_axes=(0,), seed=0)), surface,
        surface.sample(30, seed=0, max_energy=-1.0, region=[(-1.6, -0.2)]),
        make_sampler("adversarial", n_steps=10, learning_rate=0.03), test=surface.sample(30, seed=1, max_energy=3.0),
        selection=SelectionConfig(budget=3, min_distance=0.02), kT=1.0, progress=False,
        train_config=TrainConfig(epochs=100, patience=60), warm_start=True,
    )
    records = run.run(2)
    assert [warm for _, warm in started] == [False, True, True]
    for number in (1, 2):  # each continued round began from the last round's members
        before = records[number - 1].committee.state_dict()
        assert all(torch.equal(started[number][0][k], before[k]) for k in before)
        training = records[number].metrics["training"]
        assert training["continued"] and training["max_epochs"] == 25 and training["epochs"] <= 25
        assert set(records[number].metrics["timings"]) >= PHASES
        assert all(records[number].metrics["timings"][k] >= 0 for k in PHASES)
    assert {"train_s", "metrics_s", "round_s", "cpu_s"} <= set(records[0].metrics["timings"])
    saved = json.loads((tmp_path / "run" / "round_002" / "metrics.json").read_text())
    assert set(saved["timings"]) >= PHASES and "flagged" in saved["regression"]


def test_one_validation_structure_checks_on_the_last_training_set(tmp_path):
    """A validation set of one structure gives no standard error: the round is checked on the last
    round's training set instead (as without a validation set), and the record says so."""
    from advsample.loop import ActiveLearning
    from advsample.samplers import make_sampler
    from advsample.select import SelectionConfig
    from advsample.surfaces import double_well_1d

    surface = double_well_1d()
    run = ActiveLearning(
        tmp_path / "run", Committee(MLPCommittee(3, (16,), input_axes=(0,), seed=0)), surface,
        surface.sample(30, seed=0, max_energy=-1.0, region=[(-1.6, -0.2)]), make_sampler("random", n_per_seed=2),
        selection=SelectionConfig(budget=3, min_distance=0.02), kT=1.0, progress=False, validation_fraction=0.01,
        train_config=TrainConfig(epochs=60, patience=60), on_regression="accept",
    )
    records = run.run(1)
    assert len(run._fixed_sets()[1]) == 1
    check = records[1].metrics["regression"]
    assert check["checked_on"] == "previous_train" and check["n_structures"] == len(records[0].train) == 29
    assert check["undecided"] is None and check["t"] > 0


class PoisonedEMT:
    """A broken reference (as a wrong setting would make one): EMT energies +3 eV and forces
    reversed. New labels from it contradict the initial ones, so training on them makes the
    committee worse on the initial region."""

    def __new__(cls):
        from ase.calculators.calculator import Calculator, all_changes
        from ase.calculators.emt import EMT

        class _Poisoned(Calculator):
            implemented_properties = ["energy", "forces"]

            def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
                super().calculate(atoms, properties, system_changes)
                emt = EMT()
                copy_ = self.atoms.copy()
                copy_.calc = emt
                self.results = {"energy": copy_.get_potential_energy() + 3.0, "forces": -copy_.get_forces()}

        return _Poisoned()


def vacancy_cell_data(n: int, seed: int):
    """Rattled frames of a periodic Cu cell (2×2×1 cubic, 15 atoms: one vacancy) with EMT labels."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 1))
        del atoms[0]
        atoms.positions += rng.normal(0, 0.08, atoms.positions.shape)
        atoms.calc = EMT()
        frames.append(labeled(atoms, atoms.get_potential_energy(), atoms.get_forces()))
    return frames


@pytest.mark.parametrize("on_regression", ["keep", "accept"])
def test_a_worse_round_is_flagged_and_not_carried_forward(tmp_path, on_regression):
    """A Cu-vacancy cell (periodic, EMT): a round whose labels make the committee worse on the fixed
    validation set is flagged in its record and warned about; by default the better (last)
    committee is carried forward."""
    from advsample.loop import ActiveLearning, RoundRegressionWarning
    from advsample.models.schnet import SchNetCommittee
    from advsample.samplers import make_sampler
    from advsample.select import SelectionConfig

    initial, test = vacancy_cell_data(14, seed=0), vacancy_cell_data(6, seed=1)
    committee = Committee(SchNetCommittee(n_members=3, species=(29,), n_features=8, cutoff=3.5, n_rbf=8, seed=0))
    run = ActiveLearning(
        tmp_path / "run", committee, PoisonedEMT(), initial, make_sampler("random", n_per_seed=2, displacement=0.05),
        test=test, selection=SelectionConfig(budget=6, min_distance=0.0), kT=0.5, progress=False,
        train_config=TrainConfig(epochs=60, patience=60, learning_rate=1e-2), validation_fraction=0.3,
        warm_start=False, oversample=3, on_regression=on_regression,
    )
    with pytest.warns(RoundRegressionWarning, match="worse than round 0"):
        records = run.run(1)
    check = records[1].metrics["regression"]
    assert check["flagged"] and check["checked_on"] == "validation" and check["action"] == on_regression
    assert check["now"]["force_mae"] > check["previous"]["force_mae"] + check["spread"]["force_mae"]
    # a real ~3x regression: significant on the few validation structures (the noise allowance does not hide it)
    assert check["n_structures"] >= 2 and check["p_value"]["force_mae"] < 0.05
    assert check["spread"]["force_mae"] > check["tolerance"]["force_mae"]
    validation = run._fixed_sets()[1]
    before, after = records[0].committee.predict(validation), records[1].committee.predict(validation)
    if on_regression == "keep":  # round 0's committee carried forward, and it is what round 1 reports
        np.testing.assert_allclose(after["energies"], before["energies"])
        assert records[1].metrics["test"]["force_mae"] == pytest.approx(records[0].metrics["test"]["force_mae"])
    else:
        assert not np.allclose(after["energies"], before["energies"])
    assert len(records[1].train) == len(records[0].train) + 6  # the labels are kept either way


# -- summary.json: the rounds' phase times and each method's CPU seconds --------------------------
@pytest.mark.filterwarnings("ignore::advsample.loop.RoundRegressionWarning")  # 40 epochs: the check may flag
def test_summary_json_carries_every_rounds_phase_times(tmp_path):
    from advsample.systems.ammonia import summary as ammonia_summary
    from advsample.timings import run_timings
    from advsample.toy_study import ToyStudy

    study = ToyStudy("double_well_1d", smoke=True, n_rounds=1, epochs=40, run_dir=tmp_path / "toy")
    study.run(verbose=False)
    result = study.summary("01_double_well_1d", tmp_path / "summary.json")
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == json.loads(json.dumps(result))
    on_disk = [json.loads((tmp_path / "toy" / f"round_{k:03d}" / "metrics.json").read_text())["timings"] for k in (0, 1)]
    per_round = saved["timings"]["per_round"]
    assert [row["round"] for row in per_round] == [0, 1]
    for row, timings in zip(per_round, on_disk):  # each round's record, as its metrics.json has it
        assert {k: v for k, v in row.items() if k != "round"} == pytest.approx(timings)
    assert set(per_round[1]) >= PHASES and per_round[1]["cpu_s"] > 0
    total = saved["timings"]["total"]
    assert total["train_s"] == pytest.approx(on_disk[0]["train_s"] + on_disk[1]["train_s"])
    assert total["label_s"] == pytest.approx(on_disk[1]["label_s"])  # round 0 labels nothing
    assert saved["cpu_s"] == pytest.approx(on_disk[0]["cpu_s"] + on_disk[1]["cpu_s"])
    assert saved["timings"]["later_rounds_cpu_s"] == pytest.approx(on_disk[1]["cpu_s"])
    # the NH3 notebook's summary (from its rows) carries the same
    keys = ("barrier_error_kcal_mol", "md_stable_fraction", "min_abs_height_candidates_A", "min_abs_height_selected_A")
    rows = [{"round": r.round, "labels_used": r.metrics["labels_used"], **dict.fromkeys(keys),
             "timings": r.metrics["timings"]} for r in study.records]
    nh3 = ammonia_summary(rows)
    assert nh3["cpu_s"] == pytest.approx(saved["cpu_s"]) and nh3["timings"]["per_round"] == per_round
    # rounds without timings (older records) count as missing, not as zero seconds of a phase
    partial = run_timings([None, {"cpu_s": 2.0, "label_s": 1.0, "note": "x", "bad": float("nan")}])
    assert partial["per_round"] == [{"round": 0}, {"round": 1, "cpu_s": 2.0, "label_s": 1.0}]
    assert partial["total"] == {"cpu_s": 2.0, "label_s": 1.0} and partial["later_rounds_cpu_s"] == 2.0
    assert run_timings([None])["cpu_s"] is None
    with pytest.raises(ValueError, match="rounds"):
        run_timings([{}, {}], rounds=[0])


def test_comparison_summary_carries_each_methods_cpu_seconds(tmp_path):
    """Rows as the comparison writes and reads them back (CSV): each method's CPU seconds summed over
    its rounds per seed, then mean/min/max over seeds; a row without cpu_s (an older CSV) is missing."""
    from advsample import compare
    from advsample.timings import method_cpu_seconds

    rows = [{"system": "double_well_1d", "method": method, "seed": seed, "round": k, "labels": 3 * k,
             "cpu_s": cpu} for method, base in (("adversarial", 1.0), ("random", 0.5))
            for seed in (0, 1) for k, cpu in enumerate((base, base * (2 + seed), base * (3 + seed)))]
    rows.append({"system": "double_well_1d", "method": "md", "seed": 0, "round": 0, "labels": 0, "cpu_s": math.nan})
    back = compare.read_rows(compare.write_rows(rows, tmp_path / "rows.csv"))
    cpu = method_cpu_seconds(back)
    assert cpu["adversarial"]["per_seed"] == {0: pytest.approx(6.0), 1: pytest.approx(8.0)}
    assert (cpu["adversarial"]["mean"], cpu["adversarial"]["min"], cpu["adversarial"]["max"]) == \
        (pytest.approx(7.0), pytest.approx(6.0), pytest.approx(8.0))
    assert cpu["random"]["mean"] == pytest.approx(3.5)
    assert cpu["md"] == {"mean": None, "min": None, "max": None, "per_seed": {}}
