"""Molecule helpers for any system: the GFN2-xTB reference, relaxations, scans, basin MD, barriers.

* :func:`xtb_calculator` — GFN2-xTB through ``tblite`` (energies in eV, forces in eV/Å).
* :func:`xtb_label` / :func:`relabel_xtb` — label structures with xTB; a failing SCF or
  a non-finite result raises :class:`XTBError` (an ``ase`` ``CalculationFailed``) whose
  message names the structure and the reason, so the labeling layer can record it.
* :func:`relax` — BFGS under any ASE calculator (reference or ``CommitteeCalculator``).
* :func:`dihedral_scan` — a relaxed scan of any dihedral (four atom indices) with any calculator.
* :func:`basin_frames` — MD frames restricted to a basin of a collective variable the user gives.
* :func:`profile_barrier` / :func:`neb_barrier` — a barrier from a scan profile or an ASE NEB path.

Energy convention: labels are **absolute** reference energies in eV (about −120.4 eV for
NH3 with xTB). Code that needs energies relative to the training data (the adversarial
score's Ē, selection windows) subtracts the training minimum itself. The NH3 and ethanol
specifics live in :mod:`advsample.systems.ammonia` and :mod:`advsample.systems.ethanol`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import CalculationFailed, Calculator, all_changes
from ase.optimize import BFGS

from .structures import labeled

KCAL_PER_MOL = units.kcal / units.mol  # eV per (kcal/mol)
XTB_REFERENCE = "GFN2-xTB"


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


# -- GFN-FF reference: one fixed topology per cell ------------------------------------------
class GFNFFError(CalculationFailed):
    """GFN-FF could not label a structure (no set-up structure for it, or the library failed)."""


def _minimum_image_rms(atoms: Atoms, reference: Atoms) -> float:
    """RMS displacement (Å) of ``atoms`` from ``reference`` (same order), minimum image on periodic axes."""
    delta = atoms.positions - reference.positions
    if reference.pbc.any():
        from ase.geometry import find_mic

        delta, _ = find_mic(delta, reference.cell, reference.pbc)
    return float(np.sqrt((delta**2).sum(axis=1).mean()))


class GFNFFCells(Calculator):
    """GFN-FF (``gfnff.GFNFF``: eV, eV/Å, stress in eV/Å³ for periodic cells) with one topology per cell.

    GFN-FF derives its bond topology (bonds, angles, torsions, topological charges, hydrogen
    bonds) once, from the geometry it is set up with (0.2–0.9 s for 40–60-atom cells), and keeps
    it: it cannot break or form bonds, and the energy of a geometry depends on which geometry
    the topology came from. So that a label is a function of the geometry alone, each cell's
    topology is set up once at that cell's set-up structure and reused for every geometry of
    the cell (same atomic numbers in the same order and pbc; the nearest set-up structure by
    cell and minimum-image RMS displacement when several match; a strained cell keeps its
    cell's topology). ``setup``: a file of set-up structures (any ASE format; ``setup_sha256``
    checks its contents) — a geometry that matches none is refused (:class:`GFNFFError`);
    without it the first geometry seen with given numbers and pbc sets the topology up.
    ``element_energies_eV`` ({atomic number: μ_Z}): energies are reported as E − Σ_Z n_Z μ_Z, a
    shift linear in composition (forces and stress unchanged) that puts cells of different
    composition on one energy scale. Built topologies survive ``reset()``; pickling keeps the
    set-up structures, not the library state.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, setup: str | None = None, setup_sha256: str | None = None, gfnff_options: dict | None = None,
                 references: list | None = None, element_energies_eV: dict | None = None):
        super().__init__()
        self.setup, self.setup_sha256 = setup, setup_sha256
        self.element_energies_eV = {int(z): float(mu) for z, mu in (element_energies_eV or {}).items()}
        self.gfnff_options = dict(gfnff_options or {})
        self.n_setups = 0  # topologies built by this instance
        self._cells: dict[tuple, list] = {}  # (numbers, pbc) -> [[set-up Atoms, gfnff.GFNFF or None], ...]
        for atoms in references if references is not None else self._read_setup():
            self._cells.setdefault(self._key(atoms), []).append([atoms, None])

    def _read_setup(self) -> list[Atoms]:
        if self.setup is None:
            return []
        import hashlib
        from pathlib import Path

        from ase.io import read

        path = Path(self.setup)
        if not path.is_file():
            raise FileNotFoundError(f"GFN-FF set-up structures: no file {str(path)!r}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if self.setup_sha256 is not None and digest != self.setup_sha256:
            raise GFNFFError(f"GFN-FF set-up structures {str(path)!r} changed: sha256 {digest}, "
                             f"expected {self.setup_sha256}")
        return [atoms for atoms in read(path, ":")]

    @staticmethod
    def _key(atoms: Atoms) -> tuple:
        return np.asarray(atoms.numbers, dtype=np.int64).tobytes(), np.asarray(atoms.pbc, dtype=bool).tobytes()

    def topology_for(self, atoms: Atoms):
        """The ``gfnff.GFNFF`` calculator holding the topology of the cell ``atoms`` belongs to."""
        from gfnff import GFNFF

        entries = self._cells.get(self._key(atoms))
        if not entries:
            if self.setup is not None:
                raise GFNFFError(f"GFN-FF: no set-up structure in {self.setup!r} has the atoms of "
                                 f"{atoms.get_chemical_formula()} ({len(atoms)} atoms, pbc {atoms.pbc.tolist()}) in this order")
            entries = self._cells[self._key(atoms)] = [[atoms.copy(), None]]
        mismatch = [np.abs(atoms.cell.array - ref.cell.array).max() + _minimum_image_rms(atoms, ref)
                    for ref, _ in entries]
        entry = entries[int(np.argmin(mismatch))]
        if entry[1] is None:
            reference = entry[0].copy()
            reference.calc = entry[1] = GFNFF(**self.gfnff_options)
            reference.get_potential_energy()  # the topology is built here, from the set-up structure
            self.n_setups += 1
        return entry[1]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        calculator = self.topology_for(self.atoms)
        try:
            calculator.calculate(self.atoms.copy(), ["energy", "forces", "stress"], all_changes)
        except Exception as error:
            raise GFNFFError(f"GFN-FF failed for {self.atoms.get_chemical_formula()}: {type(error).__name__}: {error}") from error
        energy = float(calculator.results["energy"]) - sum(self.element_energies_eV.get(int(z), 0.0)
                                                           for z in self.atoms.numbers)
        self.results = {"energy": energy, "free_energy": energy, "forces": np.array(calculator.results["forces"])}
        if self.atoms.pbc.all():
            self.results["stress"] = np.array(calculator.results["stress"])

    def __reduce__(self):
        references = [ref.copy() for entries in self._cells.values() for ref, _ in entries]
        return type(self), (self.setup, self.setup_sha256, self.gfnff_options, references, self.element_energies_eV)


def gfnff_calculator(setup: str | None = None, setup_sha256: str | None = None,
                     element_energies_eV: dict | None = None, **gfnff_options) -> GFNFFCells:
    """The GFN-FF reference (:class:`GFNFFCells`), molecular or periodic; options go to ``gfnff.GFNFF``.

    Use it through ``CalculatorSpec("advsample.molecules:gfnff_calculator", {...})`` (picklable:
    process pools and Parsl workers build their own, and each builds a cell's topology once).
    Raises ``ImportError`` saying how to install GFN-FF when the ``gfnff`` package is missing.
    """
    try:
        import gfnff  # noqa: F401
        from gfnff import GFNFF  # noqa: F401 (needs ASE; the compiled library loads here)
    except ImportError as error:
        raise ImportError("the GFN-FF reference needs the gfnff package: pip install 'gfnff[ase]' "
                          f"(Python bindings of Grimme's GFN-FF library); import failed: {error}") from error
    return GFNFFCells(setup, setup_sha256, gfnff_options, element_energies_eV=element_energies_eV)


# -- relaxations, scans, basins, barriers (any system, any ASE calculator) -----------------
def relax(atoms: Atoms, calculator, fmax: float = 0.01, steps: int = 500, what: str = "relaxation") -> Atoms:
    """``atoms`` relaxed in place with BFGS under ``calculator`` (its constraints apply).

    Raises ``RuntimeError`` naming ``what`` when fmax (eV/Å) is not reached in ``steps``.
    """
    atoms.calc = calculator
    converged = BFGS(atoms, logfile=None).run(fmax=fmax, steps=steps)
    if not converged:
        raise RuntimeError(f"{what}: BFGS did not reach fmax={fmax} eV/Å in {steps} steps")
    return atoms


def dihedral(atoms: Atoms, indices: Sequence[int]) -> float:
    """Dihedral of atoms ``indices`` (a, b, c, d) in degrees, in (−180, 180]."""
    phi = float(atoms.get_dihedral(*indices))  # ASE: [0, 360)
    return phi - 360.0 if phi > 180.0 else phi


def side_of_bond(atoms: Atoms, start: int, stop: int) -> list[int]:
    """Atoms bonded to ``start`` without crossing ``stop`` (covalent-radius neighbour graph, ASE)."""
    from ase.neighborlist import NeighborList, natural_cutoffs

    neighbours = NeighborList(natural_cutoffs(atoms), self_interaction=False, bothways=True)
    neighbours.update(atoms)
    seen, todo = {start}, [start]
    while todo:
        for j in neighbours.get_neighbors(todo.pop())[0].tolist():
            if j != stop and j not in seen:
                seen.add(j)
                todo.append(j)
    return sorted(seen)


def dihedral_scan(
    start: Atoms, indices: Sequence[int], angles_deg: Sequence[float], calculator, fmax: float = 0.02,
    steps: int = 300, moving: Sequence[int] | None = None, info_key: str = "dihedral",
) -> list[Atoms]:
    """Relaxed scan of the dihedral (a, b, c, d) = ``indices`` through ``angles_deg`` (degrees).

    At each angle the ``moving`` atoms (default: the side of a, :func:`side_of_bond`) are
    rotated about the b–c bond to that angle, the dihedral is fixed
    (``ase.constraints.FixInternals``) and every other coordinate relaxed with BFGS
    (``fmax`` eV/Å) under ``calculator`` — the reference or a ``CommitteeCalculator`` —
    each point starting from the previous one. Returned unlabeled, without constraints;
    ``info[info_key]`` = the dihedral in degrees (−180, 180].
    """
    from ase.constraints import FixInternals

    a, b, c, d = (int(i) for i in indices)
    current = start.copy()
    moving = list(moving) if moving is not None else side_of_bond(current, a, b)
    path = []
    for phi in angles_deg:
        atoms = current.copy()
        atoms.constraints = []
        atoms.set_dihedral(d, c, b, a, float(phi) % 360.0, indices=moving)
        atoms.set_constraint(FixInternals(dihedrals_deg=[[atoms.get_dihedral(a, b, c, d), [a, b, c, d]]]))
        relax(atoms, calculator, fmax, steps, f"dihedral scan {tuple(indices)} at {float(phi):.0f}°")
        atoms.calc = None
        current = atoms
        out = atoms.copy()
        out.constraints = []
        out.info[info_key] = dihedral(out, (a, b, c, d))
        path.append(out)
    return path


def _distance(value: float, centre: float, period: float | None) -> float:
    if period is None:
        return abs(value - centre)
    return abs((value - centre + period / 2) % period - period / 2)


def basin_frames(
    start: Atoms, n_frames: int, collective_variable: Callable[[Atoms], float], centre: float, width: float,
    seed: int = 0, temperature_K: float = 300.0, calculator=None, period: float | None = None,
    timestep_fs: float = 0.5, interval: int = 20, equilibration: int = 200, friction_per_fs: float = 0.02,
    max_steps: int = 20000, info_key: str = "collective_variable",
) -> list[Atoms]:
    """Langevin MD frames (``temperature_K``, ``calculator``) that stay in one basin of a collective variable.

    From ``start``: Maxwell–Boltzmann velocities, ``equilibration`` steps, then a frame every
    ``interval`` steps, kept when ``collective_variable(atoms)`` is within ``width`` of
    ``centre`` (``period``: e.g. 360 for an angle in degrees); a trajectory that leaves the
    basin (more than 1.5 × ``width`` away) restarts from ``start`` with fresh velocities.
    Seeded (``seed``); unlabeled copies with ``info[info_key]`` = the variable. Raises
    ``RuntimeError`` after ``max_steps`` MD steps without ``n_frames`` frames.
    """
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

    calculator = calculator if calculator is not None else xtb_calculator()
    rng = np.random.default_rng(seed)
    frames: list[Atoms] = []
    total = 0

    def restart():
        atoms = start.copy()
        atoms.calc = calculator
        thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
        Stationary(atoms)
        if not atoms.pbc.any():
            ZeroRotation(atoms)
        dynamics = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K,
                            friction=friction_per_fs / units.fs, fixcm=False, rng=rng)
        dynamics.run(equilibration)
        return atoms, dynamics

    atoms, dynamics = restart()
    total += equilibration
    while len(frames) < n_frames:
        if total > max_steps:
            raise RuntimeError(f"basin_frames: {len(frames)}/{n_frames} frames near {centre} after {total} steps")
        dynamics.run(interval)
        total += interval
        value = float(collective_variable(atoms))
        if _distance(value, centre, period) <= width:
            frame = atoms.copy()
            frame.calc = None
            frame.set_velocities(np.zeros((len(frame), 3)))
            frame.info[info_key] = value
            frames.append(frame)
        elif _distance(value, centre, period) > 1.5 * width:
            atoms, dynamics = restart()
            total += equilibration
    return frames


def profile_barrier(energies: Sequence[float], end: int | None = None) -> float:
    """Highest energy of a path profile [K] up to index ``end`` (inclusive) above its first point."""
    energies = np.asarray(energies, dtype=float)
    if energies.ndim != 1 or energies.size < 2:
        raise ValueError(f"a barrier needs a 1-D profile of at least 2 energies, got shape {energies.shape}")
    stop = energies.size if end is None else int(end) + 1
    return float(energies[:stop].max() - energies[0])


def neb_barrier(initial: Atoms, final: Atoms, calculator, n_images: int = 3, fmax: float = 0.05,
                steps: int = 300, climb: bool = True, unconverged: str = "flag") -> tuple[float, list[Atoms]]:
    """Forward barrier (energy unit of ``calculator``) from an ASE NEB between two minima.

    ``n_images`` interior images, interpolated linearly (IDPP for molecules), relaxed with
    BFGS to ``fmax`` with a climbing image; works with the reference and with a
    ``CommitteeCalculator``. Returns (E_max − E_initial, the images with ``info["energy"]``
    and ``info["neb_converged"]``). A band that does not converge in ``steps``: with
    ``unconverged="flag"`` (default) the barrier of the last band is returned all the same, its
    images marked ``info["neb_converged"] = False`` (committee NEBs often do not converge; their
    unconverged barrier is still a result); with ``"raise"`` a ``RuntimeError``.
    """
    from ase.mep import NEB

    if unconverged not in ("raise", "flag"):
        raise ValueError(f"unconverged must be 'raise' or 'flag', got {unconverged!r}")

    images = [initial.copy() for _ in range(n_images + 1)] + [final.copy()]
    for image in images:
        image.calc = calculator
    band = NEB(images, climb=climb, allow_shared_calculator=True, method="improvedtangent")
    band.interpolate("idpp" if not initial.pbc.any() else "linear", apply_constraint=True)
    converged = bool(BFGS(band, logfile=None).run(fmax=fmax, steps=steps))
    if not converged and unconverged == "raise":
        raise RuntimeError(f"NEB did not reach fmax={fmax} eV/Å in {steps} steps (unconverged='flag' returns "
                           "the last band's barrier, flagged)")
    energies = [float(image.get_potential_energy()) for image in images]
    for image, energy in zip(images, energies):
        image.info["energy"] = energy
        image.info["neb_converged"] = converged
    return max(energies) - energies[0], images
