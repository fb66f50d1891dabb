"""Ammonia helpers and the GFN2-xTB reference."""
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.calculator import CalculationFailed
from tblite.interface import Calculator as TBLiteInterface

from advsample import molecules
from advsample.molecules import XTBError, relabel_xtb, xtb_calculator, xtb_label
from advsample.systems.ammonia import (
    ammonia_dataset,
    ammonia_splits,
    inversion_barrier,
    inversion_path,
    umbrella_height,
    umbrella_heights,
)
from advsample.structures import labels_of

BOHR = 0.52917721090380  # Å
HARTREE = 27.211386245988  # eV


def constructed_nh3(h, nh=1.0):
    r = np.sqrt(nh**2 - h**2)
    angles = np.deg2rad([0, 120, 240])
    return Atoms("NH3", positions=[[0, 0, h]] + [[r * np.cos(a), r * np.sin(a), 0.0] for a in angles])


def test_dataset_is_packaged_and_pyramidal():
    data = ammonia_dataset()
    assert len(data) == 138
    assert all(a.get_chemical_formula() == "H3N" for a in data)
    assert "geom_id" in data[0].info and data[0].get_forces().shape == (4, 3)
    assert np.abs(umbrella_heights(data)).min() > 0.19


def test_umbrella_height_sign_and_value():
    assert umbrella_height(constructed_nh3(0.38)) == pytest.approx(0.38)
    assert umbrella_height(constructed_nh3(-0.2)) == pytest.approx(-0.2)
    assert umbrella_height(constructed_nh3(0.0)) == pytest.approx(0.0, abs=1e-12)
    # invariant to rigid motion and to where N sits in the atom order
    atoms = constructed_nh3(0.3)
    atoms.rotate(37, (1, 2, 3))
    atoms.translate((4.0, -2.0, 1.0))
    reordered = atoms[[1, 2, 0, 3]]
    assert umbrella_height(reordered) == pytest.approx(0.3)
    # swapping two H flips the handedness of the plane's normal
    assert umbrella_height(atoms[[0, 2, 1, 3]]) == pytest.approx(-0.3)
    # vectorised over structures and over a [B, 4, 3] array
    heights = umbrella_heights([constructed_nh3(h) for h in (-0.3, 0.1, 0.35)])
    np.testing.assert_allclose(heights, [-0.3, 0.1, 0.35])
    stacked = np.stack([constructed_nh3(h).positions for h in (-0.3, 0.1)])
    np.testing.assert_allclose(umbrella_heights(stacked), [-0.3, 0.1])
    with pytest.raises(ValueError, match="not NH3"):
        umbrella_heights([molecule("CH4")])


def test_xtb_labels_agree_with_direct_tblite():
    atoms_list = ammonia_dataset()[:3]
    labeled_list = relabel_xtb(atoms_list)
    energies, forces = labels_of(labeled_list)
    for k, atoms in enumerate(atoms_list):
        direct = TBLiteInterface("GFN2-xTB", atoms.numbers, atoms.positions / BOHR)
        direct.set("verbosity", 0)
        result = direct.singlepoint()
        assert energies[k] == pytest.approx(result.get("energy") * HARTREE, abs=1e-6)
        np.testing.assert_allclose(
            forces[4 * k : 4 * k + 4], -result.get("gradient") * HARTREE / BOHR, atol=1e-5
        )
        assert labeled_list[k].info["reference"] == "GFN2-xTB"
        assert "energy_kcal_mol" not in labeled_list[k].info  # the DFT label does not travel
    assert np.all(energies < -100)  # absolute xTB energies in eV


def test_xtb_failure_is_explicit():
    assert issubclass(XTBError, CalculationFailed)
    with pytest.raises(XTBError, match="GFN2-xTB failed for H3N.*SCF not converged"):
        xtb_label(molecule("NH3"), xtb_calculator(max_iterations=2))
    bad = molecule("NH3")
    bad.positions[1] = bad.positions[0]
    with pytest.raises(XTBError, match="structure 1: GFN2-xTB failed"):
        relabel_xtb([molecule("NH3"), bad])


def test_inversion_path_is_symmetric_through_planar():
    path = inversion_path(5)
    heights = umbrella_heights(path)
    np.testing.assert_allclose(heights, np.linspace(heights[0], -heights[0], 5), atol=1e-6)
    assert heights[0] == pytest.approx(-0.367, abs=0.01)  # the xTB minimum
    assert heights[2] == pytest.approx(0.0, abs=1e-9)
    assert not path[0].constraints
    energies, _ = labels_of(relabel_xtb(path))
    relative = (energies - energies.min()) / molecules.KCAL_PER_MOL
    assert relative[2] == pytest.approx(relative.max())  # planar is the top of the path
    assert relative[0] == pytest.approx(relative[4], abs=1e-4)


def test_ammonia_splits_fixed_and_disjoint():
    train, test = ammonia_splits(seed=0, n_test=20, n_path=3)
    assert len(train) == 118 and len(test) == 23
    ids_train = {a.info["geom_id"] for a in train}
    ids_test = {a.info["geom_id"] for a in test if a.info["subset"] == "pyramidal_md"}
    assert len(ids_test) == 20 and not ids_train & ids_test
    assert [a.info["subset"] for a in test[-3:]] == ["inversion_path"] * 3
    labels_of(train + test)  # every structure labeled
    again, _ = ammonia_splits(seed=0, n_test=20, n_path=0)
    assert [a.info["geom_id"] for a in again] == [a.info["geom_id"] for a in train]


def test_xtb_inversion_barrier():
    barrier, minimum, planar = inversion_barrier(xtb_calculator(), return_structures=True)
    assert 5.0 < barrier < 7.0  # GFN2-xTB: 6.1 kcal/mol
    assert abs(umbrella_height(planar)) < 1e-6
    assert abs(umbrella_height(minimum)) > 0.3


def test_barrier_runs_with_a_committee_calculator():
    from advsample.calculator import CommitteeCalculator
    from advsample.committee import Committee
    from advsample.models import SchNetCommittee

    committee = Committee(SchNetCommittee(n_members=2, n_features=8, n_interactions=1, seed=0)).double()
    calculator = CommitteeCalculator(committee)
    barrier, minimum, planar = inversion_barrier(calculator, fmax=0.05, steps=200, return_structures=True)
    # converged: the minimum is relaxed, the planar geometry is relaxed within the plane
    assert np.abs(minimum.get_forces()).max() <= 0.05
    assert np.linalg.norm(planar.get_forces()[:, :2], axis=1).max() <= 0.05
    assert np.abs(planar.positions[:, 2] - planar.positions[0, 2]).max() < 1e-8
    assert barrier == pytest.approx((planar.get_potential_energy() - minimum.get_potential_energy()) / molecules.KCAL_PER_MOL)
    with pytest.raises(RuntimeError, match="did not reach fmax"):  # and an unconverged one says so
        inversion_barrier(calculator, fmax=0.05, steps=2)