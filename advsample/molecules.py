"""Ammonia (NH3) helpers and the GFN2-xTB reference.

* :func:`xtb_calculator` — GFN2-xTB through ``tblite`` (energies in eV, forces in eV/Å).
* :func:`xtb_label` / :func:`relabel_xtb` — label structures with xTB; a failing SCF or
  a non-finite result raises :class:`XTBError` (an ``ase`` ``CalculationFailed``) whose
  message names the structure and the reason, so the labeling layer can record it.
* :func:`ammonia_dataset` — the 138 packaged pyramidal NH3 geometries (DFT labels).
* :func:`umbrella_height` / :func:`umbrella_heights` — the inversion coordinate.
* :func:`inversion_path` — an xTB relaxed scan along the umbrella height through planar NH3.
* :func:`ammonia_splits` — fixed (train pool, held-out test) split, xTB-labeled.
* :func:`inversion_barrier` — planar minus pyramidal relaxed energy with any ASE calculator.

Energy convention: labels are **absolute** GFN2-xTB total energies in eV (about −120.4 eV
for NH3). Code that needs energies relative to the training data (the adversarial
score's Ē, selection windows) subtracts the training minimum itself.
"""
from __future__ import annotations

from importlib import resources
from typing import Sequence

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import CalculationFailed
from ase.constraints import FixCartesian
from ase.io import read
from ase.optimize import BFGS

from .structures import labeled

KCAL_PER_MOL = units.kcal / units.mol  # eV per (kcal/mol)
XTB_REFERENCE = "GFN2-xTB"
DATA_FILE = "ammonia_dft.extxyz"


class XTBError(CalculationFailed):
    """GFN2-xTB did not give a usable label (SCF failure, atoms too close, NaN)."""


# -- reference calculator ---------------------------------------------------------------
def xtb_calculator(**kwargs):
    """A GFN2-xTB ASE calculator (``tblite.ase.TBLite``), quiet by default.

    Keyword arguments go to ``TBLite`` (e.g. ``accuracy``, ``max_iterations``,
    ``electronic_temperature``) and override ``method="GFN2-xTB"``, ``verbosity=0``,
    ``cache_api=False``. With ``cache_api=False`` the calculator's ``reset()`` drops the
    previous wavefunction, which :func:`xtb_label` does before every label so that a label
    does not depend on which structure was computed before it (restarting the SCF from the
    previous structure changes forces by ~1e-5 eV/Å). Optimisations (no reset between
    steps) still restart from the previous step.
    """
    from tblite.ase import TBLite

    options = {"method": XTB_REFERENCE, "verbosity": 0, "cache_api": False}
    options.update(kwargs)
    return TBLite(**options)


def xtb_label(atoms: Atoms, calculator=None, **info) -> Atoms:
    """A copy of ``atoms`` labeled with the xTB energy (eV) and forces (eV/Å).

    Raises :class:`XTBError` with the reason when the calculation fails or is not finite.
    """
    calculator = calculator if calculator is not None else xtb_calculator()
    work = atoms.copy()
    work.constraints = []  # labels are the unconstrained reference forces
    if hasattr(calculator, "reset"):
        calculator.reset()  # no SCF restart from whatever the calculator computed before
    work.calc = calculator
    try:
        energy = float(work.get_potential_energy())
        forces = np.array(work.get_forces(), dtype=float)
    except Exception as error:  # tblite raises CalculationFailed / InputError / RuntimeError
        if hasattr(calculator, "reset"):
            calculator.reset()
        raise XTBError(
            f"GFN2-xTB failed for {atoms.get_chemical_formula()}: {type(error).__name__}: {error}"
        ) from error
    finally:
        work.calc = None
    if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
        raise XTBError(f"GFN2-xTB returned a non-finite energy or forces for {atoms.get_chemical_formula()}")
    out = labeled(atoms, energy, forces, reference=XTB_REFERENCE, **info)
    out.info.pop("energy_kcal_mol", None)  # the packaged DFT label, no longer this structure's label
    return out


def relabel_xtb(atoms_list: Sequence[Atoms], calculator=None) -> list[Atoms]:
    """xTB-labeled copies (absolute energies, eV) of every structure, in order.

    Raises :class:`XTBError` naming the index of the first structure that fails.
    """
    calculator = calculator if calculator is not None else xtb_calculator()
    out = []
    for i, atoms in enumerate(atoms_list):
        try:
            out.append(xtb_label(atoms, calculator))
        except XTBError as error:
            raise XTBError(f"structure {i}: {error}") from error
    return out


# -- data -------------------------------------------------------------------------------
def ammonia_dataset() -> list[Atoms]:
    """The 138 packaged pyramidal NH3 geometries with their DFT labels.

    Energies in eV relative to the data set's own reference (lowest ≈ 0), forces in eV/Å;
    ``info`` keeps ``geom_id`` and ``energy_kcal_mol``. Relabel with :func:`relabel_xtb`
    before training on GFN2-xTB: do not mix the two levels of theory. See
    ``advsample/data/README.md`` for provenance (MIT licence).
    """
    path = resources.files("advsample") / "data" / DATA_FILE
    with resources.as_file(path) as file:
        return read(file, index=":")


# -- the inversion coordinate ----------------------------------------------------------
def _nh3_positions(structures) -> np.ndarray:
    """[B, 4, 3] positions ordered N, H, H, H (H in their original order)."""
    if isinstance(structures, Atoms):
        structures = [structures]
    if isinstance(structures, np.ndarray):
        positions = np.asarray(structures, dtype=float)
        if positions.ndim == 2:
            positions = positions[None]
        if positions.shape[1:] != (4, 3):
            raise ValueError(f"expected positions [B, 4, 3] ordered N, H, H, H; got {positions.shape}")
        return positions
    numbers = [np.asarray(a.numbers) for a in structures]
    for i, z in enumerate(numbers):
        if len(z) != 4 or sorted(z.tolist()) != [1, 1, 1, 7]:
            raise ValueError(f"structure {i} is {structures[i].get_chemical_formula()}, not NH3")
    order = np.stack([np.argsort(-z, kind="stable") for z in numbers])  # N first, H keep order
    positions = np.stack([a.positions for a in structures])
    return np.take_along_axis(positions, order[:, :, None], axis=1)


def umbrella_heights(structures) -> np.ndarray:
    """[B] signed height (Å) of N above the plane of the three H.

    ``structures``: a list of NH3 ``Atoms`` (any atom order) or an array [B, 4, 3] ordered
    N, H, H, H. The plane's normal is (H2 − H1) × (H3 − H1) with the H in their order in
    the structure, so the inversion h → −h flips the sign and planar NH3 has h = 0.
    """
    x = _nh3_positions(structures)
    nitrogen, hydrogens = x[:, 0], x[:, 1:]
    normal = np.cross(hydrogens[:, 1] - hydrogens[:, 0], hydrogens[:, 2] - hydrogens[:, 0])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    return np.einsum("bk,bk->b", nitrogen - hydrogens.mean(1), normal)


def umbrella_height(atoms: Atoms) -> float:
    """Signed height (Å) of N above the plane of the three H (see :func:`umbrella_heights`)."""
    return float(umbrella_heights([atoms])[0])


def _relax(atoms: Atoms, calculator, fmax: float, steps: int, what: str) -> Atoms:
    atoms.calc = calculator
    converged = BFGS(atoms, logfile=None).run(fmax=fmax, steps=steps)
    if not converged:
        raise RuntimeError(f"{what}: BFGS did not reach fmax={fmax} eV/Å in {steps} steps")
    return atoms


def relaxed_minimum(calculator=None, fmax: float = 0.01, steps: int = 500) -> Atoms:
    """Pyramidal NH3 relaxed with ``calculator`` (BFGS from the lowest packaged DFT geometry)."""
    calculator = calculator if calculator is not None else xtb_calculator()
    data = ammonia_dataset()
    start = min(data, key=lambda a: a.get_potential_energy()).copy()
    start.calc = None
    return _relax(start, calculator, fmax, steps, "pyramidal NH3 minimum")


def _constrained_height(h: float, nh: float = 1.01) -> Atoms:
    """C3v NH3 with the H in the z = 0 plane (counter-clockwise) and N at z = h, z fixed."""
    r = np.sqrt(max(nh**2 - h**2, 0.25))
    angles = np.deg2rad([0.0, 120.0, 240.0])
    positions = [[0.0, 0.0, h]] + [[r * np.cos(a), r * np.sin(a), 0.0] for a in angles]
    atoms = Atoms("NH3", positions=positions)
    atoms.set_constraint(FixCartesian(range(4), mask=(False, False, True)))
    return atoms


def inversion_path(
    n_points: int = 21, h_max: float | None = None, calculator=None, fmax: float = 0.01, steps: int = 300
) -> list[Atoms]:
    """Geometries along the umbrella inversion, h from −h_max to +h_max through planar h = 0.

    A relaxed scan: at each height the three H sit in the z = 0 plane and N at z = h
    (z of every atom fixed), and x, y of all atoms are relaxed with BFGS under
    ``calculator`` (default GFN2-xTB), so each point is the lowest-energy geometry at that
    umbrella height. ``h_max`` defaults to the height of the calculator's relaxed
    pyramidal minimum (≈ 0.37 Å for xTB). Returned without constraints or labels;
    ``info["umbrella_height"]`` holds h (Å).
    """
    if n_points < 2:
        raise ValueError(f"n_points must be >= 2, got {n_points}")
    calculator = calculator if calculator is not None else xtb_calculator()
    if h_max is None:
        h_max = abs(umbrella_height(relaxed_minimum(calculator)))
    path = []
    for h in np.linspace(-h_max, h_max, n_points):
        atoms = _relax(_constrained_height(float(h)), calculator, fmax, steps, f"inversion path point h={h:.3f} Å")
        atoms.calc = None
        atoms.constraints = []
        atoms.info["umbrella_height"] = float(h)
        path.append(atoms)
    return path


def ammonia_splits(
    seed: int = 0, n_test: int = 20, n_path: int = 21, calculator=None
) -> tuple[list[Atoms], list[Atoms]]:
    """Fixed split into (train pool, held-out test), all labeled with GFN2-xTB (absolute eV).

    The 138 packaged DFT geometries are shuffled with ``seed``; ``n_test`` of them go to
    the test set (default: 118 remain in the train pool). The test set also holds
    ``n_path`` points of :func:`inversion_path`, covering the planar region that the train
    pool lacks. ``info["subset"]`` says "dft_geometry" or "inversion_path";
    ``info["umbrella_height"]`` is set on every structure. Split once per study and keep it.
    """
    calculator = calculator if calculator is not None else xtb_calculator()
    data = ammonia_dataset()
    if not 0 <= n_test <= len(data):
        raise ValueError(f"n_test must be in 0..{len(data)}, got {n_test}")
    order = np.random.default_rng(seed).permutation(len(data))
    for atoms in data:
        atoms.info["subset"] = "dft_geometry"
        atoms.info["umbrella_height"] = umbrella_height(atoms)
    test_geometries = [data[k] for k in order[:n_test]]
    train = relabel_xtb([data[k] for k in order[n_test:]], calculator)
    path = inversion_path(n_path, calculator=calculator) if n_path > 0 else []
    for atoms in path:
        atoms.info["subset"] = "inversion_path"
    test = relabel_xtb(test_geometries + path, calculator)
    return train, test


# -- the inversion barrier ------------------------------------------------------------------
def planarized(atoms: Atoms) -> Atoms:
    """NH3 moved into the xy plane (H-plane normal along z, N projected into it), z fixed."""
    x = _nh3_positions([atoms])[0]
    centre = x[1:].mean(0)
    normal = np.cross(x[2] - x[1], x[3] - x[1])
    normal /= np.linalg.norm(normal)
    e1 = x[1] - centre
    e1 -= (e1 @ normal) * normal
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(normal, e1)
    local = (x - centre) @ np.stack([e1, e2, normal]).T
    local[:, 2] = 0.0
    planar = Atoms("NH3", positions=local)
    planar.set_constraint(FixCartesian(range(4), mask=(False, False, True)))
    return planar


def inversion_barrier(
    calculator, fmax: float = 0.01, steps: int = 500, return_structures: bool = False
):
    """Inversion barrier of NH3 in kcal/mol: E(planar, relaxed in the plane) − E(pyramidal minimum).

    Both geometries are relaxed with BFGS (``fmax`` eV/Å) under the given ASE calculator
    (GFN2-xTB, a ``CommitteeCalculator``, …): the minimum from the lowest packaged DFT
    geometry, the transition state from that minimum flattened into the xy plane with the
    z coordinate of every atom fixed. Raises ``RuntimeError`` when an optimisation does
    not converge. With ``return_structures`` returns (barrier, minimum, planar).
    """
    minimum = relaxed_minimum(calculator, fmax, steps)
    e_min = minimum.get_potential_energy()
    planar = _relax(planarized(minimum), calculator, fmax, steps, "planar NH3")
    e_planar = planar.get_potential_energy()
    barrier = float((e_planar - e_min) / KCAL_PER_MOL)
    if return_structures:
        results = []
        for atoms, energy in ((minimum, e_min), (planar, e_planar)):
            forces = atoms.get_forces(apply_constraint=False)
            atoms.calc = None
            atoms.constraints = []
            results.append(labeled(atoms, energy, forces, umbrella_height=umbrella_height(atoms)))
        return barrier, results[0], results[1]
    return barrier


# -- ethanol: one conformer basin in training, the whole H–O–C–C torsion in the test --------
# GFN2-xTB (measured with this code): relaxed scan of the H–O–C–C torsion from the anti
# minimum (180°): a barrier of ≈ 0.04 eV near 130°, the gauche minima (±60°) ≈ 0.07 eV
# *below* anti, the cis point (0°) ≈ 0.05 eV above gauche. (xTB on ethanol: a few ms per
# call with OMP_NUM_THREADS=1; with OpenMP threads on a shared machine ~1 s.)
ETHANOL_NAME = "CH3CH2OH"  # in ase.collections.g2; built in the anti (trans) conformer
ANTI_WINDOW_DEG = 40.0  # training frames: |φ| ≥ 180 − this (the anti basin)
GAUCHE_WINDOW_DEG = 40.0  # gauche test frames: |φ ∓ 60| ≤ this


def torsion_indices(atoms: Atoms) -> tuple[int, int, int, int]:
    """(H, O, C_α, C_β) of ethanol's hydroxyl torsion, found from the geometry (any atom order)."""
    symbols = atoms.get_chemical_symbols()
    if sorted(symbols) != sorted("CCOHHHHHH"):
        raise ValueError(f"expected ethanol C2H6O, got {atoms.get_chemical_formula()}")
    d = atoms.get_all_distances()
    oxygen = symbols.index("O")
    carbons = [i for i, s in enumerate(symbols) if s == "C"]
    alpha = min(carbons, key=lambda c: d[oxygen, c])
    beta = next(c for c in carbons if c != alpha)
    hydrogens = [i for i, s in enumerate(symbols) if s == "H"]
    hydroxyl = min(hydrogens, key=lambda h: d[oxygen, h])
    return hydroxyl, oxygen, alpha, beta


def torsion_angle(atoms: Atoms) -> float:
    """H–O–C–C dihedral of ethanol in degrees, in (−180, 180]: anti ≈ ±180, gauche ≈ ±60."""
    h, o, ca, cb = torsion_indices(atoms)
    phi = float(atoms.get_dihedral(h, o, ca, cb))  # ASE: [0, 360)
    return phi - 360.0 if phi > 180.0 else phi


def torsion_angles(atoms_list: Sequence[Atoms]) -> np.ndarray:
    """[B] :func:`torsion_angle` of every structure (degrees)."""
    return np.array([torsion_angle(a) for a in atoms_list], dtype=float)


def ethanol_minimum(calculator=None, fmax: float = 0.01, steps: int = 300, torsion_deg: float | None = None) -> Atoms:
    """Ethanol relaxed with ``calculator`` (default xTB): anti from ``ase.build.molecule``, or the
    minimum nearest ``torsion_deg`` (e.g. 60 for gauche) when given (started there, then relaxed freely)."""
    from ase.build import molecule

    calculator = calculator if calculator is not None else xtb_calculator()
    atoms = molecule(ETHANOL_NAME)
    if torsion_deg is not None:
        h, o, ca, cb = torsion_indices(atoms)
        atoms.set_dihedral(cb, ca, o, h, torsion_deg % 360.0, indices=[h])
    _relax(atoms, calculator, fmax, steps, f"ethanol minimum (start φ={torsion_deg})")
    atoms.calc = None
    return atoms


def torsion_scan(
    n_points: int = 24, calculator=None, fmax: float = 0.02, steps: int = 300, start: Atoms | None = None
) -> list[Atoms]:
    """Relaxed scan of the H–O–C–C torsion: φ from 180° through gauche+ (60), cis (0), gauche− (−60).

    φ_k = 180 − k·360/n_points; at each φ the torsion is fixed (``ase.constraints.FixInternals``)
    and every other coordinate relaxed with BFGS (``fmax`` eV/Å) under ``calculator``
    (default GFN2-xTB), each point starting from the previous one. Returned unlabeled,
    without constraints; ``info["torsion"]`` = φ in degrees (−180, 180].
    """
    from ase.constraints import FixInternals

    calculator = calculator if calculator is not None else xtb_calculator()
    current = (start if start is not None else ethanol_minimum(calculator)).copy()
    h, o, ca, cb = torsion_indices(current)
    path = []
    for k in range(n_points):
        phi = 180.0 - k * 360.0 / n_points
        atoms = current.copy()
        atoms.constraints = []
        atoms.set_dihedral(cb, ca, o, h, phi % 360.0, indices=[h])  # moves only the hydroxyl H
        atoms.set_constraint(FixInternals(dihedrals_deg=[[atoms.get_dihedral(h, o, ca, cb), [h, o, ca, cb]]]))
        _relax(atoms, calculator, fmax, steps, f"ethanol torsion scan φ={phi:.0f}°")
        atoms.calc = None
        current = atoms
        out = atoms.copy()
        out.constraints = []
        out.info["torsion"] = torsion_angle(out)
        path.append(out)
    return path


def _in_window(phi: float, centre: float, width: float) -> bool:
    return abs((phi - centre + 180.0) % 360.0 - 180.0) <= width


def thermal_frames(
    start: Atoms, n_frames: int, centre_deg: float, window_deg: float, seed: int = 0, temperature_K: float = 300.0,
    calculator=None, timestep_fs: float = 0.5, interval: int = 20, equilibration: int = 200,
    friction_per_fs: float = 0.02, max_steps: int = 20000,
) -> list[Atoms]:
    """Langevin MD frames (``temperature_K``, GFN2-xTB) that stay in one torsion basin.

    From ``start``: Maxwell–Boltzmann velocities, ``equilibration`` steps, then a frame every
    ``interval`` steps, kept when the H–O–C–C torsion is within ``window_deg`` of
    ``centre_deg``; a trajectory that leaves the basin (more than 1.5 × the window away)
    restarts from ``start`` with fresh velocities. Seeded (``seed``); unlabeled copies.
    Raises ``RuntimeError`` after ``max_steps`` MD steps without ``n_frames`` frames.
    """
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

    calculator = calculator if calculator is not None else xtb_calculator()
    rng = np.random.default_rng(seed)
    frames: list[Atoms] = []
    total = 0

    def restart():
        atoms = start.copy()
        atoms.constraints = []
        atoms.calc = calculator
        thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
        Stationary(atoms)
        ZeroRotation(atoms)
        dynamics = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K,
                            friction=friction_per_fs / units.fs, fixcm=False, rng=rng)
        dynamics.run(equilibration)
        return atoms, dynamics

    atoms, dynamics = restart()
    total += equilibration
    while len(frames) < n_frames:
        if total > max_steps:
            raise RuntimeError(
                f"thermal_frames: {len(frames)}/{n_frames} frames near φ={centre_deg}° after {total} steps")
        dynamics.run(interval)
        total += interval
        phi = torsion_angle(atoms)
        if _in_window(phi, centre_deg, window_deg):
            frame = atoms.copy()
            frame.calc = None
            frame.set_velocities(np.zeros((len(frame), 3)))
            frame.info["torsion"] = phi
            frames.append(frame)
        elif not _in_window(phi, centre_deg, 1.5 * window_deg):
            atoms, dynamics = restart()
            total += equilibration
    return frames


def ethanol_dataset(
    n: int = 100, seed: int = 0, temperature_K: float = 300.0, n_scan: int = 24, n_test_thermal: int = 20,
    calculator=None,
) -> tuple[list[Atoms], list[Atoms]]:
    """(train, test) for ethanol, all labeled with GFN2-xTB (absolute eV, eV/Å).

    * train: ``n`` frames of 300 K Langevin MD (``temperature_K``) from the relaxed anti
      conformer, kept only while the H–O–C–C torsion is within 40° of 180°: one conformer
      basin (``info["subset"] = "anti_md"``).
    * test: the relaxed torsion scan (:func:`torsion_scan`, ``n_scan`` points through both
      gauche minima, the anti–gauche barriers and cis; ``"torsion_scan"``), plus
      ``n_test_thermal`` held-out MD frames near each conformer: anti (other seed,
      ``"anti_md_test"``), gauche+ and gauche− (``"gauche_md"``).

    ``info["torsion"]`` (degrees) is set on every structure. Seeded; nothing is cached
    (≈ 10–20 s on one core).
    """
    calculator = calculator if calculator is not None else xtb_calculator()
    anti = ethanol_minimum(calculator)
    gauche = ethanol_minimum(calculator, torsion_deg=60.0)
    gauche_phi = abs(torsion_angle(gauche))
    gauche_minus = gauche.copy()
    gauche_minus.positions[:, 2] *= -1  # the mirror image: φ → −φ
    seeds = np.random.SeedSequence(seed).generate_state(4)

    def tag(frames, subset):
        for atoms in frames:
            atoms.info["subset"] = subset
        return frames

    train = tag(thermal_frames(anti, n, 180.0, ANTI_WINDOW_DEG, int(seeds[0]), temperature_K, calculator), "anti_md")
    test = tag(torsion_scan(n_scan, calculator, start=anti), "torsion_scan") if n_scan > 0 else []
    if n_test_thermal > 0:
        test += tag(thermal_frames(anti, n_test_thermal, 180.0, ANTI_WINDOW_DEG, int(seeds[1]), temperature_K,
                                   calculator), "anti_md_test")
        for start, centre, s in ((gauche, gauche_phi, seeds[2]), (gauche_minus, -gauche_phi, seeds[3])):
            test += tag(thermal_frames(start, n_test_thermal, centre, GAUCHE_WINDOW_DEG, int(s), temperature_K,
                                       calculator), "gauche_md")
    train = relabel_xtb(train, calculator)
    test = relabel_xtb(test, calculator)
    for atoms in train + test:
        atoms.info["torsion"] = torsion_angle(atoms)
    return train, test


def torsion_profile_errors(predict_energies, scan: Sequence[Atoms]) -> dict:
    """How well an energy model reproduces the relaxed torsion profile (at the scan geometries).

    ``predict_energies(scan)`` -> [B] energies (eV). Profiles are taken relative to the
    scan's first point (anti, φ = 180°). Returns ``profile_mae`` (eV), ``profile_max_error``
    (eV), and the anti→gauche barrier (highest scan point between 180° and the gauche
    minimum, kcal/mol) of reference and model and their difference.
    """
    reference = np.array([a.get_potential_energy() for a in scan], dtype=float)
    predicted = np.asarray(predict_energies(scan), dtype=float)
    reference, predicted = reference - reference[0], predicted - predicted[0]
    error = predicted - reference
    phi = np.array([a.info.get("torsion", torsion_angle(a)) for a in scan])
    gauche = int(np.argmin(np.where(phi > 0, reference, np.inf)))  # lowest point on the φ > 0 side
    barrier_ref = float(reference[: gauche + 1].max()) / KCAL_PER_MOL
    barrier_model = float(predicted[: gauche + 1].max()) / KCAL_PER_MOL
    return {
        "profile_mae": float(np.abs(error).mean()),
        "profile_max_error": float(np.abs(error).max()),
        "barrier_kcal_mol": barrier_model,
        "reference_barrier_kcal_mol": barrier_ref,
        "barrier_error_kcal_mol": barrier_model - barrier_ref,
    }
