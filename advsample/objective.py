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
"""
from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class Objective:
    """kT (energy unit of the reference) and the attacked variance (``"forces"`` | ``"energy"``)."""

    kT: float = 1.0
    uncertainty: str = "forces"

    def __post_init__(self):
        kT = as_number(self.kT, "kT")  # numpy scalars and 0-d tensors too; strings, booleans, NaN named
        if not np.isfinite(kT) or kT <= 0:
            raise ValueError(f"kT must be a positive energy (the reference's unit), got {kT!r}")
        object.__setattr__(self, "kT", kT)
        if self.uncertainty not in KINDS:
            raise ValueError(f"uncertainty must be one of {KINDS}, got {self.uncertainty!r}")

    def log_partition(self, train_energies) -> float:
        """log Q of the training energies [n] at kT, relative to their minimum."""
        return uncertainty.log_partition(train_energies, self.kT, float(np.min(train_energies)))

    def variance(self, output) -> torch.Tensor:
        """[B] the attacked variance of a :class:`~advsample.committee.CommitteeOutput`."""
        return output.force_variance if self.uncertainty == "forces" else output.energy_variance

    def rank_key(self, energy, variance, energy_reference: float) -> np.ndarray:
        """[B] log L up to the constant log Q, in float64, for Ē [B] and σ² [B] (non-finite -> −inf)."""
        energy = torch.as_tensor(np.asarray(energy, dtype=float))
        variance = torch.as_tensor(np.asarray(variance, dtype=float))
        key = uncertainty.adversarial_log_score(variance, energy, self.kT, 0.0, energy_reference).numpy()
        return np.where(np.isfinite(key), key, -np.inf)

    def bind(self, train_energies) -> "BoundObjective":
        """The round's objective: E_min and log Q of the training energies [n] computed once."""
        energies = np.asarray(train_energies, dtype=float)
        if energies.size == 0:
            raise ValueError("bind: no training energies (E_min and Q need at least one)")
        return BoundObjective(self, float(np.min(energies)), self.log_partition(energies))

    def score(self, committee: Committee, atoms_list: Sequence[Atoms], train_energies) -> list[Atoms]:
        """Copies of the structures with ``committee_energy`` (Ē), ``committee_variance`` (σ²)
        and ``log_score`` (log L) as ``info`` labels; ``train_energies`` [n] fix E_min and Q.
        For notebooks and files; a round uses :meth:`BoundObjective.score` (typed :class:`Candidates`)."""
        if len(atoms_list) == 0:
            return []
        return self.bind(train_energies).score(committee, atoms_list).annotated()


@dataclass(frozen=True)
class BoundObjective:
    """An :class:`Objective` bound to one round's training energies: E_min (``energy_reference``)
    and log Q (``log_q``) fixed once, used by the samplers and by selection."""

    objective: Objective
    energy_reference: float
    log_q: float

    @property
    def kT(self) -> float:
        return self.objective.kT

    @property
    def uncertainty(self) -> str:
        return self.objective.uncertainty

    def bind(self, train_energies=None) -> "BoundObjective":
        """Already bound: itself (the round's E_min and log Q; ``train_energies`` are not re-read)."""
        return self

    def variance(self, output) -> torch.Tensor:
        return self.objective.variance(output)

    def rank_key(self, energy, variance, energy_reference: float | None = None) -> np.ndarray:
        """[B] log L + log Q in float64 (see :meth:`Objective.rank_key`); E_min the bound one by default."""
        reference = self.energy_reference if energy_reference is None else energy_reference
        return self.objective.rank_key(energy, variance, reference)

    def log_score(self, variance: torch.Tensor, energy_mean: torch.Tensor) -> torch.Tensor:
        """[B] log L = log σ² − (Ē − E_min)/kT − log Q."""
        return uncertainty.adversarial_log_score(variance, energy_mean, self.kT, self.log_q, self.energy_reference)

    def score(self, committee: Committee, atoms_list: Sequence[Atoms], source: str = "") -> Candidates:
        """:class:`Candidates` of the structures: Ē, σ², log L and σ_E [B] from one committee call per
        chunk of 512 (σ_E comes with the same call)."""
        columns = {"energy_mean": [], "variance": [], "score": [], "energy_std": []}
        structures = []
        for start in range(0, len(atoms_list), 512):
            chunk = atoms_list[start : start + 512]
            result = committee(Batch.from_atoms(chunk), forces=self.uncertainty == "forces")
            variance = self.variance(result)
            values = (result.energy_mean, variance, self.log_score(variance, result.energy_mean),
                      result.energy_variance.sqrt())
            for key, value in zip(columns, values):
                columns[key] += value.detach().cpu().tolist()
            for atoms in chunk:
                copy = atoms.copy()
                copy.calc = None
                structures.append(copy)
        return Candidates(structures, source=source, uncertainty=self.uncertainty, **columns)
