import numpy as np
import pytest
import torch

from advsample.committee import Committee
from advsample.models import MLPCommittee
from advsample.structures import Batch, labels_of


def test_shapes_member_axis_first(surface_2d):
    committee = Committee(MLPCommittee(4, (16,), seed=1))
    batch = Batch.from_atoms(surface_2d.sample(7, seed=0))
    out = committee(batch)
    assert out.energies.shape == (4, 7)
    assert out.forces.shape == (4, 7, 3)
    assert out.energy_variance.shape == (7,) and out.force_variance.shape == (7,)
    assert out.force_variance_per_atom.shape == (7,)
    # members are initialised independently: they disagree before training
    assert float(out.energy_variance.min()) > 0


def test_committee_forces_are_minus_gradient_of_each_member():
    committee = Committee(MLPCommittee(3, (32, 32), seed=2)).to(torch.float64)
    from advsample.surfaces import double_well_2d

    atoms = [double_well_2d().particle([0.3, -0.4]), double_well_2d().particle([-0.8, 0.1])]
    batch = Batch.from_atoms(atoms)
    out = committee(batch)
    step = 1e-6
    for atom in range(2):
        for axis in range(2):
            shift = torch.zeros_like(batch.positions)
            shift[atom, axis] = step
            e_plus = committee(batch, forces=False, positions=batch.positions + shift).energies
            e_minus = committee(batch, forces=False, positions=batch.positions - shift).energies
            numeric = -(e_plus - e_minus)[:, atom] / (2 * step)
            torch.testing.assert_close(out.forces[:, atom, axis], numeric, rtol=1e-6, atol=1e-8)


def test_uncertainty_grows_away_from_the_data(trained_committee, surface_2d):
    committee, train, _ = trained_committee
    left = surface_2d.sample(200, seed=11, max_energy=0.0, region=[(-1.5, -0.3), (-1.2, 1.2)])
    right = surface_2d.sample(200, seed=12, max_energy=0.0, region=[(0.3, 1.5), (-1.2, 1.2)])
    p_left, p_right = committee.predict(left), committee.predict(right)
    _, f_left = labels_of(left)
    left_force_mae = np.abs(p_left["forces_mean"] - f_left)[:, :2].mean()
    print(f"left-well test force MAE {left_force_mae:.3f}; sigma left {p_left['forces_std'].mean():.4f} "
          f"right {p_right['forces_std'].mean():.3f}")
    assert left_force_mae < 0.3  # the fitted well (forces there are O(10))
    assert p_right["forces_std"].mean() >= 10 * p_left["forces_std"].mean()


def test_checkpoint_round_trip_and_wrong_architecture(tmp_path, trained_committee, surface_2d):
    committee, _, _ = trained_committee
    path = committee.save(tmp_path / "committee.pt")
    restored = Committee.load(path, device="cpu")
    points = surface_2d.sample(5, seed=3)
    np.testing.assert_allclose(restored.predict(points)["energies"], committee.predict(points)["energies"], rtol=1e-6)
    other = Committee(MLPCommittee(5, (32, 32), seed=0))
    with pytest.raises(ValueError, match="different model"):
        other.load_checkpoint(path)
    torch.save({"something": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not an advsample committee checkpoint"):
        Committee.load(tmp_path / "foreign.pt")


def test_gather_concatenates_members(surface_2d):
    a, b = Committee(MLPCommittee(2, (8,), seed=0)), Committee(MLPCommittee(3, (8,), seed=1))
    gathered = Committee.gather([a, b])
    points = surface_2d.sample(4, seed=0)
    energies = gathered.predict(points)["energies"]
    assert energies.shape == (5, 4)
    np.testing.assert_allclose(energies[:2], a.predict(points)["energies"], rtol=1e-6)
    np.testing.assert_allclose(energies[2:], b.predict(points)["energies"], rtol=1e-6)
    with pytest.raises(ValueError, match="same model architecture"):
        Committee.gather([a, Committee(MLPCommittee(2, (16,), seed=0))])


def test_wrong_structure_size_is_a_clear_error():
    from ase.build import molecule

    committee = Committee(MLPCommittee(2, (8,)))
    with pytest.raises(ValueError, match="takes structures of 1 atom"):
        committee(Batch.from_atoms([molecule("H2O")]))
