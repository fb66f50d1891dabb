"""Bond scan: a known Morse barrier recovered along each bond, the minimum image across a cell face, bad input."""
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from advsample.bond_scan import bond_scan, covalent_bonds


class MorseCommittee:
    """Members with Morse bonds of depths ``depths`` (one per member) between each H and its heavy atom, at the
    bond lengths of ``reference``: E_m = Σ D_m (1 − exp(−a (r − r_e)))², minimum image."""

    def __init__(self, reference: Atoms, depths=(4.0, 5.0), a=1.8):
        self.depths, self.a = np.asarray(depths), a
        self.pairs = [(i, j) for i, j in covalent_bonds(reference)]
        self.r_e = np.array([reference.get_distance(i, j, mic=True) for i, j in self.pairs])

    def predict(self, frames, batch_size=512):
        r = np.array([[f.get_distance(i, j, mic=True) for i, j in self.pairs] for f in frames])  # [B, K]
        shape = ((1 - np.exp(-self.a * (r - self.r_e))) ** 2).sum(axis=1)  # [B]
        return {"energies": self.depths[:, None] * shape[None, :]}  # [M, B]


def test_scan_recovers_the_morse_barrier_of_each_bond():
    methane = molecule("CH4")
    committee = MorseCommittee(methane)
    scan = bond_scan(committee, methane, max_stretch_A=2.0, step_A=0.1)
    assert [methane[int(i)].symbol + methane[int(j)].symbol for i, j in scan.bonds] == ["HC"] * 4  # H moved, H–H not bonds
    assert np.allclose(scan.r0_A, methane.get_distance(0, 1))
    assert scan.energies.shape == (2, 4, 21) and np.allclose(scan.energies[:, :, 0], 0.0)
    expected = np.mean(committee.depths) * (1 - np.exp(-committee.a * 2.0)) ** 2  # the mean member at 2 Å
    assert np.allclose(scan.barrier, expected, rtol=1e-6)
    assert np.allclose(scan.barrier_stretch_A, 2.0)  # a Morse well only rises along the stretch
    assert np.allclose(scan.energies[1, :, 1:] / scan.energies[0, :, 1:], 5.0 / 4.0)  # each member its own depth
    deeper = bond_scan(MorseCommittee(methane, depths=(8.0, 8.0)), methane)
    assert np.all(deeper.barrier > scan.barrier)  # a deeper well, a higher barrier
    assert scan.weakest(hydrogen_only=True) in range(4) and len(scan.rows()) == 4


def test_scan_follows_the_minimum_image_and_the_mask():
    cell = Atoms("OH", positions=[[0.2, 3.0, 3.0], [5.3, 3.0, 3.0]], cell=[6.0, 6.0, 6.0], pbc=True)  # 0.9 Å apart
    bonds = covalent_bonds(cell)
    assert bonds.tolist() == [[1, 0]]  # the H moves, across the cell face
    committee = MorseCommittee(cell, depths=(3.0,))
    scan = bond_scan(committee, cell, max_stretch_A=1.0, step_A=0.5)
    assert scan.r0_A[0] == pytest.approx(0.9)
    stretched = cell.copy()
    stretched.positions[1, 0] -= 1.0  # away from O through the minimum image: -x
    assert scan.barrier[0] == pytest.approx(committee.predict([stretched])["energies"][0, 0])
    assert covalent_bonds(cell, mask=np.array([True, False])).shape == (0, 2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_stretch_A=0.0), "step_A"),
    (dict(step_A=3.0), "step_A"),
    (dict(bonds=[[0, 0]]), "two different atom indices"),
    (dict(bonds=[[0, 9]]), "two different atom indices"),
    (dict(mask=np.array([True])), "mask must be"),
])
def test_bad_scan_input_is_named(kwargs, message):
    methane = molecule("CH4")
    with pytest.raises(ValueError, match=message):
        bond_scan(MorseCommittee(methane), methane, **kwargs)


def test_survival_is_transition_state_theory_over_the_bonds():
    """Eyring's rate per bond, kT/h·exp(−B/kT), summed over the bonds; survival exp(−t Σ rate): a deeper well keeps
    more, a hotter run less, no time keeps everything."""
    from advsample.bond_scan import PLANCK_eV_fs

    methane = molecule("CH4")
    scan = bond_scan(MorseCommittee(methane, depths=(0.3, 0.3)), methane)  # shallow: 4 bonds of B = 0.3·(1−e^−3.6)²
    kT = 0.05
    barrier = 0.3 * (1 - np.exp(-1.8 * 2.0)) ** 2
    rate = kT / PLANCK_eV_fs * np.exp(-barrier / kT)
    assert np.allclose(scan.escape_rates(kT), rate)
    assert scan.survival(kT, 1000.0) == pytest.approx(np.exp(-1000.0 * 4 * rate))
    assert scan.survival(kT, 0.0) == 1.0
    assert scan.survival(2 * kT, 1000.0) < scan.survival(kT, 1000.0)
    deeper = bond_scan(MorseCommittee(methane, depths=(0.6, 0.6)), methane)
    assert deeper.survival(kT, 1000.0) > scan.survival(kT, 1000.0)
    assert np.allclose(scan.escape_rates(kT, prefactor_per_fs=1.0), np.exp(-barrier / kT))
    for bad in (dict(kT_eV=0.0, time_fs=1.0), dict(kT_eV=kT, time_fs=-1.0)):
        with pytest.raises(ValueError, match="kT_eV|time_fs"):
            scan.survival(**bad)


def test_a_pull_into_another_atom_stops_before_it():
    """O–H with a third atom 1.5 Å beyond the H on the bond's line: the pull stops before the H comes within
    min_distance_A of it; energies beyond are NaN, the barrier is over the frames before."""
    line = Atoms("OHAr", positions=[[0.0, 0.0, 0.0], [0.97, 0.0, 0.0], [2.47, 0.0, 0.0]])
    committee = MorseCommittee(line, depths=(3.0,))
    scan = bond_scan(committee, line, bonds=[[1, 0]], max_stretch_A=2.0, step_A=0.1, min_distance_A=0.5)
    assert scan.scanned_to_A[0] == pytest.approx(1.0)  # at 1.1 Å the H would be 0.4 Å from the Ar
    assert np.isnan(scan.energies[0, 0, 11:]).all() and np.isfinite(scan.energies[0, 0, :11]).all()
    assert scan.barrier[0] == pytest.approx(scan.energies[0, 0, 10]) and scan.barrier_stretch_A[0] == pytest.approx(1.0)
    assert scan.rows()[0]["scanned_to_A"] == pytest.approx(1.0)
    free = bond_scan(MorseCommittee(line[:2], depths=(3.0,)), line[:2], max_stretch_A=2.0, step_A=0.1)  # the whole 2 Å
    assert free.scanned_to_A[0] == pytest.approx(2.0) and np.isfinite(free.energies).all()
