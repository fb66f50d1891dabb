"""Fit a committee to labeled structures: energy + force loss, early stopping on a fixed validation set.

All members train together (one forward/backward per step); each member keeps its own
best weights on the validation set (stacked or MemberList models alike,
:func:`advsample.models.base.update_members`). Bootstrap resampling gives
each member its own multiset of training structures.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
from ase import Atoms
from tqdm.auto import tqdm

from .committee import Committee
from .models.base import member_state, update_members
from .structures import Batch, labels_of


@dataclass
class TrainConfig:
    """Training settings. Loss terms are in units of the energy scale fitted from the data."""

    epochs: int = 2000  # maximum full passes over the training set
    learning_rate: float = 5e-3  # Adam's initial step
    energy_weight: float = 1.0  # weight of the energy MSE
    forces_weight: float = 1.0  # weight of the force MSE (per free coordinate)
    batch_size: int | None = None  # structures per step; None = the whole set
    patience: int = 300  # stop when no member improved on validation for this many epochs
    lr_factor: float = 0.5  # learning-rate decay on a validation plateau
    lr_patience: int = 100  # epochs without improvement before decaying the learning rate
    min_learning_rate: float = 1e-5
    bootstrap: bool = False  # resample the training set per member
    reuse_geometry: bool = True  # pairs and radial features once per batch (models that offer it), not every step
    seed: int = 0
    progress: bool = True  # tqdm bar

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.energy_weight < 0 or self.forces_weight < 0 or self.energy_weight + self.forces_weight == 0:
            raise ValueError("energy_weight and forces_weight must be >= 0 and not both 0")


@dataclass
class TrainHistory:
    """Per-epoch losses (members summed) and the best validation loss of each member."""

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    best_validation_loss: list[float] = field(default_factory=list)  # [M]
    stopped_early: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def split_validation(atoms_list: Sequence[Atoms], fraction: float = 0.1, seed: int = 0) -> tuple[list[Atoms], list[Atoms]]:
    """Split once into (train, validation); store the result, never re-split between rounds."""
    if not 0 <= fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    if len(atoms_list) == 0:
        raise ValueError("empty training set: nothing to split")
    order = np.random.default_rng(seed).permutation(len(atoms_list))
    n_validation = int(round(fraction * len(atoms_list)))
    if fraction > 0 and len(atoms_list) > 1:
        n_validation = max(n_validation, 1)
    validation = [atoms_list[i] for i in sorted(order[:n_validation])]
    train = [atoms_list[i] for i in sorted(order[n_validation:])]
    return train, validation


class _Targets:
    """A batch with its reference energies [B], forces [N, 3], free-coordinate mask [N, 3] and,
    with ``reuse_geometry``, the model's fixed geometry of it (computed once; minibatches are
    :meth:`subset` of it)."""

    def __init__(self, atoms_list: Sequence[Atoms], committee: Committee, reuse_geometry: bool = True):
        energies, forces = labels_of(atoms_list)
        self.batch = Batch.from_atoms(atoms_list).to(committee.device, committee.dtype)
        self.geometry = committee.fixed_geometry(self.batch) if reuse_geometry else None
        self.energies = torch.as_tensor(energies, dtype=committee.dtype, device=committee.device)
        self.forces = torch.as_tensor(forces, dtype=committee.dtype, device=committee.device)
        self.free = (~self.batch.fixed).to(committee.dtype)

    def subset(self, index: np.ndarray) -> "_Targets":
        """The targets of structures ``index`` (sorted), cut from these tensors: no new batch or geometry."""
        keep = torch.zeros(self.batch.n_structures, dtype=torch.bool, device=self.energies.device)
        keep[torch.as_tensor(index, device=keep.device)] = True
        part = object.__new__(_Targets)
        part.batch, atoms = self.batch.select(keep)
        part.geometry = None if self.geometry is None else self.geometry.select(atoms)
        part.energies, part.forces, part.free = self.energies[keep], self.forces[atoms], self.free[atoms]
        return part

    def member_losses(
        self, committee: Committee, config: TrainConfig, weights: torch.Tensor | None = None, create_graph=True
    ) -> torch.Tensor:
        """[M] loss per member; ``weights`` [M, B] are per-member structure weights (bootstrap)."""
        out = committee(self.batch, forces=config.forces_weight > 0, create_graph=create_graph, geometry=self.geometry)
        scale = committee.energy_scale
        n_structures = self.batch.n_structures
        if weights is None:
            weights = torch.ones(committee.n_members, n_structures, dtype=scale.dtype, device=scale.device)
        energy_error = ((out.energies - self.energies) / scale) ** 2  # [M, B]
        loss = config.energy_weight * (weights * energy_error).sum(1) / weights.sum(1)
        if config.forces_weight > 0:
            force_error = (((out.forces - self.forces) / scale) ** 2 * self.free).sum(-1)  # [M, N]
            atom_weights = weights[:, self.batch.structure_index] * self.free.sum(-1)  # [M, N]
            loss = loss + config.forces_weight * (
                (weights[:, self.batch.structure_index] * force_error).sum(1) / atom_weights.sum(1).clamp(min=1)
            )
        return loss


def training_step(committee: Committee, targets: _Targets, config: TrainConfig, optimizer: torch.optim.Optimizer,
                  weights: torch.Tensor | None = None) -> torch.Tensor:
    """One optimizer step on ``targets``; returns the member losses [M] (detached).

    The loss is differentiated with respect to the optimizer's parameters only: the positions
    (or fixed radial features) the forces came from are leaves too, and their gradient — a
    second pass through the force graph — is not needed.
    """
    parameters = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    losses = targets.member_losses(committee, config, weights)
    optimizer.zero_grad(set_to_none=True)
    losses.sum().backward(inputs=parameters)
    optimizer.step()
    return losses.detach()


def train_committee(
    committee: Committee,
    train: Sequence[Atoms],
    validation: Sequence[Atoms] | None = None,
    config: TrainConfig | None = None,
    fit_normalization: bool = True,
) -> TrainHistory:
    """Train all members in place; returns the history. Each member ends at its best validation weights.

    ``validation`` empty or None: the training loss stands in for early stopping.
    ``fit_normalization``: set the energy shift/scale from ``train`` (turn off for warm starts).
    """
    config = config or TrainConfig()
    if len(train) == 0:
        raise ValueError("empty training set: give at least one labeled structure")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    energies, _ = labels_of(train)
    if fit_normalization:
        committee.fit_normalization(energies, [len(a) for a in train])
    validation_targets = _Targets(validation, committee, config.reuse_geometry) if validation else None
    n_members, n_train = committee.n_members, len(train)
    batch_size = n_train if config.batch_size is None else min(config.batch_size, n_train)
    counts = None
    if config.bootstrap:
        draws = rng.integers(0, n_train, size=(n_members, n_train))
        counts = np.stack([np.bincount(d, minlength=n_train) for d in draws]).astype(float)

    fused = committee.device.type in ("cpu", "cuda")  # one kernel for all parameters
    optimizer = torch.optim.Adam(committee.model.parameters(), lr=config.learning_rate, fused=fused)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=config.lr_factor, patience=config.lr_patience, min_lr=config.min_learning_rate
    )
    train_targets = _Targets(train, committee, config.reuse_geometry)  # minibatches are cut from it
    best_loss = torch.full((n_members,), float("inf"))
    best_state = member_state(committee.model)
    history = TrainHistory()
    since_best = 0
    bar = tqdm(range(config.epochs), desc="training committee", disable=not config.progress, leave=False)
    committee.train()
    for epoch in bar:
        order = rng.permutation(n_train) if batch_size < n_train else np.arange(n_train)
        epoch_loss = 0.0
        for start in range(0, n_train, batch_size):
            index = np.sort(order[start : start + batch_size])
            targets = train_targets if batch_size == n_train else train_targets.subset(index)
            weights = None
            if counts is not None:
                weights = torch.as_tensor(counts[:, index], dtype=committee.dtype, device=committee.device)
            losses = training_step(committee, targets, config, optimizer, weights)
            epoch_loss += float(losses.sum()) * len(index) / n_train
        if validation_targets is not None:
            member_validation = validation_targets.member_losses(committee, config, create_graph=False).detach().cpu()
        else:
            member_validation = losses.cpu()
        improved = member_validation < best_loss
        if improved.any():
            best_loss = torch.where(improved, member_validation, best_loss)
            update_members(committee.model, best_state, improved)
            since_best = 0
        else:
            since_best += 1
        validation_total = float(member_validation.sum())
        scheduler.step(validation_total)
        history.epoch.append(epoch)
        history.train_loss.append(epoch_loss)
        history.validation_loss.append(validation_total)
        history.learning_rate.append(optimizer.param_groups[0]["lr"])
        if epoch % 50 == 0:
            bar.set_postfix(train=f"{epoch_loss:.3g}", validation=f"{validation_total:.3g}")
        if since_best >= config.patience:
            history.stopped_early = True
            break
    bar.close()
    committee.model.load_state_dict(best_state)
    committee.eval()
    history.best_validation_loss = best_loss.tolist()
    return history
