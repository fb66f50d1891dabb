"""Adversarial audit: where will MD with this committee go wrong, predicted before running it.

From the user's structures (near minima), the batched attack (:func:`advsample.attack.attack`)
ascends log L = log σ² − (Ē − E_min)/kT − log Q at each kT of a sweep: at small kT it stays
near the minimum, at large kT it may climb to where the committee disagrees. Every
``frames_every``-th frame of every seed is evaluated once more for its calibrated error bar
(:mod:`advsample.calibration`: the conformal force-component interval s·σ, its largest over
the free atoms, energy unit/Å; the raw σ if the committee was never calibrated, flagged).
A frame is within thermal reach at kT when its energy above the minimum ΔE ≤ q·kT, with
q the (1 − ``tail_probability``) quantile of the potential energy of n_free harmonic degrees
of freedom in kT units (Gamma(n_free/2, 1)): MD at T = kT/k_B goes that high with probability
about ``tail_probability`` per independent sample. Per kT the audit reports the most likely
frames over the user's tolerance within reach (lowest ΔE first, i.e. largest Boltzmann
weight), which atoms moved and which distances changed; and a predicted safe temperature,
the highest T at which no frame over tolerance is within reach: min ΔE_fail / (q k_B) over
every frame the attacks found (continuous, no interpolation needed). With no frame over
tolerance the audit only bounds it: safe T ≥ the largest T of the sweep ("lower").

**Reach along the path** (``reach="path"``): a frame's energy above the minimum says how likely the geometry
is, not whether MD can get there. An attack may climb a barrier and find a hole below the start behind it; with
``reach="frame"`` (the default) that hole counts at any temperature. With ``reach="path"`` a frame is judged by
the highest committee energy its attack path climbed to reach it (max ΔE over the seed's steps up to the frame:
an upper bound on the barrier along that path). Both safe temperatures are reported (``safe_temperature_by_reach``).

**Checked by the reference** (``verify_per_kT`` > 0, ``reference=``): the calibrated error bar is the
committee's own word on its error. Where the members agree and are wrong together, the bar is small and the
frame is passed. With a reference calculator the audit checks its findings: per kT, each attack seed's
farthest frame within reach (the last evaluated one; up to ``verify_per_kT`` of them, largest bar first) is
labeled, and its *true* error is measured — the largest force-component error of the committee mean over the
free atoms, and the error of its energy above the start (ΔE_committee − ΔE_reference). ``result.verified``
reports those frames, how often the bar and the truth agree (flagged / failed), and a verified safe
temperature: min ΔE over frames whose true error exceeds the tolerance, over (q k_B). The labels cost one
reference call per frame plus one for the lowest start; failed calculations are recorded and skipped.

**Checked by short NN-MD** (``md_per_kT`` > 0): a frame that is wrong need not make MD fail; the committee may
pull it back. From each attack seed's farthest frame within reach (up to ``md_per_kT`` per kT, largest bar first,
as for the reference check) a short Langevin run at T = kT/k_B (``md_steps`` × ``md_timestep_fs``, one batched
run per kT, :func:`advsample.dynamics.run_stability`) asks whether MD from there runs away: a collapse, an
isolated atom or a fragmentation judged against the bonds of the frame's start structure, a non-finite energy,
or with ``md_energy_tolerance`` and a reference, a committee energy that far off the reference's on one of three
frames. ``result.md_checked`` reports each run and an MD-checked safe temperature: min ΔE over the frames whose
run ran away, over (q k_B). No labels are needed unless the energy is checked.
``md_start="minimum"`` is the control: the same runs (as many per kT, same T, steps and seeds), each started
from its attack seed's start structure instead of the frame, so that a comparison asks whether the adversarial
frame tells more than hot MD from the minimum would (their ΔE is then the start's, their error bar NaN).

E_min and log Q come from the committee's own energies of the start structures (they need
no labels). Shapes: B seeds, T recorded steps, N atoms. Energies in the committee's unit.
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms, units
from ase.io import read, write
from scipy import stats
from tqdm.auto import tqdm

from .attack import AttackConfig, attack
from .calibration import calibration_of
from .structures import Batch


REACHES = ("frame", "path")  # AuditConfig.reach
MD_STARTS = ("frame", "minimum")  # AuditConfig.md_start


@dataclass
class AuditConfig:
    """Audit settings: kT in the committee's energy unit, lengths in Å, tolerance in energy unit/Å."""

    kT_values: Sequence[float] = (0.01, 0.02, 0.05, 0.1, 0.2)
    force_tolerance: float = 0.5  # largest calibrated force-component error bar allowed (energy unit/Å)
    uncertainty: str = "forces"  # the attacked variance ("forces" | "energy")
    n_replicas: int = 8  # attack seeds per start structure (different δ₀)
    max_starts: int = 8  # the lowest-energy start structures (committee energies) used as seeds
    n_steps: int = 60
    learning_rate: float = 0.01
    initial_displacement: float = 0.01
    max_displacement: float | None = None
    min_distance: float = 0.5
    frames_every: int = 5  # frames evaluated for their error bar: every this many steps (and the last)
    top_k: int = 3  # geometries over tolerance reported per kT
    tail_probability: float = 1e-3  # thermal reach: ΔE ≤ q·kT, q the (1 − this) quantile of Gamma(n_free/2)
    kB: float = units.kB  # energy unit per kelvin (ASE's eV/K; a toy's arbitrary unit is read as eV)
    energy_unit: str = "eV"
    seed: int = 0
    reach: str = "frame"  # a frame's energy for thermal reach: its own ΔE ("frame") or its path's highest ("path")
    verify_per_kT: int = 0  # frames per kT checked with the reference (needs audit(..., reference=)); 0: none
    energy_tolerance: float | None = None  # verified frames: |ΔE error| above this also fails (energy unit); None: forces only
    md_per_kT: int = 0  # frames per kT from which a short NN-MD asks "does it run away?" (0: none)
    md_steps: int = 200  # steps of each short run
    md_timestep_fs: float = 0.5
    md_friction: float = 0.02  # Langevin friction of the short runs (ASE's Langevin, as in run_stability)
    md_energy_tolerance: float | None = None  # short runs also fail this far off the reference's energy (needs one)
    md_start: str = "frame"  # the short runs start from the attack's frame, or ("minimum", the control) its seed

    def __post_init__(self):
        kTs = list(self.kT_values)
        if not kTs or not all(isinstance(k, (int, float)) and math.isfinite(k) and k > 0 for k in kTs):
            raise ValueError(f"kT_values must be positive energies, got {self.kT_values!r}")
        if not self.force_tolerance > 0:
            raise ValueError(f"force_tolerance must be a positive force (energy unit/Å), got {self.force_tolerance!r}")
        for name in ("n_replicas", "max_starts", "n_steps", "frames_every", "top_k"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not 0 < self.tail_probability < 1:
            raise ValueError(f"tail_probability must be in (0, 1), got {self.tail_probability!r}")
        if self.reach not in REACHES:
            raise ValueError(f"reach must be one of {REACHES}, got {self.reach!r}")
        if int(self.verify_per_kT) < 0:
            raise ValueError(f"verify_per_kT must be >= 0 (0: no reference check), got {self.verify_per_kT!r}")
        if self.energy_tolerance is not None and not self.energy_tolerance > 0:
            raise ValueError(f"energy_tolerance must be a positive energy or None, got {self.energy_tolerance!r}")
        if int(self.md_per_kT) < 0:
            raise ValueError(f"md_per_kT must be >= 0 (0: no short NN-MD check), got {self.md_per_kT!r}")
        if int(self.md_steps) < 1 or not self.md_timestep_fs > 0 or not self.md_friction > 0:
            raise ValueError(f"md_steps must be >= 1 and md_timestep_fs, md_friction positive, got {self.md_steps!r}, "
                             f"{self.md_timestep_fs!r}, {self.md_friction!r}")
        if self.md_start not in MD_STARTS:
            raise ValueError(f"md_start must be one of {MD_STARTS}, got {self.md_start!r}")
        if self.md_energy_tolerance is not None and not self.md_energy_tolerance > 0:
            raise ValueError(f"md_energy_tolerance must be a positive energy or None, got {self.md_energy_tolerance!r}")
        self.kT_values = tuple(sorted(float(k) for k in kTs))


@dataclass
class AuditResult:
    """rows: the reported geometries (list of dicts); per_kT: one summary dict per kT; frames:
    every evaluated frame as (kT, ΔE, error bar); geometries: the reported frames as Atoms."""

    config: AuditConfig
    rows: list[dict]
    per_kT: list[dict]
    safe_temperature_K: float
    safe_bound: str  # "estimate" (a frame over tolerance was found) | "lower" (none: safe T ≥ the sweep's largest)
    geometries: list[Atoms]
    frames: dict = field(default_factory=dict)
    reach_kT: float = 0.0  # q: a frame is within thermal reach at kT when ΔE ≤ q·kT
    calibrated: bool = True
    time_s: float = 0.0
    committee_calls: int = 0
    structure_evaluations: int = 0
    verified: dict | None = None  # the reference check (verify_per_kT > 0): see :func:`verify_frames`
    md_checked: dict | None = None  # the short NN-MD check (md_per_kT > 0): see :func:`md_check_frames`
    safe_temperature_by_reach: dict = field(default_factory=dict)  # "frame" / "path" -> (safe T in K, bound)

    def summary(self) -> dict:
        """Plain JSON data: safe temperature, per-kT table, time and calls (and the reference check, if run)."""
        return {"safe_temperature_K": self.safe_temperature_K, "safe_bound": self.safe_bound, "reach_kT": self.reach_kT,
                "calibrated": self.calibrated, "time_s": self.time_s, "committee_calls": self.committee_calls,
                "structure_evaluations": self.structure_evaluations, "per_kT": self.per_kT,
                "config": {k: v for k, v in asdict(self.config).items()},
                "safe_temperature_by_reach": self.safe_temperature_by_reach,
                **({"verified": self.verified} if self.verified is not None else {}),
                **({"md_checked": self.md_checked} if self.md_checked is not None else {})}

    def write(self, directory: str | Path) -> Path:
        """audit.csv (geometries), audit_per_kT.csv, audit.json, geometries.extxyz and audit.png (and verified.csv,
        md_checked.csv when checked)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _write_csv(directory / "audit.csv", self.rows)
        _write_csv(directory / "audit_per_kT.csv", self.per_kT)
        if self.verified is not None:
            _write_csv(directory / "verified.csv", self.verified["frames"])
        if self.md_checked is not None:
            _write_csv(directory / "md_checked.csv", self.md_checked["frames"])
        (directory / "audit.json").write_text(json.dumps(self.summary(), indent=1, default=float))
        write(directory / "geometries.extxyz", self.geometries or [], format="extxyz")
        self.figure().savefig(directory / "audit.png", dpi=120)
        return directory

    def figure(self):
        """Calibrated error bar vs energy above the minimum, one colour per kT (matplotlib Figure)."""
        from matplotlib.figure import Figure

        figure = Figure(figsize=(6, 4), layout="constrained")
        axes = figure.add_subplot()
        for kT in self.config.kT_values:
            keep = self.frames["kT"] == kT
            points = axes.scatter(self.frames["energy_above_min"][keep], self.frames["error"][keep], s=6, alpha=0.6,
                                  label=f"kT = {kT:.3g} {self.config.energy_unit} ({kT / self.config.kB:.0f} K)")
            axes.axvline(self.reach_kT * kT, color=points.get_facecolor()[0], ls=":", lw=1)  # thermal reach at kT
        axes.axhline(self.config.force_tolerance, color="k", ls="--", lw=1, label="tolerance")
        if self.verified is not None and self.verified["frames"]:
            checked = self.verified["frames"]
            axes.scatter([f["energy_above_min"] for f in checked], [max(f["true_error"], 1e-6) for f in checked],
                         marker="x", c="k", s=18, lw=0.8, label="true error (reference-checked frames)")
        if self.md_checked is not None:
            away = [f for f in self.md_checked["frames"] if f["ran_away"]]
            axes.scatter([f["energy_above_min"] for f in away], [f["error_bar"] for f in away], s=40,
                         facecolors="none", edgecolors="r", lw=0.8, label="short NN-MD from here ran away")
        axes.plot([], [], color="gray", ls=":", lw=1, label="thermal reach q·kT")
        unit = self.config.energy_unit
        axes.set_xlabel(f"committee energy above the minimum ({unit})")
        kind = "calibrated" if self.calibrated else "raw (uncalibrated)"
        checked = " and true error (×)" if self.verified is not None else ""
        axes.set_ylabel(f"{kind} force error bar{checked} ({unit}/Å)")
        axes.set_yscale("log")
        title = f"audit: predicted safe T {_bound_text(self.safe_bound)} {self.safe_temperature_K:.0f} K"
        if self.verified is not None:
            title += (f"; checked {_bound_text(self.verified['safe_bound'])} "
                      f"{self.verified['safe_temperature_K']:.0f} K")
        if self.md_checked is not None:
            title += (f"; by short NN-MD {_bound_text(self.md_checked['safe_bound'])} "
                      f"{self.md_checked['safe_temperature_K']:.0f} K")
        axes.set_title(title, fontsize=9)
        axes.legend(fontsize=7)
        return figure


def read_structures(source) -> list[Atoms]:
    """Start structures from a :class:`~advsample.systems.System` (its initial data), extxyz
    path(s) or a list of Atoms."""
    if hasattr(source, "initial") and hasattr(source, "make_committee"):
        return list(source.initial)
    if isinstance(source, Atoms):
        return [source]
    if isinstance(source, (str, Path)):
        source = [source]
    out = []
    for item in source:
        out.extend(read(item, index=":") if isinstance(item, (str, Path)) else [item])
    if not out:
        raise ValueError("the audit needs at least one start structure, got none")
    return out


def audit(committee, structures, config: AuditConfig | None = None, progress: bool = True,
          reference=None) -> AuditResult:
    """Audit ``committee`` from ``structures`` (System, extxyz path(s) or Atoms) at every kT of ``config``.

    ``reference``: an ASE calculator (or :class:`~advsample.label.CalculatorSpec`) that checks the frames when
    ``config.verify_per_kT`` > 0 (``result.verified``); a System's own reference is used when none is given."""
    config = config or AuditConfig()
    reference = checking_reference(config, structures, reference)
    start_time = time.process_time()
    calibration = calibration_of(committee)
    starts = read_structures(structures)
    start_energies = committee.predict(starts)["energy_mean"]
    order = np.argsort(start_energies, kind="stable")[: config.max_starts]
    starts = [_bare(starts[k]) for k in order]
    e_min = float(start_energies[order[0]])
    n_free = int((~Batch.from_atoms([starts[0]]).fixed).sum())
    reach = float(stats.gamma.ppf(1.0 - config.tail_probability, max(n_free, 1) / 2.0))
    seeds = [atoms for atoms in starts for _ in range(config.n_replicas)]
    seed_delta_e = np.repeat(start_energies[order] - e_min, config.n_replicas)
    counts = {"calls": 1, "evaluations": len(start_energies)}
    rows, per_kT, geometries = [], [], []
    frames = {"kT": [], "energy_above_min": [], "path_energy_above_min": [], "error": []}
    failing_energies, failing_paths, to_verify, to_run = [], [], [], []
    for kT in tqdm(config.kT_values, desc="audit kT", disable=not progress, leave=False):
        result = attack(committee, seeds, start_energies[order], _attack_config(config, kT), progress=False)
        candidates = _evaluated_frames(result, config.frames_every)
        errors, energies, energy_bars, n_calls = _error_bars(committee, candidates, calibration)
        counts["calls"] += config.n_steps + 1 + n_calls
        counts["evaluations"] += len(candidates) + len(seeds) * (config.n_steps + 1)
        delta_e = energies - e_min
        path_e = np.maximum(path_energies(result, candidates) - e_min, delta_e)  # the climb to each frame
        for key, values in (("kT", [kT] * len(candidates)), ("energy_above_min", delta_e),
                            ("path_energy_above_min", path_e), ("error", errors)):
            frames[key].extend(np.asarray(values, dtype=float).tolist())
        over = errors > config.force_tolerance
        failing_energies.extend(delta_e[over].tolist())
        failing_paths.extend(path_e[over].tolist())
        reach_e = path_e if config.reach == "path" else delta_e
        within = np.flatnonzero(over & (reach_e <= reach * kT))
        to_verify.extend((kT, candidates[k], float(delta_e[k]), float(errors[k]), float(path_e[k]))
                         for k in farthest_within_reach(candidates, reach_e, errors, reach * kT, config.verify_per_kT))
        to_run.extend(md_run_item(kT, candidates[k], float(delta_e[k]), float(errors[k]), float(path_e[k]),
                                  seeds, seed_delta_e, config.md_start)
                      for k in farthest_within_reach(candidates, reach_e, errors, reach * kT, config.md_per_kT))
        ranked = within[np.argsort(delta_e[within], kind="stable")][: config.top_k]
        per_kT.append({"kT": kT, "temperature_K": kT / config.kB, "n_frames": len(candidates),
                       "n_over_tolerance": int(over.sum()), "n_over_tolerance_within_reach": int(len(within)),
                       "max_error": float(errors.max()), "max_error_within_reach": float(
                           errors[reach_e <= reach * kT].max(initial=0.0)),
                       "min_energy_above_min_over_tolerance": float(delta_e[over].min()) if over.any() else None})
        for rank, k in enumerate(ranked):
            atoms = candidates[k]
            row = {"kT": kT, "temperature_K": kT / config.kB, "rank": rank, "energy_above_min": float(delta_e[k]),
                   "error": float(errors[k]), "energy_error": float(energy_bars[k]),
                   "attack_seed": atoms.info["attack_seed"],
                   "attack_step": atoms.info["attack_step"],
                   **collective_motion(seeds[atoms.info["attack_seed"]], atoms)}
            rows.append(row)
            atoms.info.update(row)
            geometries.append(atoms)
    by_reach = {"frame": safe_temperature(failing_energies, reach, config),
                "path": safe_temperature(failing_paths, reach, config)}
    safe, bound = by_reach[config.reach]
    frames = {key: np.asarray(value, dtype=float) for key, value in frames.items()}
    verified = verify_frames(committee, reference, starts[0], to_verify, config, reach) if config.verify_per_kT else None
    md_checked = md_check_frames(committee, to_run, config, reach, reference) if config.md_per_kT else None
    extra_calls = sum(check["committee_calls"] for check in (verified, md_checked) if check)
    return AuditResult(config, rows, per_kT, float(safe), bound, geometries, frames, reach, calibration is not None,
                       time.process_time() - start_time, counts["calls"] + extra_calls, counts["evaluations"],
                       verified=verified, safe_temperature_by_reach=by_reach, md_checked=md_checked)


def checking_reference(config: AuditConfig, structures, reference=None):
    """The reference that checks the audit's frames: ``reference``, else the System's own (``structures`` a System);
    None when no check needs one (``verify_per_kT`` 0, and no ``md_energy_tolerance`` on a short-NN-MD check).
    ValueError when a check needs a reference and there is none."""
    needs = [name for name, wanted in (("verify_per_kT > 0", config.verify_per_kT),
                                       ("md_energy_tolerance", config.md_per_kT and config.md_energy_tolerance))
             if wanted]
    if not needs:
        return reference
    reference = reference if reference is not None else getattr(structures, "reference", None)
    if reference is None:
        raise ValueError(f"{' and '.join(needs)} check(s) the audit's frames with the reference: pass reference= (an "
                         "ASE calculator or a CalculatorSpec), or give a System")
    return reference


def safe_temperature(failing_energies: Sequence[float], reach: float, config: AuditConfig) -> tuple[float, str]:
    """(safe T in K, bound): the lowest energy above the minimum of a frame over tolerance, over q·k_B ("estimate");
    with none, the sweep's largest T ("lower": safe T is at least that)."""
    if len(failing_energies):
        return float(max(min(failing_energies), 0.0) / (reach * config.kB)), "estimate"
    return float(config.kT_values[-1] / config.kB), "lower"


def safe_temperatures_of(failing: Sequence[dict], reach: float, config: AuditConfig) -> dict:
    """{"frame": (safe T, bound), "path": (safe T, bound)} from the checked frames that failed (dicts with
    ``energy_above_min`` and ``path_energy_above_min``): :func:`safe_temperature` by each reach."""
    return {kind: safe_temperature([f[key] for f in failing], reach, config)
            for kind, key in (("frame", "energy_above_min"), ("path", "path_energy_above_min"))}


def path_energies(result, candidates: Sequence[Atoms]) -> np.ndarray:
    """[B] for each frame, the highest committee energy (absolute) its seed's attack climbed to reach it: the
    running maximum of ``result.energy_mean`` over the seed's steps up to the frame's."""
    running = np.maximum.accumulate(np.where(result.active, result.energy_mean, -np.inf), axis=0)
    return np.array([running[a.info["attack_step"], a.info["attack_seed"]] for a in candidates], dtype=float)


def farthest_within_reach(candidates: Sequence[Atoms], delta_e: np.ndarray, errors: np.ndarray, reach_energy: float,
                          n: int) -> list[int]:
    """Indices of each attack seed's last evaluated frame with ΔE ≤ ``reach_energy`` (the farthest the attack got
    while still within thermal reach), at most ``n`` of them, largest error bar first."""
    if n <= 0:
        return []
    last: dict[int, int] = {}
    for k, atoms in enumerate(candidates):
        if delta_e[k] <= reach_energy:
            seed = atoms.info["attack_seed"]
            if seed not in last or atoms.info["attack_step"] > candidates[last[seed]].info["attack_step"]:
                last[seed] = k
    picked = sorted(last.values(), key=lambda k: (-errors[k], k))
    return picked[:n]


def verify_frames(committee, reference, start: Atoms, items: Sequence[tuple], config: AuditConfig,
                  reach: float) -> dict:
    """Label ``items`` ((kT, frame, ΔE committee, error bar, path ΔE), …) and ``start`` (the lowest start: the
    energy zero) with ``reference``; compare with the committee mean. Returns plain data: ``frames`` (one dict per labeled frame:
    kT, ΔE committee and reference, energy error, error bar, true error = the largest |force-component error| over
    free atoms, flagged = bar over tolerance, failed = true error over tolerance or |energy error| over
    ``energy_tolerance``), the agreement counts, the verified safe temperature and its bound, reference calls,
    failures (recorded, skipped) and seconds. Without the start's label, energy errors are NaN and only forces judge."""
    from .label import label_structures

    labels = label_structures([start] + [item[1] for item in items], reference, progress=False)
    by_index = dict(zip(labels.indices, labels.labeled))
    zero = by_index[0].get_potential_energy() if 0 in by_index else math.nan
    kept = [(items[i - 1], by_index[i]) for i in sorted(by_index) if i > 0]
    rows = []
    if kept:
        frames = [label for _, label in kept]
        prediction = committee.predict(frames)
        batch = Batch.from_atoms(frames)
        reference_forces = np.concatenate([a.get_forces(apply_constraint=False) for a in frames])
        component_error = np.where(~batch.fixed.numpy(), np.abs(prediction["forces_mean"] - reference_forces), 0.0)
        true_error = _largest_per_structure(component_error.max(-1), batch)
        for j, ((kT, atoms, delta_e, bar, path_e), label) in enumerate(kept):
            delta_ref = label.get_potential_energy() - zero
            energy_error = delta_e - delta_ref
            failed = bool(true_error[j] > config.force_tolerance or (
                config.energy_tolerance is not None and abs(energy_error) > config.energy_tolerance))
            rows.append({"kT": kT, "temperature_K": kT / config.kB, "attack_seed": atoms.info["attack_seed"],
                         "attack_step": atoms.info["attack_step"], "energy_above_min": delta_e,
                         "path_energy_above_min": path_e, "reference_energy_above_min": float(delta_ref),
                         "energy_error": float(energy_error), "error_bar": bar, "true_error": float(true_error[j]),
                         "flagged": bool(bar > config.force_tolerance), "failed": failed})
    by_reach = safe_temperatures_of([r for r in rows if r["failed"]], reach, config)
    safe, bound = by_reach[config.reach]
    count = lambda flagged, failed: sum(r["flagged"] == flagged and r["failed"] == failed for r in rows)  # noqa: E731
    return {"frames": rows, "safe_temperature_K": float(safe), "safe_bound": bound,
            "safe_temperature_by_reach": by_reach,
            "flagged_and_failed": count(True, True), "flagged_not_failed": count(True, False),
            "failed_not_flagged": count(False, True), "neither": count(False, False),
            "median_true_error": float(np.median([r["true_error"] for r in rows])) if rows else math.nan,
            "reference_calls": labels.n_calls, "reference_failures": [
                {k: f[k] for k in ("index", "reason")} for f in labels.failures],
            "reference_s": labels.compute_seconds, "committee_calls": 1 if kept else 0,
            "energy_zero_labeled": 0 in by_index}


def md_run_item(kT: float, frame: Atoms, delta_e: float, bar: float, path_e: float, seeds: Sequence[Atoms],
                seed_delta_e: Sequence[float], md_start: str = "frame") -> tuple:
    """One short run of :func:`md_check_frames`: (kT, start, ΔE, error bar, path ΔE, the seed whose bonds judge it).
    ``md_start="minimum"`` (the control) starts it from the frame's attack seed instead: ΔE and path ΔE are the
    seed's (``seed_delta_e``), no error bar (NaN), the seed's index kept and its step 0."""
    seed = seeds[frame.info["attack_seed"]]
    if md_start == "frame":
        return kT, frame, delta_e, bar, path_e, seed
    start = _bare(seed)
    start.info.update(attack_seed=frame.info["attack_seed"], attack_step=0)
    seed_e = float(seed_delta_e[frame.info["attack_seed"]])
    return kT, start, seed_e, math.nan, seed_e, seed


def md_check_frames(committee, items: Sequence[tuple], config: AuditConfig, reach: float, reference=None) -> dict:
    """Short NN-MD from each of ``items`` ((kT, frame, ΔE, error bar, path ΔE, start), …): one batched Langevin run
    per kT at T = kT/k_B, ``config.md_steps`` steps, judged by the failure criteria of each frame's ``start``
    (:func:`advsample.dynamics.run_stability` with ``bonds_from``), and with ``config.md_energy_tolerance`` by the
    reference's energy on three frames. Returns plain data: ``frames`` (one dict per run: kT, ΔE, path ΔE, error
    bar, ran_away, survived = the fraction of the steps it ran (1 also for a run that failed at its last step),
    reason), ``n_ran_away`` and ``fraction_ran_away``, ``mean_survival`` overall and ``survival_by_kT``, the MD-checked safe temperature (min
    ΔE of the frames that ran away over q·k_B; with none, the sweep's largest T as a lower bound) by frame and path
    reach, steps, committee and reference calls, CPU seconds."""
    from .dynamics import run_stability

    started = time.process_time()
    rows, calls, reference_calls = [], 0, 0
    energy_check = config.md_energy_tolerance is not None
    for kT in sorted({item[0] for item in items}):
        group = [item for item in items if item[0] == kT]
        out = run_stability(committee, [item[1] for item in group], n_replicas=len(group),
                            temperature_K=kT / config.kB, n_steps=int(config.md_steps),
                            timestep_fs=config.md_timestep_fs, integrator="langevin", friction=config.md_friction,
                            reference=reference if energy_check else None,
                            energy_tolerance_eV=config.md_energy_tolerance if energy_check else 0.5,
                            seed=config.seed, bonds_from=[item[5] for item in group])
        calls += max(out["steps_completed"], default=0) + 1
        reference_calls += out["md_reference_calls"]
        for r, (_, atoms, delta_e, bar, path_e, _) in enumerate(group):
            rows.append({"kT": kT, "temperature_K": kT / config.kB, "attack_seed": atoms.info["attack_seed"],
                         "attack_step": atoms.info["attack_step"], "energy_above_min": delta_e,
                         "path_energy_above_min": path_e, "error_bar": bar, "ran_away": out["reasons"][r] is not None,
                         "survived": out["steps_completed"][r] / config.md_steps, "reason": out["reasons"][r] or ""})
    by_reach = safe_temperatures_of([r for r in rows if r["ran_away"]], reach, config)
    safe, bound = by_reach[config.reach]
    survival_by_kT = {f"{kT:g}": float(np.mean([r["survived"] for r in rows if r["kT"] == kT]))
                      for kT in sorted({r["kT"] for r in rows})}
    return {"frames": rows, "safe_temperature_K": float(safe), "safe_bound": bound,
            "safe_temperature_by_reach": by_reach,
            "n_ran_away": sum(r["ran_away"] for r in rows),
            "fraction_ran_away": float(np.mean([r["ran_away"] for r in rows])) if rows else math.nan,
            "mean_survival": float(np.mean([r["survived"] for r in rows])) if rows else math.nan,
            "survival_by_kT": survival_by_kT, "md_steps": int(config.md_steps), "committee_calls": calls,
            "reference_calls": reference_calls, "cpu_s": time.process_time() - started}


class AuditStop:
    """A stopping rule for :class:`~advsample.loop.ActiveLearning` (``stop_when=``): after a round, audit its
    committee from ``structures`` at kT up to k_B·``target_temperature_K`` and stop when no geometry over
    ``force_tolerance`` is within thermal reach below the target (predicted safe T ≥ the target); with
    ``config.verify_per_kT``, nothing *truly* wrong (the verified safe T); with ``config.md_per_kT``, also no short
    NN-MD run from a frame within reach that ran away (the MD-checked safe T ≥ the target).

    ``kT_fractions``: the sweep as fractions of k_B·T_target; ``every``: audit every this many rounds
    (others return None); ``config``: the other :class:`AuditConfig` settings. ``results``: (round,
    :class:`AuditResult`) of every audit run. Build it with :func:`audit_stop`."""

    def __init__(self, structures, target_temperature_K: float, force_tolerance: float,
                 config: AuditConfig | None = None, kT_fractions: Sequence[float] = (0.25, 0.5, 1.0), every: int = 1,
                 progress: bool = False, reference=None):
        if not (isinstance(target_temperature_K, (int, float)) and target_temperature_K > 0):
            raise ValueError(f"target_temperature_K must be a positive temperature (K), got {target_temperature_K!r}")
        if not (isinstance(every, int) and every >= 1):
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        if not kT_fractions or not all(0 < f <= 1 for f in kT_fractions):
            raise ValueError(f"kT_fractions must be fractions in (0, 1] of the target's kT, got {kT_fractions!r}")
        base = config or AuditConfig()
        self.config = replace(base, force_tolerance=force_tolerance,
                              kT_values=tuple(f * base.kB * target_temperature_K for f in kT_fractions))
        self.reference = checking_reference(self.config, structures, reference)  # refused before any round is paid
        self.structures = read_structures(structures)
        self.target_temperature_K = float(target_temperature_K)
        self.every, self.progress = every, progress
        self.results: list[tuple[int, AuditResult]] = []

    def __call__(self, committee, round_index: int, train=None) -> str | None:
        if round_index % self.every:
            return None
        result = audit(committee, self.structures, self.config, progress=self.progress, reference=self.reference)
        self.results.append((round_index, result))
        checked = result.verified is not None  # checked by the reference: the truth decides, not the error bar
        safe, bound = ((result.verified["safe_temperature_K"], result.verified["safe_bound"]) if checked
                       else (result.safe_temperature_K, result.safe_bound))
        if bound != "lower" and safe < self.target_temperature_K * (1 - 1e-9):
            return None
        ran = result.md_checked  # with the short NN-MD check, no run from a frame within reach may run away either
        if (ran is not None and ran["safe_bound"] != "lower"
                and ran["safe_temperature_K"] < self.target_temperature_K * (1 - 1e-9)):
            return None
        unit, raw = self.config.energy_unit, "" if result.calibrated else ", raw σ: the committee is not calibrated"
        what = "truly wrong (checked by the reference) by more than" if checked else "over"
        short = (f"; none of {len(ran['frames'])} short NN-MD runs from its frames ran away below the target"
                 if ran is not None else "")
        return (f"audit: no geometry {what} {self.config.force_tolerance:g} {unit}/Å within thermal reach below "
                f"{self.target_temperature_K:.0f} K ({'verified' if checked else 'predicted'} safe T "
                f"{_bound_text(bound)} {safe:.0f} K{raw}{short}; {result.time_s:.1f} s CPU)")


def audit_stop(structures, target_temperature_K: float, force_tolerance: float, config: AuditConfig | None = None,
               kT_fractions: Sequence[float] = (0.25, 0.5, 1.0), every: int = 1, progress: bool = False,
               reference=None) -> AuditStop:
    """The audit as a stopping rule: ``ActiveLearning(..., stop_when=audit_stop(starts, 600, 0.5))``
    stops when the audit finds no geometry over 0.5 eV/Å within thermal reach below 600 K (see :class:`AuditStop`)."""
    return AuditStop(structures, target_temperature_K, force_tolerance, config, kT_fractions, every, progress, reference)


def _attack_config(config: AuditConfig, kT: float) -> AttackConfig:
    return AttackConfig(kT=kT, n_steps=config.n_steps, learning_rate=config.learning_rate,
                        initial_displacement=config.initial_displacement, max_displacement=config.max_displacement,
                        min_distance=config.min_distance, uncertainty=config.uncertainty, seed=config.seed)


def collective_motion(start: Atoms, moved: Atoms, n: int = 3) -> dict:
    """The atoms that moved most (symbol, index, Å) and the distances that changed most (minimum image)."""
    displacement = np.linalg.norm(moved.positions - start.positions, axis=1)
    symbols = start.get_chemical_symbols()
    top = np.argsort(-displacement, kind="stable")[:n]
    out = {"moved_atoms": " ".join(f"{symbols[i]}{i}:{displacement[i]:.3f}" for i in top),
           "max_displacement": float(displacement.max()), "changed_distances": ""}
    if len(start) > 1:
        before = start.get_all_distances(mic=bool(start.pbc.any()))
        after = moved.get_all_distances(mic=bool(moved.pbc.any()))
        i, j = np.triu_indices(len(start), 1)
        change = (after - before)[i, j]
        top = np.argsort(-np.abs(change), kind="stable")[:n]
        out["changed_distances"] = " ".join(f"{symbols[i[k]]}{i[k]}-{symbols[j[k]]}{j[k]}:{change[k]:+.3f}"
                                            for k in top)
    return out


def _bare(atoms: Atoms) -> Atoms:
    copy = atoms.copy()
    copy.calc = None
    return copy


def _evaluated_frames(result, every: int) -> list[Atoms]:
    """Each seed's active frames every ``every`` steps and its last active frame (step 0 included)."""
    out = []
    for seed in range(len(result.seeds)):
        steps = np.flatnonzero(result.active[:, seed])
        if len(steps) == 0:
            continue
        chosen = sorted(set(steps[::every].tolist()) | {int(steps[-1])})
        out.extend(result.frame(t, seed) for t in chosen)
    return out


def _error_bars(committee, frames: Sequence[Atoms], calibration, batch_size: int = 512):
    """[B] largest calibrated force error bar over each frame's free atoms, [B] committee energies,
    [B] their calibrated error bars (raw σ_E uncalibrated), committee calls."""
    prediction = committee.predict(list(frames), batch_size=batch_size)
    sigma = prediction["forces_std_per_atom"]
    bar = calibration.force_interval(sigma) if calibration is not None else sigma
    batch = Batch.from_atoms(list(frames))
    largest = _largest_per_structure(np.where((~batch.fixed.numpy()).any(-1), bar, 0.0), batch)
    energy_bar = prediction["energy_std"] if calibration is None else calibration.energy_interval(prediction["energy_std"])
    return largest, prediction["energy_mean"], energy_bar, math.ceil(len(frames) / batch_size)


def _largest_per_structure(per_atom: np.ndarray, batch: Batch) -> np.ndarray:
    """[B] the largest of ``per_atom`` [N] (non-negative) over each structure's atoms."""
    largest = np.zeros(batch.n_structures)
    np.maximum.at(largest, batch.structure_index.numpy(), per_atom)
    return largest


def bond_table(committee, structures, kT_values: Sequence[float], time_fs: float, energy_unit: str = "eV",
               max_structures: int | None = None) -> list[dict]:
    """Every bond of each start structure (:func:`advsample.bond_scan.bond_scan`: the lighter atom pulled 0–2 Å
    along it, H–H excluded), weakest first: its barrier (the committee's largest energy rise along the pull) and,
    in eV only, the chance it holds ``time_fs`` of MD at each kT (``holds_<kT>``: transition-state estimate,
    exp(−t·(kT/h)·exp(−barrier/kT)); it ranks bonds, it is not a calibrated probability). No labels are used."""
    from .bond_scan import bond_scan

    rows = []
    for k, atoms in enumerate(read_structures(structures)[:max_structures]):
        scan = bond_scan(committee, atoms)
        rates = {kT: scan.escape_rates(kT) for kT in kT_values} if energy_unit == "eV" else {}
        for b, row in enumerate(scan.rows()):
            rows.append({"structure": k, **row, **{f"holds_{kT:g}": float(np.exp(-time_fs * rate[b]))
                                                   for kT, rate in rates.items()}})
    return sorted(rows, key=lambda row: row["barrier"])


def _bound_text(bound: str) -> str:
    return "above" if bound == "lower" else "≈"


def _write_csv(path: Path, rows: list[dict]) -> None:
    names = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)


def command_line(args) -> int:
    """``advsample audit``: the committee checkpoint and structures from ``args``; prints the per-kT table
    and the predicted safe temperature, writes the output folder. Returns the exit code (2: bad input)."""
    import sys

    from .committee import Committee

    if not args.structures and not args.system:
        print("advsample audit: error: give start structures (extxyz files) or --system NAME", file=sys.stderr)
        return 2
    try:
        config = AuditConfig(kT_values=tuple(args.kT), force_tolerance=args.force_tolerance,
                             uncertainty=args.uncertainty, n_replicas=args.n_replicas, max_starts=args.max_starts,
                             n_steps=args.n_steps, learning_rate=args.learning_rate,
                             initial_displacement=args.initial_displacement, min_distance=args.min_distance,
                             energy_unit=args.energy_unit, seed=args.seed,
                             reach=getattr(args, "reach", "frame"), verify_per_kT=getattr(args, "verify", 0),
                             energy_tolerance=getattr(args, "energy_tolerance", None),
                             md_per_kT=getattr(args, "md_check", 0), md_steps=getattr(args, "md_steps", 200),
                             md_timestep_fs=getattr(args, "md_timestep_fs", 0.5),
                             md_start=getattr(args, "md_start", "frame"))
        if args.system:
            from .systems import get_system

            structures = get_system(args.system)
        else:
            structures = args.structures
        reference = getattr(args, "reference", None)
        if config.verify_per_kT:
            if reference is not None:
                from .reference import as_spec

                reference = as_spec(reference)
                reference.check(build=True)  # a bad import path is refused here (ReferenceSpecError), before any work
            elif not args.system:  # a System brings its own (checking_reference)
                raise ValueError("--verify needs a reference: --reference MODULE:ATTR (e.g. ase.calculators.emt:EMT) "
                                 "or --system NAME")
        committee = Committee.load(args.committee, allow_pickle=args.allow_pickle)
        if getattr(args, "bond_scan", False) and not args.md_time_fs > 0:
            raise ValueError(f"--md-time-fs must be positive, got {args.md_time_fs}")
    except (ValueError, FileNotFoundError) as exc:
        print(f"advsample audit: error: {exc}", file=sys.stderr)
        return 2
    result = audit(committee, structures, config, progress=not args.no_progress, reference=reference)
    folder = result.write(args.output)
    for row in result.per_kT:
        print(f"kT {row['kT']:g} {config.energy_unit} ({row['temperature_K']:.0f} K): "
              f"{row['n_over_tolerance_within_reach']} of {row['n_frames']} frames over tolerance within reach, "
              f"largest error bar {row['max_error_within_reach']:.3g} {config.energy_unit}/Å")
    word = "at least" if result.safe_bound == "lower" else "about"
    other = "path" if config.reach == "frame" else "frame"
    other_T, other_bound = result.safe_temperature_by_reach[other]
    print(f"predicted safe temperature: {word} {result.safe_temperature_K:.0f} K "
          f"(reach by {config.reach}; by {other}: {'at least' if other_bound == 'lower' else 'about'} {other_T:.0f} K; "
          f"{'calibrated' if result.calibrated else 'UNCALIBRATED raw σ'}); "
          f"{result.time_s:.1f} s CPU, {result.committee_calls} committee calls; written to {folder}")
    if result.verified is not None:
        v = result.verified
        word = "at least" if v["safe_bound"] == "lower" else "about"
        print(f"checked by the reference ({len(v['frames'])} frames, {v['reference_calls']} calls, "
              f"{len(v['reference_failures'])} failed; verified.csv): {v['flagged_and_failed']} flagged and wrong, "
              f"{v['flagged_not_failed']} flagged but right, {v['failed_not_flagged']} wrong but not flagged; "
              f"verified safe temperature: {word} {v['safe_temperature_K']:.0f} K")
    if result.md_checked is not None:
        m = result.md_checked
        word = "at least" if m["safe_bound"] == "lower" else "about"
        by_kT = ", ".join(f"kT {kT}: {survival:.2f}" for kT, survival in m["survival_by_kT"].items())
        where = "frames" if config.md_start == "frame" else "start structures (the control)"
        print(f"short NN-MD from the {where} ({len(m['frames'])} runs of {m['md_steps']} steps, {m['cpu_s']:.1f} s CPU; "
              f"md_checked.csv): {m['n_ran_away']} ran away; mean fraction survived {by_kT}; "
              f"MD-checked safe temperature: {word} {m['safe_temperature_K']:.0f} K")
    if getattr(args, "bond_scan", False):
        started = time.process_time()
        bonds = bond_table(committee, structures, config.kT_values, args.md_time_fs, config.energy_unit,
                           config.max_starts)
        if not bonds:
            print("bond scan: no bond in the start structures (H–H pairs are not scanned)")
            return 0
        _write_csv(Path(folder) / "bonds.csv", bonds)
        print(f"bond scan ({len(bonds)} bonds, {time.process_time() - started:.1f} s CPU; bonds.csv), weakest:")
        for row in bonds[:3]:
            holds = ", ".join(f"holds {args.md_time_fs:g} fs at kT {kT:g}: {row[f'holds_{kT:g}']:.2f}"
                              for kT in config.kT_values if f"holds_{kT:g}" in row)
            print(f"  structure {row['structure']} {row['bond']}: barrier {row['barrier']:.3g} {config.energy_unit} "
                  f"at +{row['at_stretch_A']:.1f} Å" + (f"; {holds}" if holds else ""))
    return 0
