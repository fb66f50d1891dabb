"""Batched adversarial attack: all seeds move together by gradient ascent on log L_adv.

log L_adv(x + δ) = log σ²(x + δ) − (Ē(x + δ) − E_ref)/kT − log Q (the round's
:class:`~advsample.objective.BoundObjective`, its per-atom energies or max force variance
included: :meth:`~advsample.objective.BoundObjective.evaluate`), maximised with Adam on
δ [N, 3] (δ₀ ~ N(0, σ₀²)), one forward/backward per step for the whole batch. Fixed
coordinates never move, per-atom displacements are clipped, and a seed that produces NaN,
brings two atoms closer than ``min_distance`` (minimum image in periodic cells) or is
refused by the model's own geometry check (:class:`~advsample.geometry.GeometryError`)
stops at its last good step (recorded); the other seeds go on.

Cell attack (``strain_learning_rate``): periodic seeds also get a symmetric strain ε
[3, 3] (zero at the start, only along periodic directions, each component clipped at
``max_strain``), ascended on the same objective together with δ: positions and cell rows
become (x + δ)(1 + ε) and h(1 + ε), as in the committee's stress σ = (1/V) ∂E/∂ε. The
objective's ∂/∂ε is the stress response of log L, so the cell moves where the committee
disagrees on the stress (the lattice attack of the authors' code, there driven by the
stress variance). Frames carry the deformed cell.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.io import write
from tqdm.auto import tqdm

from .candidates import Candidates
from .committee import Committee
from .geometry import GeometryError, pair_distances
from .objective import Objective
from .parameters import as_number
from .structures import Batch

if TYPE_CHECKING:
    from .objective import BoundObjective


_NUMBERS = (  # AttackConfig's numeric fields: (name, kind, None allowed)
    ("kT", float, True), ("n_steps", int, False), ("learning_rate", float, False),
    ("initial_displacement", float, False), ("max_displacement", float, True), ("min_distance", float, False),
    ("strain_learning_rate", float, True), ("max_strain", float, False), ("seed", int, False),
)


@dataclass
class AttackConfig:
    """Attack settings; energies in the reference's unit (eV for molecules), lengths in Å."""

    kT: float | None = None  # temperature of the objective: how far uphill seeds may go (a run's objective sets it)
    n_steps: int = 60  # gradient-ascent steps
    learning_rate: float = 0.01  # Adam step on δ (Å)
    initial_displacement: float = 0.01  # σ₀ of δ₀ ~ N(0, σ₀²) (Å)
    max_displacement: float | None = None  # clip of each atom's |δ| (Å); None: no clip
    min_distance: float = 0.5  # stop a seed when two of its atoms come closer (Å)
    uncertainty: str | None = None  # "forces" (None): σ²_F per structure; "energy": σ²_E; "forces_max": the
    # largest per-atom σ²_F (a run's objective sets it; the objective's energy_scale and force_reduction win)
    strain_learning_rate: float | None = None  # Adam step on the cell strain ε of periodic seeds; None: cells fixed
    max_strain: float = 0.05  # clip of each strain component |ε_ab|
    seed: int = 0

    def __post_init__(self):
        # numbers of any library (numpy scalars, 0-d tensors) become Python numbers; anything else is named
        for name, kind, optional in _NUMBERS:
            value = getattr(self, name)
            if not (optional and value is None):
                setattr(self, name, as_number(value, name, kind))
        if self.kT is not None and not (self.kT > 0 and np.isfinite(self.kT)):
            raise ValueError(f"kT must be positive, got {self.kT}")
        if self.n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {self.n_steps}")
        if self.uncertainty not in (None, "forces", "energy", "forces_max"):
            raise ValueError(f"uncertainty must be 'forces', 'energy' or 'forces_max', got {self.uncertainty!r}")
        if self.strain_learning_rate is not None and not self.strain_learning_rate > 0:
            raise ValueError(f"strain_learning_rate must be positive or None, got {self.strain_learning_rate!r}")
        if not 0 < self.max_strain < 1:
            raise ValueError(f"max_strain must be in (0, 1), got {self.max_strain!r}")


@dataclass
class AttackResult:
    """Every step of every seed. T = n_steps + 1 recorded frames (step 0 = δ₀).

    positions [T, N, 3] (Å); variance, energy_mean, log_score, active [T, B];
    stop_step [B] (-1 = ran to the end); stop_reason [B]; seeds: the B seed structures;
    cells [T, B, 3, 3] (Å) when the cell attack ran, else None; energy_variance [T, B] σ²_E
    (from the same committee calls; None for a result built without it).
    """

    seeds: list[Atoms]
    structure_index: np.ndarray
    positions: np.ndarray
    variance: np.ndarray
    energy_mean: np.ndarray
    log_score: np.ndarray
    active: np.ndarray
    stop_step: np.ndarray
    stop_reason: list[str]
    kT: float
    energy_reference: float
    cells: np.ndarray | None = None
    energy_variance: np.ndarray | None = None

    @property
    def n_steps(self) -> int:
        return self.positions.shape[0] - 1

    def geometry(self, step: int, seed: int) -> Atoms:
        """The geometry of ``seed`` at ``step`` (its seed and step as ``info`` provenance labels)."""
        atoms = self.seeds[seed].copy()
        atoms.calc = None
        if self.cells is not None:
            atoms.set_cell(self.cells[step, seed], scale_atoms=False)
        atoms.set_positions(self.positions[step, self.structure_index == seed], apply_constraint=False)
        atoms.info.update(attack_seed=int(seed), attack_step=int(step))
        return atoms

    def frame(self, step: int, seed: int) -> Atoms:
        """The geometry of ``seed`` at ``step`` with its committee values as ``info`` labels (for the
        trajectory files and notebooks; a round reads :meth:`candidates`, typed arrays)."""
        atoms = self.geometry(step, seed)
        atoms.info.update(
            committee_energy=float(self.energy_mean[step, seed]),
            committee_variance=float(self.variance[step, seed]),
            log_score=float(self.log_score[step, seed]),
        )
        return atoms

    def trajectory(self, seed: int) -> list[Atoms]:
        """Frames of one seed while it was active."""
        return [self.frame(t, seed) for t in range(self.n_steps + 1) if self.active[t, seed]]

    def snapshot_steps(self, every: int = 5) -> list[tuple[int, int]]:
        """(step, seed) of each active seed every ``every`` steps and at its last active step (step 0 left out)."""
        out = []
        for seed in range(len(self.seeds)):
            steps = np.flatnonzero(self.active[:, seed])
            chosen = sorted(set(steps[every::every].tolist()) | {int(steps[-1])}) if len(steps) > 1 else []
            out.extend((t, seed) for t in chosen if t > 0)
        return out

    def snapshots(self, every: int = 5) -> list[Atoms]:
        """The :meth:`snapshot_steps` frames with their committee values as ``info`` labels."""
        return [self.frame(t, seed) for t, seed in self.snapshot_steps(every)]

    def candidates(self, every: int = 5, source: str = "adversarial", uncertainty: str = "forces") -> Candidates:
        """The :meth:`snapshot_steps` frames as typed :class:`~advsample.candidates.Candidates`:
        Ē, σ², log L and σ_E as recorded by the attack (no second committee call)."""
        pairs = self.snapshot_steps(every)
        steps, seeds = (np.array([p[i] for p in pairs], dtype=int) for i in (0, 1))
        energy_std = None if self.energy_variance is None else np.sqrt(self.energy_variance[steps, seeds])
        return Candidates([self.geometry(t, b) for t, b in pairs], self.energy_mean[steps, seeds],
                          self.variance[steps, seeds], self.log_score[steps, seeds], energy_std,
                          source=source, uncertainty=uncertainty)

    def final(self) -> list[Atoms]:
        """The last active frame of each seed."""
        return [self.frame(int(np.flatnonzero(self.active[:, b])[-1]), b) for b in range(len(self.seeds))]

    def all_frames(self) -> list[Atoms]:
        """Every active frame of every seed, seed after seed."""
        return [atoms for b in range(len(self.seeds)) for atoms in self.trajectory(b)]

    def write(self, path: str | Path) -> Path:
        """All trajectories, seed after seed, as one extxyz file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path, self.all_frames(), format="extxyz")
        return path


def _close_pairs(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (i, j), i < j, of atoms in the same structure (for the distance check)."""
    same = batch.structure_index[:, None] == batch.structure_index[None, :]
    i, j = torch.nonzero(torch.triu(same, diagonal=1), as_tuple=True)
    return i, j


def _scatter(values: torch.Tensor, keep_index: torch.Tensor | None, n_structures: int) -> torch.Tensor:
    """[B'] values of the evaluated structures -> [B] (NaN for the structures left out)."""
    if keep_index is None:
        return values
    return values.new_full((n_structures,), float("nan")).index_put((keep_index,), values)


@dataclass
class AttackState:
    """Where the attack stands between steps (:func:`attack_fns`); updated in place by ``step_fn``.

    B seeds, N atoms in all. ``delta`` [N, 3] (Å) and ``strain`` [B, 3, 3] (None: cells fixed)
    are the optimised variables, ``active`` [B] the seeds still moving, ``excluded`` [B] the
    seeds the model refused (never evaluated again), ``last_delta`` / ``last_strain`` the values
    of the last good step (a stopped seed returns to them), ``pairs`` the atom pairs (i, j) [P]
    of the distance check, ``records`` the recorded frames
    (lists over steps of positions [N, 3], variance, energy_mean, log_score, active [B], cells
    [B, 3, 3]), ``step`` the next step to record, ``done`` True once the last frame is recorded.
    """

    seeds: list[Atoms]
    batch: Batch
    free: torch.Tensor
    delta: torch.nn.Parameter
    strain: torch.nn.Parameter | None
    strain_mask: torch.Tensor | None
    optimizer: torch.optim.Optimizer
    active: torch.Tensor
    excluded: torch.Tensor
    last_delta: torch.Tensor
    last_strain: torch.Tensor | None
    stop_step: np.ndarray
    stop_reason: list[str]
    pairs: tuple[torch.Tensor, torch.Tensor]
    records: dict = field(default_factory=lambda: {key: [] for key in _RECORDED})
    step: int = 0
    done: bool = False

    def geometry(self) -> tuple[torch.Tensor, Batch]:
        """Positions [N, 3] and the batch with its (strained) cells for the current δ and ε."""
        if self.strain is None:
            return self.batch.positions + self.delta, self.batch
        strained_batch, moved = self.batch.deformed(self.batch.positions + self.delta,
                                                    0.5 * (self.strain + self.strain.transpose(1, 2)))
        return moved, strained_batch

    def stop(self, seeds: torch.Tensor, reason: str) -> tuple[torch.Tensor, Batch]:
        """Deactivate ``seeds`` [B] bool at this step, restore their last good δ (and ε); returns the geometry."""
        for b in torch.nonzero(seeds).flatten().tolist():
            self.stop_step[b], self.stop_reason[b] = self.step, reason
        if seeds.any():
            self.active = self.active & ~seeds
            with torch.no_grad():
                atoms = seeds[self.batch.structure_index]
                self.delta[atoms] = self.last_delta[atoms]
                if self.strain is not None:
                    self.strain[seeds] = self.last_strain[seeds]
        return self.geometry()


_RECORDED = ("positions", "variance", "energy_mean", "log_score", "active", "cells", "energy_variance")


def attack_fns(committee: Committee, train_energies: Sequence[float], config: AttackConfig | None = None,
               objective: "BoundObjective | None" = None):
    """``init_fn, step_fn`` of the batched attack (as jax-md's ``simulate`` functions).

    ``init_fn(seeds) -> AttackState``: δ₀ ~ N(0, σ₀²) on the free coordinates (the config's
    seed), Adam on δ (and on ε for periodic seeds with ``strain_learning_rate``).
    ``step_fn(state) -> state``: records the current frame of every seed (stopping the seeds
    whose atoms come too close, that the model refuses, or whose output is not finite) and,
    unless that was step ``n_steps`` or no seed is left, takes one gradient-ascent step on
    log L of the active seeds. ``train_energies`` [n] fix E_ref = min and log Q once, or the round's
    ``objective`` (:meth:`~advsample.objective.Objective.bind`) gives them as bound.
    :func:`attack` is ``init_fn`` then ``step_fn`` until ``state.done``, then :func:`attack_result`.
    (Over 80 lines only as the container of five closures of under 45 lines each, bound to one
    committee, objective constants and config, as jax-md's ``simulate`` functions are.)
    """
    config = config or AttackConfig()
    if config.kT is None:
        raise ValueError("AttackConfig.kT is not set: give the attack's temperature (the run's objective sets it)")
    bound = _bound(train_energies, config, objective)  # E_ref, log Q and the score of the round, once
    need_forces_graph = bound.uncertainty != "energy"

    def init_fn(seeds: Sequence[Atoms]) -> AttackState:
        if len(seeds) == 0:
            raise ValueError("attack needs at least one seed structure")
        batch = Batch.from_atoms(seeds).to(committee.device, committee.dtype)
        free = (~batch.fixed).to(committee.dtype)
        generator = torch.Generator().manual_seed(config.seed)
        delta0 = torch.randn(batch.positions.shape, generator=generator, dtype=committee.dtype)
        delta0 = delta0 * config.initial_displacement
        delta = torch.nn.Parameter(delta0.to(committee.device) * free)
        groups = [{"params": [delta], "lr": config.learning_rate}]
        strain = strain_mask = None
        if config.strain_learning_rate is not None and bool(batch.pbc.any()):
            periodic = batch.pbc.to(committee.dtype)  # [B, 3]
            strain_mask = periodic[:, :, None] * periodic[:, None, :]  # [B, 3, 3]: periodic directions only
            strain = torch.nn.Parameter(torch.zeros(batch.n_structures, 3, 3, dtype=committee.dtype,
                                                    device=committee.device))
            groups.append({"params": [strain], "lr": config.strain_learning_rate})
        active = torch.ones(batch.n_structures, dtype=torch.bool, device=committee.device)
        committee.eval()
        return AttackState(
            list(seeds), batch, free, delta, strain, strain_mask, torch.optim.Adam(groups), active,
            torch.zeros_like(active), delta.detach().clone(), None if strain is None else strain.detach().clone(),
            np.full(batch.n_structures, -1), [""] * batch.n_structures, _close_pairs(batch),
        )

    def evaluate(state: AttackState, positions: torch.Tensor, current: Batch):
        """Committee output on the seeds not excluded; a seed the model refuses is stopped and left out."""
        while True:
            if state.excluded.any():
                sub, atoms = current.select(~state.excluded)
                keep_index = torch.nonzero(~state.excluded).flatten()
            else:
                sub, atoms, keep_index = current, None, None
            try:
                # create_graph=True keeps Ē attached to δ also for the energy variance (no forces needed)
                out = committee(sub, forces=need_forces_graph, create_graph=True,
                                positions=positions if atoms is None else positions[atoms])
                return out, keep_index, positions, current
            except GeometryError as error:
                faulty = torch.zeros_like(state.active)
                if error.structures:
                    index = torch.as_tensor(error.structures, device=faulty.device)
                    faulty[index if keep_index is None else keep_index[index]] = True
                if not (faulty & ~state.excluded).any():
                    raise
                positions, current = state.stop(faulty & state.active, f"model refused the geometry: {error}")
                state.excluded[faulty] = True

    def record(state: AttackState) -> torch.Tensor:
        """The frame at ``state.step`` of every seed; returns the score [B] (log L, NaN for excluded seeds)."""
        positions, current = state.geometry()
        # stop seeds that bring atoms too close (minimum image in periodic cells) before the model
        # sees them; they keep their last good δ
        pair_i, pair_j = state.pairs
        if len(pair_i):
            distances = pair_distances(positions, pair_i, pair_j, state.batch.structure_index, current.cells,
                                       state.batch.pbc)
            too_close = torch.zeros_like(state.active)
            too_close[state.batch.structure_index[pair_i[distances.detach() < config.min_distance]]] = True
            positions, current = state.stop(too_close & state.active, f"atoms closer than {config.min_distance} Å")
        out, keep_index, positions, current = evaluate(state, positions, current)
        n_structures = state.batch.n_structures
        variance, score = (_scatter(value, keep_index, n_structures) for value in bound.evaluate(out))
        energy_mean = _scatter(out.energy_mean, keep_index, n_structures)
        energy_variance = _scatter(out.energy_variance, keep_index, n_structures)
        non_finite = ~torch.isfinite(score) | ~torch.isfinite(energy_mean)
        positions, current = state.stop(non_finite & state.active, "non-finite committee output")
        for key, value in zip(_RECORDED, (positions, variance, energy_mean, score, state.active, current.cells,
                                          energy_variance)):
            state.records[key].append(value.detach().cpu().numpy())
        return score

    def ascend(state: AttackState, score: torch.Tensor) -> None:
        """One Adam step on δ (and ε) of the active seeds; fixed coordinates and stopped seeds stay put."""
        delta, strain, active = state.delta, state.strain, state.active
        state.last_delta = delta.detach().clone()
        if strain is not None:
            state.last_strain = strain.detach().clone()
        objective = torch.where(active, score, torch.zeros_like(score)).sum()
        # the gradient of δ (and ε) only: the committee's weights are not the attack's to differentiate
        variables = [delta] if strain is None else [delta, strain]
        for variable, gradient in zip(variables, torch.autograd.grad(-objective, variables)):
            variable.grad = gradient
        with torch.no_grad():
            delta.grad *= state.free * active[state.batch.structure_index, None]
            delta.grad.nan_to_num_(0.0)
            if strain is not None:
                strain.grad = (strain.grad * state.strain_mask * active[:, None, None]).nan_to_num_(0.0)
        state.optimizer.step()
        with torch.no_grad():
            frozen = ~active[state.batch.structure_index]
            delta[frozen] = state.last_delta[frozen]
            if strain is not None:
                strain[~active] = state.last_strain[~active]
                strain.copy_((strain * state.strain_mask).clamp(-config.max_strain, config.max_strain))
            delta *= state.free
            if config.max_displacement is not None:
                norm = delta.norm(dim=-1, keepdim=True).clamp(min=1e-12)
                delta *= norm.clamp(max=config.max_displacement) / norm

    def step_fn(state: AttackState) -> AttackState:
        if state.done:
            raise ValueError(f"the attack state is done (step {state.step} of {config.n_steps}, "
                             f"{int(state.active.sum())} seeds active): start again with init_fn")
        score = record(state)
        if state.step == config.n_steps or not state.active.any():
            state.done = True
            return state
        ascend(state, score)
        state.step += 1
        return state

    return init_fn, step_fn


def _bound(train_energies: Sequence[float], config: AttackConfig, objective) -> "BoundObjective":
    """The bound objective (E_ref, log Q, σ² and log L): the round's, else the config's kT and
    uncertainty bound to ``train_energies`` (total energies, the mean force variance by default)."""
    if objective is not None:
        if objective.kT != config.kT:
            raise ValueError(f"attack: the bound objective's kT={objective.kT!r} differs from AttackConfig.kT={config.kT!r}")
        if config.uncertainty is not None and Objective(config.kT, config.uncertainty).uncertainty != objective.uncertainty:
            raise ValueError(f"attack: the bound objective's uncertainty={objective.uncertainty!r} differs from "
                             f"AttackConfig.uncertainty={config.uncertainty!r}")
        return objective
    return Objective(config.kT, config.uncertainty or "forces").bind(train_energies)


def attack_result(state: AttackState, train_energies: Sequence[float], config: AttackConfig,
                  objective: "BoundObjective | None" = None) -> AttackResult:
    """The :class:`AttackResult` of a finished (or stopped) attack state: every recorded step."""
    # a seed's variance at a stopped step is not a valid frame: active marks the valid ones
    stacked = {key: np.stack(value) for key, value in state.records.items()}
    return AttackResult(
        seeds=list(state.seeds),
        structure_index=state.batch.structure_index.cpu().numpy(),
        positions=stacked["positions"],
        variance=stacked["variance"],
        energy_mean=stacked["energy_mean"],
        log_score=stacked["log_score"],
        active=stacked["active"],
        stop_step=state.stop_step,
        stop_reason=state.stop_reason,
        kT=config.kT,
        energy_reference=_bound(train_energies, config, objective).energy_reference,
        cells=stacked["cells"] if state.strain is not None else None,
        energy_variance=stacked["energy_variance"],
    )


def attack(
    committee: Committee,
    seeds: Sequence[Atoms],
    train_energies: Sequence[float],
    config: AttackConfig | None = None,
    progress: bool = True,
    objective: "BoundObjective | None" = None,
) -> AttackResult:
    """Run the batched attack from ``seeds``; ``train_energies`` [n] set E_ref = min and log Q
    (or the round's bound ``objective`` gives them, computed once per round).

    ``init_fn`` and ``step_fn`` of :func:`attack_fns` until the state is done (a progress bar over steps)."""
    config = config or AttackConfig()
    if len(seeds) == 0:
        raise ValueError("attack needs at least one seed structure")
    init_fn, step_fn = attack_fns(committee, train_energies, config, objective)
    state = init_fn(seeds)
    with tqdm(total=config.n_steps + 1, desc="adversarial attack", disable=not progress, leave=False) as bar:
        while not state.done:
            state = step_fn(state)
            bar.update()
    return attack_result(state, train_energies, config, objective)
