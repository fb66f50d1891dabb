"""Choose which candidates to label: rank, filter by uncertainty, energy window and distance.

Selection reads typed :class:`~advsample.candidates.Candidates` (Ē, σ² of the run objective's
uncertainty, log L and σ_E as arrays, from the sampler's one scoring; structures that carry
the stored-file labels are read with :meth:`~advsample.candidates.Candidates.from_annotated`).
The energy window is decided here only (:func:`outside_window`: candidates by Ē before labels,
labels by their reference energy after). Ranking
``"score"`` orders by the run's :class:`~advsample.objective.Objective` (log σ² − (Ē − E_min)/kT,
the score the samplers use; never σ alone: σ grows without bound away from the data);
``"sigma"`` by σ² alone; ``"random"`` is plain random: no σ filter, no ordering. The result
is an ordered list longer than the budget; labeling takes candidates in that order until
the budget is filled, so a failed label is replaced by the next one.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
from ase import Atoms

from .candidates import Candidates
from .geometry import pair_distances_numpy
from .objective import Objective

RANKINGS = ("score", "sigma", "random")
LATER_FIELDS = ("label_ceiling", "above_window_weights", "above_window_force_cap", "force_ceiling")  # in the repr only when set
BUDGET_UNITS = ("labels", "reference_calls")


@dataclass
class SelectionConfig:
    """Selection settings; energies relative to the training minimum, in the reference's unit."""

    budget: int = 20  # per round: new labels, or reference calls with budget_unit="reference_calls"
    budget_unit: str = "labels"  # "labels": fill the budget with labels; "reference_calls": pay exactly budget calls
    ranking: str = "score"  # "score" (the run objective), "sigma" (σ only), "random"; a loop uses its sampler's
    energy_ceiling: float | None = None  # drop candidates with Ē − E_min above this
    energy_floor: float | None = None  # negative: drop candidates and labels this far below E_min (reference artifacts)
    label_ceiling: float | None = None  # labels: train on reference energies up to this above E_min (None: energy_ceiling)
    above_window_weights: tuple[float, float] | None = None  # (energy, forces) loss weights of labels above energy_ceiling
    above_window_force_cap: float | None = None  # such a label's RMS force above this: force weight × (cap / RMS)²
    force_ceiling: float | None = None  # labels with an RMS force above this are reference artifacts: paid, not trained on
    window_sigmas: float = 0.0  # rank candidates with Ē + window_sigmas·σ_E above the ceiling last (loop adds σ_E)
    uncertainty_percentile: float | None = 50.0  # score/sigma rankings: prefer σ² above this percentile of the training σ²
    min_distance: float = 0.0  # to training structures and to each other (Å, see structure_distance)

    def __post_init__(self):
        if not isinstance(self.budget, (int, np.integer)) or isinstance(self.budget, bool) or self.budget < 1:
            raise ValueError(f"budget must be an integer >= 1 per round, got {self.budget!r}")
        if self.budget_unit not in BUDGET_UNITS:
            raise ValueError(f"unknown budget_unit {self.budget_unit!r}; choose one of {BUDGET_UNITS}")
        if not self.window_sigmas >= 0:
            raise ValueError(f"window_sigmas must be >= 0 (committee energy std above the mean), got {self.window_sigmas!r}")
        if self.energy_ceiling is not None and not self.energy_ceiling > 0:
            raise ValueError(f"energy_ceiling must be positive (above the training minimum), got {self.energy_ceiling!r}")
        if self.energy_floor is not None and not self.energy_floor < 0:
            raise ValueError(f"energy_floor must be negative (below the training minimum), got {self.energy_floor!r}")
        if self.label_ceiling is not None and not (
                self.energy_ceiling is not None and self.label_ceiling >= self.energy_ceiling):
            raise ValueError(f"label_ceiling={self.label_ceiling!r} needs an energy_ceiling at or below it (it widens "
                             f"the window for labels only), got energy_ceiling={self.energy_ceiling!r}")
        if self.above_window_weights is not None:
            weights = tuple(self.above_window_weights)
            if self.label_ceiling is None:
                raise ValueError("above_window_weights needs a label_ceiling: without one no label above "
                                 "energy_ceiling is trained on")
            if len(weights) != 2 or not all(np.isfinite(w) and w >= 0 for w in weights) or sum(weights) == 0:
                raise ValueError(f"above_window_weights must be (energy, forces) loss weights >= 0, not both 0, "
                                 f"got {self.above_window_weights!r}")
            self.above_window_weights = (float(weights[0]), float(weights[1]))
        if self.above_window_force_cap is not None:
            if self.label_ceiling is None:
                raise ValueError("above_window_force_cap needs a label_ceiling: without one no label above "
                                 "energy_ceiling is trained on")
            if not (np.isfinite(self.above_window_force_cap) and self.above_window_force_cap > 0):
                raise ValueError(f"above_window_force_cap must be a positive RMS force (the reference's force "
                                 f"unit), got {self.above_window_force_cap!r}")
        if self.force_ceiling is not None and not (np.isfinite(self.force_ceiling) and self.force_ceiling > 0):
            raise ValueError(f"force_ceiling must be a positive RMS force (the reference's force unit), "
                             f"got {self.force_ceiling!r}")
        if self.uncertainty_percentile is not None and not 0 <= self.uncertainty_percentile <= 100:
            raise ValueError(f"uncertainty_percentile must be in [0, 100], got {self.uncertainty_percentile!r}")
        if self.min_distance < 0:
            raise ValueError(f"min_distance must be >= 0 Å, got {self.min_distance!r}")
        if self.ranking not in RANKINGS:
            raise ValueError(f"unknown ranking {self.ranking!r}; choose one of {RANKINGS}")

    def __repr__(self) -> str:  # fields added later only when set: run directories made before them still resume
        shown = [(f.name, getattr(self, f.name)) for f in fields(self)
                 if not (f.name in LATER_FIELDS and getattr(self, f.name) is None)]
        return f"SelectionConfig({', '.join(f'{name}={value!r}' for name, value in shown)})"


class EnergyWindowWarning(RuntimeWarning):
    """The energy window leaves out most candidates (before anything is paid for them)."""


def free_atoms(atoms: Atoms) -> int:
    """Atoms not held by ``FixAtoms`` (the ones that carry thermal energy)."""
    from ase.constraints import FixAtoms

    held = {int(i) for c in atoms.constraints if isinstance(c, FixAtoms) for i in c.index}
    return len(atoms) - len(held)


def thermal_energy(atoms: Atoms, kT: float) -> float:
    """≈ (3N/2)·kT: the mean potential energy above the minimum of N free atoms at k_B T = kT
    (equipartition, harmonic basin; the reference's energy unit). Thermal frames sit about
    this far up, with a spread of about √(3N/2)·kT: an energy window must grow with N and T."""
    return 1.5 * free_atoms(atoms) * float(kT)


def check_energy_window(energy_ceiling: float | None, atoms: Atoms, kT: float, sampler: str = "a thermal sampler",
                        stacklevel: int = 2) -> None:
    """Warn (:class:`EnergyWindowWarning`) when ``energy_ceiling`` is below the thermal energy of
    ``atoms`` at ``kT`` (:func:`thermal_energy`): most of the sampler's frames would fall outside it."""
    if energy_ceiling is None:
        return
    thermal = thermal_energy(atoms, kT)
    if energy_ceiling < thermal:
        import warnings

        warnings.warn(
            f"energy window: energy_ceiling={energy_ceiling:g} above the training minimum is below the thermal energy "
            f"of {sampler}'s frames, ≈ (3N/2)·kT = 1.5 x {free_atoms(atoms)} free atoms x {kT:g} = {thermal:.3g}: "
            "most of its candidates would be left out (or paid for outside the window). The window must grow with "
            f"the number of atoms and the temperature: use energy_ceiling > {thermal:.3g} plus the barriers to "
            "sample, or None", EnergyWindowWarning, stacklevel=stacklevel)


def outside_window(energy_above_min, config: SelectionConfig, energy_std=None, labels: bool = False,
                   force_rms=None) -> np.ndarray:
    """[B] bool: energies above the training minimum [B] (Ē of candidates, or reference energies of
    labels) above ``config.energy_ceiling`` or below ``config.energy_floor`` (a reference energy far
    below every training structure's is an artifact, e.g. a fixed-topology force field at overlapping
    atoms, not a state the system reaches); with ``energy_std`` [B] (σ_E) the upper bound
    E + window_sigmas·σ_E is tested against the ceiling instead. ``labels=True`` (reference energies
    of labels): the ceiling is ``config.label_ceiling`` when set, so a label the committee placed
    inside the window but the reference puts higher (a hole NN-MD can fall into) is trained on; with
    ``force_rms`` [B] (the labels' RMS forces), those above ``config.force_ceiling`` are outside too
    (an artifact: a GFN-FF label 4.5 eV up with an RMS force of 462 eV/Å collapsed a committee).
    The run's one energy-window test."""
    energy = np.asarray(energy_above_min, dtype=float)
    outside = np.zeros(energy.shape, dtype=bool)
    if config.energy_floor is not None:
        outside |= energy < config.energy_floor
    if labels and config.force_ceiling is not None and force_rms is not None:
        outside |= np.asarray(force_rms, dtype=float) > config.force_ceiling
    ceiling = config.label_ceiling if labels and config.label_ceiling is not None else config.energy_ceiling
    if ceiling is None:
        return outside
    if energy_std is not None:
        energy = energy + config.window_sigmas * np.asarray(energy_std, dtype=float)
    return outside | (energy > ceiling)


def rms_force(atoms: Atoms) -> float:
    """√⟨|F_i|²⟩ over the atoms of a labeled structure (its reference forces, constraints applied)."""
    return float(np.sqrt((atoms.get_forces() ** 2).sum(1).mean()))


def label_loss_weights(energy_above_min, config: SelectionConfig, force_rms=None) -> np.ndarray:
    """[B, 2] (energy, forces) loss weights of labels with reference energies [B] above the training
    minimum: ``config.above_window_weights`` for those above ``energy_ceiling`` (trained on because of
    ``label_ceiling``: the committee's holes), 1 for the rest; with ``config.above_window_force_cap``
    and the labels' RMS forces ``force_rms`` [B], such a label's force weight is also multiplied by
    (cap / RMS)² where its RMS force is above the cap, so its force term counts as a relative error.
    A hole's energy error is tens of eV where the committee's is tenths, its forces up to ~200 eV/Å
    where training forces are ~2: weighted down (e.g. ``(0, 1)`` and a cap of 2: forces only, as a
    relative error) the label teaches the slope out of the hole without bending the whole surface."""
    energy = np.asarray(energy_above_min, dtype=float)
    weights = np.ones((energy.size, 2))
    if config.energy_ceiling is None:
        return weights
    above = energy > config.energy_ceiling
    if config.above_window_weights is not None:
        weights[above] = config.above_window_weights
    if config.above_window_force_cap is not None:
        if force_rms is None:
            raise ValueError("above_window_force_cap: give the labels' RMS forces (force_rms)")
        rms = np.asarray(force_rms, dtype=float)
        scale = np.minimum(1.0, (config.above_window_force_cap / np.maximum(rms, 1e-300)) ** 2)
        weights[above, 1] *= scale[above]
    return weights


def as_candidates(candidates: "Candidates | Sequence[Atoms]") -> Candidates:
    """Typed candidates as they are; a sequence of structures read from their stored-file labels."""
    return candidates if isinstance(candidates, Candidates) else Candidates.from_annotated(candidates)


def descriptor(atoms: Atoms) -> np.ndarray:
    """Invariant fingerprint (Å): a single particle's position, or all pair distances / √n_pairs.

    The Euclidean distance between fingerprints is then the particle distance, or the RMS
    change of the pair distances. Pair distances are minimum image along periodic
    directions (:func:`advsample.geometry.pair_distances_numpy`), so an atom that crosses the cell edge
    keeps its fingerprint and two copies of a slab shifted by a lattice vector coincide.
    """
    if len(atoms) == 1:
        return atoms.positions[0].copy()
    i, j = np.triu_indices(len(atoms), k=1)
    distances = pair_distances_numpy(atoms.positions, i, j, atoms.cell.array, atoms.pbc)
    return distances / np.sqrt(len(i))


def structure_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances between fingerprints a [n, d] and b [m, d] -> [n, m] (Å)."""
    return np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)


def _descriptors(atoms_list: Sequence[Atoms]) -> dict[int, tuple[list[int], np.ndarray]]:
    """Group descriptors by number of atoms: {n_atoms: (indices, [k, d])}."""
    groups: dict[int, list[int]] = {}
    for index, atoms in enumerate(atoms_list):
        groups.setdefault(len(atoms), []).append(index)
    return {n: (idx, np.stack([descriptor(atoms_list[i]) for i in idx])) for n, idx in groups.items()}


def rank(candidates: "Candidates | Sequence[Atoms]", config: SelectionConfig, objective: Objective,
         energy_reference: float, seed: int = 0) -> np.ndarray:
    """Candidate indices, best first, by the configured ranking (``"score"``: the objective's)."""
    candidates = as_candidates(candidates)
    energy, variance = candidates.energy_mean, candidates.variance
    if config.ranking == "random":
        return np.random.default_rng(seed).permutation(len(candidates))
    if config.ranking == "sigma":
        key = np.log(np.clip(variance, 1e-30, None))
        key = np.where(np.isfinite(key), key, -np.inf)
    else:
        key = objective.rank_key(energy, variance, energy_reference, n_atoms=[len(a) for a in candidates.structures])
    return np.argsort(-key, kind="stable")


def select(
    candidates: "Candidates | Sequence[Atoms]",
    train: Sequence[Atoms],
    config: SelectionConfig,
    objective: Objective,
    energy_reference: float,
    train_variance: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[Candidates, dict]:
    """Ordered candidates to label (best first, longer than the budget when possible) and a report.

    ``candidates``: typed :class:`~advsample.candidates.Candidates` (or structures with the
    stored-file labels); the result is the same record reordered (its ``[i]`` and iteration give
    the structures), so the values of each pick travel with it.

    Order: for the score and σ rankings, candidates passing the uncertainty threshold first,
    then the rest (the fallback when too few pass); within each, by ranking (random: no threshold). Candidates above the energy ceiling are
    dropped; with ``window_sigmas`` κ > 0 those whose Ē + κ·σ_E is above it come after all
    others (likely to be paid for outside the window); those closer than ``min_distance`` to training data or an earlier pick go to
    the very end (used only when nothing else is left, so the budget is still filled).
    """
    candidates = as_candidates(candidates)
    report = {"n_candidates": len(candidates), "dropped_energy_ceiling": 0, "dropped_distance": 0, "threshold": None}
    if len(candidates) == 0:
        return candidates, report
    order = rank(candidates, config, objective, energy_reference, seed)
    energy = candidates.energy_mean - energy_reference
    variance = candidates.variance
    keep, unsure = _window(candidates, energy, np.isfinite(energy) & np.isfinite(variance), config, objective, report)
    passes = np.ones(len(candidates), dtype=bool)
    if (config.ranking != "random" and config.uncertainty_percentile is not None and train_variance is not None
            and len(train_variance)):
        threshold = float(np.percentile(train_variance, config.uncertainty_percentile))
        report["threshold"] = threshold
        passes = variance > threshold
    order = ([i for i in order if keep[i] and passes[i] and not unsure[i]]
             + [i for i in order if keep[i] and not passes[i] and not unsure[i]] + [i for i in order if unsure[i]])
    report["n_above_threshold"] = int((keep & passes).sum())
    chosen = _spread_out(candidates, order, train, config.min_distance, report) if config.min_distance > 0 else order
    report["n_ranked"] = len(chosen)
    return candidates.take(chosen), report


def _window(candidates: Candidates, energy: np.ndarray, keep: np.ndarray, config: SelectionConfig,
            objective: Objective, report: dict) -> tuple[np.ndarray, np.ndarray]:
    """(keep [B], unsure [B]): ``keep`` without the candidates whose Ē − E_min [B] (``energy``) is above
    the ceiling; ``unsure`` those kept whose Ē + κ·σ_E is above it (``window_sigmas`` κ > 0). Warns
    when most are left out; counts go to ``report``."""
    unsure = np.zeros(len(candidates), dtype=bool)  # Ē inside the window, its upper confidence bound not
    if config.energy_ceiling is None and config.energy_floor is None:
        return keep, unsure
    outside = outside_window(energy, config)
    below = energy < config.energy_floor if config.energy_floor is not None else np.zeros_like(outside)  # ⊆ outside
    report["dropped_energy_floor"] = int((below & keep).sum())
    report["dropped_energy_ceiling"] = int((outside & ~below & keep).sum())
    if keep.sum() >= 4 and report["dropped_energy_ceiling"] > 0.5 * keep.sum():
        import warnings

        n = int(np.median([free_atoms(a) for a in candidates]))
        warnings.warn(
            f"energy window: {report['dropped_energy_ceiling']} of {int(keep.sum())} candidates have a committee "
            f"energy above energy_ceiling={config.energy_ceiling:g} (above the training minimum) and are not labeled. "
            f"Thermal frames of {n} free atoms sit ≈ (3N/2)·kT = {1.5 * n * objective.kT:.3g} up at the run's "
            f"kT={objective.kT:g}: the window must grow with the number of atoms and the temperature",
            EnergyWindowWarning, stacklevel=3)
    keep = keep & ~outside
    if config.window_sigmas > 0 and config.energy_ceiling is not None:
        missing = np.flatnonzero(~np.isfinite(candidates.energy_std))
        if len(missing):
            raise ValueError(f"window_sigmas={config.window_sigmas:g} needs σ_E (Candidates.energy_std; the stored "
                             f"label 'committee_energy_std') of every candidate; candidate {missing[0]} has none "
                             "(a sampler's scoring gives it)")
        unsure = keep & outside_window(energy, config, candidates.energy_std)
        report["deferred_energy_bound"] = int(unsure.sum())
    return keep, unsure


def _spread_out(candidates: Candidates, order: list[int], train: Sequence[Atoms], min_distance: float,
                report: dict) -> list[int]:
    """``order`` with the candidates closer than ``min_distance`` (Å) to training data or an earlier
    pick moved to the end (a last resort, so the budget can still be filled), in rank order."""
    reference_groups = _descriptors(train) if len(train) else {}
    picked: dict[int, list[np.ndarray]] = {}
    chosen: list[int] = []
    crowded: list[int] = []
    for i in order:
        d = descriptor(candidates[i])[None, :]
        n = len(candidates[i])
        near_train = n in reference_groups and structure_distance(d, reference_groups[n][1]).min() < min_distance
        near_pick = bool(picked.get(n)) and structure_distance(d, np.stack(picked[n])).min() < min_distance
        if near_train or near_pick:
            crowded.append(i)
            continue
        chosen.append(i)
        picked.setdefault(n, []).append(d[0])
    report["dropped_distance"] = len(crowded)
    return chosen + crowded
