import numpy as np
import pytest
from ase.build import molecule
from ase.io import read

from advsample.attack import AttackConfig, attack
from advsample.committee import Committee
from advsample.models import MLPCommittee
from advsample.structures import labels_of


@pytest.fixture(scope="module")
def attack_inputs(trained_committee):
    committee, train, _ = trained_committee
    energies, _ = labels_of(train)
    return committee, train[:48], energies


def test_energy_grows_with_kT_and_uncertainty_rises(attack_inputs, surface_2d):
    committee, seeds, energies = attack_inputs
    final_energy = {}
    for kT in (0.3, 1.0, 5.0):
        result = attack(committee, seeds, energies, AttackConfig(kT=kT, n_steps=60, learning_rate=0.02), progress=False)
        final = result.final()
        final_energy[kT] = surface_2d.energy(surface_2d.coordinates(final)).mean()
        ratio = result.variance[-1].mean() / result.variance[0].mean()
        assert ratio > (10 if kT >= 1.0 else 1.5), f"kT={kT}: final/initial σ² = {ratio:.1f}"
    assert final_energy[0.3] < final_energy[1.0] < final_energy[5.0]


def test_fixed_coordinates_do_not_move_and_steps_are_recorded(attack_inputs, tmp_path):
    committee, seeds, energies = attack_inputs
    result = attack(committee, seeds[:5], energies, AttackConfig(n_steps=10, max_displacement=0.05), progress=False)
    assert result.positions.shape == (11, 5, 3)
    assert result.variance.shape == result.energy_mean.shape == result.log_score.shape == (11, 5)
    assert np.all(result.positions[:, :, 2] == 0.0)  # z is fixed by the toy's constraint
    start = np.array([a.positions[0] for a in seeds[:5]])
    assert np.linalg.norm(result.positions[-1] - start, axis=-1).max() <= 0.05 + 1e-6  # float32
    frames = result.trajectory(0)
    assert len(frames) == 11 and frames[3].info["attack_step"] == 3
    snapshots = result.snapshots(every=5)
    assert sorted({a.info["attack_step"] for a in snapshots}) == [5, 10]
    path = result.write(tmp_path / "attack.extxyz")
    assert len(read(path, ":")) == 55


def test_seed_with_colliding_atoms_is_stopped_and_recorded():
    committee = Committee(MLPCommittee(3, (16,), n_atoms=2, input_axes=(0, 1, 2), seed=0))
    near, far = molecule("H2"), molecule("H2")
    near.positions[1] = near.positions[0] + [0.0, 0.0, 0.55]  # will be pushed below 0.5 Å
    result = attack(committee, [near, far], [0.0, 1.0], AttackConfig(n_steps=40, learning_rate=0.05, min_distance=0.5), progress=False)
    stopped = [b for b in range(2) if result.stop_step[b] >= 0]
    for b in stopped:
        assert "closer than" in result.stop_reason[b]
        assert not result.active[result.stop_step[b]:, b].any()
        last = result.trajectory(b)[-1]
        assert last.get_distance(0, 1) >= 0.5
    # a stopped seed never moves again
    for b in stopped:
        np.testing.assert_allclose(result.positions[-1][result.structure_index == b], result.positions[result.stop_step[b]][result.structure_index == b])


def test_bad_attack_settings():
    with pytest.raises(ValueError, match="kT must be positive"):
        AttackConfig(kT=0)
    with pytest.raises(ValueError, match="uncertainty"):
        AttackConfig(uncertainty="entropy")
    with pytest.raises(ValueError, match="at least one seed"):
        attack(Committee(MLPCommittee(2, (8,))), [], [0.0])
