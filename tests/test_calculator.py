import numpy as np
from ase import units
from ase.md.langevin import Langevin
from ase.optimize import BFGS

from advsample.calculator import CommitteeCalculator


def test_calculator_results_and_langevin_md(trained_committee, surface_2d):
    committee, _, _ = trained_committee
    atoms = surface_2d.particle([-0.7, 0.1])
    atoms.calc = CommitteeCalculator(committee)
    prediction = committee.predict([atoms])
    assert atoms.get_potential_energy() == np.float64(prediction["energy_mean"][0]).item()
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
