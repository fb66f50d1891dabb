"""Generic helpers any system uses: dihedral scans, basin MD, barriers from a profile or an NEB path."""
import numpy as np
import pytest
from ase.build import add_adsorbate, fcc100, molecule
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms, FixInternals

from advsample.molecules import (basin_frames, dihedral, dihedral_scan, neb_barrier, profile_barrier, relax,
                                 side_of_bond, xtb_calculator)

HOOH = (2, 0, 1, 3)  # H, O, O, H of ase.build.molecule("H2O2")


def test_dihedral_scan_holds_each_angle_and_relaxes_the_rest():
    start = molecule("H2O2")
    assert side_of_bond(start, 2, 0) == [2]  # the H on the far side of the O–O bond's first O
    angles = [120.0, 60.0, 0.0, -60.0]
    scan = dihedral_scan(start, HOOH, angles, xtb_calculator(), fmax=0.02)
    np.testing.assert_allclose([a.info["dihedral"] for a in scan], angles, atol=0.05)
    assert all(not a.constraints for a in scan)
    calc, free_forces = xtb_calculator(), []
    for atoms in scan:  # relaxed: with the torsion held, no force is left (fmax 0.02 eV/Å)
        atoms.calc = calc
        free = np.linalg.norm(atoms.get_forces(), axis=1).max()
        atoms.set_constraint(FixInternals(dihedrals_deg=[[atoms.get_dihedral(*HOOH), list(HOOH)]]))
        held = np.linalg.norm(atoms.get_forces(), axis=1).max()
        atoms.constraints = []
        assert held < 0.03
        free_forces.append(free)
    assert max(free_forces) > 0.03  # off the stationary points, the force left is the torsion's own
    energies = [a.get_potential_energy() for a in scan]
    assert int(np.argmax(energies)) == 2  # cis (0°, H eclipsed) is the top of the profile


def test_basin_frames_stay_in_the_basin():
    start = molecule("H2O2")
    phi0 = dihedral(start, HOOH)
    frames = basin_frames(start, 5, lambda a: dihedral(a, HOOH), phi0, 20.0, seed=1, calculator=xtb_calculator(),
                          period=360.0, interval=5, equilibration=20)
    values = np.array([f.info["collective_variable"] for f in frames])
    assert len(frames) == 5 and np.all(np.abs((values - phi0 + 180) % 360 - 180) <= 20.0)
    again = basin_frames(start, 5, lambda a: dihedral(a, HOOH), phi0, 20.0, seed=1, calculator=xtb_calculator(),
                         period=360.0, interval=5, equilibration=20)
    np.testing.assert_allclose([f.positions for f in frames], [f.positions for f in again])  # seeded
    with pytest.raises(RuntimeError, match="frames near"):
        basin_frames(start, 5, lambda a: dihedral(a, HOOH), phi0 + 180.0, 1.0, calculator=xtb_calculator(),
                     period=360.0, interval=5, equilibration=5, max_steps=30)


def test_profile_barrier():
    assert profile_barrier([1.0, 1.5, 3.0, 0.5]) == pytest.approx(2.0)
    assert profile_barrier([1.0, 1.5, 3.0, 0.5], end=1) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least 2"):
        profile_barrier([1.0])


def _adatom(shift: float = 0.0):
    slab = fcc100("Al", size=(2, 2, 3))
    add_adsorbate(slab, "Au", 1.7, "hollow")
    slab.center(axis=2, vacuum=4.0)
    slab.positions[-1, 0] += shift * slab.cell[0, 0]
    slab.set_constraint(FixAtoms(mask=[atom.tag > 1 for atom in slab]))
    relaxed = relax(slab, EMT(), fmax=0.05, steps=300)
    relaxed.calc = None
    return relaxed


def test_neb_barrier_of_the_adatom_hop_is_the_known_one():
    """Au on Al(100), hollow to hollow with EMT: 0.374 eV (ASE's NEB tutorial system, 3 images)."""
    initial, final = _adatom(), _adatom(0.5)
    barrier, images = neb_barrier(initial, final, EMT(), n_images=3)
    assert barrier == pytest.approx(0.374, abs=0.01)
    assert len(images) == 5 and max(i.info["energy"] for i in images) - images[0].info["energy"] == barrier
    assert images[2].constraints  # the fixed layers stay fixed along the band
    assert all(image.info["neb_converged"] for image in images)
    # an unconverged band (a committee's, often) still gives its barrier, flagged on every image
    short_barrier, short = neb_barrier(initial, final, EMT(), n_images=3, steps=1)
    assert np.isfinite(short_barrier) and not any(image.info["neb_converged"] for image in short)
    with pytest.raises(RuntimeError, match="NEB did not reach"):
        neb_barrier(initial, final, EMT(), n_images=3, steps=1, unconverged="raise")
