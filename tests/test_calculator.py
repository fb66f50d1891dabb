import numpy as np
import pytest
from ase import units
from ase.md.langevin import Langevin
from ase.optimize import BFGS

from advsample.calculator import CommitteeCalculator


def test_calculator_results_and_langevin_md(trained_committee, surface_2d):
    committee, _, _ = trained_committee
    atoms = surface_2d.particle([-0.7, 0.1])
    atoms.calc = CommitteeCalculator(committee)
    prediction = committee.predict([atoms])
    # float32 means summed in another order (torch vs numpy): equal to rounding
    assert atoms.get_potential_energy() == pytest.approx(float(prediction["energy_mean"][0]), rel=1e-6, abs=1e-6)
    assert atoms.calc.get_property("forces_std").shape == (1,)
    assert atoms.calc.get_property("energies").shape == (5,)
    dynamics = Langevin(
        atoms, timestep=1.0 * units.fs, temperature_K=300, friction=0.02, fixcm=False, rng=np.random.default_rng(0)
    )
    dynamics.run(100)
    assert np.all(np.isfinite(atoms.positions))
    assert atoms.positions[0, 2] == 0.0  # z is held by the constraint


def test_optimizer_finds_the_left_minimum(trained_committee, surface_2d):
    committee, _, _ = trained_committee
    atoms = surface_2d.particle([-0.5, 0.3])
    atoms.calc = CommitteeCalculator(committee)
    BFGS(atoms, logfile=None).run(fmax=0.01, steps=200)
    x, y = atoms.positions[0, :2]
    assert abs(x - (-0.755)) < 0.05  # y is a flat quartic direction: judge it by energy
    true_minimum = surface_2d.energy(np.array([-0.755, 0.0]))
    assert surface_2d.energy(np.array([x, y])) - true_minimum < 0.02


def test_fixinternals_relaxation_keeps_the_dihedral():
    """ASE applies FixInternals itself; the committee sees a constraint-free copy (as ASE calculators do)."""
    from ase import Atoms
    from ase.constraints import FixAtoms, FixInternals

    from advsample.committee import Committee
    from advsample.models.schnet import SchNetCommittee

    committee = Committee(SchNetCommittee(n_members=2, species=(1, 8), n_features=8, n_interactions=1, seed=0))
    hooh = Atoms("HOOH", positions=[[0.9, 0.3, 0.0], [0.0, 0.7, 0.0], [0.0, -0.7, 0.0], [-0.6, -1.0, 0.7]])
    dihedral = hooh.get_dihedral(0, 1, 2, 3)
    hooh.set_constraint([FixInternals(dihedrals_deg=[[dihedral, [0, 1, 2, 3]]]), FixAtoms([1])])
    hooh.calc = CommitteeCalculator(committee)
    start_energy, start_positions = hooh.get_potential_energy(), hooh.positions.copy()
    BFGS(hooh, maxstep=0.05, logfile=None).run(fmax=0.05, steps=15)
    assert hooh.get_potential_energy() < start_energy  # it relaxed ...
    assert abs(hooh.get_dihedral(0, 1, 2, 3) - dihedral) < 0.01  # ... about the fixed dihedral (degrees)
    assert np.array_equal(hooh.positions[1], start_positions[1])
    free = Atoms(hooh.numbers, positions=start_positions)
    free.calc = CommitteeCalculator(committee)
    BFGS(free, maxstep=0.05, logfile=None).run(fmax=0.05, steps=15)
    assert abs(free.get_dihedral(0, 1, 2, 3) - dihedral) > 1.0  # unconstrained, the same relaxation turns it


def test_stress_is_the_strain_derivative_of_the_energy():
    """σ = (1/V) ∂E/∂ε (ASE's convention) against central differences, mean and per member."""
    from ase.build import bulk
    from ase.calculators.fd import calculate_numerical_stress

    from advsample.committee import Committee
    from advsample.models.schnet import SchNetCommittee

    committee = Committee(SchNetCommittee(n_members=3, species=(13,), n_features=8, n_interactions=2, seed=1)).double()
    atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 2, 2))
    atoms.set_cell(atoms.cell.array + [[0.0, 0.3, 0.1], [0.2, 0.0, -0.1], [0.1, 0.2, 0.0]], scale_atoms=True)
    atoms.rattle(0.1, seed=0)
    atoms.calc = CommitteeCalculator(committee)
    stress = atoms.get_stress()
    numerical = calculate_numerical_stress(atoms, eps=1e-5)
    assert np.abs(stress).max() > 1e-3  # a rattled, sheared cell is not at zero stress
    assert np.allclose(stress, numerical, atol=1e-6, rtol=1e-4)

    # each member's stress, and so the committee spread, from its own energy
    def member_energies(strain):
        strained = atoms.copy()
        strained.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
        strained.calc = CommitteeCalculator(committee)
        return strained.calc.get_property("energies", strained)

    eps, volume = 1e-5, atoms.get_volume()
    members = np.zeros((3, 6))
    for k, (a, b) in enumerate([(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]):
        strain = np.zeros((3, 3))
        strain[a, b] = strain[b, a] = eps / (1 if a == b else 2)
        members[:, k] = (member_energies(strain) - member_energies(-strain)) / (2 * eps * volume)
    assert np.allclose(atoms.calc.get_property("stresses", atoms), members, atol=1e-6, rtol=1e-4)
    assert np.allclose(atoms.calc.get_property("stress_std", atoms), members.std(0), atol=1e-6)


def test_stress_of_a_molecule_is_refused():
    from ase import Atoms
    from ase.calculators.calculator import PropertyNotImplementedError

    from advsample.committee import Committee
    from advsample.models.schnet import SchNetCommittee

    committee = Committee(SchNetCommittee(n_members=2, n_features=8, n_interactions=1, seed=0))
    molecule = Atoms("NH", positions=[[0, 0, 0], [1.0, 0, 0]])
    molecule.calc = CommitteeCalculator(committee)
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        molecule.get_stress()
