"""A round's candidates as typed data: the structures and the committee's view of them, as arrays.

Samplers return :class:`Candidates` (inside :class:`~advsample.samplers.Proposal`), selection
ranks and filters by its arrays, and the loop takes the labeled ones' values by index: a
round's data never travels in ``atoms.info``. Only the run directory's extxyz files carry
the values as labels on the stored structures (:meth:`Candidates.annotated`, the keys
:data:`INFO_KEYS`), so a reader of ``candidates.extxyz`` / ``selected.extxyz`` sees them;
:meth:`Candidates.from_annotated` reads such files (or hand-made structures) back.

B candidates; energies in the reference's unit, variances in its square (σ² of forces per
structure, over free coordinates, for the ``"forces"`` objective; of energies for ``"energy"``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
from ase import Atoms

# labels of stored structures (extxyz files of a run directory), never read during a round
INFO_KEYS = {"energy_mean": "committee_energy", "variance": "committee_variance", "score": "log_score",
             "energy_std": "committee_energy_std"}


def _array(values, n: int, name: str) -> np.ndarray:
    out = np.full(n, np.nan) if values is None else np.asarray(values, dtype=float).reshape(-1)
    if out.shape != (n,):
        raise ValueError(f"Candidates.{name} must have one value per structure ({n}), got shape {out.shape}")
    return out


@dataclass
class Candidates:
    """B proposed structures with the committee's values of the round's objective.

    structures: B ``ase.Atoms`` (geometry; no calculator); energy_mean [B] Ē; variance [B] the
    attacked σ² (``uncertainty``: ``"forces"`` or ``"energy"``); score [B] log L of the bound
    objective; energy_std [B] σ_E (the energy window's confidence bound; NaN where unknown);
    source: the sampler's name. Iterating, ``len`` and ``[i]`` give the structures, so code
    that wants plain geometries can use it as a list.
    """

    structures: list[Atoms]
    energy_mean: np.ndarray
    variance: np.ndarray
    score: np.ndarray
    energy_std: np.ndarray | None = None
    source: str = ""
    uncertainty: str = "forces"
    _n: int = field(default=0, init=False, repr=False)

    def __post_init__(self):
        self.structures = list(self.structures)
        n = self._n = len(self.structures)
        self.energy_mean = _array(self.energy_mean, n, "energy_mean")
        self.variance = _array(self.variance, n, "variance")
        self.score = _array(self.score, n, "score")
        self.energy_std = _array(self.energy_std, n, "energy_std")

    @classmethod
    def empty(cls, source: str = "", uncertainty: str = "forces") -> "Candidates":
        return cls([], [], [], [], [], source=source, uncertainty=uncertainty)

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Atoms]:
        return iter(self.structures)

    def __getitem__(self, index: int) -> Atoms:
        return self.structures[index]

    @property
    def force_std(self) -> np.ndarray:
        """[B] σ_F per structure (√σ²) for the force objective; NaN for the energy objective."""
        if self.uncertainty != "forces":
            return np.full(len(self), np.nan)
        return np.sqrt(np.clip(self.variance, 0.0, None))

    def take(self, indices: Sequence[int]) -> "Candidates":
        """The candidates at ``indices`` [k], in that order."""
        index = np.asarray(indices, dtype=int).reshape(-1)
        return Candidates([self.structures[i] for i in index], self.energy_mean[index], self.variance[index],
                          self.score[index], self.energy_std[index], self.source, self.uncertainty)

    @classmethod
    def concat(cls, parts: Sequence["Candidates"]) -> "Candidates":
        """Several proposals' candidates in one (the first part's source and uncertainty kind)."""
        parts = list(parts)
        if not parts:
            return cls.empty()
        return cls([a for p in parts for a in p.structures], *(np.concatenate([getattr(p, key) for p in parts])
                   for key in ("energy_mean", "variance", "score", "energy_std")),
                   source=parts[0].source, uncertainty=parts[0].uncertainty)

    def annotated(self) -> list[Atoms]:
        """Copies of the structures with the values as ``info`` labels (:data:`INFO_KEYS`), for the
        run directory's extxyz files; σ_E only where known."""
        out = []
        for i, atoms in enumerate(self.structures):
            copy = atoms.copy()
            copy.info.update(self.labels(i))
            out.append(copy)
        return out

    def labels(self, i: int) -> dict:
        """Candidate ``i``'s values under their file keys (:data:`INFO_KEYS`; σ_E only where known)."""
        values = {key: float(getattr(self, name)[i]) for name, key in INFO_KEYS.items()}
        if not np.isfinite(values["committee_energy_std"]):
            del values["committee_energy_std"]
        return values

    @classmethod
    def from_annotated(cls, atoms_list: Sequence[Atoms], source: str = "") -> "Candidates":
        """Candidates from structures that carry the labels of :meth:`annotated` (a stored file, or
        structures built by hand); a missing Ē or σ² raises naming the structure."""
        atoms_list = list(atoms_list)
        values = {}
        for name, key in INFO_KEYS.items():
            column = []
            for k, atoms in enumerate(atoms_list):
                if key not in atoms.info and name in ("energy_mean", "variance"):
                    raise ValueError(f"candidate {k} ({atoms.get_chemical_formula()}) has no {key!r} label: "
                                     "give Candidates (a sampler's proposal) or annotated structures")
                column.append(atoms.info.get(key, np.nan))
            values[name] = column
        return cls(atoms_list, source=source, **values)
