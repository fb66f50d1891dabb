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
