"""The round objective: one kT and one uncertainty kind per run, one score for everyone.

``Objective(kT, uncertainty)`` is given once to a run (:class:`~advsample.loop.ActiveLearning`);
each round binds it to the training energies (:meth:`Objective.bind`: E_min and log Q once),
every sampler proposes with the bound objective (typed :class:`~advsample.candidates.Candidates`)
and selection ranks by the same score. The score is
the adversarial log-likelihood of :func:`advsample.uncertainty.adversarial_log_score`,

    log L = log σ² − (Ē − E_min)/kT − log Q,

with E_min the training minimum and Q the training set's Boltzmann sum at kT. kT is in the
reference's energy unit (eV for molecules); σ² is the committee's force variance
(``"forces"``, per structure, over free coordinates) or energy variance (``"energy"``).

Two options give the objective the authors' zeolite attack ran (docs/design.md, "The paper's
objective"); the defaults keep the form above, bit for bit:

* ``force_reduction="max"`` (or ``uncertainty="forces_max"``): σ² is the largest per-atom force
  variance of the structure instead of the mean over its free coordinates
  (:func:`advsample.uncertainty.force_variance_max_per_structure`).
* ``energy_scale="per_atom"``: the Boltzmann factor reads energies per atom, Ē/N (N the
  structure's atoms, fixed ones included), as the authors' ``robust.schnet.Attacker.attack_epoch``
  divides the committee energies by the number of atoms and their zeolite notebook builds
  ``robust.loss.AdvLoss`` (Q the mean Boltzmann factor) from the training set's E/N:

      log L = log σ² − (Ē/N − e_min)/kT − log Q,  e_min = min_i E_i/N_i,  Q = ⟨exp(−(E_i/N_i − e_min)/kT)⟩_train.

  :meth:`Objective.bind` takes the training sizes N_i as ``n_atoms``; without them each training
  structure is counted at the scored structure's size N (e_min = E_min/N, Q at N·kT), which is the
  same number whenever the training structures have that size, and the same attack gradient always.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from ase import Atoms

from . import uncertainty
from .candidates import Candidates
from .committee import Committee
from .parameters import as_number
from .structures import Batch

KINDS = ("forces", "energy")
ALIASES = {"forces_max": ("forces", "max")}  # uncertainty spellings that also set force_reduction
FORCE_REDUCTIONS = ("mean", "max")
ENERGY_SCALES = ("total", "per_atom")


@dataclass(frozen=True)
class Objective:
    """kT (energy unit of the reference), the attacked variance (``"forces"`` | ``"energy"``;
    ``"forces_max"`` is ``"forces"`` with ``force_reduction="max"``), how a structure's per-atom
    force variances become one σ² (``force_reduction``: ``"mean"`` over free coordinates |
    ``"max"`` over atoms) and the energy of the Boltzmann factor (``energy_scale``: the
    structure's ``"total"`` Ē | ``"per_atom"`` Ē/N)."""

    kT: float = 1.0
    uncertainty: str = "forces"
    energy_scale: str = "total"
    force_reduction: str = "mean"

    def __post_init__(self):
        kT = as_number(self.kT, "kT")  # numpy scalars and 0-d tensors too; strings, booleans, NaN named
        if not np.isfinite(kT) or kT <= 0:
            raise ValueError(f"kT must be a positive energy (the reference's unit), got {kT!r}")
        object.__setattr__(self, "kT", kT)
        if self.uncertainty in ALIASES:
            kind, reduction = ALIASES[self.uncertainty]
            object.__setattr__(self, "uncertainty", kind)
            object.__setattr__(self, "force_reduction", reduction)
        if self.uncertainty not in KINDS:
            raise ValueError(f"uncertainty must be one of {KINDS + tuple(ALIASES)}, got {self.uncertainty!r}")
        if self.force_reduction not in FORCE_REDUCTIONS:
            raise ValueError(f"force_reduction must be one of {FORCE_REDUCTIONS}, got {self.force_reduction!r}")
        if self.force_reduction == "max" and self.uncertainty != "forces":
            raise ValueError(f"force_reduction='max' reduces force variances: it needs uncertainty='forces', "
                             f"got uncertainty={self.uncertainty!r}")
        if self.energy_scale not in ENERGY_SCALES:
            raise ValueError(f"energy_scale must be one of {ENERGY_SCALES}, got {self.energy_scale!r}")

    def __repr__(self) -> str:
        # the options appear only when set: a default objective reads as before (run settings compare it)
        options = "".join(f", {name}={getattr(self, name)!r}" for name, default in
                          (("energy_scale", "total"), ("force_reduction", "mean")) if getattr(self, name) != default)
        return f"Objective(kT={self.kT!r}, uncertainty={self.uncertainty!r}{options})"

    def log_partition(self, train_energies) -> float:
        """log Q of the training energies [n] at kT, relative to their minimum."""
        return uncertainty.log_partition(train_energies, self.kT, float(np.min(train_energies)))

    def variance(self, output) -> torch.Tensor:
        """[B] the attacked variance of a :class:`~advsample.committee.CommitteeOutput`."""
        if self.uncertainty == "energy":
            return output.energy_variance
        if self.force_reduction == "mean":
            return output.force_variance
        if output.forces is None:
            raise ValueError("forces were not computed: call the committee with forces=True")
        return uncertainty.force_variance_max_per_structure(output.forces, output.structure_index,
                                                            output.n_structures, output.free)

    def rank_key(self, energy, variance, energy_reference: float, n_atoms=None) -> np.ndarray:
        """[B] log L up to the constant log Q, in float64, for Ē [B] and σ² [B] (non-finite -> −inf).

        ``energy_scale="per_atom"`` needs ``n_atoms`` [B] and candidates of one size (the constants
        of mixed sizes are the bound objective's: :meth:`BoundObjective.rank_key`)."""
        energy = torch.as_tensor(np.asarray(energy, dtype=float))
        variance = torch.as_tensor(np.asarray(variance, dtype=float))
        if self.energy_scale == "total":
            key = uncertainty.adversarial_log_score(variance, energy, self.kT, 0.0, energy_reference).numpy()
        else:
            sizes = _sizes(n_atoms, len(energy), "rank_key")
            if len(np.unique(sizes)) > 1:
                raise ValueError(f"rank_key: energy_scale='per_atom' ranks structures of different sizes "
                                 f"{sorted(set(sizes.tolist()))} by the bound objective's constants: "
                                 "use objective.bind(train_energies, n_atoms=...).rank_key")
            n = torch.as_tensor(sizes, dtype=energy.dtype)
            key = uncertainty.adversarial_log_score(variance, energy / n, self.kT, 0.0, energy_reference / n).numpy()
        return np.where(np.isfinite(key), key, -np.inf)

    def bind(self, train_energies, n_atoms=None) -> "BoundObjective":
        """The round's objective: E_min and log Q of the training energies [n] computed once.

        ``n_atoms`` [n] (or one int for all): the training structures' sizes, read only by
        ``energy_scale="per_atom"`` (e_min and Q over E_i/N_i; see the module docstring)."""
        energies = np.asarray(train_energies, dtype=float)
        if energies.size == 0:
            raise ValueError("bind: no training energies (E_min and Q need at least one)")
        if self.energy_scale == "total":
            return BoundObjective(self, float(np.min(energies)), self.log_partition(energies))
        if n_atoms is None:  # each training structure counted at the scored structure's size
            return BoundObjective(self, float(np.min(energies)), math.nan, train_energies=energies.reshape(-1))
        per_atom = energies.reshape(-1) / _sizes(n_atoms, energies.size, "bind")
        atom_reference = float(np.min(per_atom))
        return BoundObjective(self, float(np.min(energies)), uncertainty.log_partition(per_atom, self.kT, atom_reference),
                              atom_reference=atom_reference)

    def score(self, committee: Committee, atoms_list: Sequence[Atoms], train_energies, n_atoms=None) -> list[Atoms]:
        """Copies of the structures with ``committee_energy`` (Ē), ``committee_variance`` (σ²)
        and ``log_score`` (log L) as ``info`` labels; ``train_energies`` [n] fix E_min and Q
        (``n_atoms`` [n]: the training sizes, see :meth:`bind`).
        For notebooks and files; a round uses :meth:`BoundObjective.score` (typed :class:`Candidates`)."""
        if len(atoms_list) == 0:
            return []
        return self.bind(train_energies, n_atoms).score(committee, atoms_list).annotated()


def _sizes(n_atoms, n: int, where: str) -> np.ndarray:
    """[n] positive atom counts from ``n_atoms`` ([n] or one int); a clear error otherwise."""
    if n_atoms is None:
        raise ValueError(f"{where}: energy_scale='per_atom' needs n_atoms (the structures' numbers of atoms)")
    if isinstance(n_atoms, torch.Tensor):
        n_atoms = n_atoms.detach().cpu().numpy()
    sizes = np.asarray(n_atoms)
    if sizes.ndim == 0:
        sizes = np.full(n, sizes)
    whole = sizes.dtype.kind in "iu" or (sizes.dtype.kind == "f" and np.all(np.mod(sizes, 1) == 0))
    if sizes.shape != (n,) or not whole or np.any(sizes < 1):
        raise ValueError(f"{where}: n_atoms must be {n} positive integers (one per structure), got {n_atoms!r}")
    return sizes.astype(np.int64)


@dataclass(frozen=True)
class BoundObjective:
    """An :class:`Objective` bound to one round's training energies: E_min (``energy_reference``)
    and log Q (``log_q``) fixed once, used by the samplers and by selection.

    With ``energy_scale="per_atom"``: ``atom_reference`` is e_min = min E_i/N_i and ``log_q`` the
    per-atom log Q when the training sizes were given; otherwise ``log_q`` is NaN and
    ``train_energies`` [n] give each scored size N its own e_min = E_min/N and Q at N·kT."""

    objective: Objective
    energy_reference: float
    log_q: float
    atom_reference: float | None = None
    train_energies: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def kT(self) -> float:
        return self.objective.kT

    @property
    def uncertainty(self) -> str:
        return self.objective.uncertainty

    @property
    def energy_scale(self) -> str:
        return self.objective.energy_scale

    @property
    def force_reduction(self) -> str:
        return self.objective.force_reduction

    def bind(self, train_energies=None, n_atoms=None) -> "BoundObjective":
        """Already bound: itself (the round's E_min and log Q; ``train_energies`` are not re-read)."""
        return self

    def variance(self, output) -> torch.Tensor:
        return self.objective.variance(output)

    def rank_key(self, energy, variance, energy_reference: float | None = None, n_atoms=None) -> np.ndarray:
        """[B] log L + log Q in float64 (see :meth:`Objective.rank_key`); E_min the bound one by default.
        ``energy_scale="per_atom"``: log L itself (the bound constants; ``n_atoms`` [B] needed)."""
        if self.energy_scale == "total":
            reference = self.energy_reference if energy_reference is None else energy_reference
            return self.objective.rank_key(energy, variance, reference)
        energy = torch.as_tensor(np.asarray(energy, dtype=float))
        key = self.log_score(torch.as_tensor(np.asarray(variance, dtype=float)), energy,
                             _sizes(n_atoms, len(energy), "rank_key")).numpy()
        return np.where(np.isfinite(key), key, -np.inf)

    def log_score(self, variance: torch.Tensor, energy_mean: torch.Tensor, n_atoms=None) -> torch.Tensor:
        """[B] log L = log σ² − (Ē − E_min)/kT − log Q (``per_atom``: Ē/N, ``n_atoms`` [B] needed)."""
        if self.energy_scale == "total":
            return uncertainty.adversarial_log_score(variance, energy_mean, self.kT, self.log_q, self.energy_reference)
        n = torch.as_tensor(_sizes(n_atoms, len(energy_mean), "log_score"), dtype=energy_mean.dtype,
                            device=energy_mean.device)
        if self.atom_reference is not None:
            return uncertainty.adversarial_log_score(variance, energy_mean / n, self.kT, self.log_q, self.atom_reference)
        # training sizes unknown: each training structure at the scored size N (e_min = E_min/N, Q at N·kT)
        sizes, inverse = torch.unique(n, return_inverse=True)
        shifted = torch.as_tensor(self.train_energies - self.energy_reference, dtype=torch.float64)
        log_q = torch.logsumexp(-shifted[None, :] / (sizes.double()[:, None] * self.kT), dim=1) - math.log(len(shifted))
        return uncertainty.adversarial_log_score(variance, energy_mean / n, self.kT,
                                                 log_q.to(energy_mean)[inverse], self.energy_reference / n)

    def evaluate(self, output) -> tuple[torch.Tensor, torch.Tensor]:
        """(σ² [B], log L [B]) of a :class:`~advsample.committee.CommitteeOutput`: the one score the
        attack ascends and selection ranks (sizes N from its ``structure_index``)."""
        variance = self.variance(output)
        n_atoms = None
        if self.energy_scale == "per_atom":
            n_atoms = torch.bincount(output.structure_index, minlength=output.n_structures).cpu().numpy()
        return variance, self.log_score(variance, output.energy_mean, n_atoms)

    def score(self, committee: Committee, atoms_list: Sequence[Atoms], source: str = "") -> Candidates:
        """:class:`Candidates` of the structures: Ē, σ², log L and σ_E [B] from one committee call per
        chunk of 512 (σ_E comes with the same call)."""
        columns = {"energy_mean": [], "variance": [], "score": [], "energy_std": []}
        structures = []
        for start in range(0, len(atoms_list), 512):
            chunk = atoms_list[start : start + 512]
            result = committee(Batch.from_atoms(chunk), forces=self.uncertainty == "forces")
            variance, score = self.evaluate(result)
            values = (result.energy_mean, variance, score, result.energy_variance.sqrt())
            for key, value in zip(columns, values):
                columns[key] += value.detach().cpu().tolist()
            for atoms in chunk:
                copy = atoms.copy()
                copy.calc = None
                structures.append(copy)
        return Candidates(structures, source=source, uncertainty=self.uncertainty, **columns)
