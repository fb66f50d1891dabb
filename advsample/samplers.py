"""Ways to propose candidate geometries, one interface.

``sampler.propose(committee, seeds, train_energies, objective, seed, progress)`` returns a
:class:`Proposal`: candidates (``ase.Atoms`` with ``committee_energy``,
``committee_variance`` and ``log_score`` in ``info``, all from the run's
:class:`~advsample.objective.Objective`) and, for the attack and MD, the trajectories.
Samplers carry no kT and no uncertainty kind: the run's objective gives both.
``sampler.ranking`` says how selection orders the candidates (``"score"``: by the
objective's ``log_score``; ``"sigma"``: by σ² alone; ``"random"``: plain random, no σ
filter); ``sampler.parts(budget)`` splits a round's label budget (a mixed sampler spends
shares on several samplers).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta

from .attack import AttackConfig, AttackResult, attack
from .calculator import CommitteeCalculator
from .committee import Committee
from .geometry import GeometryError
from .objective import Objective
from .structures import Batch


@dataclass
class Proposal:
    """What a sampler proposes in one round."""

    candidates: list[Atoms]
    attack: AttackResult | None = None
    trajectories: list[list[Atoms]] = field(default_factory=list)


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
        self, committee: Committee, seeds: Sequence[Atoms], train_energies, objective: Objective,
        seed: int = 0, progress: bool = True,
    ) -> Proposal:
        """Candidates from the ``seeds`` (training structures) scored with ``objective``;
        ``train_energies`` [n] (the training labels) fix E_min and Q."""
        raise NotImplementedError

    def parts(self, budget: int) -> list[tuple["Sampler", int]]:
        """(sampler, labels) pairs that share one round's budget."""
        return [(self, budget)]


@dataclass
class AdversarialSampler(Sampler):
    """Batched adversarial attack from the seeds; candidates are snapshots every ``snapshot_every`` steps.

    Ranking: by the objective's log score (the quantity the attack ascends).
    """

    config: AttackConfig = field(default_factory=AttackConfig)
    n_seeds: int | None = None  # None: every training structure is a seed
    snapshot_every: int = 5
    name = "adversarial"
    ranking = "score"

    def __post_init__(self):
        if self.config.kT is not None or self.config.uncertainty is not None:
            raise ValueError("AdversarialSampler: kT and uncertainty are set once per run by the objective "
                             "(ActiveLearning(kT=..., uncertainty=...)), not in its AttackConfig")
        if self.snapshot_every < 1:
            raise ValueError(f"snapshot_every must be >= 1, got {self.snapshot_every}")

    def propose(self, committee, seeds, train_energies, objective, seed=0, progress=True) -> Proposal:
        chosen = choose_seeds(seeds, self.n_seeds, seed)
        config = replace(self.config, kT=objective.kT, uncertainty=objective.uncertainty, seed=seed)
        result = attack(committee, chosen, train_energies, config, progress=progress)
        return Proposal(result.snapshots(self.snapshot_every), attack=result)


@dataclass
class RandomDisplacementSampler(Sampler):
    """Gaussian displacements (std ``displacement`` Å per free coordinate) of the seeds.

    Ranking: ``ranking="random"`` picks at random with no σ filter (plain random sampling);
    ``"score"`` ranks the same candidates by the objective's log score (the ablation that
    isolates the attack's gradient ascent from its score).
    """

    displacement: float = 0.1
    n_per_seed: int = 10
    n_seeds: int | None = None
    ranking: str = "random"
    name = "random"

    def __post_init__(self):
        if not self.displacement > 0:
            raise ValueError(f"displacement must be a positive length (Å), got {self.displacement!r}")
        if self.n_per_seed < 1:
            raise ValueError(f"n_per_seed must be >= 1, got {self.n_per_seed}")
        if self.ranking not in ("random", "score"):
            raise ValueError(f"ranking must be 'random' or 'score', got {self.ranking!r}")

    def propose(self, committee, seeds, train_energies, objective, seed=0, progress=True) -> Proposal:
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
        return Proposal(objective.score(committee, candidates, train_energies))


def langevin_frames(
    seeds: Sequence[Atoms], make_calculator: Callable[[], Calculator], temperature_K: float, timestep_fs: float,
    n_steps: int, interval: int, friction: float, seed: int = 0, stop_energy_std: float | None = None,
) -> list[list[Atoms]]:
    """One ASE Langevin trajectory per seed, each with a fresh calculator; frames every ``interval``
    steps (positions only, no calculator), stopped at the first non-finite position or
    :class:`~advsample.geometry.GeometryError` (overlapping atoms: the frame is not kept), and, with
    ``stop_energy_std`` (energy unit), at the first step whose committee σ_E (the calculator's
    ``energy_std``) exceeds it: that frame ends the trajectory."""
    trajectories = []
    for index, atoms in enumerate(seeds):
        system = atoms.copy()
        system.calc = make_calculator()
        rng = np.random.default_rng([seed, index])
        thermalize_momenta(system, temperature_K, rng=rng)
        dynamics = Langevin(system, timestep=timestep_fs * units.fs, temperature_K=temperature_K,
                            friction=friction, fixcm=False, rng=rng)
        frames = []
        steps = dynamics.irun(steps=n_steps)
        while True:
            try:
                next(steps)
            except StopIteration:
                break
            except GeometryError:  # the model refuses the geometry (overlapping atoms): the trajectory ends
                break
            if not np.all(np.isfinite(system.positions)):
                break
            stop = stop_energy_std is not None and system.calc.results.get("energy_std", 0.0) > stop_energy_std
            if stop or (dynamics.nsteps % interval == 0 and dynamics.nsteps > 0):
                frame = system.copy()
                frame.calc = None
                frames.append(frame)
            if stop:
                break
        trajectories.append(frames)
    return trajectories


@dataclass
class UncertaintyMDSampler(Sampler):
    """Committee Langevin MD (ASE) from the seeds; frames are ranked by σ² alone (classic active learning).

    ``temperature_K`` None: k_B T = the objective's kT (for toy surfaces the energy unit is
    read as eV). timestep_fs in fs, friction in ASE units. A trajectory ends at a geometry
    the model refuses (:func:`langevin_frames`); the other seeds go on.
    """

    temperature_K: float | None = None
    timestep_fs: float = 1.0
    n_steps: int = 200
    interval: int = 5
    friction: float = 0.02
    n_seeds: int | None = 8
    name = "md"
    ranking = "sigma"

    def __post_init__(self):
        if self.temperature_K is not None and not self.temperature_K > 0:
            raise ValueError(f"temperature_K must be positive, got {self.temperature_K!r}")
        if not self.timestep_fs > 0 or self.n_steps < 1 or self.interval < 1:
            raise ValueError(f"timestep_fs must be positive and n_steps, interval >= 1, got "
                             f"{self.timestep_fs}, {self.n_steps}, {self.interval}")

    def propose(self, committee, seeds, train_energies, objective, seed=0, progress=True) -> Proposal:
        temperature_K = self.temperature_K if self.temperature_K is not None else objective.kT / units.kB
        trajectories = langevin_frames(choose_seeds(seeds, self.n_seeds, seed), lambda: CommitteeCalculator(committee),
                                       temperature_K, self.timestep_fs, self.n_steps, self.interval, self.friction,
                                       seed=seed)
        frames = [f for trajectory in trajectories for f in trajectory]
        return Proposal(objective.score(committee, frames, train_energies), trajectories=trajectories)


@dataclass
class MixedSampler(Sampler):
    """Spends ``share`` of each round's labels on the first sampler and the rest on the second.

    Ranking: each part is selected by its own sampler's ranking.
    """

    first: Sampler = field(default_factory=AdversarialSampler)
    second: Sampler = field(default_factory=RandomDisplacementSampler)
    share: float = 0.5
    name = "mixed"

    def parts(self, budget: int) -> list[tuple[Sampler, int]]:
        n_first = int(round(self.share * budget))
        return [(s, n) for s, n in ((self.first, n_first), (self.second, budget - n_first)) if n > 0]

    def __post_init__(self):
        if not 0 <= self.share <= 1:
            raise ValueError(f"share must be in [0, 1], got {self.share}")

    def propose(self, committee, seeds, train_energies, objective, seed=0, progress=True) -> Proposal:
        raise TypeError("MixedSampler proposes through parts(): each part proposes and selects on its own")


@dataclass
class SeededAttackSampler(Sampler):
    """The attack from frames another sampler proposes (committee MD by default) instead of the training points.

    As many attack seeds as the attack alone would take (its ``n_seeds``; None: as many as
    the training structures), drawn at random from the source's candidates (the training
    points if the source proposes none). Ranking: by the objective's log score.
    """

    source: Sampler = field(default_factory=UncertaintyMDSampler)
    attack: AdversarialSampler = field(default_factory=AdversarialSampler)
    name = "seeded_attack"
    ranking = "score"

    def propose(self, committee, seeds, train_energies, objective, seed=0, progress=True) -> Proposal:
        proposal = self.source.propose(committee, seeds, train_energies, objective, seed=seed, progress=progress)
        frames = proposal.candidates
        n_seeds = len(seeds) if self.attack.n_seeds is None else self.attack.n_seeds
        chosen = choose_seeds(frames if frames else list(seeds), n_seeds, seed)
        return self.attack.propose(committee, chosen, train_energies, objective, seed=seed, progress=progress)


@dataclass
class MDAttackSampler(MixedSampler):
    """Thermal and rare-event sampling in one round: ``share`` of the labels from committee MD
    frames (ranked by σ², as ``md``), the rest from the attack seeded at MD frames
    (:class:`SeededAttackSampler`, ranked by score)."""

    first: Sampler = field(default_factory=UncertaintyMDSampler)
    second: Sampler = field(default_factory=SeededAttackSampler)
    name = "md_attack"


SAMPLERS = ("adversarial", "random", "random_scored", "md", "mixed", "udd", "biased_md", "md_attack")


def make_sampler(name: str, **options) -> Sampler:
    """Sampler by name (:data:`SAMPLERS`); options go to its fields (the attack's to AttackConfig;
    ``md_attack``: the MD's, an ``attack`` dict of the attack's, and ``share``).

    kT and the uncertainty kind are not sampler options: the run's objective gives them.
    """
    for key in ("kT", "uncertainty", "uncertainty_kind"):
        if key in options:
            raise TypeError(f"make_sampler({name!r}): {key!r} is set once per run (ActiveLearning(kT=..., "
                            "uncertainty=...) or the System), not per sampler")
    if name == "adversarial":
        attack_options = {k: options.pop(k) for k in list(options) if k in AttackConfig.__dataclass_fields__}
        return AdversarialSampler(AttackConfig(**attack_options), **options)
    if name == "random":
        return RandomDisplacementSampler(ranking="random", **options)
    if name == "random_scored":
        return RandomDisplacementSampler(ranking="score", **options)
    if name == "md":
        return UncertaintyMDSampler(**options)
    if name == "mixed":
        return MixedSampler(AdversarialSampler(), RandomDisplacementSampler(), **options)
    if name == "md_attack":
        share = options.pop("share", 0.5)
        attack = make_sampler("adversarial", **options.pop("attack", {}))
        md = UncertaintyMDSampler(**options)
        return MDAttackSampler(md, SeededAttackSampler(md, attack), share=share)
    if name in ("udd", "biased_md"):
        from .biased_md import BiasedMDSampler, UDDSampler  # biased_md builds on this module

        return (UDDSampler if name == "udd" else BiasedMDSampler)(**options)
    raise ValueError(f"unknown sampler {name!r}; choose one of {SAMPLERS}")
