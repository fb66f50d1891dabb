"""How good is a committee: test errors, calibration of its uncertainty."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms

from . import uncertainty
from .committee import Committee
from .geometry import GeometryError
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
def _pairs(atoms: Atoms, radii: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j, d Å) nearer than r_i + r_j (per-atom ``radii``) or than a scalar cutoff.

    Minimum image and every periodic image (ASE's neighbour list): a contact across the
    cell edge counts like any other. Each pair appears as (i, j) and (j, i).
    """
    from ase.neighborlist import neighbor_list

    if np.ndim(radii) == 0:
        return neighbor_list("ijd", atoms, float(radii))
    return neighbor_list("ijd", atoms, np.asarray(radii, dtype=float))


def _components(n_atoms: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """[N] connected-component label of each atom in the graph with edges (i, j)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n_atoms, n_atoms))
    return connected_components(graph, directed=False)[1]


def _nearest(atoms: Atoms, k: int) -> float:
    """Minimum-image distance (Å) from atom ``k`` to its nearest other atom."""
    from ase.geometry import get_distances

    others = np.delete(np.arange(len(atoms)), k)
    _, d = get_distances(atoms.positions[k], atoms.positions[others], cell=atoms.cell, pbc=atoms.pbc)
    return float(d.min())


class StabilityCheck:
    """The geometric failure criteria of one run, fixed by its start geometry.

    Bonds: pairs nearer than ``bond_scale`` × (r_i + r_j) (covalent radii) in the start
    geometry. Reach: ``bond_stretch`` × ``bond_scale`` × (r_i + r_j), the farthest a bonded
    neighbour may go. All distances are minimum image (periodic cells).
    """

    def __init__(self, start: Atoms, bond_stretch: float = 1.5, bond_scale: float = 1.2, min_distance: float = 0.6):
        from ase.data import chemical_symbols, covalent_radii

        from .structures import held_atoms

        radii = covalent_radii[start.numbers]
        self.symbols = [chemical_symbols[z] for z in start.numbers]
        self.reach_radii = bond_stretch * bond_scale * radii
        self.min_distance = min_distance
        self.free = ~held_atoms(start)
        i, j, _ = _pairs(start, bond_scale * radii)
        keep = i < j
        self.bond_i, self.bond_j = i[keep], j[keep]

    def failure(self, atoms: Atoms) -> str | None:
        """Why ``atoms`` is unphysical (collapse, free atom isolated, fragmented, NaN), or None.

        A hop (a bond to one neighbour replaced by one to another) is not a failure: a run
        fragments only when two atoms bonded at the start are no longer joined by any chain
        of bonds within reach.
        """
        if not np.all(np.isfinite(atoms.positions)):
            return "non-finite positions"
        if len(atoms) < 2:
            return None
        s = self.symbols
        if self.min_distance > 0:
            i, j, d = _pairs(atoms, self.min_distance)
            if len(d):
                k = int(np.argmin(d))
                a, b = int(i[k]), int(j[k])
                return f"atoms collapsed: {s[a]}{a}-{s[b]}{b} {d[k]:.2f} Å < {self.min_distance} Å (minimum image)"
        i, j, _ = _pairs(atoms, self.reach_radii)
        has_neighbour = np.zeros(len(atoms), dtype=bool)
        has_neighbour[i[i != j]] = True
        isolated = np.flatnonzero(self.free & ~has_neighbour)
        if len(isolated):
            k = int(isolated[0])
            return f"atom isolated: {s[k]}{k} has no neighbour within bonding range (nearest {_nearest(atoms, k):.2f} Å)"
        if len(self.bond_i):
            label = _components(len(atoms), i, j)
            split = np.flatnonzero(label[self.bond_i] != label[self.bond_j])
            if len(split):
                a, b = int(self.bond_i[split[0]]), int(self.bond_j[split[0]])
                return (f"fragmented: {s[a]}{a} and {s[b]}{b}, bonded at the start, are no longer joined by "
                        f"bonds (minimum image)")
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
    frames_every: int | None = None,
) -> dict:
    """Fraction of committee-MD runs that stay physical, and each run's time to failure.

    Runs ``n_runs`` Langevin trajectories (ASE, ``fixcm=False``) of ``n_steps`` ×
    ``timestep_fs`` with the committee mean as the potential (:class:`CommitteeCalculator`),
    run k starting from a copy of ``starts[k % len(starts)]`` (cell, pbc and constraints
    kept: ``FixAtoms`` atoms do not move) with Maxwell–Boltzmann velocities at
    ``temperature_K`` (seeded by ``(seed, k)``; centre-of-mass motion and rotation removed
    for unconstrained molecules). Distances are minimum image. A run fails at the first step where

    * two atoms are closer than ``min_distance`` Å (collapse), or positions/energies are not finite;
    * a free atom has no neighbour within ``bond_stretch`` × ``bond_scale`` × (r_i + r_j)
      (it left its molecule or material; an isolated atom in the start geometry fails at step 0);
    * two atoms bonded at the start (closer than ``bond_scale`` × the sum of covalent radii)
      are no longer joined by any chain of bonds within that reach (fragmentation). A hop,
      one bond replaced by another, is not a failure;
    * with a ``reference`` ASE calculator (e.g. GFN2-xTB, EMT): on ``n_check_frames`` frames
      spread over the run (the last included), the committee energy differs from the
      reference energy by more than ``energy_tolerance_eV``, or the reference fails there.

    Energies are compared as given (use the reference's own convention for training labels).
    Returns ``{"md_stable_fraction", "n_runs", "n_stable", "failures": [reason per failed run],
    "steps_completed": [steps per run], "time_to_failure_fs": [fs per run, None if stable],
    "mean_time_to_failure_fs" (stable runs count their full time), "md_reference_calls"
    (reference energies computed by the check),
    "temperature_K", "n_steps", "timestep_fs"}``; :func:`survival_curve` turns it into a curve.
    ``frames_every``: also return ``"frames"``, per run the geometry every that many steps
    (and the last one), as ``ase.Atoms`` with the start's cell and constraints.
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
    if frames_every is not None and frames_every < 1:
        raise ValueError(f"frames_every must be >= 1 step or None, got {frames_every}")
    calculator = CommitteeCalculator(committee)
    check_steps = set(np.linspace(n_steps, 0, max(n_check_frames, 0), endpoint=False).round().astype(int).tolist())
    failures, steps_completed, times, reference_calls, all_frames = [], [], [], 0, []
    for run in range(n_runs):
        system = starts[run % len(starts)].copy()  # keeps cell, pbc, constraints
        system.calc = None
        check = StabilityCheck(system, bond_stretch, bond_scale, min_distance)
        rng = np.random.default_rng([seed, run])
        velocities.thermalize_momenta(system, temperature_K=temperature_K, rng=rng)
        if not system.constraints and not system.pbc.any():
            velocities.Stationary(system)
            velocities.ZeroRotation(system)
        system.calc = calculator
        dynamics = Langevin(
            system, timestep=timestep_fs * units.fs, temperature_K=temperature_K,
            friction=friction, fixcm=False, rng=rng,
        )
        reason, step, frames = None, 0, []
        try:
            for _ in dynamics.irun(steps=n_steps):
                step = dynamics.nsteps
                if frames_every is not None and (step % frames_every == 0 or step == n_steps):
                    frames.append(_snapshot(system))
                reason = check.failure(system)
                if reason is None and not np.isfinite(system.get_potential_energy()):
                    reason = "non-finite committee energy"
                if reason is None and reference is not None and step in check_steps:
                    reference_calls += 1
                    reason = _reference_failure(system, reference, energy_tolerance_eV)
                if reason is not None:
                    break
        except GeometryError as error:  # the model's own check refused the next geometry (overlapping atoms)
            reason = f"the model refused the geometry: {error}"
        if frames_every is not None and step % frames_every and step != n_steps:
            frames.append(_snapshot(system))  # the failing geometry
        all_frames.append(frames)
        steps_completed.append(int(step))
        times.append(None if reason is None else float(step * timestep_fs))
        if reason is not None:
            failures.append(f"run {run} (start {run % len(starts)}), step {step}: {reason}")
    n_stable = n_runs - len(failures)
    full = n_steps * timestep_fs
    extra = {"frames": all_frames} if frames_every is not None else {}
    return {
        "md_stable_fraction": n_stable / n_runs,
        "n_runs": n_runs,
        "n_stable": n_stable,
        "failures": failures,
        "steps_completed": steps_completed,
        "time_to_failure_fs": times,
        "mean_time_to_failure_fs": float(np.mean([full if t is None else t for t in times])),
        "md_reference_calls": reference_calls,
        "temperature_K": float(temperature_K),
        "n_steps": int(n_steps),
        "timestep_fs": float(timestep_fs),
        **extra,
    }


def _snapshot(atoms: Atoms) -> Atoms:
    frame = atoms.copy()
    frame.calc = None
    return frame


def stability_metrics(result: dict) -> dict:
    """A system's metrics from an :func:`md_stability` result: the stable fraction, mean and
    per-run time to failure, failure reasons, ``stability`` (the input of
    :func:`survival_curve`) and ``md_check_reference_calls``."""
    out = {k: result[k] for k in ("md_stable_fraction", "mean_time_to_failure_fs", "time_to_failure_fs", "failures")}
    out["stability"] = {k: result[k] for k in ("n_runs", "n_steps", "timestep_fs", "temperature_K",
                                               "time_to_failure_fs")}
    out["md_check_reference_calls"] = result["md_reference_calls"]
    return out


def survival_curve(result: dict) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of runs still physical vs time, from an :func:`md_stability` result.

    Returns ``(times_fs [K], fraction [K])``: a step function starting at (0, 1), one step
    down at each failure time, ending at the runs' full length (n_steps × timestep_fs).
    """
    full = result["n_steps"] * result["timestep_fs"]
    failed = np.sort([t for t in result["time_to_failure_fs"] if t is not None])
    n = result["n_runs"]
    times = np.concatenate([[0.0], failed, [full]])
    alive = np.concatenate([[n], n - np.arange(1, len(failed) + 1), [n - len(failed)]])
    return times, alive / n


def _reference_failure(system: Atoms, reference, tolerance: float) -> str | None:
    """Committee energy of ``system`` vs the reference calculator's, or the reference's error."""
    committee_energy = float(system.get_potential_energy())
    frame = system.copy()  # cell, pbc and constraints kept
    frame.calc = None
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
