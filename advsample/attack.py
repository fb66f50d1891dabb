"""Batched adversarial attack: all seeds move together by gradient ascent on log L_adv.

log L_adv(x + δ) = log σ²(x + δ) − (Ē(x + δ) − E_ref)/kT − log Q, maximised with Adam on
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

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.io import write
from tqdm.auto import tqdm

from . import uncertainty
from .committee import Committee
from .geometry import GeometryError, pair_distances
from .structures import Batch


@dataclass
class AttackConfig:
    """Attack settings; energies in the reference's unit (eV for molecules), lengths in Å."""

    kT: float | None = None  # temperature of the objective: how far uphill seeds may go (a run's objective sets it)
    n_steps: int = 60  # gradient-ascent steps
    learning_rate: float = 0.01  # Adam step on δ (Å)
    initial_displacement: float = 0.01  # σ₀ of δ₀ ~ N(0, σ₀²) (Å)
    max_displacement: float | None = None  # clip of each atom's |δ| (Å); None: no clip
    min_distance: float = 0.5  # stop a seed when two of its atoms come closer (Å)
    uncertainty: str | None = None  # "forces" (None): σ²_F per structure; "energy": σ²_E (a run's objective sets it)
    strain_learning_rate: float | None = None  # Adam step on the cell strain ε of periodic seeds; None: cells fixed
    max_strain: float = 0.05  # clip of each strain component |ε_ab|
    seed: int = 0

    def __post_init__(self):
        if self.kT is not None and not self.kT > 0:
            raise ValueError(f"kT must be positive, got {self.kT}")
        if self.n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {self.n_steps}")
        if self.uncertainty not in (None, "forces", "energy"):
            raise ValueError(f"uncertainty must be 'forces' or 'energy', got {self.uncertainty!r}")
        if self.strain_learning_rate is not None and not self.strain_learning_rate > 0:
            raise ValueError(f"strain_learning_rate must be positive or None, got {self.strain_learning_rate!r}")
        if not 0 < self.max_strain < 1:
            raise ValueError(f"max_strain must be in (0, 1), got {self.max_strain!r}")


@dataclass
class AttackResult:
    """Every step of every seed. T = n_steps + 1 recorded frames (step 0 = δ₀).

    positions [T, N, 3] (Å); variance, energy_mean, log_score, active [T, B];
    stop_step [B] (-1 = ran to the end); stop_reason [B]; seeds: the B seed structures;
    cells [T, B, 3, 3] (Å) when the cell attack ran, else None.
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

    @property
    def n_steps(self) -> int:
        return self.positions.shape[0] - 1

    def frame(self, step: int, seed: int) -> Atoms:
        """The geometry of ``seed`` at ``step`` with its committee values in ``info``."""
        atoms = self.seeds[seed].copy()
        atoms.calc = None
        if self.cells is not None:
            atoms.set_cell(self.cells[step, seed], scale_atoms=False)
        atoms.set_positions(self.positions[step, self.structure_index == seed], apply_constraint=False)
        atoms.info.update(
            attack_seed=int(seed),
            attack_step=int(step),
            committee_energy=float(self.energy_mean[step, seed]),
            committee_variance=float(self.variance[step, seed]),
            log_score=float(self.log_score[step, seed]),
        )
        return atoms

    def trajectory(self, seed: int) -> list[Atoms]:
        """Frames of one seed while it was active."""
        return [self.frame(t, seed) for t in range(self.n_steps + 1) if self.active[t, seed]]

    def snapshots(self, every: int = 5) -> list[Atoms]:
        """Candidates: each active seed every ``every`` steps and at its last active step."""
        out = []
        for seed in range(len(self.seeds)):
            steps = np.flatnonzero(self.active[:, seed])
            chosen = sorted(set(steps[every::every].tolist()) | {int(steps[-1])}) if len(steps) > 1 else []
            out.extend(self.frame(t, seed) for t in chosen if t > 0)
        return out

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


def attack(
    committee: Committee,
    seeds: Sequence[Atoms],
    train_energies: Sequence[float],
    config: AttackConfig | None = None,
    progress: bool = True,
) -> AttackResult:
    """Run the batched attack from ``seeds``; ``train_energies`` [n] set E_ref = min and log Q."""
    config = config or AttackConfig()
    if len(seeds) == 0:
        raise ValueError("attack needs at least one seed structure")
    if config.kT is None:
        raise ValueError("AttackConfig.kT is not set: give the attack's temperature (the run's objective sets it)")
    energy_reference = float(np.min(train_energies))
    log_q = uncertainty.log_partition(train_energies, config.kT, energy_reference)
    batch = Batch.from_atoms(seeds).to(committee.device, committee.dtype)
    free = (~batch.fixed).to(committee.dtype)
    n_structures = batch.n_structures
    generator = torch.Generator().manual_seed(config.seed)
    delta0 = torch.randn(batch.positions.shape, generator=generator, dtype=committee.dtype) * config.initial_displacement
    delta = torch.nn.Parameter(delta0.to(committee.device) * free)
    groups = [{"params": [delta], "lr": config.learning_rate}]
    strain = strain_mask = None
    if config.strain_learning_rate is not None and bool(batch.pbc.any()):
        periodic = batch.pbc.to(committee.dtype)  # [B, 3]
        strain_mask = periodic[:, :, None] * periodic[:, None, :]  # [B, 3, 3]: periodic directions only
        strain = torch.nn.Parameter(torch.zeros(n_structures, 3, 3, dtype=committee.dtype, device=committee.device))
        groups.append({"params": [strain], "lr": config.strain_learning_rate})
    optimizer = torch.optim.Adam(groups)

    def geometry() -> tuple[torch.Tensor, Batch]:
        """Positions [N, 3] and the batch with its (strained) cells for the current δ and ε."""
        if strain is None:
            return batch.positions + delta, batch
        strained_batch, moved = batch.deformed(batch.positions + delta, 0.5 * (strain + strain.transpose(1, 2)))
        return moved, strained_batch

    pair_i, pair_j = _close_pairs(batch)
    active = torch.ones(n_structures, dtype=torch.bool, device=committee.device)
    stop_step = np.full(n_structures, -1)
    stop_reason = [""] * n_structures
    records = {key: [] for key in ("positions", "variance", "energy_mean", "log_score", "active", "cells")}
    last_good = delta.detach().clone()
    last_strain = None if strain is None else strain.detach().clone()

    def _stop(seeds: torch.Tensor, step: int, reason: str) -> tuple[torch.Tensor, Batch]:
        """Deactivate ``seeds`` [B] bool at ``step``, restore their last good δ (and ε); returns the geometry."""
        nonlocal active
        for b in torch.nonzero(seeds).flatten().tolist():
            stop_step[b], stop_reason[b] = step, reason
        if seeds.any():
            active = active & ~seeds
            with torch.no_grad():
                atoms = seeds[batch.structure_index]
                delta[atoms] = last_good[atoms]
                if strain is not None:
                    strain[seeds] = last_strain[seeds]
        return geometry()

    excluded = torch.zeros_like(active)  # seeds whose geometry the model refused: never evaluated again
    need_forces_graph = config.uncertainty != "energy"  # None: forces

    def _evaluate(positions: torch.Tensor, current: Batch, step: int):
        """Committee output on the seeds not excluded; a seed the model refuses is stopped and left out."""
        while True:
            if excluded.any():
                sub, atoms = current.select(~excluded)
                keep_index = torch.nonzero(~excluded).flatten()
            else:
                sub, atoms, keep_index = current, None, None
            try:
                # create_graph=True keeps Ē attached to δ also for the energy variance (no forces needed)
                out = committee(sub, forces=need_forces_graph, create_graph=True,
                                positions=positions if atoms is None else positions[atoms])
                return out, keep_index, positions, current
            except GeometryError as error:
                faulty = torch.zeros_like(active)
                if error.structures:
                    index = torch.as_tensor(error.structures, device=active.device)
                    faulty[index if keep_index is None else keep_index[index]] = True
                if not (faulty & ~excluded).any():
                    raise
                positions, current = _stop(faulty & active, step, f"model refused the geometry: {error}")
                excluded[faulty] = True

    committee.eval()
    for step in tqdm(range(config.n_steps + 1), desc="adversarial attack", disable=not progress, leave=False):
        positions, current = geometry()
        # stop seeds that bring atoms too close (minimum image in periodic cells) before the model
        # sees them; they keep their last good δ
        if len(pair_i):
            distances = pair_distances(positions, pair_i, pair_j, batch.structure_index, current.cells, batch.pbc)
            too_close = torch.zeros_like(active)
            too_close[batch.structure_index[pair_i[distances.detach() < config.min_distance]]] = True
            positions, current = _stop(too_close & active, step, f"atoms closer than {config.min_distance} Å")
        out, keep_index, positions, current = _evaluate(positions, current, step)
        sub_variance = out.force_variance if need_forces_graph else out.energy_variance
        variance = _scatter(sub_variance, keep_index, n_structures)
        energy_mean = _scatter(out.energy_mean, keep_index, n_structures)
        score = uncertainty.adversarial_log_score(variance, energy_mean, config.kT, log_q, energy_reference)
        non_finite = ~torch.isfinite(score) | ~torch.isfinite(energy_mean)
        positions, current = _stop(non_finite & active, step, "non-finite committee output")

        records["positions"].append(positions.detach().cpu().numpy())
        records["variance"].append(variance.detach().cpu().numpy())
        records["energy_mean"].append(energy_mean.detach().cpu().numpy())
        records["log_score"].append(score.detach().cpu().numpy())
        records["active"].append(active.cpu().numpy())
        records["cells"].append(current.cells.detach().cpu().numpy())
        if step == config.n_steps or not active.any():
            break

        last_good = delta.detach().clone()
        if strain is not None:
            last_strain = strain.detach().clone()
        objective = torch.where(active, score, torch.zeros_like(score)).sum()
        # the gradient of δ (and ε) only: the committee's weights are not the attack's to differentiate
        variables = [delta] if strain is None else [delta, strain]
        for variable, gradient in zip(variables, torch.autograd.grad(-objective, variables)):
            variable.grad = gradient
        with torch.no_grad():
            delta.grad *= free * active[batch.structure_index, None]
            delta.grad.nan_to_num_(0.0)
            if strain is not None:
                strain.grad = (strain.grad * strain_mask * active[:, None, None]).nan_to_num_(0.0)
        optimizer.step()
        with torch.no_grad():
            frozen = ~active[batch.structure_index]
            delta[frozen] = last_good[frozen]
            if strain is not None:
                strain[~active] = last_strain[~active]
                strain.copy_((strain * strain_mask).clamp(-config.max_strain, config.max_strain))
            delta *= free
            if config.max_displacement is not None:
                norm = delta.norm(dim=-1, keepdim=True).clamp(min=1e-12)
                delta *= norm.clamp(max=config.max_displacement) / norm

    # a seed's variance at a stopped step is not a valid frame: active marks the valid ones
    stacked = {key: np.stack(value) for key, value in records.items()}
    return AttackResult(
        seeds=list(seeds),
        structure_index=batch.structure_index.cpu().numpy(),
        positions=stacked["positions"],
        variance=stacked["variance"],
        energy_mean=stacked["energy_mean"],
        log_score=stacked["log_score"],
        active=stacked["active"],
        stop_step=stop_step,
        stop_reason=stop_reason,
        kT=config.kT,
        energy_reference=energy_reference,
        cells=stacked["cells"] if strain is not None else None,
    )
