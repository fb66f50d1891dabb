"""Bond scan: how much energy a committee puts against pulling each bond apart.

NN-MD of host–guest cells fails mostly by a guest's hydrogen flying off ("atom isolated") or the
guest breaking up. Training data from MD near the minimum never hold a stretched bond, so a
committee may keep no barrier there. The scan measures it without a label: for each bond
(i, j) of a structure, atom i (the lighter; ties: the higher index) is moved alone along the
j→i direction (minimum image) by 0, ``step_A``, …, ``max_stretch_A`` Å, and the committee
evaluates every frame in one batch. The **barrier** of a bond is the largest rise of the
committee's mean energy along its scan; a low barrier says MD can break the bond with that much
energy in the stretch. Bonds are the pairs closer than ``scale`` × the sum of ASE's natural
(covalent) radii, H–H excluded, among the atoms ``mask`` selects (e.g. the guests of a cell).

This is not the attack: it follows one fixed, physically chosen coordinate per bond and needs
only the committee (no reference calls, no gradients), ~1 s per committee on 17 bonds × 21 frames.
Shapes: K bonds, S stretches, M members.

From the barriers, :meth:`BondScan.survival` estimates the chance that MD at ``kT_eV`` keeps every
scanned bond for ``time_fs``: transition-state theory's rate per bond, ν·exp(−barrier/kT) with
ν = kT/h (Eyring's prefactor, no fitted constant), summed over the bonds, survival exp(−t·Σ rate).
The scan is a frozen one-atom coordinate, not a relaxed path, so the estimate ranks committees and
bonds; it is not a calibrated probability.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.neighborlist import natural_cutoffs, neighbor_list

PLANCK_eV_fs = 4.135667696  # h in eV·fs (CODATA 2018: 4.135667696e-15 eV·s)


@dataclass
class BondScan:
    """One structure's bond scan (:func:`bond_scan`): ``bonds`` [K, 2] (moved atom, anchor), ``r0_A`` [K] the
    bond lengths, ``stretch_A`` [S] the displacements, ``energies`` [M, K, S] every member's energy minus its
    energy of the unstretched structure, ``barrier`` [K] the largest rise of the members' mean along each scan,
    ``barrier_stretch_A`` [K] where it is reached, ``moved_numbers`` [K] the moved atoms' atomic numbers,
    ``symbols`` [K] e.g. ``"H41-C36"``, ``scanned_to_A`` [K] the longest stretch evaluated (a pull that would put
    the moved atom closer than ``min_distance_A`` to another atom stops there; ``energies`` are NaN beyond it)."""

    bonds: np.ndarray
    r0_A: np.ndarray
    stretch_A: np.ndarray
    energies: np.ndarray
    barrier: np.ndarray
    barrier_stretch_A: np.ndarray
    moved_numbers: np.ndarray
    symbols: list[str]
    scanned_to_A: np.ndarray

    def weakest(self, hydrogen_only: bool = False) -> int:
        """Index of the bond with the lowest barrier (``hydrogen_only``: among bonds that move an H)."""
        if len(self.bonds) == 0:
            raise ValueError("no bond was scanned")
        barrier = self.barrier.copy()
        if hydrogen_only:
            barrier[self.moved_numbers != 1] = np.inf
            if not np.isfinite(barrier).any():
                raise ValueError("no scanned bond moves a hydrogen")
        return int(np.argmin(barrier))

    def escape_rates(self, kT_eV: float, prefactor_per_fs: float | None = None) -> np.ndarray:
        """[K] each bond's transition-state breaking rate per fs, ν·exp(−barrier/kT) (``prefactor_per_fs`` ν;
        None: kT/h). The barrier must be in eV (the committee's energy unit)."""
        if kT_eV <= 0:
            raise ValueError(f"kT_eV must be positive, got {kT_eV}")
        nu = kT_eV / PLANCK_eV_fs if prefactor_per_fs is None else prefactor_per_fs
        if nu <= 0:
            raise ValueError(f"prefactor_per_fs must be positive, got {prefactor_per_fs}")
        return nu * np.exp(-np.maximum(self.barrier, 0.0) / kT_eV)

    def survival(self, kT_eV: float, time_fs: float, prefactor_per_fs: float | None = None) -> float:
        """The estimated chance that no scanned bond breaks in ``time_fs`` of MD at ``kT_eV``:
        exp(−time · Σ :meth:`escape_rates`) (1 when no bond was scanned)."""
        if time_fs < 0:
            raise ValueError(f"time_fs must be >= 0, got {time_fs}")
        return float(np.exp(-time_fs * self.escape_rates(kT_eV, prefactor_per_fs).sum()))

    def rows(self) -> list[dict]:
        """One dict per bond: atoms, length, barrier and where (energy unit, Å)."""
        return [{"bond": s, "moved": int(i), "anchor": int(j), "r0_A": float(r), "barrier": float(b),
                 "at_stretch_A": float(x), "scanned_to_A": float(t)}
                for s, (i, j), r, b, x, t in zip(self.symbols, self.bonds, self.r0_A, self.barrier, self.barrier_stretch_A,
                                                 self.scanned_to_A)]


def covalent_bonds(atoms: Atoms, mask: np.ndarray | None = None, scale: float = 1.2) -> np.ndarray:
    """[K, 2] bonds (moved, anchor) among the atoms of ``mask`` ([N] bool; None: all): pairs closer than
    ``scale`` × the sum of ASE's natural cutoffs (covalent radii), minimum image, H–H excluded. The moved atom
    is the lighter one (ties: the higher index)."""
    mask = np.ones(len(atoms), bool) if mask is None else np.asarray(mask, bool)
    if mask.shape != (len(atoms),):
        raise ValueError(f"mask must be [N] = [{len(atoms)}] booleans, got shape {mask.shape}")
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    i, j = neighbor_list("ij", atoms, [scale * c for c in natural_cutoffs(atoms)])
    keep = (i < j) & mask[i] & mask[j] & ~((atoms.numbers[i] == 1) & (atoms.numbers[j] == 1))
    masses = atoms.get_masses()
    bonds = []
    for a, b in zip(i[keep], j[keep]):
        lighter_a = masses[a] < masses[b] or (masses[a] == masses[b] and a > b)
        bonds.append((a, b) if lighter_a else (b, a))
    return np.array(sorted(set(bonds)), dtype=int).reshape(-1, 2)


def stretched(atoms: Atoms, moved: int, anchor: int, stretch_A: float) -> Atoms:
    """A copy of ``atoms`` (no calculator) with atom ``moved`` alone pulled ``stretch_A`` Å further from ``anchor``
    along their bond (minimum image); constraints are not applied to the move."""
    vector = atoms.get_distance(anchor, moved, mic=True, vector=True)
    copy = atoms.copy()
    copy.calc = None
    positions = copy.positions
    positions[moved] += stretch_A * vector / np.linalg.norm(vector)
    copy.set_positions(positions, apply_constraint=False)
    return copy


def bond_scan(committee, atoms: Atoms, bonds: np.ndarray | None = None, mask: np.ndarray | None = None,
              max_stretch_A: float = 2.0, step_A: float = 0.1, batch_size: int = 512,
              min_distance_A: float = 0.5) -> BondScan:
    """Scan each bond of ``atoms`` (``bonds`` [K, 2] as :func:`covalent_bonds`; None: those of ``mask``) by
    moving its first atom alone along the anchor→atom direction from 0 to ``max_stretch_A`` Å in ``step_A``
    steps, every frame evaluated by ``committee.predict`` (energies [M, B]) in one batch. A bond's scan stops
    before the first frame that puts the moved atom closer than ``min_distance_A`` Å to any other atom (minimum
    image): pulling a framework O along its Si–O bond can run it into a neighbour, a frame no model should be
    asked about; the barrier is then over the frames before it (``scanned_to_A``)."""
    if max_stretch_A <= 0 or step_A <= 0 or step_A > max_stretch_A:
        raise ValueError(f"need 0 < step_A <= max_stretch_A, got step_A={step_A}, max_stretch_A={max_stretch_A}")
    bonds = covalent_bonds(atoms, mask) if bonds is None else np.asarray(bonds, int).reshape(-1, 2)
    if len(bonds) and (bonds.min() < 0 or bonds.max() >= len(atoms) or (bonds[:, 0] == bonds[:, 1]).any()):
        raise ValueError(f"bonds must be pairs of two different atom indices below {len(atoms)}")
    stretch = np.arange(0.0, max_stretch_A + 1e-9, step_A)
    start = atoms.copy()
    start.calc = None
    frames, r0, n_scanned = [start], [], []
    for moved, anchor in bonds:
        r0.append(float(atoms.get_distance(anchor, moved, mic=True)))
        others = np.delete(np.arange(len(atoms)), moved)
        kept = 0
        for x in stretch[1:]:
            frame = stretched(start, moved, anchor, x)
            if len(others) and frame.get_distances(moved, others, mic=True).min() < min_distance_A:
                break
            frames.append(frame)
            kept += 1
        n_scanned.append(kept)
    energies = np.asarray(committee.predict(frames, batch_size=batch_size)["energies"], float)  # [M, 1 + Σ kept]
    scans = np.full((len(energies), len(bonds), len(stretch)), np.nan)  # [M, K, S]
    scans[:, :, 0] = 0.0
    offset = 1
    for k, kept in enumerate(n_scanned):
        scans[:, k, 1:1 + kept] = energies[:, offset:offset + kept] - energies[:, :1]
        offset += kept
    mean = scans.mean(axis=0)  # [K, S]; NaN where the scan stopped (for every member alike)
    symbols = [f"{atoms[i].symbol}{i}-{atoms[j].symbol}{j}" for i, j in bonds]
    return BondScan(bonds=bonds, r0_A=np.array(r0), stretch_A=stretch, energies=scans,
                    barrier=np.nanmax(mean, axis=1) if len(bonds) else np.zeros(0),
                    barrier_stretch_A=stretch[np.nanargmax(mean, axis=1)] if len(bonds) else np.zeros(0),
                    moved_numbers=atoms.numbers[bonds[:, 0]], symbols=symbols,
                    scanned_to_A=stretch[np.array(n_scanned, int)] if len(bonds) else np.zeros(0))
