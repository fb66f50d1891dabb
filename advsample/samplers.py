"""Ways to propose candidate geometries, one interface.

``sampler.propose(committee, seeds, train_energies, seed, progress)`` returns a :class:`Proposal`:
candidates (``ase.Atoms`` with ``committee_energy``, ``committee_variance`` and
``log_score`` in ``info``) and, for the attack, the trajectories. ``sampler.ranking``
says how selection should order them; ``sampler.parts(budget)`` splits a round's label
budget (a mixed sampler spends shares on several samplers).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
from ase import Atoms, units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta

from . import uncertainty
from .attack import AttackConfig, AttackResult, attack
from .calculator import CommitteeCalculator
from .committee import Committee
from .structures import Batch


@dataclass
class Proposal:
    """What a sampler proposes in one round."""

    candidates: list[Atoms]
    attack: AttackResult | None = None
    trajectories: list[list[Atoms]] = field(default_factory=list)


def score_structures(
    committee: Committee, atoms_list: Sequence[Atoms], train_energies, kT: float, uncertainty_kind: str = "forces"
) -> list[Atoms]:
    """Copies of the structures with the committee's Ē, σ² and adversarial log score in ``info``."""
    if len(atoms_list) == 0:
        return []
    reference = float(np.min(train_energies))
    log_q = uncertainty.log_partition(train_energies, kT, reference)
    out = []
    for start in range(0, len(atoms_list), 512):
        chunk = atoms_list[start : start + 512]
        result = committee(Batch.from_atoms(chunk), forces=uncertainty_kind == "forces")
        variance = result.force_variance if uncertainty_kind == "forces" else result.energy_variance
        score = uncertainty.adversarial_log_score(variance, result.energy_mean, kT, log_q, reference)
        for atoms, energy, var, s in zip(chunk, result.energy_mean.tolist(), variance.tolist(), score.tolist()):
            copy = atoms.copy()
            copy.calc = None
            copy.info.update(committee_energy=energy, committee_variance=var, log_score=s)
            out.append(copy)
    return out


def choose_seeds(atoms_list: Sequence[Atoms], n_seeds: int | None, seed: int = 0) -> list[Atoms]:
    """All structures (n_seeds None or ≥ len) or a random subset of n_seeds."""
    if len(atoms_list) == 0:
        raise ValueError("no seed structures: the training set is empty")
    if n_seeds is None or n_seeds >= len(atoms_list):
        return list(atoms_list)
    index = np.sort(np.random.default_rng(seed).choice(len(atoms_list), n_seeds, replace=False))
    return [atoms_list[i] for i in index]


class Sampler:
    """Base class: subclasses set ``name``, ``ranking`` and implement ``propose``."""

    name = "sampler"
    ranking = "score"

    def propose(
        self, committee: Committee, seeds: Sequence[Atoms], train_energies, seed: int = 0, progress: bool = True
    ) -> Proposal:
        raise NotImplementedError

    def parts(self, budget: int) -> list[tuple["Sampler", int]]:
        """(sampler, labels) pairs that share one round's budget."""
        return [(self, budget)]


@dataclass
class AdversarialSampler(Sampler):
    """Batched adversarial attack from the seeds; candidates are snapshots every ``snapshot_every`` steps."""

    config: AttackConfig = field(default_factory=AttackConfig)
    n_seeds: int | None = None  # None: every training structure is a seed
    snapshot_every: int = 5
    name = "adversarial"
    ranking = "score"

    def propose(self, committee, seeds, train_energies, seed=0, progress=True) -> Proposal:
        chosen = choose_seeds(seeds, self.n_seeds, seed)
        result = attack(committee, chosen, train_energies, replace(self.config, seed=seed), progress=progress)
        return Proposal(result.snapshots(self.snapshot_every), attack=result)


@dataclass
class RandomDisplacementSampler(Sampler):
    """Gaussian displacements (std ``displacement`` Å per free coordinate) of the seeds.

    ``ranking="random"`` picks at random (plain random sampling); ``"score"`` ranks the
    same candidates by the adversarial score (the ablation that isolates the attack's
    gradient ascent from its score).
    """

    displacement: float = 0.1
    n_per_seed: int = 10
    n_seeds: int | None = None
    kT: float = 1.0
    uncertainty_kind: str = "forces"
    ranking: str = "random"
    name = "random"

    def propose(self, committee, seeds, train_energies, seed=0, progress=True) -> Proposal:
        rng = np.random.default_rng(seed)
        candidates = []
        for atoms in choose_seeds(seeds, self.n_seeds, seed):
            free = ~Batch.from_atoms([atoms]).fixed.numpy()
            for _ in range(self.n_per_seed):
                copy = atoms.copy()
                copy.calc = None
                step = rng.normal(0.0, self.displacement, size=(len(atoms), 3)) * free
                copy.set_positions(atoms.positions + step, apply_constraint=False)
                candidates.append(copy)
        return Proposal(score_structures(committee, candidates, train_energies, self.kT, self.uncertainty_kind))


@dataclass
class UncertaintyMDSampler(Sampler):
    """Committee Langevin MD (ASE) from the seeds; frames are ranked by σ (classic active learning).

    temperature_K and timestep_fs in ASE units (for toy surfaces the energy unit is read as eV).
    """

    temperature_K: float = 300.0
    timestep_fs: float = 1.0
    n_steps: int = 200
    interval: int = 5
    friction: float = 0.02
    n_seeds: int | None = 8
    kT: float = 1.0
    uncertainty_kind: str = "forces"
    name = "md"
    ranking = "sigma"

    def propose(self, committee, seeds, train_energies, seed=0, progress=True) -> Proposal:
        trajectories = []
        calculator = CommitteeCalculator(committee)
        for index, atoms in enumerate(choose_seeds(seeds, self.n_seeds, seed)):
            system = atoms.copy()
            system.calc = calculator
            rng = np.random.default_rng([seed, index])
            thermalize_momenta(system, self.temperature_K, rng=rng)
            dynamics = Langevin(
                system,
                timestep=self.timestep_fs * units.fs,
                temperature_K=self.temperature_K,
                friction=self.friction,
                fixcm=False,
                rng=rng,
            )
            frames = []
            for _ in dynamics.irun(steps=self.n_steps):
                if dynamics.nsteps % self.interval == 0 and dynamics.nsteps > 0:
                    frame = system.copy()
                    frame.calc = None
                    frames.append(frame)
                if not np.all(np.isfinite(system.positions)):
                    break
            trajectories.append(frames)
        frames = [f for trajectory in trajectories for f in trajectory if np.all(np.isfinite(f.positions))]
        candidates = score_structures(committee, frames, train_energies, self.kT, self.uncertainty_kind)
        return Proposal(candidates, trajectories=trajectories)


@dataclass
class MixedSampler(Sampler):
    """Spends ``share`` of each round's labels on the first sampler and the rest on the second."""

    first: Sampler = field(default_factory=AdversarialSampler)
    second: Sampler = field(default_factory=RandomDisplacementSampler)
    share: float = 0.5
    name = "mixed"

    def parts(self, budget: int) -> list[tuple[Sampler, int]]:
        n_first = int(round(self.share * budget))
        return [(s, n) for s, n in ((self.first, n_first), (self.second, budget - n_first)) if n > 0]

    def propose(self, committee, seeds, train_energies, seed=0, progress=True) -> Proposal:
        raise TypeError("MixedSampler proposes through parts(): each part proposes and selects on its own")


def make_sampler(name: str, kT: float = 1.0, **options) -> Sampler:
    """Sampler by name: adversarial, random, random_scored, md, mixed (options go to its fields)."""
    if name == "adversarial":
        attack_options = {k: options.pop(k) for k in list(options) if k in AttackConfig.__dataclass_fields__}
        return AdversarialSampler(AttackConfig(kT=kT, **attack_options), **options)
    if name == "random":
        return RandomDisplacementSampler(kT=kT, ranking="random", **options)
    if name == "random_scored":
        return RandomDisplacementSampler(kT=kT, ranking="score", **options)
    if name == "md":
        options.setdefault("temperature_K", kT / units.kB)  # the same kT drives the MD, unless given
        return UncertaintyMDSampler(kT=kT, **options)
    if name == "mixed":
        return MixedSampler(AdversarialSampler(AttackConfig(kT=kT)), RandomDisplacementSampler(kT=kT), **options)
    raise ValueError(f"unknown sampler {name!r}; choose adversarial, random, random_scored, md or mixed")
