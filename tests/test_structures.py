import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.constraints import FixAtoms, FixCartesian

from advsample.structures import Batch, labeled, labels_of


def test_batch_round_trip_structures_of_different_sizes():
    water, ammonia = molecule("H2O"), molecule("NH3")
    ammonia.set_constraint(FixAtoms([0]))
    crystal = Atoms("Cu", positions=[[0, 0, 0]], cell=np.eye(3) * 3.6, pbc=True)
    batch = Batch.from_atoms([water, ammonia, crystal])
    assert batch.positions.shape == (8, 3)
    assert batch.structure_index.tolist() == [0, 0, 0, 1, 1, 1, 1, 2]
    assert batch.n_atoms.tolist() == [3, 4, 1]
    assert batch.cells.shape == (3, 3, 3) and batch.pbc[2].all() and not batch.pbc[0].any()
    assert batch.fixed[3].all() and not batch.fixed[4].any()
    back = batch.to_atoms()
    for original, restored in zip([water, ammonia, crystal], back):
        assert (original.numbers == restored.numbers).all()
        np.testing.assert_allclose(original.positions, restored.positions)
        np.testing.assert_allclose(original.cell.array, restored.cell.array)


def test_batch_moves_positions_and_keeps_template_constraints():
    atoms = Atoms("H", positions=[[0.5, 0.1, 0]], constraint=FixCartesian(0, mask=[False, False, True]))
    batch = Batch.from_atoms([atoms])
    assert batch.fixed.tolist() == [[False, False, True]]
    moved = batch.to_atoms(template=[atoms], positions=batch.positions + 1.0)[0]
    np.testing.assert_allclose(moved.positions, [[1.5, 1.1, 1.0]])
    assert len(moved.constraints) == 1


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="empty list"):
        Batch.from_atoms([])
    with pytest.raises(ValueError, match="NaN"):
        Batch.from_atoms([Atoms("H", positions=[[np.nan, 0, 0]])])
    batch = Batch.from_atoms([molecule("H2O")])
    with pytest.raises(ValueError, match="shape"):
        batch.with_positions(torch.zeros(2, 3))


def test_labels_are_checked():
    water = molecule("H2O")
    with pytest.raises(ValueError, match="empty training set"):
        labels_of([])
    with pytest.raises(ValueError, match="no energy/forces label"):
        labels_of([water])
    with pytest.raises(ValueError, match="shape"):
        labeled(water, 1.0, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        labels_of([labeled(water, np.nan, np.zeros((3, 3)))])
    energies, forces = labels_of([labeled(water, -1.5, np.ones((3, 3)))])
    assert energies.tolist() == [-1.5] and forces.shape == (3, 3)
