"""Committee members trained as independent tasks (inline, process pool, Parsl) and gathered."""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import torch

import advsample.parallel as parallel
from advsample.committee import Committee
from advsample.models import MLPCommittee
from advsample.parallel import SEED_STRIDE, split_members, task_seeds, train_members_parallel
from advsample.surfaces import double_well_2d
from advsample.train import TrainConfig, split_validation, train_committee

MODEL = {"n_members": 4, "hidden": [16, 16], "seed": 3}
CONFIG = TrainConfig(epochs=30, seed=5, progress=False)


@pytest.fixture(scope="module")
def data():
    points = double_well_2d().sample(40, seed=11)
    return split_validation(points, 0.2, seed=0)


@pytest.fixture(scope="module")
def inline_committee(data):
    train, validation = data
    return train_members_parallel("MLPCommittee", MODEL, train, validation, CONFIG)


def same_weights(a: Committee, b: Committee, members_a=slice(None), members_b=slice(None)) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return all(torch.equal(sa[k][members_a].cpu(), sb[k][members_b].cpu()) for k in sa)


def test_split_and_seeds():
    assert split_members(4, 1) == [1, 1, 1, 1]
    assert split_members(5, 2) == [2, 2, 1]
    assert split_members(3, 8) == [3]
    with pytest.raises(ValueError):
        split_members(4, 0)
    assert task_seeds(3, 5, 0) == (3, 5)
    assert task_seeds(3, 5, 2) == (3 + 2 * SEED_STRIDE, 5 + 2 * SEED_STRIDE)


def test_inline_gathers_members_each_equal_to_one_trained_alone(inline_committee, data):
    train, validation = data
    committee = inline_committee
    assert committee.n_members == 4
    assert committee.model.config()["seed"] == MODEL["seed"]
    prediction = committee.predict(validation)
    assert prediction["energies"].shape == (4, len(validation))
    assert np.all(np.isfinite(prediction["energies"])) and np.all(np.isfinite(prediction["forces"]))
    assert np.all(prediction["energy_std"] > 0)  # independently initialised members disagree
    for k in range(4):
        model_seed, train_seed = task_seeds(MODEL["seed"], CONFIG.seed, k)
        alone = Committee(MLPCommittee(1, MODEL["hidden"], seed=model_seed))
        train_committee(alone, train, validation, TrainConfig(epochs=30, seed=train_seed, progress=False))
        assert same_weights(committee, alone, slice(k, k + 1)), f"member {k}"
        assert torch.equal(committee.energy_shift, alone.energy_shift)
        assert torch.equal(committee.energy_scale, alone.energy_scale)


def test_process_pool_matches_inline(inline_committee, data, tmp_path):
    train, validation = data
    context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        pooled = train_members_parallel(
            "MLPCommittee", MODEL, train, validation, CONFIG, executor=pool, run_dir=tmp_path, threads_per_task=1
        )
    assert pooled.n_members == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"members_task{k:03d}.pt" for k in range(4)]
    assert same_weights(pooled, inline_committee)
    assert torch.equal(pooled.energy_shift, inline_committee.energy_shift)
    np.testing.assert_array_equal(pooled.predict(validation)["energies"], inline_committee.predict(validation)["energies"])


def test_members_per_task_two(data):
    train, validation = data
    config = {**MODEL, "n_members": 3}
    committee = train_members_parallel("MLPCommittee", config, train, validation, CONFIG, members_per_task=2)
    assert committee.n_members == 3
    # task 0 is the batched 2-member committee of the base seeds
    batched = Committee(MLPCommittee(2, MODEL["hidden"], seed=MODEL["seed"]))
    train_committee(batched, train, validation, CONFIG)
    assert same_weights(committee, batched, slice(0, 2))


def test_failed_task_is_named(data):
    train, validation = data
    with pytest.raises(RuntimeError, match=r"member training task 0 of 4 \(members 0..0, model seed 3\) failed"):
        train_members_parallel("MLPCommittee", {**MODEL, "n_atoms": 2}, train, validation, CONFIG)
    with pytest.raises(RuntimeError, match=r"takes structures of 2 atom\(s\); got sizes \[1\]; task\(s\) 1, 2, 3 failed too"):
        train_members_parallel("MLPCommittee", {**MODEL, "n_atoms": 2}, train, validation, CONFIG)


def test_different_normalisation_is_refused(data, monkeypatch):
    train, validation = data
    original = parallel.train_member_task

    def skewed(task, name, model_config, train, *args):
        return original(task, name, model_config, train[:-1] if task == 1 else train, *args)

    monkeypatch.setattr(parallel, "train_member_task", skewed)
    with pytest.raises(RuntimeError, match="task 1 fitted a different energy normalisation"):
        train_members_parallel("MLPCommittee", {**MODEL, "n_members": 2}, train, validation, TrainConfig(epochs=2, progress=False))


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("ADVSAMPLE_TEST_PARSL_TRAINING"),
    reason="opt-in (ADVSAMPLE_TEST_PARSL_TRAINING=1): starting Parsl workers takes ~40 s on a loaded 2-core machine",
)
def test_parsl_matches_inline(inline_committee, data, tmp_path):
    pytest.importorskip("parsl")
    from advsample.executors import local_config, parsl_executor

    train, validation = data
    config = local_config(workers=2, run_dir=tmp_path / "runinfo", worker_init="export OMP_NUM_THREADS=1")
    with parsl_executor(config) as pool:
        remote = train_members_parallel("MLPCommittee", {**MODEL, "n_members": 2}, train, validation, CONFIG, executor=pool)
    assert remote.n_members == 2
    assert same_weights(remote, inline_committee, members_b=slice(0, 2))  # same seeds as members 0, 1
