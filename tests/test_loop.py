import json

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes

from advsample.committee import Committee
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
        self.interrupt_after, self.fail_if = interrupt_after, fail_if

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        x = float(self.atoms.positions[0, 0])
        if self.interrupt_after is not None and len(self.calls) >= self.interrupt_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls.append(round(x, 9))
        if self.fail_if is not None and self.fail_if(x):
            raise RuntimeError("SCF did not converge (simulated)")
        self.surface.calculate(self.atoms, properties, system_changes)
        self.results = dict(self.surface.results)


def make_loop(run_dir, reference, epochs=400, budget=8, sampler="adversarial", seed=0, executor=None):
    surface = double_well_1d()
    initial = surface.sample(40, seed=0, max_energy=-1.0, region=[(-1.6, -0.2)])
    test = surface.sample(200, seed=1, max_energy=3.0)
    return ActiveLearning(
        run_dir,
        Committee(MLPCommittee(4, (32, 32), input_axes=(0,), seed=0)),
        reference,
        initial,
        make_sampler(sampler, n_steps=40, learning_rate=0.03),
        test=test,
        selection=SelectionConfig(budget=budget, min_distance=0.02),
        kT=1.0,
        train_config=TrainConfig(epochs=epochs, patience=200),
        seed=seed,
        executor=executor,
        progress=False,
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
