import json
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes

from advsample.committee import Committee
from advsample.label import ReferenceGaveUp
from advsample.loop import ActiveLearning
from advsample.models import MLPCommittee
from advsample.samplers import make_sampler
from advsample.select import SelectionConfig
from advsample.surfaces import double_well_1d
from advsample.train import TrainConfig


class CountingSurface(Calculator):
    """A toy surface that logs every call; optionally interrupts or fails."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, surface, interrupt_after=None, fail_if=None):
        super().__init__()
        self.surface, self.calls = surface, []
        # accidents, not settings of the reference: private, so not part of its identity
        self._interrupt_after, self._fail_if = interrupt_after, fail_if

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        x = float(self.atoms.positions[0, 0])
        if self._interrupt_after is not None and len(self.calls) >= self._interrupt_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls.append(round(x, 9))
        if self._fail_if is not None and self._fail_if(x):
            raise RuntimeError("SCF did not converge (simulated)")
        self.surface.calculate(self.atoms, properties, system_changes)
        self.results = dict(self.surface.results)


def make_loop(run_dir, reference, epochs=400, budget=8, sampler="adversarial", seed=0, executor=None,
              test_seed=1, **options):
    surface = double_well_1d()
    initial = surface.sample(40, seed=0, max_energy=-1.0, region=[(-1.6, -0.2)])
    test = surface.sample(200, seed=test_seed, max_energy=3.0)
    return ActiveLearning(
        run_dir,
        Committee(MLPCommittee(4, (32, 32), input_axes=(0,), seed=0)),
        reference,
        None if options.get("start") is not None else initial,  # a started run's sets replace initial
        make_sampler(sampler, n_steps=40, learning_rate=0.03),
        test=test,
        selection=SelectionConfig(budget=budget, min_distance=0.02, **options.pop("selection", {})),
        kT=1.0,
        train_config=TrainConfig(epochs=epochs, patience=200),
        seed=seed,
        executor=executor,
        progress=False,
        **options,
    )


def test_active_learning_learns_the_second_well_1d(tmp_path):
    records = make_loop(tmp_path / "run", double_well_1d(), epochs=800, budget=10).run(5)
    initial, final = records[0].metrics["test"]["force_mae"], records[-1].metrics["test"]["force_mae"]
    print(f"1D double well: force MAE {initial:.3f} -> {final:.3f} ({initial / final:.1f}x)")
    assert final * 5 <= initial
    assert records[-1].metrics["labels_used"] == 50
    picked = np.concatenate([[a.positions[0, 0] for a in r.selected] for r in records[1:]])
    assert (picked > 0).any()  # the unexplored right well was found
    for number in range(6):
        directory = tmp_path / "run" / f"round_{number:03d}"
        assert (directory / "metrics.json").exists() and (directory / "committee.pt").exists()
    assert (tmp_path / "run" / "round_001" / "trajectories.extxyz").stat().st_size > 0


def test_interrupted_run_resumes_without_paying_twice(tmp_path):
    reference = CountingSurface(double_well_1d())
    uninterrupted = make_loop(tmp_path / "a", reference, epochs=60).run(2)

    flaky = CountingSurface(double_well_1d(), interrupt_after=11)  # round 1 pays 8, round 2 dies after 3
    with pytest.raises(KeyboardInterrupt):
        make_loop(tmp_path / "b", flaky, epochs=60).run(2)
    assert (tmp_path / "b" / "round_001" / "metrics.json").exists()
    assert not (tmp_path / "b" / "round_002" / "metrics.json").exists()
    resumed_reference = CountingSurface(double_well_1d())
    resumed = make_loop(tmp_path / "b", resumed_reference, epochs=60).run(2)

    assert resumed[1].resumed and not resumed[2].resumed
    positions = lambda records: [a.positions.tolist() for a in records[-1].train]  # noqa: E731
    assert positions(resumed) == positions(uninterrupted)
    every_call = flaky.calls + resumed_reference.calls
    assert len(every_call) == len(set(every_call)) == len(reference.calls)
    # counted from the label cache: the killed process's calls are included
    assert resumed[2].metrics["reference_calls"] == len(every_call) == uninterrupted[2].metrics["reference_calls"]
    assert resumed[2].metrics["round_reference_calls"]["total"] == len(every_call) - 8

    again = CountingSurface(double_well_1d())
    make_loop(tmp_path / "b", again, epochs=60).run(2)
    assert again.calls == []  # a finished run is only loaded


def test_failed_reference_calls_are_recorded_and_the_budget_still_filled(tmp_path):
    reference = CountingSurface(double_well_1d(), fail_if=lambda x: x > -1.1)
    records = make_loop(tmp_path / "run", reference, epochs=60).run(1)
    metrics = json.loads((tmp_path / "run" / "round_001" / "metrics.json").read_text())
    assert metrics["failures"], "the attack should propose points the flaky reference rejects"
    assert all("SCF did not converge" in f["reason"] for f in metrics["failures"])
    assert metrics["new_labels"] == 8
    assert all(a.positions[0, 0] <= -1.1 for a in records[1].selected)


def test_a_reference_call_budget_pays_exactly_that_many_calls_per_round(tmp_path):
    reference = CountingSurface(double_well_1d(), fail_if=lambda x: x > -1.1)
    loop = make_loop(tmp_path / "run", reference, epochs=60, budget=8, selection={"budget_unit": "reference_calls"})
    records = loop.run(2)
    for number in (1, 2):
        counts = records[number].metrics["round_reference_calls"]
        assert counts["total"] == 8 and records[number].metrics["budget_unit"] == "reference_calls"
        assert records[number].metrics["new_labels"] == counts["succeeded"] - counts["outside_window"] < 8
    assert records[2].metrics["reference_calls"] == len(reference.calls) == 16  # failed calls are paid and counted
    assert records[2].metrics["labels_used"] == len(records[2].train) - len(records[0].train)


def test_an_interrupted_call_budget_round_resumes_at_exactly_its_budget(tmp_path):
    calls = {"budget_unit": "reference_calls"}
    fail = lambda x: x > -1.1  # noqa: E731  (failed calls are paid too)
    uninterrupted = make_loop(tmp_path / "a", CountingSurface(double_well_1d(), fail_if=fail), epochs=60,
                              selection=calls).run(2)
    flaky = CountingSurface(double_well_1d(), fail_if=fail, interrupt_after=11)  # round 2 dies after 3 calls
    with pytest.raises(KeyboardInterrupt):
        make_loop(tmp_path / "b", flaky, epochs=60, selection=calls).run(2)
    resumed_reference = CountingSurface(double_well_1d(), fail_if=fail)
    resumed = make_loop(tmp_path / "b", resumed_reference, epochs=60, selection=calls).run(2)
    assert len(resumed_reference.calls) == 5  # the 3 paid before the kill count against the budget of 8
    assert resumed[2].metrics["round_reference_calls"]["total"] == 8
    assert resumed[2].metrics["reference_calls"] == uninterrupted[2].metrics["reference_calls"] == 16
    assert [a.positions.tolist() for a in resumed[2].train] == [a.positions.tolist() for a in uninterrupted[2].train]


def test_a_call_budget_round_killed_after_paying_everything_resumes_with_its_labels(tmp_path, monkeypatch):
    calls = {"budget_unit": "reference_calls"}
    uninterrupted = make_loop(tmp_path / "a", CountingSurface(double_well_1d()), epochs=60, selection=calls).run(1)
    train = ActiveLearning._train

    def killed_in_training(self, committee, data, validation, number):
        if number == 1:
            raise KeyboardInterrupt("killed after labeling, before the round was written")
        return train(self, committee, data, validation, number)

    monkeypatch.setattr(ActiveLearning, "_train", killed_in_training)
    with pytest.raises(KeyboardInterrupt):
        make_loop(tmp_path / "b", CountingSurface(double_well_1d()), epochs=60, selection=calls).run(1)
    monkeypatch.setattr(ActiveLearning, "_train", train)
    again = CountingSurface(double_well_1d())
    resumed = make_loop(tmp_path / "b", again, epochs=60, selection=calls).run(1)
    assert again.calls == []  # all 8 calls were paid before the kill
    assert resumed[1].metrics["new_labels"] == uninterrupted[1].metrics["new_labels"] == 8
    assert resumed[1].metrics["round_reference_calls"]["total"] == 8


def test_the_energy_windows_upper_confidence_bound_is_applied_before_labels_are_paid(tmp_path):
    window = {"energy_ceiling": 3.0, "window_sigmas": 1.0}
    record = make_loop(tmp_path / "run", CountingSurface(double_well_1d()), epochs=60, selection=window).run(1)[1]
    reference_minimum = min(a.get_potential_energy() for a in record.train[: -len(record.selected)])
    report = record.metrics["selection"]
    assert 0 < report["deferred_energy_bound"] < report["n_candidates"] - report["dropped_energy_ceiling"] - 8
    for atoms in record.selected:  # enough sure candidates: every paid one had Ē + σ_E below the ceiling
        bound = atoms.info["committee_energy"] + atoms.info["committee_energy_std"] - reference_minimum
        assert atoms.info["committee_energy_std"] > 0 and bound <= 3.0 + 1e-9


def test_loop_rejects_bad_setups(tmp_path):
    with pytest.raises(ValueError, match="empty training set"):
        ActiveLearning(tmp_path, Committee(MLPCommittee(2, (8,), input_axes=(0,))), double_well_1d(), [], make_sampler("random"))
    loop = make_loop(tmp_path / "run", double_well_1d())
    with pytest.raises(ValueError, match="n_rounds"):
        loop.run(-1)


def test_a_run_dir_is_not_resumed_with_other_settings(tmp_path):
    make_loop(tmp_path / "run", double_well_1d(), epochs=5, budget=8).run(0)
    make_loop(tmp_path / "run", double_well_1d(), epochs=5, budget=8).run(0)  # same settings: resumes
    with pytest.raises(ValueError, match="other settings.*selection"):
        make_loop(tmp_path / "run", double_well_1d(), epochs=5, budget=9).run(0)


def tree_digest(root):
    """{relative path: sha256} of every file under ``root``."""
    import hashlib
    from pathlib import Path

    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_run_dir_is_not_resumed_with_another_reference_or_test_set(tmp_path):
    from advsample.surfaces import double_well_2d

    make_loop(tmp_path / "run", double_well_1d(), epochs=5).run(0)
    before = tree_digest(tmp_path / "run")
    with pytest.raises(ValueError, match=r"other settings \(reference differ"):
        make_loop(tmp_path / "run", double_well_2d(), epochs=5).run(1)
    with pytest.raises(ValueError, match=r"other settings \(test_fingerprint differ"):
        make_loop(tmp_path / "run", double_well_1d(), epochs=5, test_seed=2).run(1)
    assert tree_digest(tmp_path / "run") == before


def test_a_reference_that_always_fails_gives_up_and_a_fixed_rerun_completes(tmp_path):
    clean = make_loop(tmp_path / "clean", CountingSurface(double_well_1d()), epochs=60).run(1)

    broken = CountingSurface(double_well_1d(), fail_if=lambda x: True)
    with pytest.raises(ReferenceGaveUp, match=r"round 1: gave up labeling after 20 consecutive.*SCF did not converge"):
        make_loop(tmp_path / "run", broken, epochs=60, max_consecutive_failures=20).run(1)
    assert len(broken.calls) == 20  # stopped paying at the limit
    assert not (tmp_path / "run" / "round_001" / "metrics.json").exists()  # not written as complete

    fixed = CountingSurface(double_well_1d())  # the same reference, its environment repaired
    records = make_loop(tmp_path / "run", fixed, epochs=60, retry_failures=True).run(1)
    assert [a.positions.tolist() for a in records[1].train] == [a.positions.tolist() for a in clean[1].train]
    assert len(fixed.calls) == 8  # the top 8 cached failures, retried
    metrics = records[1].metrics
    assert metrics["reference_calls"] == 28 and metrics["reference_calls_failed"] == 20
    assert metrics["round_reference_calls"] == {"total": 28, "succeeded": 8, "failed": 20, "outside_window": 0}


def test_a_round_that_cannot_fill_its_budget_is_not_written(tmp_path):
    broken = CountingSurface(double_well_1d(), fail_if=lambda x: True)
    with pytest.raises(RuntimeError, match=r"round 1: only 0 of 8 labels.*SCF did not converge"):
        make_loop(tmp_path / "run", broken, epochs=5, max_consecutive_failures=None).run(1)
    assert broken.calls  # every candidate was tried
    assert not (tmp_path / "run" / "round_001" / "metrics.json").exists()


def test_a_damaged_round_file_is_named_on_resume(tmp_path):
    make_loop(tmp_path / "run", double_well_1d(), epochs=5).run(1)
    train = tmp_path / "run" / "round_001" / "train.extxyz"
    lines = train.read_text().splitlines(keepends=True)
    train.write_text("".join(lines[: -3]))  # cut exactly at a frame boundary (1 atom: 3 lines a frame)
    before = tree_digest(tmp_path / "run")
    with pytest.raises(ValueError, match=r"round_001/train.extxyz is damaged.*44 frames.*43 of 44"):
        make_loop(tmp_path / "run", double_well_1d(), epochs=5).run(1)
    assert tree_digest(tmp_path / "run") == before
    train.write_text("".join(lines[: -1]))  # cut inside a frame: named too
    with pytest.raises(ValueError, match=r"round_001/train.extxyz"):
        make_loop(tmp_path / "run", double_well_1d(), epochs=5).run(1)


def test_notebooks_and_report_expose_retry_failures(tmp_path):
    """`-p retry_failures True` (papermill or advsample report) reaches the run of notebooks 01-03."""
    import papermill as pm

    from advsample.toy_study import ToyStudy

    root = Path(__file__).resolve().parents[1] / "notebooks"
    for stem in ("01_double_well_1d", "02_double_well_2d", "03_ammonia_inversion"):
        assert pm.inspect_notebook(str(root / f"{stem}.ipynb"))["retry_failures"]["inferred_type_name"] == "bool"
    study = ToyStudy("double_well_1d", smoke=True, retry_failures=True, run_dir=tmp_path / "toy")
    assert study.learner(None).retry_failures is True
    notebook = json.loads((root / "03_ammonia_inversion.ipynb").read_text())  # 03 hands it to from_system
    assert any("retry_failures=retry_failures" in "".join(c["source"]) for c in notebook["cells"])


# -- a run started from a given committee and training set ---------------------------------------
def saved_start(run_dir):
    """(committee, training set, validation set) of a finished run's round 0, as stored."""
    from advsample.rundir import read_atoms

    run_dir = Path(run_dir)
    return (Committee.load(run_dir / "round_000" / "committee.pt"), read_atoms(run_dir / "round_000" / "train.extxyz"),
            read_atoms(run_dir / "validation.extxyz"))


def comparable(metrics):
    """A round's metrics without its timings (wall and CPU seconds differ between two runs)."""
    training = {k: v for k, v in metrics["training"].items() if not k.startswith("train_")}
    return {**{k: v for k, v in metrics.items() if k not in ("timings", "training")}, "training": training}


def test_a_started_run_equals_the_same_round_of_an_ordinary_run(tmp_path):
    """Round 0's committee and sets given as the start: round 1 has the same labels, calls, training,
    regression check, test errors and weights as the ordinary run's round 1."""
    import torch

    ordinary = make_loop(tmp_path / "a", CountingSurface(double_well_1d()), epochs=60, warm_start=True).run(1)
    reference = CountingSurface(double_well_1d())
    started = make_loop(tmp_path / "b", reference, epochs=60, warm_start=True, start=saved_start(tmp_path / "a")).run(1)
    assert started[0].metrics["training"]["train_s"] == 0 and "started_from" in started[0].metrics["training"]
    assert started[0].metrics["test"] == ordinary[0].metrics["test"]  # the same committee, evaluated
    assert comparable(started[1].metrics) == comparable(ordinary[1].metrics)
    assert len(reference.calls) == started[1].metrics["round_reference_calls"]["total"] == 8
    assert [a.positions.tolist() for a in started[1].train] == [a.positions.tolist() for a in ordinary[1].train]
    for (name, mine), theirs in zip(started[1].committee.state_dict().items(), ordinary[1].committee.state_dict().values()):
        assert torch.equal(mine, theirs), name
    for phase in ("sample", "select", "label", "train"):  # the phase times: wall and this process's CPU
        assert started[1].metrics["timings"][f"{phase}_s"] > 0 and started[1].metrics["timings"][f"{phase}_cpu_s"] > 0


def test_a_started_run_continues_the_given_weights_on_its_data_and_resumes_only_from_it(tmp_path):
    import copy

    import torch

    from advsample.rundir import read_atoms

    make_loop(tmp_path / "a", double_well_1d(), epochs=60).run(0)
    committee, train, validation = start = saved_start(tmp_path / "a")
    before = {k: v.clone() for k, v in committee.state_dict().items()}
    loop = make_loop(tmp_path / "b", CountingSurface(double_well_1d()), epochs=60, warm_start=True, start=start,
                     on_regression="accept")
    records = loop.run(1)
    assert all(torch.equal(v, before[k]) for k, v in committee.state_dict().items())  # the caller's is untouched
    weight = "model.layers.0.weight" if "model.layers.0.weight" in before else next(
        k for k, v in before.items() if v.dtype.is_floating_point and v.ndim >= 2)
    fresh = Committee(MLPCommittee(4, (32, 32), input_axes=(0,), seed=1)).state_dict()[weight]
    moved = (records[1].committee.state_dict()[weight] - before[weight]).norm()
    assert records[1].metrics["training"]["continued"] and records[1].metrics["training"]["epochs"] > 0
    assert 0 < moved < 0.2 * (fresh - before[weight]).norm()  # continued: near the start, not a fresh draw
    # trained on the start's data plus the round's labels; validation is the start's, fixed
    positions = lambda atoms: sorted(round(float(a.positions[0, 0]), 6) for a in atoms)  # noqa: E731
    assert positions(records[1].train) == sorted(positions(train) + positions(records[1].selected))
    assert records[1].metrics["n_train"] == len(train) + 8 == len(read_atoms(tmp_path / "b" / "round_001" / "train.extxyz"))
    assert positions(read_atoms(tmp_path / "b" / "validation.extxyz")) == positions(validation)
    assert records[1].metrics["regression"]["checked_on"] == "validation"
    settings = json.loads((tmp_path / "b" / "settings.json").read_text())
    assert set(settings["start"]) == {"committee", "train", "validation"}

    again = CountingSurface(double_well_1d())
    resumed = make_loop(tmp_path / "b", again, epochs=60, warm_start=True, start=start, on_regression="accept").run(1)
    assert resumed[1].resumed and again.calls == []
    other = copy.deepcopy(committee)
    with torch.no_grad():
        next(other.model.parameters()).add_(1e-3)
    with pytest.raises(ValueError, match=r"other settings \(start differ.*start.committee"):
        make_loop(tmp_path / "b", again, epochs=60, warm_start=True, start=(other, train, validation),
                  on_regression="accept").run(1)
    with pytest.raises(ValueError, match=r"other settings \(initial_fingerprint, start differ"):
        make_loop(tmp_path / "b", again, epochs=60, warm_start=True, start=(committee, train[1:], validation),
                  on_regression="accept").run(1)


def test_a_bad_start_is_refused_naming_it(tmp_path):
    committee, train, validation = saved_start_of_untrained(tmp_path)
    with pytest.raises(TypeError, match=r"start must be \(committee, train, validation\)"):
        make_loop(tmp_path / "run", double_well_1d(), start=(committee, train))
    with pytest.raises(TypeError, match="start's committee must be a Committee"):
        make_loop(tmp_path / "run", double_well_1d(), start=("committee", train, validation))
    with pytest.raises(ValueError, match="empty training set"):
        make_loop(tmp_path / "run", double_well_1d(), start=(committee, [], validation))
    surface = double_well_1d()
    with pytest.raises(ValueError, match="give initial or start, not both"):
        ActiveLearning(tmp_path / "run", committee, surface, surface.sample(5, seed=0), make_sampler("random"),
                       start=(committee, train, validation))
    assert not (tmp_path / "run").exists()


def saved_start_of_untrained(tmp_path):
    surface = double_well_1d()
    data = surface.sample(12, seed=0, max_energy=-1.0, region=[(-1.6, -0.2)])
    return Committee(MLPCommittee(4, (8,), input_axes=(0,), seed=0)), data[:10], data[10:]


def test_a_label_ceiling_trains_on_the_holes_the_energy_window_would_leave_out(tmp_path):
    """label_ceiling above energy_ceiling: candidates are still chosen by Ē inside the window, but a
    label the reference puts above the ceiling (the committee placed it inside: a hole) is trained on.
    Same seed, same calls: the labels left out without it are exactly the ones added with it."""
    class Walled(CountingSurface):  # the reference 3 higher than the committee learned, right of x = -0.95
        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            if self.atoms.positions[0, 0] > -0.95:
                self.results["energy"] += 3.0

    window = {"energy_ceiling": 1.0, "budget_unit": "reference_calls"}
    narrow = make_loop(tmp_path / "narrow", Walled(double_well_1d()), epochs=60, selection=window).run(1)[1]
    wide = make_loop(tmp_path / "wide", Walled(double_well_1d()), epochs=60,
                     selection={**window, "label_ceiling": 100.0}).run(1)[1]
    left_out = narrow.metrics["round_reference_calls"]["outside_window"]
    assert left_out > 0 and wide.metrics["round_reference_calls"]["outside_window"] == 0
    assert wide.metrics["new_labels"] == narrow.metrics["new_labels"] + left_out
    minimum = min(a.get_potential_energy() for a in wide.train[: -len(wide.selected)])
    assert max(a.get_potential_energy() - minimum for a in wide.selected) > 1.0  # trained on, above the ceiling
    settings = {name: json.loads((tmp_path / name / "settings.json").read_text())["selection"] for name in ("wide", "narrow")}
    assert "label_ceiling=100.0" in settings["wide"]
    assert "label_ceiling" not in settings["narrow"]  # unset, it is not in the settings: older run directories resume


def test_a_label_with_artifact_forces_is_paid_and_not_trained_on(tmp_path):
    """force_ceiling: a reference that returns huge forces right of x = -0.95 (energy unchanged) has
    those labels paid and left out, recorded with their RMS force; the same run without it trains on them."""
    class Spiky(CountingSurface):
        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            if self.atoms.positions[0, 0] > -0.95:
                self.results["forces"] = self.results["forces"] + 500.0

    window = {"budget_unit": "reference_calls"}
    plain = make_loop(tmp_path / "plain", Spiky(double_well_1d()), epochs=30, selection=window).run(1)[1]
    guarded = make_loop(tmp_path / "guarded", Spiky(double_well_1d()), epochs=30,
                        selection={**window, "force_ceiling": 100.0}).run(1)[1]
    left_out = guarded.metrics["outside_energy_window"]
    assert left_out and all(o["reference_rms_force"] > 100.0 for o in left_out)
    assert guarded.metrics["new_labels"] == plain.metrics["new_labels"] - len(left_out)
    assert all(a.get_forces().max() < 100.0 for a in guarded.selected)


def test_holes_trained_on_their_forces_only_carry_their_loss_weights_through_a_resume(tmp_path):
    """above_window_weights=(0, 1): the labels above the energy ceiling are stored with
    config_energy_weight 0 (forces only), those inside it without weights; a resumed run reads the
    same weights back from its run directory."""

    class Walled(CountingSurface):  # the reference 3 higher than the committee learned, right of x = -0.95
        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            if self.atoms.positions[0, 0] > -0.95:
                self.results["energy"] += 3.0

    selection = {"energy_ceiling": 1.0, "budget_unit": "reference_calls", "label_ceiling": 100.0,
                 "above_window_weights": (0.0, 1.0)}
    record = make_loop(tmp_path / "run", Walled(double_well_1d()), epochs=60, selection=selection).run(1)[1]
    minimum = min(a.get_potential_energy() for a in record.train[: -len(record.selected)])
    above = [a.get_potential_energy() - minimum > 1.0 for a in record.selected]
    assert any(above) and not all(above)
    for atoms, hole in zip(record.selected, above):
        assert (atoms.info.get("config_energy_weight"), atoms.info.get("config_forces_weight")) == (
            (0.0, 1.0) if hole else (None, None))
    reference = Walled(double_well_1d())
    resumed = make_loop(tmp_path / "run", reference, epochs=60, selection=selection).run(1)[1]
    assert reference.calls == []  # read back, not labeled again
    assert [a.info.get("config_energy_weight") for a in resumed.selected] == [
        a.info.get("config_energy_weight") for a in record.selected]
