"""The round objective: one kT and one uncertainty kind per run, one score for everyone.

``Objective(kT, uncertainty)`` is given once to a run (:class:`~advsample.loop.ActiveLearning`);
every sampler proposes with it and selection ranks by the score it writes. The score is
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
from .committee import Committee
from .structures import Batch

KINDS = ("forces", "energy")


@dataclass(frozen=True)
class Objective:
    """kT (energy unit of the reference) and the attacked variance (``"forces"`` | ``"energy"``)."""

    kT: float = 1.0
    uncertainty: str = "forces"

    def __post_init__(self):
        if not isinstance(self.kT, (int, float)) or not np.isfinite(self.kT) or self.kT <= 0:
            raise ValueError(f"kT must be a positive energy (the reference's unit), got {self.kT!r}")
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

    def score(self, committee: Committee, atoms_list: Sequence[Atoms], train_energies) -> list[Atoms]:
        """Copies of the structures with ``committee_energy`` (Ē), ``committee_variance`` (σ²)
        and ``log_score`` (log L) in ``info``; ``train_energies`` [n] fix E_min and Q."""
        if len(atoms_list) == 0:
            return []
        reference = float(np.min(train_energies))
        log_q = self.log_partition(train_energies)
        out = []
        for start in range(0, len(atoms_list), 512):
            chunk = atoms_list[start : start + 512]
            result = committee(Batch.from_atoms(chunk), forces=self.uncertainty == "forces")
            variance = self.variance(result)
            score = uncertainty.adversarial_log_score(variance, result.energy_mean, self.kT, log_q, reference)
            for atoms, energy, var, s in zip(chunk, result.energy_mean.tolist(), variance.tolist(), score.tolist()):
                copy = atoms.copy()
                copy.calc = None
                copy.info.update(committee_energy=energy, committee_variance=var, log_score=s)
                out.append(copy)
        return out
