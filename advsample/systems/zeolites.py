"""Guest molecules in pure-silica zeolites with GFN-FF labels: the paper's own systems, many cells at once.

Cells come from two sources:

* built in, no file needed: pure-silica frameworks from published crystallographic data
  (:data:`FRAMEWORKS`: SOD from the IZA Database of Zeolite Structures, CHA and LEV from the
  structures distributed with RASPA2, citations below), with guests from ASE's g2 molecule
  collection (:data:`GUESTS`) placed at the largest empty spheres of the framework, randomly
  rotated, at least ``min_distance_A`` from every framework atom and other guest (minimum
  image) — :func:`builtin_cell`, e.g. ``"SOD:methylamine"``, ``"CHA:water,water"``;
* the authors' ``zeolites.json`` (a JSON list of ``{"id", "host", "guest" (SMILES),
  "loading", "cif"}`` with P1 CIF strings, learningmatter-mit/Atomistic-Adversarial-Attacks),
  read from the user's own path by :func:`read_zeolites_json` with filters by size,
  framework, guest and id.

:func:`host_guest` makes a :class:`~advsample.systems.System` over any number of cells of
different sizes and compositions: GFN-FF (:func:`advsample.molecules.gfnff_calculator`, one
fixed topology per cell, set up at the cell as built or read) labels, initial data from
GFN-FF Langevin MD of every cell, test subsets ``thermal:<cell>`` (MD at a higher
temperature) and ``window`` (each guest pushed rigidly 1–2 Å from its site along the most
open direction, towards a window), cached on disk keyed by a hash of everything that makes
them. Every cell carries ``info["cell_name"]`` (its name), ``host``, ``guest`` and ``loading``.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms, units
from ase.build import molecule
from ase.geometry import get_distances
from ase.neighborlist import natural_cutoffs, neighbor_list
from ase.spacegroup import crystal

from ..committee import Committee, default_device
from ..label import CalculatorSpec
from ..select import SelectionConfig
from ..structures import labeled, labels_of
from ..train import TrainConfig
from . import Metric, System

CACHE_VERSION = "host-guest-v1"


def silica_sodalite() -> Atoms:
    """All-silica sodalite, cubic cell: Si12 O24, periodic in 3D (IZA: Im-3m, a = 8.965 Å, T at (1/4, 0, 1/2), O at
    (0.146, 0.146, 1/2); every Si bonded to four O at 1.607 Å)."""
    return crystal(["Si", "O"], basis=[(0.25, 0.0, 0.5), (0.146, 0.146, 0.5)], spacegroup=229,
                   cellpar=[8.965] * 3 + [90] * 3)


#: name -> (space group, setting, cell parameters (Å, °), [(element, fractional site)], source).
#: CHA: M. Calligaris, G. Nardin, L. Randaccio, Zeolites 3, 205 (1983), rhombohedral R-3m cell, 36 atoms.
#: LEV: S. Merlino, E. Galli, A. Alberti, Tschermaks Min. Petr. Mitt. 22, 117 (1975), R-3m, primitive cell, 54 atoms.
#: (Both as distributed in RASPA2's structures/zeolites/cif, T sites as Si: T–O 1.64–1.67 Å; :func:`framework`
#: scales their cells to a mean Si–O of 1.61 Å, which leaves GFN-FF stresses of 0.25 GPa (CHA) and 0.7–1.9 GPa
#: (LEV) instead of 3.9 and 3.2–4.3 GPa.)
FRAMEWORKS: dict[str, tuple] = {
    "CHA": (166, 2, [9.459] * 3 + [94.07] * 3,
            [("Si", (0.1033, 0.3331, 0.8743)), ("O", (0.2665, -0.2665, 0.0)), ("O", (0.1506, -0.1506, 0.5)),
             ("O", (0.2503, 0.2503, 0.893)), ("O", (0.0204, 0.0204, 0.3193))]),
    "LEV": (166, 1, [13.338, 13.338, 23.014, 90.0, 90.0, 120.0],
            [("Si", (0.0001, 0.2322, 0.0697)), ("Si", (0.2396, 0.0, 0.5)), ("O", (0.0339, 0.3493, 0.1079)),
             ("O", (0.092, -0.092, 0.0827)), ("O", (0.1275, -0.1275, -0.091)), ("O", (0.2643, 0.0, 0.0)),
             ("O", (0.2219, -0.2219, 0.1793))]),
}

SILICA_SI_O_A = 1.61  # Å, the mean Si–O bond the aluminosilicate refinements are scaled to

#: guest name -> ASE g2 name (g2's NCCN is cyanogen, not ethylenediamine: not offered).
GUESTS = {"methylamine": "H3CNH2", "dimethylamine": "C2H6NH", "trimethylamine": "C3H9N", "pyridine": "C5H5N",
          "water": "H2O", "methane": "CH4", "ammonia": "NH3"}

DEFAULT_CELLS = ("SOD:methylamine", "CHA:dimethylamine", "LEV:water")
SMOKE_CELLS = ("SOD:water", "CHA:methylamine")


class HostGuestError(ValueError):
    """A host–guest input that cannot be used: a file, a CIF, a filter, a framework, a guest or its placement."""


# -- frameworks and guests ------------------------------------------------------------------
def framework(name: str, si_o_A: float | None = SILICA_SI_O_A) -> Atoms:
    """The pure-silica framework ``name`` (``"SOD"``, ``"CHA"``, ``"LEV"``), periodic in 3D.

    CHA and LEV are refinements of aluminosilicates (mean T–O 1.65 Å): their cells are scaled
    isotropically so that the mean Si–O bond is ``si_o_A`` (None: as published). SOD is the
    IZA's pure-silica cell as it is.
    """
    if name == "SOD":
        return silica_sodalite()
    if name not in FRAMEWORKS:
        raise HostGuestError(f"unknown framework {name!r}; built-in frameworks: {sorted(['SOD', *FRAMEWORKS])}")
    spacegroup, setting, cellpar, sites = FRAMEWORKS[name]
    atoms = crystal([s for s, _ in sites], basis=[p for _, p in sites], spacegroup=spacegroup, setting=setting,
                    cellpar=cellpar, primitive_cell=True)
    if si_o_A is not None:
        i, j, d = neighbor_list("ijd", atoms, 2.0)
        bonds = d[(atoms.numbers[i] == 14) & (atoms.numbers[j] == 8)]
        atoms.set_cell(atoms.cell * (si_o_A / bonds.mean()), scale_atoms=True)
    return atoms


def guest_molecule(name: str) -> Atoms:
    """Guest ``name`` (a key of :data:`GUESTS` or any g2 name), centred at its centre of mass."""
    g2_name = GUESTS.get(name, name)
    try:
        guest = molecule(g2_name)
    except KeyError:
        raise HostGuestError(f"unknown guest {name!r}; choose one of {sorted(GUESTS)} or an ASE g2 name") from None
    guest.positions -= guest.get_center_of_mass()
    return guest


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """[3, 3] a uniformly random rotation matrix."""
    from scipy.spatial.transform import Rotation

    return Rotation.random(random_state=int(rng.integers(2**31))).as_matrix()


def empty_spheres(host: Atoms, spacing_A: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """Grid points [K, 3] (Å) of the cell sorted by their clearance [K] (Å, minimum image to any atom), largest first."""
    from scipy.spatial import cKDTree

    n = np.maximum(np.ceil(host.cell.lengths() / spacing_A).astype(int), 2)
    grid = np.stack(np.meshgrid(*[np.arange(k) / k for k in n], indexing="ij"), -1).reshape(-1, 3)
    points = grid @ host.cell.array
    shifts = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3) @ host.cell.array
    images = (host.get_scaled_positions() @ host.cell.array)[None] + shifts[:, None]  # [27, N, 3]
    clearance = cKDTree(images.reshape(-1, 3)).query(points)[0]
    order = np.argsort(-clearance, kind="stable")
    return points[order], clearance[order]


def min_distance_to(atoms: Atoms, group: np.ndarray, others: np.ndarray) -> float:
    """Smallest minimum-image distance (Å) between atoms ``group`` and atoms ``others`` of ``atoms``."""
    if len(group) == 0 or len(others) == 0:
        return float("inf")
    return float(get_distances(atoms.positions[group], atoms.positions[others], cell=atoms.cell, pbc=atoms.pbc)[1].min())


def place_guests(host: Atoms, guests: Sequence[str], seed: int = 0, min_distance_A: float = 2.0,
                 n_tries: int = 200) -> Atoms:
    """``host`` with each guest at a pore centre (largest empty sphere not taken), randomly rotated.

    A guest is tried at up to ``n_tries`` random rotations (after a third of them with Gaussian
    shifts, 0.3 Å per axis) until every atom is ``min_distance_A`` from the framework and the guests placed before
    (minimum image); otherwise :class:`HostGuestError` names the guest and the closest contact.
    The guests are appended after the framework atoms, in order.
    """
    rng = np.random.default_rng(seed)
    atoms = host.copy()
    points, clearance = empty_spheres(host)
    taken: list[np.ndarray] = []
    for name in guests:
        guest = guest_molecule(name)
        site = next((p for p in points if all(
            get_distances(p[None], t[None], cell=host.cell, pbc=host.pbc)[1].min() > 3.0 for t in taken)), points[0])
        best = (-1.0, None)
        for attempt in range(n_tries):
            shift = rng.normal(size=3) * (0.3 if attempt > n_tries // 3 else 0.0)
            trial = atoms + Atoms(guest.numbers, guest.positions @ _random_rotation(rng).T + site + shift)
            new = np.arange(len(atoms), len(trial))
            gap = min_distance_to(trial, new, np.arange(len(atoms)))
            if gap > best[0]:
                best = (gap, trial)
            if gap >= min_distance_A:
                break
        gap, trial = best
        if gap < min_distance_A:
            raise HostGuestError(f"guest {name!r} does not fit in {host.get_chemical_formula()}: after {n_tries} "
                                 f"placements the closest contact is {gap:.2f} Å < min_distance_A={min_distance_A} Å "
                                 f"(largest empty sphere radius {clearance[0]:.2f} Å)")
        atoms = trial
        taken.append(site)
    atoms.wrap()
    return atoms


def builtin_cell(name: str, seed: int = 0, min_distance_A: float = 2.0) -> Atoms:
    """A built-in cell by name ``"FRAMEWORK:guest[,guest]"`` (e.g. ``"SOD:methylamine"``, ``"CHA:water,water"``)."""
    if not isinstance(name, str) or name.count(":") != 1:
        raise HostGuestError(f"a built-in cell is named 'FRAMEWORK:guest[,guest]', got {name!r}")
    host_name, guest_text = name.split(":")
    guests = [g.strip() for g in guest_text.split(",") if g.strip()]
    if not 1 <= len(guests) <= 2:
        raise HostGuestError(f"cell {name!r}: one or two guests per cell, got {len(guests)}")
    atoms = place_guests(framework(host_name), guests, seed=seed, min_distance_A=min_distance_A)
    atoms.info.update(cell_name=name, host=host_name, guest=",".join(guests), loading=len(guests))
    return atoms


def framework_mask(atoms: Atoms, bond_A: float = 1.9) -> np.ndarray:
    """[N] bool: the silica framework — every Si and every O within ``bond_A`` of a Si (minimum image)."""
    i, j = neighbor_list("ij", atoms, bond_A)
    mask = atoms.numbers == 14
    mask[j[(atoms.numbers[i] == 14) & (atoms.numbers[j] == 8)]] = True
    return mask


def guest_molecules(atoms: Atoms) -> list[np.ndarray]:
    """Indices of each guest molecule: connected components (covalent radii × 1.2) of the non-framework atoms."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rest = np.flatnonzero(~framework_mask(atoms))
    if len(rest) == 0:
        return []
    sub = atoms[rest]
    i, j = neighbor_list("ij", sub, [1.2 * c for c in natural_cutoffs(sub)])
    _, labels = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(len(sub), len(sub))))
    return [rest[labels == k] for k in range(labels.max() + 1)]


def check_guests_clear(atoms: Atoms, min_distance_A: float, name: str) -> float:
    """The closest guest–framework contact (Å, minimum image); :class:`HostGuestError` naming ``name`` below ``min_distance_A``."""
    mask = framework_mask(atoms)
    gap = min_distance_to(atoms, np.flatnonzero(~mask), np.flatnonzero(mask))
    if gap < min_distance_A:
        raise HostGuestError(f"cell {name}: a guest atom is {gap:.2f} Å from the framework "
                             f"(< min_distance_A={min_distance_A} Å): the guest overlaps the framework")
    return gap


# -- the authors' zeolites.json ---------------------------------------------------------------
ZEOLITES_KEYS = ("id", "host", "guest", "loading", "cif")


def _load_entries(path) -> list[dict]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"zeolites.json: no file {str(path)!r} (download data/zeolites.json from "
                                "learningmatter-mit/Atomistic-Adversarial-Attacks and give its path)")
    try:
        entries = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise HostGuestError(f"zeolites.json {str(path)!r} is not valid JSON: {error}") from None
    if not isinstance(entries, list):
        raise HostGuestError(f"zeolites.json {str(path)!r}: expected a JSON list of cells, got {type(entries).__name__}")
    for k, entry in enumerate(entries):
        missing = [key for key in ZEOLITES_KEYS if not isinstance(entry, dict) or key not in entry]
        if missing:
            raise HostGuestError(f"zeolites.json {str(path)!r}: entry {k} "
                                 f"(id {entry.get('id') if isinstance(entry, dict) else entry!r}) lacks {missing}")
    return entries


def _count_atoms(cif: str) -> int | None:
    """Atoms in a P1 CIF from its ``_chemical_formula_sum`` (None when absent): filters before parsing."""
    import re

    match = re.search(r"_chemical_formula_sum\s+'([^']*)'", cif)
    if not match:
        return None
    return sum(int(n or 1) for _, n in re.findall(r"([A-Z][a-z]?)(\d*)", match.group(1)))


def read_zeolites_json(path, max_atoms: int | None = 60, hosts: Sequence[str] | None = None,
                       guests: Sequence[str] | None = None, ids: Sequence | None = None, min_distance_A: float = 1.2,
                       skip_bad: bool = False, report: dict | None = None) -> list[Atoms]:
    """Cells of the authors' ``zeolites.json`` at ``path``, filtered, as periodic ``ase.Atoms``.

    Filters: at most ``max_atoms`` atoms, framework code in ``hosts``, guest SMILES in
    ``guests``, ``id`` in ``ids`` (None: no filter). Each kept cell is parsed with
    ``ase.io.read(..., format="cif")`` and carries ``info`` ``cell_name`` (``"<host>:<guest>#<id>"``),
    ``zeolite_id``, ``host``, ``guest``, ``loading``. Raises ``FileNotFoundError`` for a missing file,
    :class:`HostGuestError` for a malformed file or entry, a CIF that does not parse (naming
    its id; ``skip_bad=True`` skips it and records it in ``report["failed"]``), a guest closer
    than ``min_distance_A`` to the framework, and filters that select no cell (naming the
    filters and the frameworks on offer).
    """
    from ase.io import read

    entries = _load_entries(path)
    wanted_ids = None if ids is None else {str(i) for i in ids}
    selected = [e for e in entries
                if (hosts is None or e["host"] in hosts) and (guests is None or e["guest"] in guests)
                and (wanted_ids is None or str(e["id"]) in wanted_ids)
                and (max_atoms is None or (_count_atoms(e["cif"]) or 0) <= max_atoms)]
    report = report if report is not None else {}
    report.update(n_entries=len(entries), n_selected=len(selected), failed=[])
    cells = []
    for entry in selected:
        name = f"{entry['host']}:{entry['guest']}#{entry['id']}"
        try:
            atoms = read(io.StringIO(entry["cif"]), format="cif")
            if len(atoms) == 0:
                raise ValueError("no atoms")
        except Exception as error:  # ASE raises many kinds on a broken CIF
            if not skip_bad:
                raise HostGuestError(f"zeolites.json {str(path)!r}: the CIF of id {entry['id']} ({name}) does not "
                                     f"parse: {type(error).__name__}: {error}") from None
            report["failed"].append({"id": entry["id"], "reason": f"{type(error).__name__}: {error}"})
            continue
        if max_atoms is not None and len(atoms) > max_atoms:
            continue
        check_guests_clear(atoms, min_distance_A, name)
        atoms.info.update(cell_name=name, zeolite_id=entry["id"], host=entry["host"], guest=entry["guest"],
                          loading=entry["loading"])
        cells.append(atoms)
    if not cells:
        hosts_on_offer = sorted({e["host"] for e in entries})
        raise HostGuestError(f"zeolites.json {str(path)!r}: no cell with max_atoms={max_atoms}, hosts={hosts}, "
                             f"guests={guests}, ids={ids} ({len(entries)} entries; frameworks: {hosts_on_offer[:20]}"
                             f"{' ...' if len(hosts_on_offer) > 20 else ''})")
    return cells


# -- reference MD, window frames, the cache ---------------------------------------------------
def _gfnff_md(cell: Atoms, calculator, n_frames: int, temperature_K: float, interval: int, equilibration: int,
              timestep_fs: float, seed: int, **info) -> list[Atoms]:
    """``n_frames`` labeled frames of GFN-FF Langevin MD from ``cell``, one every ``interval`` steps."""
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    atoms = cell.copy()
    atoms.calc = calculator
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
    dynamics = Langevin(atoms, timestep=timestep_fs * units.fs, temperature_K=temperature_K, friction=0.02,
                        fixcm=False, rng=rng)
    dynamics.run(equilibration)
    frames = []
    for _ in range(n_frames):
        dynamics.run(interval)
        frame = atoms.copy()
        frame.calc = None
        frames.append(labeled(frame, atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False), **info))
    return frames


def window_frames(cell: Atoms, calculator, n_frames: int, seed: int, shift_A: tuple[float, float] = (1.0, 2.0),
                  n_directions: int = 64) -> list[Atoms]:
    """Labeled frames of ``cell`` with one guest moved rigidly ``shift_A`` Å towards a window.

    The direction (of ``n_directions`` random ones) keeps the guest farthest from the framework
    after a 1.5 Å move: along a channel, through the window of the cage it sits in.
    """
    rng = np.random.default_rng(seed)
    groups = guest_molecules(cell)
    frame_atoms = np.flatnonzero(framework_mask(cell))
    frames = []
    for k in range(n_frames):
        guest = groups[k % len(groups)]
        directions = rng.normal(size=(n_directions, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        gaps = []
        for d in directions:
            moved = cell.copy()
            moved.positions[guest] += 1.5 * d
            gaps.append(min_distance_to(moved, guest, frame_atoms))
        atoms = cell.copy()
        atoms.positions[guest] += rng.uniform(*shift_A) * directions[int(np.argmax(gaps))]
        atoms.calc = calculator
        frames.append(labeled(atoms, atoms.get_potential_energy(), atoms.get_forces(), subset="window"))
        atoms.calc = None
    return frames


def _fingerprint(cells: Sequence[Atoms], settings: dict) -> str:
    """sha256 (first 16 hex) of the cells' geometries and the settings that make the data."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        gfnff_version = version("gfnff")
    except PackageNotFoundError:
        raise ImportError("the host-guest systems label with GFN-FF: pip install 'gfnff[ase]' "
                          "(or pip install -e \".[gfnff]\")") from None
    h = hashlib.sha256(json.dumps({**settings, "version": CACHE_VERSION, "gfnff": gfnff_version},
                                  sort_keys=True).encode())
    for atoms in cells:
        h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
        h.update(np.rint(np.asarray(atoms.positions) * 1e5).astype(np.int64).tobytes())
        h.update(np.rint(atoms.cell.array * 1e5).astype(np.int64).tobytes())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$ADVSAMPLE_CACHE`` or ``~/.cache/advsample``, then ``host_guest``."""
    return Path(os.environ.get("ADVSAMPLE_CACHE", Path.home() / ".cache" / "advsample")).expanduser() / "host_guest"


def _write(path: Path, frames: list[Atoms]) -> None:
    from ase.io import write

    tmp = path.with_suffix(".tmp.extxyz")
    write(tmp, frames, format="extxyz")
    os.replace(tmp, path)


def _element_energies(cells: Sequence[Atoms], energies: Sequence[float]) -> dict[str, float]:
    """μ_Z (eV) by least squares (minimum norm) of the set-up energies on the element counts."""
    species = sorted({int(z) for a in cells for z in a.numbers})
    counts = np.array([[np.count_nonzero(a.numbers == z) for z in species] for a in cells], dtype=float)
    mu = np.linalg.lstsq(counts, np.asarray(energies, dtype=float), rcond=None)[0]
    return {str(z): float(m) for z, m in zip(species, mu)}


def build_data(cells: Sequence[Atoms], cache_dir, settings: dict, progress: bool = True) -> dict:
    """Set-up structures, element energies, initial and test data for ``cells``, from the cache or made now.

    ``settings``: n_initial, n_thermal, n_window (frames per cell), md_temperature_K,
    test_temperature_K, interval, equilibration, timestep_fs, seed. Returns
    ``{"directory", "setup", "setup_sha256", "element_energies_eV", "initial", "test"}``.
    """
    from ase.io import read
    from tqdm.auto import tqdm

    from ..molecules import gfnff_calculator

    directory = Path(cache_dir).expanduser() / _fingerprint(cells, settings)
    setup, meta_path = directory / "setup.extxyz", directory / "meta.json"
    if not meta_path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        _write(setup, [a.copy() for a in cells])
        sha = hashlib.sha256(setup.read_bytes()).hexdigest()
        plain = gfnff_calculator(str(setup), sha)
        stored = read(setup, ":")
        mu = _element_energies(stored, [plain.get_potential_energy(a) for a in stored])
        calculator = gfnff_calculator(str(setup), sha, element_energies_eV=mu)
        initial, test = [], []
        s = settings
        for k, cell in enumerate(tqdm(stored, desc="GFN-FF MD per cell", disable=not progress, leave=False)):
            name = cell.info["cell_name"]
            initial += _gfnff_md(cell, calculator, s["n_initial"], s["md_temperature_K"], s["interval"],
                                 s["equilibration"], s["timestep_fs"], seed=s["seed"] + 1000 * k)
            test += _gfnff_md(cell, calculator, s["n_thermal"], s["test_temperature_K"], s["interval"],
                              s["equilibration"], s["timestep_fs"], seed=s["seed"] + 1000 * k + 1,
                              subset=f"thermal:{name}")
            test += window_frames(cell, calculator, s["n_window"], seed=s["seed"] + 1000 * k + 2)
        _write(directory / "initial.extxyz", initial)
        _write(directory / "test.extxyz", test)
        meta_path.write_text(json.dumps({"setup_sha256": sha, "element_energies_eV": mu, "settings": settings,
                                         "cells": [a.info["cell_name"] for a in stored]}, indent=1))
    meta = json.loads(meta_path.read_text())
    return {"directory": directory, "setup": str(setup), "setup_sha256": meta["setup_sha256"],
            "element_energies_eV": meta["element_energies_eV"],
            "initial": read(directory / "initial.extxyz", ":"), "test": read(directory / "test.extxyz", ":")}


# -- the System -------------------------------------------------------------------------------
def schnet_committee(seed: int, species: tuple, n_members: int = 4, n_features: int = 32, n_interactions: int = 2,
                     cutoff: float = 4.5) -> Committee:
    """An untrained SchNet committee (M = ``n_members``) for the host–guest cells, on the default device."""
    from ..models.schnet import SchNetCommittee

    model = SchNetCommittee(n_members=n_members, species=species, n_features=n_features,
                            n_interactions=n_interactions, cutoff=cutoff, seed=seed)
    return Committee(model).to(default_device())


def evaluate_host_guest(committee: Committee, starts: list[Atoms], window: list[Atoms], reference: CalculatorSpec,
                        md: dict) -> dict:
    """The system's metrics: committee-MD stability from ``starts`` (``md``: :func:`~advsample.metrics.md_stability`
    options, energies checked against ``reference``) and the force MAE on the ``window`` frames."""
    from ..metrics import md_stability, stability_metrics

    out = stability_metrics(md_stability(committee, starts, reference=reference.build(), **md))
    _, window_forces = labels_of(window)
    out["window_force_mae"] = float(np.abs(committee.predict(window)["forces_mean"] - window_forces).mean())
    return out


def host_guest_cells(cells: Sequence[str] | None = None, source: str = "builtin", max_atoms: int | None = 60,
                     hosts: Sequence[str] | None = None, guests: Sequence[str] | None = None, seed: int = 0,
                     min_distance_A: float = 2.0, smoke: bool = False) -> list[Atoms]:
    """The cells of a :func:`host_guest` system: built-in names, or ids/filters on a ``zeolites.json`` path."""
    if source == "builtin":
        names = list(cells) if cells is not None else list(SMOKE_CELLS if smoke else DEFAULT_CELLS)
        out = [builtin_cell(name, seed=seed + k, min_distance_A=min_distance_A) for k, name in enumerate(names)]
        big = [f"{a.info['cell_name']} ({len(a)} atoms)" for a in out if max_atoms is not None and len(a) > max_atoms]
        if big:
            raise HostGuestError(f"built-in cells above max_atoms={max_atoms}: {big}")
        return out
    return read_zeolites_json(source, max_atoms=max_atoms, hosts=hosts, guests=guests, ids=cells)


def host_guest_settings(smoke: bool, epochs: int, budget: int, energy_ceiling_eV: float | None,
                        stability_temperature_K: float, stability_timestep_fs: float, batch_size: int,
                        window: str, energy_floor_eV: float | None = None,
                        label_ceiling_eV: float | None = None, force_ceiling_eV_A: float | None = None) -> dict:
    """``System`` keywords every host–guest system shares (this module's and :mod:`.sodalite`'s): training,
    selection, attack, MD, the metrics (MD stability; the force error of the subset described by ``window``)."""
    return dict(
        train=TrainConfig(epochs=epochs, patience=max(epochs // 4, 5), lr_patience=max(epochs // 10, 3),
                          batch_size=None if smoke else batch_size, progress=False),
        selection=SelectionConfig(budget=budget, min_distance=0.02, energy_ceiling=energy_ceiling_eV,
                                  energy_floor=energy_floor_eV, label_ceiling=label_ceiling_eV,
                                  force_ceiling=force_ceiling_eV_A),
        attack={"n_steps": 10 if smoke else 40, "learning_rate": 0.01, "snapshot_every": 5,
                "n_seeds": 4 if smoke else 8, "min_distance": 0.8},
        md={"temperature_K": stability_temperature_K, "timestep_fs": stability_timestep_fs,
            "n_steps": 20 if smoke else 200, "interval": 10, "n_seeds": 4 if smoke else 8},
        displacement=0.05, validation_fraction=0.0 if smoke else 0.1,
        metrics=[
            Metric("md_stable_fraction", "", lower_is_better=False,
                   label=f"stable {stability_temperature_K:g} K MD runs", kind="thermal"),
            Metric("mean_time_to_failure_fs", "fs", lower_is_better=False, label="mean time to MD failure",
                   kind="thermal"),
            Metric("window_force_mae", "{E}/Å", label=f"force MAE, {window}"),
        ],
    )


def host_guest(
    cells: Sequence[str] | None = None,
    source: str = "builtin",
    max_atoms: int | None = 60,
    hosts: Sequence[str] | None = None,
    guests: Sequence[str] | None = None,
    smoke: bool = False,
    cache_dir: str | None = None,
    n_initial: int | None = None,
    n_thermal: int | None = None,
    n_window: int | None = None,
    md_temperature_K: float = 450.0,
    test_temperature_K: float = 600.0,
    md_interval: int | None = None,
    stability_temperature_K: float = 600.0,
    stability_runs: int | None = None,
    stability_steps: int | None = None,
    stability_timestep_fs: float = 0.5,
    energy_tolerance_eV: float = 1.0,
    n_members: int | None = None,
    n_features: int | None = None,
    n_interactions: int | None = None,
    cutoff: float = 4.5,
    epochs: int | None = None,
    budget: int | None = None,
    energy_ceiling_eV: float | None = 10.0,
    energy_floor_eV: float | None = -5.0,
    label_ceiling_eV: float | None = None,
    force_ceiling_eV_A: float | None = None,
    kT: float = 0.2,
    data_seed: int = 0,
    progress: bool = True,
) -> System:
    """Guests in pure-silica zeolites, GFN-FF labels, any number of cells of different sizes in one System.

    Cells: ``source="builtin"`` with ``cells`` named ``"FRAMEWORK:guest[,guest]"`` (default
    :data:`DEFAULT_CELLS`; smoke :data:`SMOKE_CELLS`), or ``source`` = the path of the authors'
    ``zeolites.json`` with ``cells`` = ids and ``max_atoms`` / ``hosts`` / ``guests`` filters
    (:func:`read_zeolites_json`). Data per cell: ``n_initial`` frames of GFN-FF Langevin MD at
    ``md_temperature_K`` (one every ``md_interval`` 0.5 fs steps), test subsets
    ``thermal:<cell>`` (``n_thermal`` frames at ``test_temperature_K``) and ``window``
    (``n_window`` frames, a guest pushed towards a window), cached under ``cache_dir`` (default
    :func:`default_cache_dir`) by a hash of the cells and these settings (``progress``: a tqdm
    bar over the cells while the data are made: ~30 s of CPU per cell at the full settings,
    ~660 GFN-FF calls; 0.3 s from the cache). Energies are
    GFN-FF − Σ_Z n_Z μ_Z (μ fitted to the cells as set up) so that cells share one energy
    scale for the objective and the ``energy_ceiling_eV`` window (``energy_floor_eV``, negative, default
    −5 eV: labels that far below the training minimum are paid and not trained on — GFN-FF's fixed
    topology gives such energies at overlapping atoms, and two such labels, 66.5 and 140.9 eV below,
    each collapsed a headline committee; None: no floor; ``label_ceiling_eV`` ≥ the ceiling: labels up to that high are
    trained on though candidates are chosen inside the ceiling — the committee's holes; ``force_ceiling_eV_A``: labels with
    an RMS force above it are reference artifacts, paid and not trained on — a GFN-FF label with 462 eV/Å RMS collapsed
    a headline committee, every other label of those runs was below 46 eV/Å; None, the default, keeps old run
    directories resumable). Metrics: committee-MD
    stability at ``stability_temperature_K`` from every cell (energies checked against GFN-FF
    on 3 frames per run, ``energy_tolerance_eV``) and the window force error. The committee:
    SchNet, ``n_members`` × ``n_features`` (4 × 32, smoke 2 × 8), ``n_interactions`` (2, smoke 1),
    ``cutoff`` Å.
    (Over 80 lines with this docstring: the body is one System's settings, a line each.)
    """
    pick = lambda value, full, small: value if value is not None else (small if smoke else full)  # noqa: E731
    settings = {"n_initial": pick(n_initial, 8, 3), "n_thermal": pick(n_thermal, 4, 1),
                "n_window": pick(n_window, 2, 1), "md_temperature_K": md_temperature_K,
                "test_temperature_K": test_temperature_K, "interval": pick(md_interval, 20, 5),
                "equilibration": 10 if smoke else 200, "timestep_fs": 0.5, "seed": data_seed}
    cell_list = host_guest_cells(cells, source, max_atoms, hosts, guests, seed=data_seed, smoke=smoke)
    data = build_data(cell_list, cache_dir if cache_dir is not None else default_cache_dir(), settings, progress)
    n_members, n_features = pick(n_members, 4, 2), pick(n_features, 32, 8)
    n_interactions = pick(n_interactions, 2, 1)
    epochs, budget = pick(epochs, 300, 10), pick(budget, 8, 2)
    stability_runs = pick(stability_runs, 2 * len(cell_list), len(cell_list))
    stability_steps = pick(stability_steps, 400, 10)
    species = tuple(sorted({int(z) for a in cell_list for z in a.numbers}))
    kwargs = {"setup": data["setup"], "setup_sha256": data["setup_sha256"],
              "element_energies_eV": data["element_energies_eV"]}
    reference = CalculatorSpec("advsample.molecules:gfnff_calculator", kwargs)
    initial, test = data["initial"], data["test"]
    names = [a.info["cell_name"] for a in cell_list]
    stability_starts = [next(a for a in initial if a.info.get("cell_name") == name).copy() for name in names]
    window = [a for a in test if a.info.get("subset") == "window"]

    make_committee = functools.partial(schnet_committee, species=species, n_members=n_members,
                                       n_features=n_features, n_interactions=n_interactions, cutoff=cutoff)
    evaluate = functools.partial(
        evaluate_host_guest, starts=stability_starts, window=window, reference=reference,
        md={"temperature_K": stability_temperature_K, "n_runs": stability_runs, "n_steps": stability_steps,
            "timestep_fs": stability_timestep_fs, "energy_tolerance_eV": energy_tolerance_eV,
            "n_check_frames": 1 if smoke else 3, "seed": data_seed})
    return System(
        name="host_guest",
        reference=reference,
        initial=initial,
        test=test,
        make_committee=make_committee,
        energy_unit="eV",
        kT=kT,
        uncertainty="forces",
        evaluate=evaluate,
        **host_guest_settings(smoke, epochs, budget, energy_ceiling_eV, stability_temperature_K,
                              stability_timestep_fs, batch_size=8, window="guests pushed towards a window",
                              energy_floor_eV=energy_floor_eV, label_ceiling_eV=label_ceiling_eV,
                              force_ceiling_eV_A=force_ceiling_eV_A),
    )
