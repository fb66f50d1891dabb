"""Bad inputs across the public API, tried as a new user would.

Each case asserts the exception type, that the message names the problem, and - where a
run directory exists - that the run directory is byte-identical afterwards and that no
reference label was paid for.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.constraints import FixBondLength

from advsample.attack import AttackConfig, attack
from advsample.committee import Committee
from advsample.executors import make_executor
from advsample.label import CalculatorSpec, LabelCache, label_structures, label_until
from advsample.loop import ActiveLearning
from advsample.models import MLPCommittee, SchNetCommittee
from advsample.parallel import split_members, train_members_parallel
from advsample.samplers import make_sampler
from advsample.select import SelectionConfig
from advsample.structures import Batch, labeled, labels_of
from advsample.surfaces import double_well_1d, double_well_2d
from advsample.train import TrainConfig, split_validation, train_committee


def tree_digest(root) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root`` (the run directory's bytes)."""
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


class Counting(Calculator):
    """The 1D double well, counting its calls (to show that nothing was paid)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self):
        super().__init__()
        self.surface = double_well_1d()
        self._calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self._calls += 1
        self.surface.calculate(self.atoms, properties, system_changes)
        self.results = dict(self.surface.results)


def _data(n=40, seed=0):
    return double_well_1d().sample(n, seed=seed, max_energy=-1.0, region=[(-1.6, -0.2)])


def make_loop(run_dir, reference=None, initial=None, test=None, **options):
    options.setdefault("train_config", TrainConfig(epochs=5))
    return ActiveLearning(
        run_dir,
        options.pop("committee", None) or Committee(MLPCommittee(2, (8,), input_axes=(0,), seed=0)),
        reference if reference is not None else Counting(),
        _data() if initial is None else initial,
        options.pop("sampler", None) or make_sampler("adversarial", n_steps=5),
        test=double_well_1d().sample(20, seed=1, max_energy=3.0) if test is None else test,
        selection=options.pop("selection", None) or SelectionConfig(budget=2, min_distance=0.02),
        progress=False,
        **options,
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished two-round run directory (rounds 0 and 1)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    make_loop(run_dir).run(1)
    return run_dir


@pytest.fixture
def run_dir(finished_run, tmp_path):
    """A fresh copy of the finished run, and its digest before the bad input."""
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def refused_unchanged(run_dir, loop, exception, match, n_rounds=2):
    """Run ``loop`` on ``run_dir``: it must raise ``exception`` matching ``match``, pay nothing
    and leave the run directory byte-identical."""
    before = tree_digest(run_dir)
    with pytest.raises(exception, match=match):
        loop.run(n_rounds)
    assert tree_digest(run_dir) == before
    if isinstance(loop.reference, Counting):
        assert loop.reference._calls == 0


# -- run directories: identity, damage, permissions ------------------------------------
def test_resume_with_another_reference(run_dir):
    refused_unchanged(run_dir, make_loop(run_dir, reference=double_well_2d()), ValueError, r"reference differ")


def test_resume_with_another_initial_set(run_dir):
    loop = make_loop(run_dir, initial=_data(seed=5))
    refused_unchanged(run_dir, loop, ValueError, r"initial_fingerprint.*validation_fingerprint")


def test_resume_with_relabeled_test_set(run_dir):
    test = double_well_1d().sample(20, seed=1, max_energy=3.0)
    test[3] = labeled(test[3], test[3].get_potential_energy() + 0.5, test[3].get_forces())  # other labels
    refused_unchanged(run_dir, make_loop(run_dir, test=test), ValueError, r"test_fingerprint differ")


def test_resume_with_another_package_version(run_dir):
    settings = json.loads((run_dir / "settings.json").read_text())
    settings["advsample_version"] = "0.0.1"
    (run_dir / "settings.json").write_text(json.dumps(settings))
    refused_unchanged(run_dir, make_loop(run_dir), ValueError, r"advsample_version differ.*0\.0\.1")


def test_resume_with_another_budget(run_dir):
    loop = make_loop(run_dir, selection=SelectionConfig(budget=3, min_distance=0.02))
    refused_unchanged(run_dir, loop, ValueError, r"selection differ")


def test_truncated_committee_checkpoint_in_a_round(run_dir):
    path = run_dir / "round_001" / "committee.pt"
    path.write_bytes(path.read_bytes()[:200])
    refused_unchanged(run_dir, make_loop(run_dir), ValueError, r"round_001/committee\.pt is damaged")


def test_candidates_file_cut_at_a_frame_boundary(run_dir):
    path = run_dir / "round_001" / "candidates.extxyz"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-3]))  # one whole frame (1 atom) less
    refused_unchanged(run_dir, make_loop(run_dir), ValueError, r"candidates\.extxyz is damaged.*frames")


def test_truncated_test_set_file(run_dir):
    path = run_dir / "test.extxyz"
    path.write_text(path.read_text()[:-40])  # cut inside a frame
    refused_unchanged(run_dir, make_loop(run_dir), ValueError, r"test\.extxyz is damaged")


def test_deleted_round_file(run_dir):
    (run_dir / "round_001" / "selected.extxyz").unlink()
    refused_unchanged(run_dir, make_loop(run_dir), ValueError, r"round_001/selected\.extxyz is missing")


def test_label_cache_that_is_not_a_file(run_dir):
    (run_dir / "labels.jsonl").unlink()
    (run_dir / "labels.jsonl").mkdir()
    refused_unchanged(run_dir, make_loop(run_dir), PermissionError, r"run directory .* is not writable")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write a read-only directory")
def test_read_only_run_directory(run_dir):
    os.chmod(run_dir, 0o555)
    try:
        refused_unchanged(run_dir, make_loop(run_dir), PermissionError, r"run directory .* is not writable")
    finally:
        os.chmod(run_dir, 0o755)


def test_run_directory_inside_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("not a directory")
    loop = make_loop(tmp_path / "notes.txt" / "run")
    with pytest.raises(PermissionError, match=r"notes\.txt/run is not writable"):
        loop.run(1)
    assert loop.reference._calls == 0


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):  # unpickling calls open(marker, "w"): creates the file
            return (open, (str(marker), "w"))

    data = Committee(MLPCommittee(2, (4,))).checkpoint()
    data["model_config"] = Payload()
    torch.save(data, tmp_path / "committee.pt")
    with pytest.raises(ValueError, match=r"committee\.pt is not a plain-data .* could run code"):
        Committee.load(tmp_path / "committee.pt")
    assert not marker.exists()


def test_a_run_dir_with_a_poisoned_checkpoint_is_refused(run_dir):
    marker = run_dir.parent / "code_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    data = Committee(MLPCommittee(2, (8,), input_axes=(0,), seed=0)).checkpoint()
    data["model_config"] = Payload()
    torch.save(data, run_dir / "round_001" / "committee.pt")
    refused_unchanged(run_dir, make_loop(run_dir), ValueError, r"committee\.pt is damaged")
    assert not marker.exists()


# -- the loop's own arguments --------------------------------------------------------------
def test_empty_initial_set(tmp_path):
    with pytest.raises(ValueError, match="empty training set"):
        make_loop(tmp_path / "run", initial=[])
    assert not (tmp_path / "run").exists()


def test_nan_label_in_the_initial_set(tmp_path):
    initial = _data()
    initial[7] = labeled(initial[7], float("nan"), initial[7].get_forces())
    with pytest.raises(ValueError, match=r"structure 7: NaN"):
        make_loop(tmp_path / "run", initial=initial)


def test_unlabeled_test_set(tmp_path):
    test = [Atoms("H", positions=[[0.0, 0, 0]])]
    with pytest.raises(ValueError, match=r"structure 0 .*no energy/forces label"):
        make_loop(tmp_path / "run", test=test)


def test_reference_that_is_not_a_calculator(tmp_path):
    with pytest.raises(TypeError, match=r"expected a CalculatorSpec.*got 42"):
        make_loop(tmp_path / "run", reference=42)


def test_zero_give_up_limit(tmp_path):
    with pytest.raises(ValueError, match=r"max_consecutive_failures must be >= 1"):
        make_loop(tmp_path / "run", max_consecutive_failures=0)


def test_negative_oversample(tmp_path):
    with pytest.raises(ValueError, match=r"oversample must be >= 1"):
        make_loop(tmp_path / "run", oversample=0)


def test_validation_fraction_of_one(tmp_path):
    with pytest.raises(ValueError, match=r"validation fraction must be in \[0, 1\)"):
        make_loop(tmp_path / "run", validation_fraction=1.0)


def test_negative_number_of_rounds(run_dir):
    refused_unchanged(run_dir, make_loop(run_dir), ValueError, r"n_rounds must be >= 0", n_rounds=-1)


def test_live_calculator_with_a_process_pool(tmp_path):
    with make_executor("processes", max_workers=1) as pool:
        with pytest.raises(TypeError, match=r"live ASE calculator can only label in-process"):
            label_structures(_data(2), double_well_1d(), executor=pool, progress=False)


# -- models, committees, checkpoints ---------------------------------------------------------
def test_zero_members():
    with pytest.raises(ValueError, match=r"n_members must be >= 1, got 0"):
        MLPCommittee(n_members=0)
    with pytest.raises(ValueError, match=r"n_members must be >= 1, got 0"):
        SchNetCommittee(n_members=0)


def test_unknown_sampler():
    with pytest.raises(ValueError, match=r"unknown sampler 'adverserial'"):
        make_sampler("adverserial")


def test_zero_budget():
    with pytest.raises(ValueError, match=r"budget must be an integer >= 1"):
        SelectionConfig(budget=0)


def test_unknown_element_at_predict_time():
    committee = Committee(SchNetCommittee(n_members=2, species=(1, 7), n_features=8, n_interactions=1))
    with pytest.raises(ValueError, match=r"element\(s\) O not known to this model"):
        committee.predict([molecule("H2O")])


def test_cell_thinner_than_the_cutoff():
    committee = Committee(SchNetCommittee(n_members=2, species=(1,), n_features=8, n_interactions=1, cutoff=5.0))
    atoms = Atoms("H2", positions=[[0, 0, 0], [0.8, 0, 0]], cell=[3.0, 6.0, 6.0], pbc=True)
    with pytest.raises(ValueError, match=r"periodic cell too small for the cutoff.*atoms\.repeat\(\(2, 1, 1\)\)"):
        committee.predict([atoms])


def test_wrong_shape_positions_to_the_committee():
    committee = Committee(MLPCommittee(2, (8,)))
    batch = Batch.from_atoms(double_well_2d().sample(3, seed=0))
    with pytest.raises(ValueError, match=r"positions must have shape \[N, 3\] = \[3, 3\].*got \[3, 2\]"):
        committee(batch, positions=batch.positions[:, :2])
    with pytest.raises(ValueError, match=r"got \[2, 3\]"):
        committee(batch, positions=batch.positions[:2])


def test_structure_of_the_wrong_size_for_the_mlp():
    with pytest.raises(ValueError, match=r"takes structures of 1 atom"):
        Committee(MLPCommittee(2, (8,))).predict([molecule("H2")])


def test_checkpoint_of_another_architecture(tmp_path):
    path = Committee(SchNetCommittee(n_members=2, n_features=8, n_interactions=1)).save(tmp_path / "schnet.pt")
    with pytest.raises(ValueError, match=r"different model: SchNetCommittee"):
        Committee(MLPCommittee(2, (8,))).load_checkpoint(path)


def test_checkpoint_of_a_model_that_is_not_registered(tmp_path):
    from advsample.models import MODELS, register_model

    @register_model
    class MyOwnMLP(MLPCommittee):
        pass

    path = Committee(MyOwnMLP(2, (8,))).save(tmp_path / "own.pt")
    del MODELS["MyOwnMLP"]  # a fresh kernel that has not run the cell defining the model
    with pytest.raises(ValueError, match=r"own\.pt: unknown model class MyOwnMLP; define it and register it with "
                                         r"models\.register_model before loading \(known: .*SchNetCommittee"):
        Committee.load(path)


def test_file_that_is_not_a_checkpoint(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt is not an advsample committee checkpoint"):
        Committee.load(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match=r"text\.pt cannot be read as a committee checkpoint"):
        Committee.load(tmp_path / "text.pt")


def test_gather_of_different_architectures():
    with pytest.raises(ValueError, match=r"same model architecture"):
        Committee.gather([Committee(MLPCommittee(2, (8,))), Committee(MLPCommittee(2, (16,)))])


def test_parallel_training_of_an_unknown_model():
    with pytest.raises(ValueError, match=r"unknown model class Transformer"):
        train_members_parallel("Transformer", {"n_members": 2}, _data(4), None)
    with pytest.raises(ValueError, match=r"members_per_task must be >= 1"):
        split_members(4, 0)


def test_training_on_an_empty_set():
    with pytest.raises(ValueError, match=r"empty training set"):
        train_committee(Committee(MLPCommittee(2, (8,), input_axes=(0,))), [], None, TrainConfig(epochs=1))
    with pytest.raises(ValueError, match=r"empty training set"):
        split_validation([], 0.1)


# -- structures, labels, the attack ---------------------------------------------------------
def test_structure_without_atoms_and_nan_positions():
    with pytest.raises(ValueError, match=r"structure 1 has no atoms"):
        Batch.from_atoms([molecule("H2"), Atoms()])
    bad = molecule("H2")
    bad.positions[0, 1] = np.nan
    with pytest.raises(ValueError, match=r"positions contain NaN"):
        Batch.from_atoms([bad])


def test_unsupported_constraint():
    atoms = molecule("H2")
    atoms.set_constraint(FixBondLength(0, 1))
    with pytest.raises(ValueError, match=r"unsupported constraint FixBondLength"):
        Batch.from_atoms([atoms])


def test_labels_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"forces must have shape \(2, 3\), got \(3, 3\)"):
        labeled(molecule("H2"), 0.0, np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"structure 0 \(H2\) has no energy/forces label"):
        labels_of([molecule("H2")])


def test_bad_calculator_spec_and_label_count(tmp_path):
    with pytest.raises(ValueError, match=r"factory must look like 'module:attr'"):
        CalculatorSpec("tblite.ase.TBLite")
    with pytest.raises(ValueError, match=r"k must be >= 0"):
        label_until(_data(2), -1, double_well_1d(), progress=False)
    with pytest.raises(ValueError, match=r"max_consecutive_failures must be >= 1"):
        label_until(_data(2), 1, double_well_1d(), cache=LabelCache(tmp_path / "l.jsonl"), progress=False,
                    max_consecutive_failures=0)


@pytest.mark.parametrize("field, value, error, match", [
    ("kT", "1.0", TypeError, r"kT must be a number, got '1\.0' \(str\)"),
    ("kT", True, TypeError, r"kT must be a number, got True \(bool\)"),
    ("kT", float("nan"), ValueError, r"kT must be a number, got NaN"),
    ("kT", float("inf"), ValueError, r"kT must be positive, got inf"),
    ("kT", np.array([1.0, 2.0]), TypeError, r"kT must be a number, got array"),
    ("n_steps", "60", TypeError, r"n_steps must be an integer, got '60'"),
    ("n_steps", 2.5, TypeError, r"n_steps must be an integer, got 2\.5"),
    ("learning_rate", "0.01", TypeError, r"learning_rate must be a number, got '0\.01'"),
    ("max_displacement", [3.0], TypeError, r"max_displacement must be a number, got \[3\.0\]"),
    ("seed", "0", TypeError, r"seed must be an integer, got '0'"),
])
def test_attack_config_names_a_value_that_is_no_number(field, value, error, match):
    """A string, boolean, array or NaN for a number of AttackConfig: a clear error naming the field and
    the value (a NumberError is both a ValueError and a TypeError), not a raw comparison TypeError."""
    with pytest.raises(error, match=match):
        AttackConfig(**{field: value})


def test_numbers_of_any_library_are_accepted_by_attack_config_and_objective():
    from advsample.objective import Objective

    config = AttackConfig(kT=np.float32(0.5), n_steps=np.int64(3), learning_rate=torch.tensor(0.02, dtype=torch.float64),
                          max_displacement=np.array(3.0), seed=np.int32(4))
    assert (config.kT, config.n_steps, config.learning_rate, config.max_displacement, config.seed) == (0.5, 3, 0.02, 3.0, 4)
    assert type(config.kT) is float and type(config.n_steps) is int and type(config.seed) is int
    for kT in (np.float32(1.5), np.float64(1.5), torch.tensor(1.5), np.array(1.5), 1.5):
        objective = Objective(kT)
        assert objective.kT == 1.5 and type(objective.kT) is float
    for kT, error, match in (("1.0", TypeError, r"kT must be a number, got '1\.0' \(str\)"),
                             (np.float32("nan"), ValueError, r"kT must be a number, got NaN"),
                             (torch.tensor(-1.0), ValueError, r"kT must be a positive energy.*-1\.0"),
                             (torch.ones(2), TypeError, r"kT must be a number, got tensor")):
        with pytest.raises(error, match=match):
            Objective(kT)


def test_unknown_executor_and_missing_parsl_config(tmp_path):
    with pytest.raises(ValueError, match=r"unknown executor 'threads'"):
        make_executor("threads")
    with pytest.raises(FileNotFoundError, match=r"Parsl config file .*missing\.py does not exist"):
        make_executor(f"parsl:{tmp_path / 'missing.py'}")


def test_attack_settings_and_seeds():
    with pytest.raises(ValueError, match=r"kT must be positive, got -1"):
        AttackConfig(kT=-1)
    with pytest.raises(ValueError, match=r"n_steps must be >= 1"):
        AttackConfig(n_steps=0)
    with pytest.raises(ValueError, match=r"at least one seed"):
        attack(Committee(MLPCommittee(2, (8,))), [], [0.0])


# -- the command line -------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--notebooks", "99_nothing"], r"notebook '99_nothing' not found"),
    (["--notebooks", "01_double_well_1d", "-p", "n_roundz", "2"], r"unknown parameter 'n_roundz'.*declares: n_rounds"),
    (["--params", "missing.yaml"], r"parameters file missing\.yaml not found"),
    (["--notebooks", "04_sampler_comparison", "-p", "system", "nosuch:factory"],
     r"parameter 'system' = 'nosuch:factory' cannot be used: .*cannot import module 'nosuch'"),
    (["--notebooks", "04_sampler_comparison", "-p", "system", "advsample.systems.toy:nosuch_factory"],
     r"module 'advsample\.systems\.toy' has no 'nosuch_factory'"),
    (["--notebooks", "04_sampler_comparison", "-p", "system", "no_such_system"], r"unknown system 'no_such_system'"),
    (["--notebooks", "04_sampler_comparison", "-p", "system", "double_well_1d", "-p", "csv_path", "rows.csv"],
     r"-p csv_path loads results, so -p system would be ignored"),
])
def test_report_usage_errors_run_nothing(tmp_path, capsys, monkeypatch, argv, message):
    from advsample.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["report", "-o", str(tmp_path / "report"), *argv]) == 2  # a usage error
    assert re.search(message, capsys.readouterr().err, re.S)
    assert not (tmp_path / "report").exists()  # no notebook was started


# == issue 34: every mistake caught before the first paid call ===============================
from advsample.label import BadReferenceResult, ReferenceSpecError, geometry_key  # noqa: E402
from advsample.parameters import NumberError, as_number  # noqa: E402
from advsample.rundir import RunDir, RunDirBusy, RunDirWriteError  # noqa: E402


def _with_pbc(atoms_list, index, cell, pbc=True):
    atoms_list = list(atoms_list)
    atoms = atoms_list[index].copy()
    atoms.calc = atoms_list[index].calc
    atoms.cell, atoms.pbc = cell, pbc
    atoms_list[index] = atoms
    return atoms_list


def _as_element(atoms_list, indices, symbol):
    atoms_list = list(atoms_list)
    for i in indices:
        atoms = atoms_list[i].copy()
        atoms.calc = atoms_list[i].calc
        atoms.symbols = symbol * len(atoms)
        atoms_list[i] = atoms
    return atoms_list


def _validation_indices(n=40, fraction=0.1, seed=0):
    order = np.random.default_rng(seed).permutation(n)
    n_validation = max(int(round(fraction * n)), 1)
    return sorted(order[:n_validation])


def _schnet(species):
    return Committee(SchNetCommittee(n_members=2, species=species, n_features=8, n_interactions=1, cutoff=3.0))


# (id, ActiveLearning keyword arguments, exception, message): each refused at ActiveLearning(...)
BAD_RUNS = [
    # a reference that cannot be imported or called as given: refused before anything is trained or paid
    ("spec-no-module", dict(reference=CalculatorSpec("nosuch_module:Calc")), ReferenceSpecError, r"nosuch_module"),
    ("spec-no-attr", dict(reference=CalculatorSpec("ase.calculators.emt:NoSuchCalc")), ReferenceSpecError,
     r"NoSuchCalc"),
    ("spec-bad-kwarg", dict(reference=CalculatorSpec("advsample.surfaces:double_well_1d", {"bogus": 1})),
     ReferenceSpecError, r"double_well_1d' does not take the keywords \['bogus'\]"),
    ("spec-build-fails", dict(reference=CalculatorSpec("advsample.surfaces:get_surface", {"name": "nosuch_surface"})),
     ReferenceSpecError, r"could not build the reference 'advsample\.surfaces:get_surface'.*nosuch_surface"),
    ("spec-not-callable", dict(reference=CalculatorSpec("math:pi")), ReferenceSpecError, r"math:pi' is a float"),
    ("spec-no-submodule", dict(reference=CalculatorSpec("advsample.nosuch:Calc")), ReferenceSpecError,
     r"advsample\.nosuch"),
    ("spec-string", dict(reference="nosuch_module:Calc"), ReferenceSpecError, r"nosuch_module"),
    ("reference-number", dict(reference=3.5), TypeError, r"expected a CalculatorSpec.*got 3\.5"),
    # numbers: any library's number is fine, anything else is named
    ("kT-string", dict(kT="1.0"), NumberError, r"kT must be a number, got '1\.0' \(str\).*not '1\.0'"),
    ("kT-None", dict(kT=None), NumberError, r"kT must be a number, got None"),
    ("kT-array", dict(kT=np.array([1.0, 2.0])), NumberError, r"kT must be a number, got array"),
    ("kT-bool", dict(kT=True), NumberError, r"kT must be a number, got True \(bool\)"),
    ("kT-nan", dict(kT=float("nan")), NumberError, r"kT must be a number, got NaN"),
    ("kT-nan-numpy", dict(kT=np.float32("nan")), NumberError, r"kT must be a number, got NaN"),
    ("kT-negative", dict(kT=-1.0), ValueError, r"kT must be a positive energy.*-1\.0"),
    ("kT-zero", dict(kT=np.float64(0.0)), ValueError, r"kT must be a positive energy.*0\.0"),
    ("kT-inf", dict(kT=float("inf")), ValueError, r"kT must be a positive energy.*inf"),
    ("kT-tensor-vector", dict(kT=torch.ones(2)), NumberError, r"kT must be a number, got tensor"),
    ("seed-string", dict(seed="0"), NumberError, r"seed must be an integer, got '0'"),
    ("seed-fraction", dict(seed=1.5), NumberError, r"seed must be an integer, got 1\.5"),
    ("oversample-string", dict(oversample="2"), NumberError, r"oversample must be an integer, got '2'"),
    ("oversample-zero", dict(oversample=np.int64(0)), ValueError, r"oversample must be >= 1, got 0"),
    ("give-up-string", dict(max_consecutive_failures="20"), NumberError,
     r"max_consecutive_failures must be an integer, got '20'"),
    ("give-up-zero", dict(max_consecutive_failures=np.int32(0)), ValueError, r"max_consecutive_failures must be >= 1"),
    ("fraction-string", dict(validation_fraction="0.1"), NumberError, r"validation_fraction must be a number, got '0\.1'"),
    ("fraction-negative", dict(validation_fraction=-0.1), ValueError, r"validation fraction must be in \[0, 1\).*-0\.1"),
    ("uncertainty-unknown", dict(uncertainty="stress"), ValueError, r"stress"),
    # periodic structures without a cell
    ("pbc-zero-cell-initial", dict(initial=_with_pbc(_data(), 3, np.zeros((3, 3)))), ValueError,
     r"initial set structure 3 \(H\) has pbc=\[True, True, True\] but a zero cell"),
    ("pbc-zero-cell-test", dict(test=_with_pbc(double_well_1d().sample(20, seed=1, max_energy=3.0), 5, np.zeros((3, 3)))),
     ValueError, r"test set structure 5 \(H\) .* zero cell"),
    ("pbc-x-zero-vector", dict(initial=_with_pbc(_data(), 0, [[0, 0, 0], [0, 5, 0], [0, 0, 5]], [True, False, False])),
     ValueError, r"initial set structure 0 .* zero cell along its periodic directions \(x\)"),
    ("pbc-degenerate", dict(initial=_with_pbc(_data(), 1, [[5, 0, 0], [5, 0, 0], [0, 0, 5]])), ValueError,
     r"initial set structure 1 .* degenerate cell"),
    ("pbc-flat-cell", dict(initial=_with_pbc(_data(), 2, [[5, 0, 0], [0, 5, 0], [3, 3, 0]])), ValueError,
     r"initial set structure 2 .* degenerate cell"),
    # elements the training set (or the model) does not know
    ("test-new-element", dict(test=_as_element(double_well_1d().sample(20, seed=1, max_energy=3.0), [4], "He")),
     ValueError, r"test set structure 4 \(He\) holds element\(s\) He that the training set lacks \(H\)"),
    ("validation-new-element", dict(initial=_as_element(_data(), _validation_indices(), "Li")), ValueError,
     r"validation set structure 0 \(Li\) holds element\(s\) Li that the training set lacks"),
    ("model-species-initial", dict(committee=_schnet((7,))), ValueError,
     r"initial set structure 0 \(H\) holds element\(s\) H that the model \(species \[7\]\) lacks"),
    ("model-species-test", dict(committee=_schnet((1,)),
                                test=_as_element(double_well_1d().sample(20, seed=1, max_energy=3.0), [2], "O")),
     ValueError, r"test set structure 2 \(O\) holds element\(s\) O that the model"),
    # sets that are not labeled structures
    ("initial-empty", dict(initial=[]), ValueError, r"empty training set"),
    ("test-unlabeled", dict(test=[Atoms("H", positions=[[0.0, 0, 0]])]), ValueError, r"no energy/forces label"),
    ("initial-nan-energy", dict(initial=[labeled(a, float("nan"), a.get_forces()) if i == 2 else a
                                         for i, a in enumerate(_data())]), ValueError, r"structure 2: NaN"),
]


@pytest.mark.parametrize("options, exception, message", [case[1:] for case in BAD_RUNS],
                         ids=[case[0] for case in BAD_RUNS])
def test_bad_run_inputs_are_refused_before_anything_is_written_or_paid(finished_run, tmp_path, options, exception,
                                                                     message):
    """Refused at ActiveLearning(...), naming the problem: a new run directory is not created, an
    existing one is byte-identical, and no reference call was made."""
    reference = Counting()
    options = {"reference": reference, **options}
    existing = tmp_path / "existing"
    shutil.copytree(finished_run, existing)
    before = tree_digest(existing)
    for run_dir in (tmp_path / "new" / "run", existing):
        with pytest.raises(exception, match=message):
            make_loop(run_dir, **options)
    assert not (tmp_path / "new").exists()
    assert tree_digest(existing) == before
    assert reference._calls == 0


def test_numbers_of_any_library_are_accepted_where_a_python_number_is(tmp_path):
    for kT in (np.float32(1.0), np.float64(1.0), np.int64(1), torch.tensor(1.0), np.array(1.0)):
        loop = make_loop(tmp_path / "run", kT=kT, seed=np.int64(0), oversample=np.int32(1),
                         validation_fraction=np.float32(0.1), max_consecutive_failures=torch.tensor(3))
        assert loop.objective.kT == 1.0 and type(loop.objective.kT) is float and loop.seed == 0
    assert as_number(np.int64(3), "budget", int) == 3 and type(as_number(np.int64(3), "budget", int)) is int
    assert not (tmp_path / "run").exists()  # constructing writes nothing


def test_duplicate_structures_in_the_initial_set_are_removed_with_a_warning(tmp_path):
    data = _data()
    initial = data + [data[0], data[5], data[5]]
    with pytest.warns(RuntimeWarning, match=r"initial set: 3 duplicate structure\(s\) removed.*40 \(= 0\), 41 \(= 5\)"):
        loop = make_loop(tmp_path / "run", initial=initial)
    assert len(loop.initial) == 40
    _, validation = split_validation(loop.initial, 0.1, 0)
    train_keys = {geometry_key(a) for a in split_validation(loop.initial, 0.1, 0)[0]}
    assert not any(geometry_key(a) in train_keys for a in validation)


class BadResult(Calculator):
    """The 1D double well with one flaw in every result (``flaw``); counts its calls."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, flaw):
        super().__init__()
        self.surface, self.flaw, self._calls = double_well_1d(), flaw, 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self._calls += 1
        self.surface.calculate(self.atoms, properties, system_changes)
        energy, forces = self.surface.results["energy"], self.surface.results["forces"]
        flawed = {
            "forces-too-many-atoms": (energy, np.zeros((3, 3))),
            "forces-two-columns": (energy, forces[:, :2]),
            "energy-nan": (float("nan"), forces),
            "energy-inf": (float("inf"), forces),
            "forces-nan": (energy, forces * np.nan),
            "energy-vector": (np.array([energy, energy]), forces),
        }[self.flaw]
        self.results = {"energy": flawed[0], "forces": flawed[1]}


@pytest.mark.parametrize("flaw, message", [
    ("forces-too-many-atoms", r"forces have shape \(3, 3\), expected \(1, 3\)"),
    ("forces-two-columns", r"forces have shape \(1, 2\), expected \(1, 3\)"),
    ("energy-nan", r"non-finite energy \(nan\)"),
    ("energy-inf", r"non-finite energy \(inf\)"),
    ("forces-nan", r"non-finite forces \(3 components\)"),
    ("energy-vector", r"energy is not a scalar"),
])
def test_an_unusable_first_reference_result_stops_the_run_after_one_call(tmp_path, flaw, message):
    reference = BadResult(flaw)
    loop = make_loop(tmp_path / "run", reference=reference)
    with pytest.raises(BadReferenceResult, match=r"first result is unusable: " + message + r".*nothing more was paid"):
        loop.run(1)
    assert reference._calls == 1
    records = [json.loads(line) for line in (tmp_path / "run" / "labels.jsonl").read_text().splitlines()]
    assert len(records) == 1 and not records[0]["ok"]  # the paid call is recorded, never a label
    assert not (tmp_path / "run" / "round_001").exists()


def test_a_run_directory_held_by_another_process_is_refused_byte_identical(run_dir):
    holder = RunDir(run_dir)
    holder.lock()  # as another process would (a second open file description conflicts the same way)
    try:
        refused_unchanged(run_dir, make_loop(run_dir), RunDirBusy,
                          rf"run directory {re.escape(str(run_dir))} is in use by process {os.getpid()} on host")
    finally:
        holder.unlock()


def test_a_failed_first_start_leaves_no_directory_and_a_rerun_is_not_refused(tmp_path):
    def broken_metric(committee):
        raise RuntimeError("metric failed")

    run_dir = tmp_path / "new" / "run"
    with pytest.raises(RuntimeError, match="metric failed"):
        make_loop(run_dir, extra_metrics=broken_metric).run(0)
    assert not run_dir.exists()
    # a first start that left files behind (an older version, or a killed process) and paid nothing:
    # the corrected run takes the directory instead of refusing its "other settings"
    run_dir.mkdir(parents=True)
    (run_dir / "settings.json").write_text(json.dumps({"seed": 99}))
    make_loop(run_dir).run(0)
    assert json.loads((run_dir / "settings.json").read_text())["seed"] == 0


def test_a_full_disk_names_the_file_and_the_run_directory(tmp_path, monkeypatch):
    import errno

    import advsample.rundir as rundir

    def full(path, atoms_list):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rundir, "write_atoms", full)
    run_dir = tmp_path / "run"
    reference = Counting()
    with pytest.raises(RunDirWriteError) as info:
        make_loop(run_dir, reference=reference).run(1)
    message = str(info.value)
    assert "No space left on device" in message and f"run directory {run_dir}" in message
    assert re.search(r"could not write \S+/(validation|test)\.extxyz", message)
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert reference._calls == 0 and not run_dir.exists()


def test_a_report_parameter_is_honoured_over_the_embedded_csv_path():
    """``-p system X`` on the comparison notebook: the embedded defaults' ``csv_path`` would make the
    notebook load the 2D results and ignore ``system``; it is dropped instead, with a warning."""
    from advsample import report

    notebooks = report.resolve_notebooks(["04_sampler_comparison"])
    _, sections = report.load_params_file(report.EMBEDDED_DEFAULTS, {nb.stem for nb in notebooks})
    assert sections["04_sampler_comparison"]["csv_path"]  # what the defaults embed
    with pytest.warns(UserWarning, match=r"csv_path=.* from the defaults dropped, so that -p system is honoured"):
        plan = report.plan_parameters(notebooks, {}, sections, {"system": "double_well_1d"})
    assert plan["04_sampler_comparison"]["system"] == "double_well_1d"
    assert plan["04_sampler_comparison"]["csv_path"] == ""
    plan = report.plan_parameters(notebooks, {}, sections, {})  # no -p: the defaults load the measured rows
    assert plan["04_sampler_comparison"]["csv_path"] == sections["04_sampler_comparison"]["csv_path"]


# -- MACE model files are data: checksums, resolved paths, members that must agree -----------------
def _mace_file(path, species=(1, 7), hidden="8x0e + 8x1o", dtype=torch.float64, seed=10):
    from advsample.models.mace import build_mace

    model = build_mace(species=species, r_max=4.0, hidden_irreps=hidden, max_ell=2, num_interactions=1,
                       correlation=2, avg_num_neighbors=3.0, seed=seed).to(dtype)
    torch.save(model, path)
    return str(path)


@pytest.fixture
def mace_files(tmp_path):
    pytest.importorskip("mace", reason="mace extra not installed")
    return [_mace_file(tmp_path / "member0.model"), _mace_file(tmp_path / "member1.model", seed=11)]


@pytest.mark.parametrize("change, message", [
    (dict(species=(1, 8)), r"member1\.model has species \[1, 8\], but .*member0\.model has \[1, 7\]"),
    (dict(dtype=torch.float32), r"member1\.model has precision float32, but .*member0\.model has float64"),
    (dict(hidden="16x0e + 16x1o"), r"member1\.model has another architecture than .*member0\.model"),
])
def test_mace_members_that_disagree_are_refused_naming_the_file(mace_files, tmp_path, change, message):
    from advsample.models.mace import MACECommittee

    _mace_file(tmp_path / "member1.model", **change)
    with pytest.raises(ValueError, match=message):
        MACECommittee.from_files(mace_files, allow_pickle=True)


def test_a_changed_mace_file_is_refused_on_resume_naming_it_and_another_path_to_it_is_the_same(
        mace_files, tmp_path, monkeypatch):
    from advsample.models.mace import MACECommittee

    committee = Committee(MACECommittee.from_files(mace_files, allow_pickle=True))
    settings = lambda c: {"model": [type(c.model).__name__, c.model.config()]}  # noqa: E731  (as the loop's settings)
    run = RunDir(tmp_path / "run")
    run.check_writable()
    run.check_settings(settings(committee))
    (tmp_path / "run" / "labels.jsonl").write_text('{"key": "k", "ok": false, "reason": "paid"}\n')  # paid work
    checkpoint = committee.save(tmp_path / "committee.pt")
    monkeypatch.chdir(tmp_path)  # the same files by relative paths: the same model
    relative = Committee(MACECommittee.from_files(["member0.model", "./member1.model"], allow_pickle=True))
    run.check_settings(settings(relative))
    _mace_file(tmp_path / "member1.model", hidden="16x0e + 16x1o")  # overwritten: another architecture
    with pytest.raises(ValueError, match=r"MACE model file .*member1\.model changed since this committee was made"):
        Committee.load(checkpoint, allow_pickle=True)  # not a raw load_state_dict error
    _mace_file(tmp_path / "member1.model", seed=12)  # overwritten: same architecture, other weights
    before = tree_digest(tmp_path / "run")
    with pytest.raises(ValueError, match=r"model differ.*model_sha256\[1\].*the contents of the file .*member1\.model "
                                         r"changed"):
        run.check_settings(settings(Committee(MACECommittee.from_files(mace_files, allow_pickle=True))))
    assert tree_digest(tmp_path / "run") == before


# -- numbers of toy systems, undefined surfaces, the energy window ------------------------------------
@pytest.mark.parametrize("options, exception, message", [
    (dict(kT="1.0"), NumberError, r"kT must be a number, got '1\.0' \(str\)"),
    (dict(kT=None), NumberError, r"kT must be a number, got None"),
    (dict(kT=-0.5), ValueError, r"parameter 'kT' must be > 0, got -0\.5"),
    (dict(budget="4"), NumberError, r"budget must be an integer, got '4'"),
    (dict(budget=2.5), NumberError, r"budget must be an integer, got 2\.5"),
    (dict(n_members=0), ValueError, r"parameter 'n_members' must be > 0, got 0"),
    (dict(epochs=np.float64(10.5)), NumberError, r"epochs must be an integer"),
    (dict(kT_sweep=("0.3", 3.0)), NumberError, r"kT_sweep must be a number, got '0\.3'"),
])
def test_bad_toy_system_numbers_are_named(options, exception, message):
    from advsample.systems.toy import double_well_1d as toy

    with pytest.raises(exception, match=message):
        toy(smoke=True, **options)


def test_toy_systems_take_numbers_of_any_library():
    from advsample.systems.toy import double_well_1d as toy

    system = toy(smoke=True, kT=np.float32(2.0), budget=np.int64(3), epochs=torch.tensor(5), data_seed=np.int32(0))
    assert system.kT == 2.0 and type(system.kT) is float and system.selection.budget == 3


def test_an_undefined_surface_region_is_never_a_label_and_is_reported(tmp_path):
    from advsample.surfaces import ToySurface

    def half_defined(q):  # NaN for x > 0
        x = q[..., 0]
        return torch.where(x > 0, torch.full_like(x, float("nan")), (x + 0.5) ** 2)

    surface = ToySurface(half_defined, 1, [(-1.0, 1.0)], name="half")
    with pytest.warns(RuntimeWarning, match=r"half: \d+ of \d+ points drawn .* non-finite energy .* left out"):
        sample = surface.sample(20, seed=0, max_energy=None)
    assert all(np.isfinite(a.get_potential_energy()) and a.positions[0, 0] <= 0 for a in sample)
    undefined = [sample[0].copy()]
    undefined[0].positions[0, 0] = 0.5  # where the surface is NaN
    cache = LabelCache(tmp_path / "labels.jsonl")
    result = label_structures(undefined, surface, cache=cache, progress=False)
    assert result.n_labeled == 0 and result.n_calls == 1 and "non-finite energy" in result.failures[0]["reason"]
    assert cache.n_calls == 1 and cache.n_failed_calls == 1 and cache.n_labels == 0  # recorded, paid once, no label


def test_an_energy_window_too_narrow_for_thermal_frames_is_warned_before_paying(tmp_path):
    from ase import units
    from ase.build import bulk

    from advsample.select import EnergyWindowWarning, check_energy_window, thermal_energy

    cell = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))[:31]  # the user's 31-atom Cu cell
    kT = units.kB * 450
    assert thermal_energy(cell, kT) == pytest.approx(1.5 * 31 * kT)  # 1.80 eV
    with pytest.warns(EnergyWindowWarning, match=r"energy_ceiling=1\.5 .* 1\.5 x 31 free atoms .* = 1\.8.*must grow with "
                                                 r"the number of atoms and the temperature"):
        check_energy_window(1.5, cell, kT)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EnergyWindowWarning)
        check_energy_window(3.0, cell, kT)  # wide enough: silent
        check_energy_window(None, cell, kT)
    reference = Counting()
    with pytest.warns(EnergyWindowWarning, match=r"the md sampler's frames"):
        make_loop(tmp_path / "run", reference=reference, sampler=make_sampler("md", n_steps=5),
                  selection=SelectionConfig(budget=2, energy_ceiling=0.5), kT=1.0)
    assert reference._calls == 0 and not (tmp_path / "run").exists()


def test_selection_warns_when_most_candidates_fall_outside_the_window():
    from advsample.objective import Objective
    from advsample.select import EnergyWindowWarning, select

    candidates = _data(10)
    for k, atoms in enumerate(candidates):
        atoms.info.update(committee_energy=float(k), committee_variance=1.0, log_score=0.0)
    config = SelectionConfig(budget=2, energy_ceiling=2.5, ranking="random")
    with pytest.warns(EnergyWindowWarning, match=r"7 of 10 candidates have a committee energy above energy_ceiling=2\.5"):
        ranked, report = select(candidates, [], config, Objective(1.0, "forces"), 0.0)
    assert report["dropped_energy_ceiling"] == 7 and len(ranked) == 3
