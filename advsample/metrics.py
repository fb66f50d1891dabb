"""How good is a committee: test errors, calibration of its uncertainty."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms

from . import uncertainty
from .committee import Committee
from .structures import Batch, labels_of


def test_errors(committee: Committee, test: Sequence[Atoms]) -> dict[str, float]:
    """Errors of the committee mean on labeled structures, and how well σ tracks the error.

    energy_mae/rmse (energy unit), force_mae/rmse over free coordinates (energy unit/Å),
    force_spearman: rank correlation of per-structure force σ with per-structure force error,
    force_miscalibration_area: Gaussian coverage mismatch of per-coordinate errors vs σ.
    """
    energies, forces = labels_of(test)
    prediction = committee.predict(test)
    free = ~Batch.from_atoms(test).fixed.numpy()
    force_error = (prediction["forces_mean"] - forces)[free]
    energy_error = prediction["energy_mean"] - energies
    per_atom_error = np.abs(prediction["forces_mean"] - forces).sum(-1) / np.maximum(free.sum(-1), 1)
    index = np.concatenate([np.full(len(a), i) for i, a in enumerate(test)])
    per_structure_error = np.bincount(index, weights=per_atom_error) / np.bincount(index)
    sigma_per_coordinate = np.broadcast_to(prediction["forces_std_per_atom"][:, None], forces.shape)[free]
    return {
        "energy_mae": float(np.abs(energy_error).mean()),
        "energy_rmse": float(np.sqrt((energy_error**2).mean())),
        "force_mae": float(np.abs(force_error).mean()),
        "force_rmse": float(np.sqrt((force_error**2).mean())),
        "force_std_mean": float(prediction["forces_std"].mean()),
        "force_spearman": uncertainty.spearman(prediction["forces_std"], per_structure_error),
        "force_miscalibration_area": uncertainty.miscalibration_area(sigma_per_coordinate, force_error),
    }


# -- MD stability ---------------------------------------------------------------------------
def _bonds(atoms: Atoms, bond_scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bonded pairs (i, j) at ``atoms``' geometry and their lengths (Å): d < bond_scale·(r_i + r_j)."""
    from ase.data import covalent_radii

    radii = covalent_radii[atoms.numbers]
    i, j = np.triu_indices(len(atoms), k=1)
    distances = np.linalg.norm(atoms.positions[i] - atoms.positions[j], axis=-1)
    bonded = distances < bond_scale * (radii[i] + radii[j])
    return i[bonded], j[bonded], distances[bonded]


def _geometry_failure(
    positions: np.ndarray, numbers: np.ndarray, bonds, bond_stretch: float, bond_scale: float, min_distance: float
) -> str | None:
    """Why a geometry [N, 3] is unphysical (bond broken, atom isolated, collapse, NaN), or None."""
    from ase.data import chemical_symbols, covalent_radii

    if not np.all(np.isfinite(positions)):
        return "non-finite positions"
    if len(positions) < 2:
        return None
    symbols = [chemical_symbols[z] for z in numbers]
    distances = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    a, b = np.unravel_index(np.argmin(distances), distances.shape)
    if distances[a, b] < min_distance:
        return f"atoms collapsed: {symbols[a]}{a}-{symbols[b]}{b} {distances[a, b]:.2f} Å < {min_distance} Å"
    bond_i, bond_j, start_length = bonds
    if len(bond_i):
        stretch = distances[bond_i, bond_j] / start_length
        k = int(np.argmax(stretch))
        if stretch[k] > bond_stretch:
            i, j = bond_i[k], bond_j[k]
            return (
                f"bond broken: {symbols[i]}{i}-{symbols[j]}{j} {distances[i, j]:.2f} Å "
                f"> {bond_stretch}x its start length {start_length[k]:.2f} Å"
            )
    radii = covalent_radii[numbers]
    reach = bond_stretch * bond_scale * (radii[:, None] + radii[None, :])  # farthest a bonded neighbour may be
    isolated = np.flatnonzero(~np.any(distances < reach, axis=1))
    if len(isolated):
        k = int(isolated[0])
        return f"atom isolated: {symbols[k]}{k} has no neighbour within bonding range (nearest {distances[k].min():.2f} Å)"
    return None


def md_stability(
    committee: Committee,
    starts: Sequence[Atoms] | Atoms,
    temperature_K: float = 1500.0,
    n_runs: int = 8,
    n_steps: int = 400,
    timestep_fs: float = 0.5,
    reference=None,
    energy_tolerance_eV: float = 0.5,
    n_check_frames: int = 3,
    friction: float = 0.02,
    bond_stretch: float = 1.5,
    bond_scale: float = 1.2,
    min_distance: float = 0.6,
    seed: int = 0,
) -> dict:
    """Fraction of short high-temperature committee-MD runs that stay physical.

    Runs ``n_runs`` Langevin trajectories (ASE, ``fixcm=False``) of ``n_steps`` ×
    ``timestep_fs`` with the committee mean as the potential (:class:`CommitteeCalculator`),
    run k starting from ``starts[k % len(starts)]`` with Maxwell–Boltzmann velocities at
    ``temperature_K`` (seeded by ``(seed, k)``). A run fails at the first step where

    * a bond (pair closer than ``bond_scale`` × the sum of covalent radii in the start
      geometry) is longer than ``bond_stretch`` × its start length;
    * an atom has no neighbour within ``bond_stretch`` × ``bond_scale`` × (r_i + r_j)
      (dissociated; an isolated atom in the start geometry fails at step 0);
    * two atoms are closer than ``min_distance`` Å (collapse), or positions/energies are not finite;
    * with a ``reference`` ASE calculator (e.g. GFN2-xTB): on ``n_check_frames`` frames
      spread over the run (the last included), the committee energy differs from the
      reference energy by more than ``energy_tolerance_eV``, or the reference fails there.

    Energies are compared as given (use the reference's own convention for training labels).
    Returns ``{"md_stable_fraction", "n_runs", "n_stable", "failures": [reason per failed run],
    "steps_completed": [steps per run], "temperature_K", "n_steps", "timestep_fs"}``.
    """
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md import velocitydistribution as velocities

    from .calculator import CommitteeCalculator

    if isinstance(starts, Atoms):
        starts = [starts]
    if len(starts) == 0:
        raise ValueError("md_stability needs at least one start geometry")
    if n_runs < 1 or n_steps < 1:
        raise ValueError(f"n_runs and n_steps must be >= 1, got {n_runs} and {n_steps}")
    if timestep_fs <= 0 or temperature_K < 0:
        raise ValueError("timestep_fs must be positive and temperature_K non-negative")
    calculator = CommitteeCalculator(committee)
    check_steps = set(np.linspace(n_steps, 0, max(n_check_frames, 0), endpoint=False).round().astype(int).tolist())
    failures, steps_completed = [], []
    for run in range(n_runs):
        start = starts[run % len(starts)]
        system = Atoms(start.numbers, positions=start.positions, cell=start.cell, pbc=start.pbc)
        bonds = _bonds(system, bond_scale)
        rng = np.random.default_rng([seed, run])
        velocities.thermalize_momenta(system, temperature_K=temperature_K, rng=rng)
        velocities.Stationary(system)
        velocities.ZeroRotation(system)
        system.calc = calculator
        dynamics = Langevin(
            system, timestep=timestep_fs * units.fs, temperature_K=temperature_K,
            friction=friction, fixcm=False, rng=rng,
        )
        reason, step = None, 0
        for _ in dynamics.irun(steps=n_steps):
            step = dynamics.nsteps
            reason = _geometry_failure(system.positions, system.numbers, bonds, bond_stretch, bond_scale, min_distance)
            if reason is None and not np.isfinite(system.get_potential_energy()):
                reason = "non-finite committee energy"
            if reason is None and reference is not None and step in check_steps:
                reason = _reference_failure(system, reference, energy_tolerance_eV)
            if reason is not None:
                break
        steps_completed.append(int(step))
        if reason is not None:
            failures.append(f"run {run} (start {run % len(starts)}), step {step}: {reason}")
    n_stable = n_runs - len(failures)
    return {
        "md_stable_fraction": n_stable / n_runs,
        "n_runs": n_runs,
        "n_stable": n_stable,
        "failures": failures,
        "steps_completed": steps_completed,
        "temperature_K": float(temperature_K),
        "n_steps": int(n_steps),
        "timestep_fs": float(timestep_fs),
    }


def _reference_failure(system: Atoms, reference, tolerance: float) -> str | None:
    """Committee energy of ``system`` vs the reference calculator's, or the reference's error."""
    committee_energy = float(system.get_potential_energy())
    frame = Atoms(system.numbers, positions=system.positions, cell=system.cell, pbc=system.pbc)
    if hasattr(reference, "reset"):
        reference.reset()
    frame.calc = reference
    try:
        reference_energy = float(frame.get_potential_energy())
    except Exception as error:  # an SCF that fails on a distorted geometry is itself a failure
        return f"reference failed: {type(error).__name__}: {error}"
    finally:
        frame.calc = None
    if not np.isfinite(reference_energy):
        return "reference energy not finite"
    if abs(committee_energy - reference_energy) > tolerance:
        return (
            f"committee energy off the reference by {committee_energy - reference_energy:+.3f} eV "
            f"(tolerance {tolerance} eV)"
        )
    return None
