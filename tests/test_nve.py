"""NVE energy conservation of committee MD: ASE's velocity Verlet on the CommitteeCalculator.

With forces = −∇E the total energy of velocity Verlet stays within O(dt²) of its start while
kinetic and potential energy exchange; a force that is not the energy's gradient (a sign, a
scale, a missing term) shows up as a drift far above that. Untrained float64 SchNet committees
(smooth, arbitrary surfaces) suffice: conservation is a property of the calculator and the
integrator, not of the fit.
"""
import warnings

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk, molecule
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet

from advsample.calculator import CommitteeCalculator
from advsample.committee import Committee
from advsample.models import SchNetCommittee


def _nve(atoms, species, timestep_fs: float, n_steps: int) -> np.ndarray:
    """[n_steps + 1, 2] total and kinetic energy (eV) along NVE committee MD from 300 K velocities."""
    committee = Committee(SchNetCommittee(n_members=3, species=species, n_features=16, n_interactions=2, cutoff=4.0,
                                          seed=0)).double()
    atoms = atoms.copy()
    atoms.calc = CommitteeCalculator(committee)
    thermalize_momenta(atoms, temperature_K=300.0, rng=np.random.default_rng(0))
    Stationary(atoms)
    energies = []
    dynamics = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    dynamics.attach(lambda: energies.append((atoms.get_total_energy(), atoms.get_kinetic_energy())), interval=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        dynamics.run(n_steps)
    return np.array(energies)


@pytest.mark.parametrize("system", ["ethanol", "Al_crystal"])
def test_committee_md_conserves_energy(system):
    torch.set_num_threads(1)
    if system == "ethanol":  # a molecule: 9 atoms, 0.25 fs
        atoms, species, timestep_fs, bound_eV = molecule("CH3CH2OH"), (1, 6, 8), 0.25, 1e-3
    else:  # a periodic cell: 32 Al atoms (fcc, 8.1 Å cube), 0.5 fs
        atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 2, 2))
        species, timestep_fs, bound_eV = (13,), 0.5, 2e-4
    energies = _nve(atoms, species, timestep_fs, 100)
    total, kinetic = energies[:, 0], energies[:, 1]
    exchanged = np.ptp(kinetic)
    assert exchanged > 0.2  # energy flows between kinetic and potential (> 0.2 eV)...
    assert np.abs(total - total[0]).max() < bound_eV  # ...while the total stays within the bound (measured: 3e-4, 6e-5)


def test_the_energy_error_of_velocity_verlet_is_second_order_in_the_timestep():
    torch.set_num_threads(1)
    crystal = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 2, 2))
    errors = [np.abs(e[:, 0] - e[0, 0]).max() for e in (_nve(crystal, (13,), dt, int(50 / dt)) for dt in (1.0, 0.5))]
    ratio = errors[0] / errors[1]  # the same 50 fs: half the step, a quarter of the error (measured 4.0)
    assert 3.0 < ratio < 5.5, f"energy error ratio {ratio:.2f} for dt 1 fs / 0.5 fs"
