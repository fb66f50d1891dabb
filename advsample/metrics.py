"""How good is a committee: test errors, calibration of its uncertainty."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms

from . import uncertainty
from .committee import Committee
from .dynamics import StabilityCheck  # noqa: F401  (the stability criteria, re-exported)
from .structures import Batch, labels_of


def test_errors(committee: Committee, test: Sequence[Atoms]) -> dict[str, float]:
    """Errors of the committee mean on labeled structures, and how well σ tracks the error.

    energy_mae/rmse (energy unit), force_mae/rmse over free coordinates (energy unit/Å),
    force_spearman: rank correlation of per-structure force σ with per-structure force error,
    force_miscalibration_area: Gaussian coverage mismatch of per-coordinate errors vs σ.
    A calibrated committee (:func:`advsample.calibration.calibrate`) adds force_coverage (the
    fraction of force-component errors inside its conformal interval; stated level in
    force_coverage_stated) and force_miscalibration_area_calibrated (with σ_cal = a·σᵇ).
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
    calibrated = {}
    if getattr(committee, "calibration", None) is not None:
        from .calibration import calibration_of, coverage

        calibration = calibration_of(committee)
        calibrated = {"force_coverage": coverage(calibration.force_interval(sigma_per_coordinate), force_error),
                      "force_coverage_stated": calibration.coverage,
                      "force_miscalibration_area_calibrated": uncertainty.miscalibration_area(
                          calibration.force_sigma(sigma_per_coordinate), force_error)}
    return {
        **calibrated,
        "energy_mae": float(np.abs(energy_error).mean()),
        "energy_rmse": float(np.sqrt((energy_error**2).mean())),
        "force_mae": float(np.abs(force_error).mean()),
        "force_rmse": float(np.sqrt((force_error**2).mean())),
        "force_std_mean": float(prediction["forces_std"].mean()),
        "force_spearman": uncertainty.spearman(prediction["forces_std"], per_structure_error),
        "force_miscalibration_area": uncertainty.miscalibration_area(sigma_per_coordinate, force_error),
    }


# -- MD stability ---------------------------------------------------------------------------
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
    integrator: str = "langevin",
    check_every: int = 1,
    max_drift_eV_per_atom: float | None = 0.05,
    confidence: float = 0.95,
    compile: bool = False,
) -> dict:
    """Fraction of committee-MD runs that stay physical, and each run's time to failure.

    Runs ``n_runs`` trajectories of ``n_steps`` × ``timestep_fs`` with the committee mean as
    the potential, all of them batched into one committee call per step
    (:func:`advsample.dynamics.run_stability`): ``integrator="langevin"`` (default) is ASE's
    Langevin (``fixcm=False``, ``friction``), step for step the run ASE would give with
    :class:`~advsample.calculator.CommitteeCalculator`; ``"nve"`` is velocity Verlet (the
    paper's protocol), which also fails a run whose total energy drifts by more than
    ``max_drift_eV_per_atom``. Run k starts from a copy of ``starts[k % len(starts)]`` (cell,
    pbc and constraints kept: ``FixAtoms`` atoms do not move) with Maxwell–Boltzmann
    velocities at ``temperature_K`` (seeded by ``(seed, k)``; centre-of-mass motion and
    rotation removed for unconstrained molecules). Distances are minimum image. A run fails at
    the first checked step (every ``check_every`` steps; 1: every step) where

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
    "temperature_K", "n_steps", "timestep_fs", "md_stable_fraction_interval" ([low, high],
    Wilson at ``confidence``), "md_stable_fraction_summary" (e.g. "0.92 [0.86, 0.96] (n=128)"),
    "integrator", "check_every"}``; :func:`survival_curve` turns it into a curve.
    ``frames_every``: also return ``"frames"``, per run the geometry every that many steps
    (and the last one), as ``ase.Atoms`` with the start's cell and constraints.
    ``compile=True``: the committee evaluated through ``torch.compile`` (faster on periodic cells
    after a one-time compile; eager with a warning where it cannot build; docs/stability.md).
    """
    from .dynamics import run_stability

    return run_stability(
        committee, starts, n_replicas=n_runs, temperature_K=temperature_K, n_steps=n_steps,
        timestep_fs=timestep_fs, integrator=integrator, friction=friction, reference=reference,
        energy_tolerance_eV=energy_tolerance_eV, n_check_frames=n_check_frames, check_every=check_every,
        max_drift_eV_per_atom=max_drift_eV_per_atom, bond_stretch=bond_stretch, bond_scale=bond_scale,
        min_distance=min_distance, seed=seed, frames_every=frames_every, confidence=confidence, compile=compile,
    )


def stability_metrics(result: dict) -> dict:
    """A system's metrics from an :func:`md_stability` result: the stable fraction, mean and
    per-run time to failure, failure reasons, ``stability`` (the input of
    :func:`survival_curve`, with the stable fraction's Wilson interval and its one-line
    summary) and ``md_check_reference_calls``."""
    out = {k: result[k] for k in ("md_stable_fraction", "mean_time_to_failure_fs", "time_to_failure_fs", "failures")}
    out["stability"] = {k: result[k] for k in ("n_runs", "n_steps", "timestep_fs", "temperature_K",
                                               "time_to_failure_fs")}
    for key in ("md_stable_fraction_interval", "md_stable_fraction_summary", "integrator"):
        if key in result:  # results written before the batched integrator lack them
            out["stability"][key] = result[key]
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
