"""The package's work on a CUDA device follows the same work on the CPU: training (molecules and a
periodic slab), the attack, committee MD, the ASE calculator with stress, checkpoints, MACE, and
active-learning rounds with GFN2-xTB labels run and load there.

Marked ``gpu`` and skipped cleanly where no CUDA device is visible (CI has none). The device
under test is ``ADVSAMPLE_TEST_DEVICE`` (default ``cuda``); ``ADVSAMPLE_TEST_DEVICE=cpu`` runs
the same comparisons CPU against CPU, which checks the tests themselves on a machine without
a GPU. Tolerances allow float32 sums in another order (GPU reductions and atomics), not
other physics.
"""
import copy
import os

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT

from advsample.attack import AttackConfig, attack
from advsample.calculator import CommitteeCalculator
from advsample.committee import Committee
from advsample.models import SchNetCommittee
from advsample.samplers import committee_forces, langevin_frames
from advsample.structures import labeled, labels_of
from advsample.systems.adatom import adatom_slab
from advsample.systems.ammonia import ammonia_dataset
from advsample.train import TrainConfig, _Targets, train_committee

DEVICE = os.environ.get("ADVSAMPLE_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="no CUDA device visible"),
]


def on_device(committee: Committee) -> Committee:
    """A copy of the committee on the device under test."""
    moved = copy.deepcopy(committee).to(DEVICE)
    assert moved.device.type == torch.device(DEVICE).type
    return moved


def schnet(species=(1, 7), seed=0) -> Committee:
    return Committee(SchNetCommittee(3, species=species, n_features=16, seed=seed))


@pytest.fixture(scope="module")
def nh3():
    data = ammonia_dataset()
    return data[:24], data[100:104]


@pytest.fixture(scope="module")
def trained(nh3):
    """A SchNet committee trained on the CPU (its members disagree off the data)."""
    committee = schnet()
    train_committee(committee, nh3[0], nh3[1], TrainConfig(epochs=60, patience=500, progress=False, seed=0))
    return committee


def slab(n: int, seed: int = 0) -> list:
    """Rattled copies of the adatom system's slab (bottom layers fixed) with EMT labels."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = adatom_slab()
        atoms.rattle(0.08, rng=rng)
        atoms.calc = EMT()
        out.append(labeled(atoms, atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False)))
    return out


@pytest.mark.parametrize("system", ["nh3", "slab"])
def test_training_on_the_device_follows_the_cpu(system, nh3):
    if system == "nh3":
        train, validation, species = nh3[0], nh3[1], (1, 7)
    else:
        data = slab(5)
        train, validation, species = data[:4], data[4:], (13, 79)
    cpu = schnet(species)
    cpu.fit_normalization(labels_of(train)[0], [len(a) for a in train])
    device = on_device(cpu)
    config = TrainConfig(epochs=1, progress=False)
    # the same loss and gradient at the start, through the fixed geometry and per forward pass
    for reuse in (True, False):
        gradients = []
        for committee in (cpu, device):
            committee.model.zero_grad()
            losses = _Targets(train, committee, reuse).member_losses(committee, config)
            losses.sum().backward()
            gradients.append((losses.detach().cpu(), [p.grad.detach().cpu() for p in committee.model.parameters()]))
        (cpu_loss, cpu_grad), (device_loss, device_grad) = gradients
        torch.testing.assert_close(device_loss, cpu_loss, rtol=1e-4, atol=0)
        for a, b in zip(device_grad, cpu_grad):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5 * float(b.abs().max()) + 1e-8)
    # whole training runs: both learn, to about the same loss
    config = TrainConfig(epochs=40, patience=500, progress=False, seed=0)
    histories = [train_committee(committee, train, validation, config) for committee in (schnet(species), on_device(schnet(species)))]
    for history in histories:
        assert history.train_loss[-1] < 0.5 * history.train_loss[0]
    np.testing.assert_allclose(histories[1].train_loss[0], histories[0].train_loss[0], rtol=1e-4)
    np.testing.assert_allclose(histories[1].train_loss[-1], histories[0].train_loss[-1], rtol=0.1)


def test_attack_on_the_device_follows_the_cpu(trained, nh3):
    seeds, energies = nh3[1], labels_of(nh3[0])[0]
    config = AttackConfig(kT=0.5, n_steps=12, learning_rate=0.01, seed=0)
    cpu = attack(trained, seeds, energies, config, progress=False)
    device = attack(on_device(trained), seeds, energies, config, progress=False)
    assert device.variance[-1].mean() > 1.5 * device.variance[0].mean()  # it climbs in σ² there too
    np.testing.assert_allclose(device.variance, cpu.variance, rtol=1e-3, atol=1e-9)
    np.testing.assert_allclose(device.positions, cpu.positions, atol=1e-4)  # Å
    np.testing.assert_array_equal(device.stop_step, cpu.stop_step)


def test_committee_md_on_the_device_follows_the_cpu(trained, nh3):
    seeds = nh3[1][:3]
    runs = [langevin_frames(seeds, committee_forces(committee), temperature_K=300.0, timestep_fs=0.5, n_steps=20,
                            interval=10, friction=0.01, seed=0) for committee in (trained, on_device(trained))]
    for cpu_frames, device_frames in zip(*runs):
        assert len(cpu_frames) == len(device_frames) == 2
        for a, b in zip(cpu_frames, device_frames):
            np.testing.assert_allclose(b.positions, a.positions, atol=1e-4)  # Å after 20 steps


def test_calculator_and_checkpoint_on_the_device(trained, nh3, tmp_path):
    cell = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 2, 2))
    cell.positions += np.random.default_rng(0).normal(scale=0.05, size=cell.positions.shape)
    periodic = schnet((13,)).to(torch.float64)
    for committee, atoms, properties in ((copy.deepcopy(trained).to(torch.float64), nh3[1][0], ("energy", "forces")),
                                         (periodic, cell, ("energy", "forces", "stress"))):
        results = []
        for model in (committee, on_device(committee)):
            copy_ = atoms.copy()
            copy_.calc = CommitteeCalculator(model)
            copy_.calc.calculate(copy_, properties)
            results.append(copy_.calc.results)
        for key in ("energies", "forces", "forces_std", *(("stresses",) if "stress" in properties else ())):
            np.testing.assert_allclose(results[1][key], results[0][key], rtol=1e-9, atol=1e-12)
    # a checkpoint written on the device loads on the CPU (and back) with the same predictions
    device = on_device(trained)
    path = device.save(tmp_path / "committee.pt")
    expected = trained.predict(nh3[1])
    for target in ("cpu", DEVICE):
        restored = Committee.load(path, device=target)
        assert restored.device.type == torch.device(target).type
        np.testing.assert_allclose(restored.predict(nh3[1])["energies"], expected["energies"], rtol=1e-5)


def test_mace_committee_on_the_device_follows_the_cpu(nh3):
    pytest.importorskip("mace", reason="mace extra not installed (pip install -e '.[mace]')")
    from advsample.models.mace import MACECommittee

    committee = Committee(MACECommittee(2, species=(1, 7), hidden_irreps="8x0e + 8x1o", num_interactions=1,
                                        r_max=4.0, seed=0)).to(torch.float64)
    cpu, device = committee.predict(nh3[1]), on_device(committee).predict(nh3[1])
    np.testing.assert_allclose(device["energies"], cpu["energies"], rtol=1e-9)
    np.testing.assert_allclose(device["forces"], cpu["forces"], rtol=1e-7, atol=1e-10)


def test_active_learning_rounds_on_the_device(tmp_path, nh3):
    from advsample.loop import ActiveLearning
    from advsample.molecules import relabel_xtb
    from advsample.samplers import make_sampler
    from advsample.select import SelectionConfig
    from advsample.systems.ammonia import XTB_SPEC

    initial, test = relabel_xtb(nh3[0][:10]), relabel_xtb(nh3[1])

    def loop():
        return ActiveLearning(
            tmp_path / "run", on_device(schnet()), XTB_SPEC, initial,
            make_sampler("adversarial", n_steps=8, learning_rate=0.01, snapshot_every=4, n_seeds=4),
            test=test, selection=SelectionConfig(budget=3, min_distance=0.0), kT=0.5,
            train_config=TrainConfig(epochs=15, patience=100), validation_fraction=0.0, seed=0, progress=False,
        )

    records = loop().run(2)
    assert [r.metrics["n_train"] for r in records] == [10, 13, 16]
    assert all(np.isfinite(r.metrics["test"]["force_mae"]) for r in records)
    assert records[-1].committee.device.type == torch.device(DEVICE).type
    # the finished run loads from disk onto the device
    again = loop().run(2)
    assert all(r.resumed for r in again)  # loaded, nothing paid again
    assert again[-1].metrics["reference_calls"] == records[-1].metrics["reference_calls"]
    assert again[-1].committee.device.type == torch.device(DEVICE).type
