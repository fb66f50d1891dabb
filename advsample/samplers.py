"""Ways to propose candidate geometries, one interface.

``sampler.propose(committee, seeds, train_energies, objective, seed, progress)`` returns a
:class:`Proposal`: typed :class:`~advsample.candidates.Candidates` (the structures with Ē, σ²,
log L and σ_E as arrays, all from the run's :class:`~advsample.objective.Objective`, which a
round binds once to its training energies: :meth:`~advsample.objective.Objective.bind`) and,
for the attack and MD, the trajectories. Samplers carry no kT and no uncertainty kind: the
run's objective gives both. ``sampler.ranking`` says how selection orders the candidates
(``"score"``: by the objective's log L; ``"sigma"``: by σ² alone; ``"random"``: plain random, no σ
filter); ``sampler.parts(budget)`` splits a round's label budget (a mixed sampler spends
shares on several samplers).
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Callable, Sequence

import numpy as np
import torch
from ase import Atoms, units

from . import dynamics
from .attack import AttackConfig, AttackResult, attack
from .candidates import Candidates
from .committee import Committee
from .objective import Objective
from .structures import Batch


BUILTIN_ORDER = ("adversarial", "random", "random_scored", "md", "mixed", "udd", "biased_md", "md_attack")


@dataclass
class Proposal:
    """What a sampler proposes in one round: typed candidates (a plain list of structures is
    scored on the way in only if it carries the stored-file labels, see Candidates.from_annotated)."""

    candidates: Candidates
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
        bound = objective.bind(train_energies)  # the round's E_min and log Q (once: a bound objective is kept)
        config = replace(self.config, kT=bound.kT, uncertainty=bound.uncertainty, seed=seed)
        result = attack(committee, chosen, train_energies, config, progress=progress, objective=bound)
        return Proposal(result.candidates(self.snapshot_every, self.name, bound.uncertainty), attack=result)


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
        return Proposal(objective.bind(train_energies).score(committee, candidates, self.name))


@dataclass
class BondStretchSampler(Sampler):
    """Stretched bonds: from each seed, ``n_per_seed`` copies with one bond pulled apart — a bond that moves an
    atom of ``moved_numbers`` (default H: ``bond_scan.covalent_bonds``, H–H excluded), chosen at random, its
    lighter atom moved alone along the bond by a stretch drawn uniformly from ``stretch_A`` (Å). Ranking by
    the objective's log score, as the attack's candidates.

    Why (docs/audit.md, the bond scan): NN-MD of host–guest cells fails by a guest's H flying off, and
    committees trained on MD frames keep ~0.7 eV against pulling an H 2 Å away where GFN-FF has 3.4–7.8 eV.
    Neither MD near the minimum nor the attack's window aims at that coordinate; this sampler does.
    """

    stretch_A: tuple[float, float] = (0.3, 1.2)
    n_per_seed: int = 10
    n_seeds: int | None = None
    moved_numbers: tuple[int, ...] = (1,)
    name = "bond_stretch"
    ranking = "score"

    def __post_init__(self):
        low, high = self.stretch_A
        if not 0 < low <= high:
            raise ValueError(f"stretch_A must be (low, high) with 0 < low <= high (Å), got {self.stretch_A!r}")
        if self.n_per_seed < 1:
            raise ValueError(f"n_per_seed must be >= 1, got {self.n_per_seed}")

    def propose(self, committee, seeds, train_energies, objective, seed=0, progress=True) -> Proposal:
        from .bond_scan import covalent_bonds, stretched

        rng = np.random.default_rng(seed)
        candidates = []
        for atoms in choose_seeds(seeds, self.n_seeds, seed):
            bonds = covalent_bonds(atoms)
            free = ~Batch.from_atoms([atoms]).fixed.numpy().reshape(len(atoms), -1).any(axis=1)  # [N]: not fixed
            bonds = bonds[np.isin(atoms.numbers[bonds[:, 0]], self.moved_numbers) & free[bonds[:, 0]]]
            for _ in range(self.n_per_seed if len(bonds) else 0):
                moved, anchor = bonds[rng.integers(len(bonds))]
                candidates.append(stretched(atoms, moved, anchor, rng.uniform(*self.stretch_A)))
        if not candidates:
            raise ValueError(f"bond_stretch: no seed has a bond moving an atom of numbers {self.moved_numbers}")
        return Proposal(objective.bind(train_energies).score(committee, candidates, self.name))


ReplicaForces = Callable[[Batch, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``forces(batch, replicas) -> (forces [N, 3], energy_std [B])``: from one committee call on the live
replicas (``batch``: B structures, N atoms; ``replicas`` [B]: their indices among the seeds, for
per-trajectory state) the force on each atom (energy unit/Å, float64) and each replica's committee σ_E."""


def committee_forces(committee: Committee) -> ReplicaForces:
    """The committee-mean forces and σ_E, as :class:`~advsample.calculator.CommitteeCalculator` gives them."""

    def forces(batch: Batch, replicas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = committee(batch, forces=True)
        return (out.forces_mean.detach().cpu().numpy().astype(float),
                out.energy_variance.sqrt().detach().cpu().numpy().astype(float))

    return forces


def langevin_frames(
    seeds: Sequence[Atoms], forces: ReplicaForces, temperature_K: float, timestep_fs: float,
    n_steps: int, interval: int, friction: float, seed: int = 0, stop_energy_std: float | None = None,
    max_atoms_per_call: int | None = dynamics.MAX_ATOMS_PER_CALL,
) -> list[list[Atoms]]:
    """Langevin MD of all seeds in lockstep: one ``forces`` call per step on a Batch of the live replicas.

    The integrator is :func:`advsample.dynamics.langevin` (its ``step_fn``: ASE's ``Langevin``,
    ``fixcm=False``; temperature_K in K, timestep_fs in fs, friction in inverse ASE time units)
    over replicas made by :func:`~advsample.dynamics.make_replicas` (no drift removal): replica i
    draws from its own ``np.random.default_rng([seed, i])`` what ASE draws (``thermalize_momenta``,
    then ξ and η [n_i, 3] each step), coordinates held by ``FixAtoms`` / ``FixCartesian`` keep
    their positions and zero momenta, and positions are not wrapped into periodic cells, so the
    frames equal one ASE Langevin run per seed with the matching calculator. Returns per seed its
    frames every ``interval`` steps (copies of the seed with positions and momenta, no
    calculator). A replica ends alone at a non-finite position, force or σ_E, or a
    :class:`~advsample.geometry.GeometryError` (the structures at fault are dropped, the others
    re-evaluated; that frame is not kept), and, with ``stop_energy_std`` (energy unit), at the
    first step (0 included) whose σ_E exceeds it: that frame ends the trajectory.
    ``max_atoms_per_call``: the live replicas go to ``forces`` in chunks of whole structures of at
    most this many atoms (:func:`~advsample.dynamics.chunked`, each chunk with its own replica
    indices; same frames, peak memory bounded; None: one call per step). A refusal re-evaluates
    the step's earlier chunks too, so a ``forces`` with per-replica state (biased MD's window)
    sees their step twice there.
    """
    frames: list[list[Atoms]] = [[] for _ in seeds]
    if len(seeds) == 0:
        return frames
    replicas = dynamics.make_replicas(list(seeds), len(seeds), temperature_K, seed, remove_drift=False)
    state = dynamics.start_state(replicas)  # its live mask is what ``force_fn`` follows
    energy_std = np.zeros(replicas.n_replicas)  # σ_E [R] of the last evaluation
    done = [0]  # live replicas already evaluated in this call (chunks come in order)

    def chunk_fn(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        live = np.flatnonzero(state.live)[done[0]:done[0] + batch.n_structures]
        done[0] += batch.n_structures
        force, sigma = forces(batch, live)
        energy_std[live] = sigma
        # σ_E stands in for the energies: dynamics stops a replica whose value is not finite
        return torch.as_tensor(sigma, dtype=torch.float64), torch.as_tensor(force, dtype=torch.float64)

    chunks = dynamics.chunked(chunk_fn, max_atoms_per_call)

    def force_fn(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        done[0] = 0
        return chunks(batch)

    _, step_fn = dynamics.langevin(force_fn, replicas, timestep_fs, temperature_K, friction)
    dynamics.evaluate(force_fn, replicas, state)
    for step in range(n_steps + 1):
        if step > 0:
            if not state.live.any():
                break
            state = step_fn(state)
        for replica in np.flatnonzero(state.live):
            stop = stop_energy_std is not None and energy_std[replica] > stop_energy_std
            if stop or (step % interval == 0 and step > 0):
                frames[replica].append(replicas.frame(state, replica))
            if stop:
                dynamics._stop(state, [replica], "energy_std over stop_energy_std", step)
    return frames


@dataclass
class UncertaintyMDSampler(Sampler):
    """Committee Langevin MD from the seeds; frames are ranked by σ² alone (classic active learning).

    ``temperature_K`` None: k_B T = the objective's kT (for toy surfaces the energy unit is
    read as eV). timestep_fs in fs, friction in ASE units. The replicas run batched, one
    committee call per step (:func:`langevin_frames`, ASE's Langevin integrator); a
    trajectory ends at a geometry the model refuses, the other seeds go on.
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
        trajectories = langevin_frames(choose_seeds(seeds, self.n_seeds, seed), committee_forces(committee),
                                       temperature_K, self.timestep_fs, self.n_steps, self.interval, self.friction,
                                       seed=seed)
        frames = [f for trajectory in trajectories for f in trajectory]
        return Proposal(objective.bind(train_energies).score(committee, frames, self.name), trajectories=trajectories)


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
        """Every part's proposal in one (candidates and trajectories joined, the first part's attack).

        A run does not call this: it proposes and selects each part of :meth:`parts` on its own
        (each by its own ranking, with its own share of the labels)."""
        proposals = [sampler.propose(committee, seeds, train_energies, objective, seed=seed, progress=progress)
                     for sampler, _ in self.parts(10**6)]  # every part with a positive share
        attacks = [p.attack for p in proposals if p.attack is not None]
        return Proposal(Candidates.concat([p.candidates for p in proposals]), attacks[0] if attacks else None,
                        [t for p in proposals for t in p.trajectories])


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
        frames = proposal.candidates.structures
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


# -- the sampler table ---------------------------------------------------------------------
# Filled where samplers are defined (as ASE's I/O formats by ``define_io_format``): this module
# registers its own below, advsample.biased_md registers ``udd`` and ``biased_md`` when imported.
# A string is the module that registers the name: make_sampler imports it on first use, so
# ``make_sampler("udd")`` works with only this module imported, and this module never imports
# its clients (biased_md builds on it).
_TABLE: dict[str, "Callable[..., Sampler] | str"] = {
    "udd": "advsample.biased_md",
    "biased_md": "advsample.biased_md",
}


def register_sampler(name: str, factory: Callable[..., Sampler]) -> None:
    """Make ``make_sampler(name, **options)`` call ``factory(**options)`` (kT and the uncertainty
    kind are never options: the run's objective gives them)."""
    if not name or not isinstance(name, str) or "_kT" in name:
        raise ValueError(f"a sampler name must be a non-empty string without '_kT' (the sweep suffix), got {name!r}")
    if not callable(factory):
        raise TypeError(f"register_sampler({name!r}): factory must be callable, got {factory!r}")
    _TABLE[name] = factory


def sampler_names() -> tuple[str, ...]:
    """Every name :func:`make_sampler` knows, built-in first."""
    return tuple(_TABLE)


def make_sampler(name: str, **options) -> Sampler:
    """Sampler by name (:func:`sampler_names`); options go to its fields (the attack's to AttackConfig;
    ``md_attack``: the MD's, an ``attack`` dict of the attack's, and ``share``).

    kT and the uncertainty kind are not sampler options: the run's objective gives them.
    """
    for key in ("kT", "uncertainty", "uncertainty_kind"):
        if key in options:
            raise TypeError(f"make_sampler({name!r}): {key!r} is set once per run (ActiveLearning(kT=..., "
                            "uncertainty=...) or the System), not per sampler")
    factory = _TABLE.get(name)
    if factory is None:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sampler_names()}")
    if isinstance(factory, str):
        importlib.import_module(factory)  # registers the name (see _TABLE)
        factory = _TABLE[name]
    return factory(**options)


def _adversarial(**options) -> AdversarialSampler:
    attack_options = {k: options.pop(k) for k in list(options) if k in AttackConfig.__dataclass_fields__}
    return AdversarialSampler(AttackConfig(**attack_options), **options)


def _mixed(share: float = 0.5, attack: dict | None = None, displacement: float | None = None) -> MixedSampler:
    random = {} if displacement is None else {"displacement": displacement}
    return MixedSampler(_adversarial(**(attack or {})), RandomDisplacementSampler(**random), share=share)


def _md_attack(share: float = 0.5, attack: dict | None = None, **md_options) -> MDAttackSampler:
    md = UncertaintyMDSampler(**md_options)
    return MDAttackSampler(md, SeededAttackSampler(md, _adversarial(**(attack or {}))), share=share)


for _name, _factory in (
    ("adversarial", _adversarial),
    ("random", lambda **options: RandomDisplacementSampler(ranking="random", **options)),
    ("random_scored", lambda **options: RandomDisplacementSampler(ranking="score", **options)),
    ("md", UncertaintyMDSampler),
    ("mixed", _mixed),
    ("md_attack", _md_attack),
    ("bond_stretch", BondStretchSampler),
):
    register_sampler(_name, _factory)
_TABLE = {name: _TABLE[name] for name in (*BUILTIN_ORDER, *_TABLE) if name in _TABLE}  # the documented order

SAMPLERS = BUILTIN_ORDER
"""The built-in sampler names (:func:`sampler_names` adds the registered ones)."""


# -- a System's sampler settings, typed -------------------------------------------------------
def attack_options(attack: AdversarialSampler) -> dict:
    """The options that rebuild ``attack`` with ``make_sampler("adversarial", **options)``."""
    config = {f.name: getattr(attack.config, f.name) for f in fields(AttackConfig)
              if f.name not in ("kT", "uncertainty")}
    return {**config, "n_seeds": attack.n_seeds, "snapshot_every": attack.snapshot_every}


def md_options(md: UncertaintyMDSampler) -> dict:
    """The committee-MD fields of ``md`` (those every MD-based sampler shares)."""
    return {f.name: getattr(md, f.name) for f in fields(UncertaintyMDSampler)}


def _typed(value, cls: type, factory: Callable[..., Sampler], known: set[str], what: str):
    """``value`` as ``cls``: an instance as is, a dict checked key by key and built by ``factory``."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a {cls.__name__} or a dict of its options, got {value!r}")
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{what}: unknown option {unknown[0]!r} (value {value[unknown[0]]!r}); known: {sorted(known)}")
    try:
        return factory(**value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what}: {error}") from None


def attack_settings(value: "AdversarialSampler | Mapping", what: str = "attack") -> AdversarialSampler:
    """A System's attack settings typed: an :class:`AdversarialSampler` (its AttackConfig fields,
    ``n_seeds``, ``snapshot_every``), from a dict of those options (a bad key or value raises,
    naming it); kT and the uncertainty kind belong to the run's objective."""
    known = {f.name for f in fields(AttackConfig)} - {"kT", "uncertainty"} | {"n_seeds", "snapshot_every"}
    return _typed(value, AdversarialSampler, _adversarial, known, what)


def md_settings(value: "UncertaintyMDSampler | Mapping", what: str = "md") -> UncertaintyMDSampler:
    """A System's committee-MD settings typed: an :class:`UncertaintyMDSampler` (temperature_K,
    timestep_fs, n_steps, interval, friction, n_seeds; shared by ``md``, ``udd``, ``biased_md`` and
    ``md_attack``), from a dict of those options (a bad key or value raises, naming it)."""
    known = {f.name for f in fields(UncertaintyMDSampler)}
    return _typed(value, UncertaintyMDSampler, UncertaintyMDSampler, known, what)


# -- methods: a sampler with a System's settings and the run objective --------------------------
def parse_method(method: str) -> tuple[str, float | None]:
    """"adversarial_kT0.5" -> ("adversarial", 0.5); "random" -> ("random", None)."""
    if "_kT" in method:
        name, value = method.split("_kT", 1)
        try:
            return name, float(value)
        except ValueError:
            raise ValueError(f"method {method!r}: the temperature after '_kT' must be a number") from None
    return method, None


def method_name(sampler: str, kT: float | None = None) -> str:
    return sampler if kT is None else f"{sampler}_kT{kT:g}"


def check_methods(methods: Sequence[str]) -> list[str]:
    """The methods, checked: known samplers, positive sweep temperatures, no repeats."""
    methods = [m.strip() for m in methods if m and m.strip()]
    if not methods:
        raise ValueError("no methods to compare")
    for method in methods:
        name, kT = parse_method(method)
        if name not in _TABLE:
            raise ValueError(f"unknown method {method!r}; samplers are {sampler_names()}, sweeps 'adversarial_kT<x>'")
        if kT is not None and not kT > 0:
            raise ValueError(f"method {method!r}: kT must be positive")
    if len(set(methods)) != len(methods):
        raise ValueError(f"a method is listed twice: {methods}")
    return methods


def sampler_options(system, name: str) -> dict:
    """A System's settings for the sampler ``name`` as :func:`make_sampler` options: the attack's
    (``adversarial``), the random step (``random``, ``random_scored``), none (``bond_stretch``: its defaults),
    both (``mixed``), the MD's and
    the attack's (``md_attack``), the MD's (``md``, ``udd``, ``biased_md`` and any other name).
    ``system``: anything with ``attack``, ``md`` and ``displacement`` (a :class:`~advsample.systems.System`)."""
    attack = attack_options(attack_settings(system.attack))
    if name == "adversarial":
        return attack
    if name in ("random", "random_scored"):
        return {"displacement": system.displacement}
    if name == "bond_stretch":
        return {}
    if name == "mixed":
        return {"attack": attack, "displacement": system.displacement}
    md = md_options(md_settings(system.md))
    if name == "md_attack":
        return {**md, "attack": attack}
    return md


def make_method(system, method: str) -> tuple[Sampler, Objective]:
    """(sampler, run objective) of a method (a sampler name, or ``<name>_kT<x>``) on a System: the
    sampler with the System's settings (:func:`sampler_options`), the objective at the System's kT
    (a sweep's ``_kT<x>`` changes only the objective's kT)."""
    name, kT = parse_method(check_methods([method])[0])
    return make_sampler(name, **sampler_options(system, name)), system.objective(kT)
