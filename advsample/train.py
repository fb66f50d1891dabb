"""Fit a committee to labeled structures: energy + force loss, early stopping on a fixed validation set.

All members train together (one forward/backward per step); each member keeps its own
best weights on the validation set (stacked or MemberList models alike,
:func:`advsample.models.base.update_members`). Bootstrap resampling gives
each member its own multiset of training structures.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
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
    patience: int = 300  # stop when no member improved on validation (by min_improvement) for this many epochs
    min_improvement: float = 1e-3  # relative drop of a member's validation loss that counts as progress for `patience`
    lr_factor: float = 0.5  # learning-rate decay on a validation plateau
    lr_patience: int = 100  # epochs without improvement before decaying the learning rate
    min_learning_rate: float = 1e-5
    warmup_epochs: int = 0  # learning rate ramped linearly from ~0 over these epochs (Adam's first steps are ~lr each)
    stop_on: str = "validation"  # early stopping and best weights on "validation" or "validation+train" (their sum)
    bootstrap: bool = False  # resample the training set per member
    reuse_geometry: bool = True  # pairs and radial features once per batch (models that offer it), not every step
    seed: int = 0
    progress: bool = True  # tqdm bar
    # continued training (a round that starts from the previous round's weights, `continued()`):
    continue_epochs: int | None = None  # maximum epochs of a continued round; None: a quarter of `epochs`
    continue_learning_rate: float | None = None  # its initial Adam step; None: a fifth of `learning_rate`
    continue_patience: int | None = None  # its early-stopping patience; None: a quarter of `patience` (plateau decay: half)
    continue_warmup_epochs: int | None = None  # its warmup; None: a tenth of its epochs

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.energy_weight < 0 or self.forces_weight < 0 or self.energy_weight + self.forces_weight == 0:
            raise ValueError("energy_weight and forces_weight must be >= 0 and not both 0")
        if not 0 <= self.min_improvement < 1:
            raise ValueError(f"min_improvement must be in [0, 1), got {self.min_improvement}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        for name in ("continue_epochs", "continue_patience"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {getattr(self, name)}")
        if self.stop_on not in ("validation", "validation+train"):
            raise ValueError(f"stop_on must be 'validation' or 'validation+train', got {self.stop_on!r}")
        if self.warmup_epochs < 0 or (self.continue_warmup_epochs or 0) < 0:
            raise ValueError(f"warmup epochs must be >= 0, got {self.warmup_epochs}, {self.continue_warmup_epochs}")
        if self.continue_learning_rate is not None and not self.continue_learning_rate > 0:
            raise ValueError(f"continue_learning_rate must be positive or None, got {self.continue_learning_rate}")

    def continued(self) -> "TrainConfig":
        """The schedule of a continued round: ``continue_epochs`` at ``continue_learning_rate``,
        patience ``continue_patience`` (plateau decay after half of it), never longer than a full
        round (``epochs``, ``patience``), the learning rate warmed up over ``continue_warmup_epochs``
        (a fresh Adam's first steps move every weight by ~lr: at 5e-3 that threw a converged NH3
        committee's training loss from 0.007 to 126), best weights and stopping on the validation
        plus the training loss (``stop_on="validation+train"``: the new labels must count, or the
        fixed validation set of the initial region rewards not learning them); else as here."""
        pick = lambda value, default: default if value is None else value  # noqa: E731
        epochs = min(pick(self.continue_epochs, max(self.epochs // 4, 1)), self.epochs)
        patience = min(pick(self.continue_patience, max(self.patience // 4, 1)), self.patience)
        learning_rate = pick(self.continue_learning_rate, self.learning_rate / 5)
        warmup = min(pick(self.continue_warmup_epochs, max(epochs // 10, 1)), epochs)
        return replace(self, epochs=epochs, learning_rate=learning_rate, patience=patience,
                       lr_patience=min(self.lr_patience, max(patience // 2, 1)), warmup_epochs=warmup,
                       min_learning_rate=min(self.min_learning_rate, learning_rate), stop_on="validation+train")


@dataclass
class TrainHistory:
    """Per-epoch losses (members summed) and the best validation loss of each member."""

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    learning_rate: list[float] = field(default_factory=list)
    best_validation_loss: list[float] = field(default_factory=list)  # [M]
    start_validation_loss: list[float] | None = None  # [M], a continued run's starting weights
    best_epoch: list[int] = field(default_factory=list)  # [M], -1: the starting weights stayed best
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


LOSS_WEIGHT_KEYS = ("config_energy_weight", "config_forces_weight")  # atoms.info keys, as MACE's extxyz


def loss_weights(atoms_list: Sequence[Atoms]) -> tuple[np.ndarray, np.ndarray]:
    """Per-structure loss weights [B], [B] (energy, forces): ``atoms.info["config_energy_weight"]`` and
    ``["config_forces_weight"]`` (MACE's keys, so its extxyz files train alike), 1 where absent. They
    multiply that structure's terms on top of :class:`TrainConfig`'s ``energy_weight`` and
    ``forces_weight``; 0 leaves the term out (e.g. a label trained on its forces only). Raises
    ``ValueError`` naming the structure for a negative or non-finite weight."""
    weights = np.ones((2, len(atoms_list)))
    for i, atoms in enumerate(atoms_list):
        for k, key in enumerate(LOSS_WEIGHT_KEYS):
            value = atoms.info.get(key, 1.0)
            try:
                value = float(value)
            except (TypeError, ValueError):
                value = float("nan")
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"structure {i} ({atoms.get_chemical_formula()}): info[{key!r}] = "
                                 f"{atoms.info.get(key)!r}; a loss weight must be a finite number >= 0")
            weights[k, i] = value
    return weights[0], weights[1]


class _Targets:
    """A batch with its reference energies [B], forces [N, 3], free-coordinate mask [N, 3], the
    structures' loss weights [B] (:func:`loss_weights`) and, with ``reuse_geometry``, the model's
    fixed geometry of it (computed once; minibatches are :meth:`subset` of it)."""

    def __init__(self, atoms_list: Sequence[Atoms], committee: Committee, reuse_geometry: bool = True):
        energies, forces = labels_of(atoms_list)
        energy_weights, forces_weights = loss_weights(atoms_list)
        self.batch = Batch.from_atoms(atoms_list).to(committee.device, committee.dtype)
        self.geometry = committee.fixed_geometry(self.batch) if reuse_geometry else None
        as_tensor = lambda x: torch.as_tensor(x, dtype=committee.dtype, device=committee.device)  # noqa: E731
        self.energies, self.forces = as_tensor(energies), as_tensor(forces)
        self.energy_weights, self.forces_weights = as_tensor(energy_weights), as_tensor(forces_weights)
        self.free = (~self.batch.fixed).to(committee.dtype)

    def subset(self, index: np.ndarray) -> "_Targets":
        """The targets of structures ``index`` (sorted), cut from these tensors: no new batch or geometry."""
        keep = torch.zeros(self.batch.n_structures, dtype=torch.bool, device=self.energies.device)
        keep[torch.as_tensor(index, device=keep.device)] = True
        part = object.__new__(_Targets)
        part.batch, atoms = self.batch.select(keep)
        part.geometry = None if self.geometry is None else self.geometry.select(atoms)
        part.energies, part.forces, part.free = self.energies[keep], self.forces[atoms], self.free[atoms]
        part.energy_weights, part.forces_weights = self.energy_weights[keep], self.forces_weights[keep]
        return part

    def member_losses(
        self, committee: Committee, config: TrainConfig, weights: torch.Tensor | None = None, create_graph=True
    ) -> torch.Tensor:
        """[M] loss per member; ``weights`` [M, B] are per-member structure weights (bootstrap); each
        structure's energy and force terms are scaled by its loss weights (:func:`loss_weights`), the
        means still taken over all structures (a weight of 0 drops the term, not the structure)."""
        out = committee(self.batch, forces=config.forces_weight > 0, create_graph=create_graph, geometry=self.geometry)
        scale = committee.energy_scale
        n_structures = self.batch.n_structures
        if weights is None:
            weights = torch.ones(committee.n_members, n_structures, dtype=scale.dtype, device=scale.device)
        energy_error = ((out.energies - self.energies) / scale) ** 2  # [M, B]
        loss = config.energy_weight * (weights * self.energy_weights * energy_error).sum(1) / weights.sum(1)
        if config.forces_weight > 0:
            force_error = (((out.forces - self.forces) / scale) ** 2 * self.free).sum(-1)  # [M, N]
            atom_weights = weights[:, self.batch.structure_index] * self.free.sum(-1)  # [M, N]
            term_weights = (weights * self.forces_weights)[:, self.batch.structure_index]  # [M, N]
            loss = loss + config.forces_weight * (term_weights * force_error).sum(1) / atom_weights.sum(1).clamp(min=1)
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


class _EarlyStopping:
    """Per-member best weights and patience on the validation loss.

    Each member's best weights follow every improvement; its patience counter restarts only
    when its loss falls below ``(1 − min_improvement)`` × its loss at the last restart, so a
    loss that creeps down by noise-sized steps (e.g. the training loss standing in for
    validation) does not keep training alive for ever. Training stops when every member has
    waited ``patience`` epochs. ``start`` [M] (continued training): the starting weights'
    losses are the first best, so no member ends worse on validation than it began.
    """

    def __init__(self, committee: Committee, config: TrainConfig, start: torch.Tensor | None = None):
        n_members = committee.n_members
        self.best = torch.full((n_members,), float("inf")) if start is None else start.clone()
        self.anchor = self.best.clone()
        self.waited = torch.zeros(n_members, dtype=torch.long)
        self.best_epoch = torch.full((n_members,), -1, dtype=torch.long)
        self.state = member_state(committee.model)
        self.config = config

    def update(self, committee: Committee, losses: torch.Tensor, epoch: int) -> bool:
        """Record epoch ``epoch``'s member losses [M]; True when training should stop."""
        improved = losses < self.best
        if improved.any():
            self.best = torch.where(improved, losses, self.best)
            self.best_epoch = torch.where(improved, torch.full_like(self.best_epoch, epoch), self.best_epoch)
            update_members(committee.model, self.state, improved)
        progress = losses < self.anchor * (1 - self.config.min_improvement)
        progress |= ~torch.isfinite(self.anchor) & torch.isfinite(losses)
        self.anchor = torch.where(progress, losses, self.anchor)
        self.waited = torch.where(progress, torch.zeros_like(self.waited), self.waited + 1)
        return bool((self.waited >= self.config.patience).all())


def train_committee(
    committee: Committee,
    train: Sequence[Atoms],
    validation: Sequence[Atoms] | None = None,
    config: TrainConfig | None = None,
    fit_normalization: bool | None = None,
    warm_start: bool = False,
) -> TrainHistory:
    """Train all members in place; returns the history. Each member ends at its best validation weights.

    ``validation`` empty or None: the training loss stands in for early stopping.
    ``warm_start``: continue from the committee's current weights: the energy shift/scale are
    kept, and the starting weights' losses (``config.stop_on``) are each member's first best (a
    member never ends worse on that criterion than it started). Give it a continued schedule
    (``config.continued()``): converged weights take small, warmed-up steps.
    ``fit_normalization``: set the energy shift/scale from ``train`` (default: unless ``warm_start``).
    """
    config = config or TrainConfig()
    if len(train) == 0:
        raise ValueError("empty training set: give at least one labeled structure")
    if fit_normalization is None:
        fit_normalization = not warm_start
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
    weights_all = None if counts is None else torch.as_tensor(counts, dtype=committee.dtype, device=committee.device)
    history = TrainHistory()
    both = config.stop_on == "validation+train" and validation_targets is not None
    start = None
    if warm_start:
        committee.eval()
        start = train_targets.member_losses(committee, config, weights_all, create_graph=False).detach().cpu()
        if validation_targets is not None:
            start_validation = validation_targets.member_losses(committee, config, create_graph=False).detach().cpu()
            start = start + start_validation if both else start_validation
        history.start_validation_loss = start.tolist()
    steps_per_epoch = -(-n_train // batch_size)
    warmup_steps, step = config.warmup_epochs * steps_per_epoch, 0
    stopping = _EarlyStopping(committee, config, start)
    bar = tqdm(range(config.epochs), desc="training committee", disable=not config.progress, leave=False)
    committee.train()
    for epoch in bar:
        order = rng.permutation(n_train) if batch_size < n_train else np.arange(n_train)
        epoch_loss, member_train = 0.0, torch.zeros(n_members)
        for first in range(0, n_train, batch_size):
            if step < warmup_steps:
                for group in optimizer.param_groups:
                    group["lr"] = config.learning_rate * (step + 1) / (warmup_steps + 1)
            step += 1
            index = np.sort(order[first : first + batch_size])
            targets = train_targets if batch_size == n_train else train_targets.subset(index)
            weights = None if counts is None else weights_all[:, torch.as_tensor(index, device=weights_all.device)]
            losses = training_step(committee, targets, config, optimizer, weights)
            epoch_loss += float(losses.sum()) * len(index) / n_train
            member_train += losses.cpu() * len(index) / n_train
        if validation_targets is not None:
            member_validation = validation_targets.member_losses(committee, config, create_graph=False).detach().cpu()
            if both:  # this epoch's training loss (before its steps) joins the validation loss
                member_validation = member_validation + member_train
        else:
            member_validation = member_train
        stop = stopping.update(committee, member_validation, epoch)
        validation_total = float(member_validation.sum())
        if step >= warmup_steps:
            scheduler.step(validation_total)
        history.epoch.append(epoch)
        history.train_loss.append(epoch_loss)
        history.validation_loss.append(validation_total)
        history.learning_rate.append(optimizer.param_groups[0]["lr"])
        if epoch % 50 == 0:
            bar.set_postfix(train=f"{epoch_loss:.3g}", validation=f"{validation_total:.3g}")
        if stop:
            history.stopped_early = True
            break
    bar.close()
    committee.model.load_state_dict(stopping.state)
    committee.eval()
    history.best_validation_loss = stopping.best.tolist()
    history.best_epoch = stopping.best_epoch.tolist()
    return history


def member_errors(committee: Committee, atoms_list: Sequence[Atoms]) -> dict:
    """Each member's errors on labeled structures: ``energy_mae`` per atom and ``force_mae``
    (free coordinates only, as in training), lists of length M, in the labels' units (not the
    committee's normalisation, so two committees normalised apart compare); the members' spread
    there: ``energy_sigma`` (per atom) and ``force_sigma`` (per free component), means; and per
    structure (lists of length N): ``energy_per_structure`` and ``force_per_structure`` (the
    members' mean error of each structure, same units) and ``n_free`` (its free force components)."""
    energies, forces = labels_of(atoms_list)
    predicted = committee.predict(atoms_list)
    batch = Batch.from_atoms(atoms_list)
    n_atoms = np.array([len(a) for a in atoms_list], dtype=float)
    energy_error = np.abs(predicted["energies"] - energies[None]) / n_atoms[None]  # [M, N]
    free = ~batch.fixed.numpy()  # [atoms, 3]
    force_error = np.abs(predicted["forces"] - forces[None])[:, free]  # [M, free coordinates]
    force_mae = force_error.mean(1) if force_error.shape[1] else np.zeros(committee.n_members)
    force_sigma = predicted["forces"].std(0)[free]
    owner = np.broadcast_to(batch.structure_index.numpy()[:, None], free.shape)[free]  # structure of each component
    n_free = np.bincount(owner, minlength=len(atoms_list))
    per_structure = np.bincount(owner, weights=force_error.mean(0), minlength=len(atoms_list)) / np.maximum(n_free, 1)
    return {"energy_mae": energy_error.mean(1).tolist(), "force_mae": force_mae.tolist(),
            "energy_sigma": float((predicted["energies"].std(0) / n_atoms).mean()),
            "force_sigma": float(force_sigma.mean()) if force_sigma.size else 0.0,
            "energy_per_structure": energy_error.mean(0).tolist(), "force_per_structure": per_structure.tolist(),
            "n_free": n_free.tolist()}


def _paired_standard_error(difference: np.ndarray, weights: np.ndarray) -> float:
    """Standard error of the weighted mean of per-structure differences [N] (weights summing to 1;
    N ≥ 2): sqrt(N/(N-1) Σ w² (d - d̄)²), for equal weights the familiar std(d, ddof=1)/sqrt(N)."""
    n = difference.size
    mean = float((weights * difference).sum())
    return float(np.sqrt(n / (n - 1) * (weights ** 2 * (difference - mean) ** 2).sum()))


def regression_check(previous: Committee, committee: Committee, atoms_list: Sequence[Atoms],
                     confidence: float = 0.95) -> dict:
    """Is ``committee`` worse than ``previous`` on the fixed validation structures ``atoms_list``?

    For the force MAE and the per-atom energy MAE (members' means), the rise from ``previous`` to
    ``committee`` is compared with an allowed rise of two parts:

    * the tolerance: the previous committee's own spread there (force σ per component, energy σ
      per atom), or the standard deviation of its members' errors, or 1 % of their mean, the
      largest (learning a new region may cost the old one a little; not more than the committee
      claims to be unsure by);
    * the validation set's sampling noise: ``t`` × the standard error of the rise over the N
      structures, from the paired per-structure differences (each structure's error under the new
      committee minus under the old; force errors weighted by free components), ``t`` the
      one-sided Student-t quantile at ``confidence`` with N - 1 degrees of freedom.

    A rise beyond tolerance + t·SE is a regression: a one-sided paired t-test that the rise exceeds
    the tolerance, at level 1 - ``confidence`` (``p_value`` is its p). On a large set SE → 0 and the
    rule is the tolerance alone (``confidence=0.5``, t = 0, gives that rule on any set); on 2
    structures t = 6.31, so a rise must be large and consistent over both to count. A non-finite
    error is always a regression. With fewer than 2 structures no standard error exists: nothing is
    flagged unless non-finite, and ``undecided`` says why (the loop checks on the last training set then).

    Returns {"flagged", "worse" (figures that regressed), "previous"/"now": {figure: member mean},
    "tolerance", "standard_error", "p_value" and "spread" (the whole allowed rise, tolerance + t·SE):
    {figure: value}, "t", "confidence", "n_structures", "undecided" (None, or why no test was made)}.
    """
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence!r}")
    n = len(atoms_list)
    result = {"previous": {}, "now": {}, "tolerance": {}, "standard_error": {}, "p_value": {}, "spread": {},
              "worse": [], "n_structures": n, "confidence": confidence, "t": None, "undecided": None}
    if n == 0:
        result.update(flagged=False, undecided="no structures to check on")
        return result
    from scipy.stats import t as student_t

    if n >= 2:
        result["t"] = float(student_t.ppf(confidence, n - 1))
    else:
        result["undecided"] = "1 structure: no standard error, so only a non-finite error is flagged"
    before, after = member_errors(previous, atoms_list), member_errors(committee, atoms_list)
    for figure in ("force_mae", "energy_mae"):
        old, new = np.asarray(before[figure]), np.asarray(after[figure])
        sigma = before[figure.replace("_mae", "_sigma")]
        tolerance = max(sigma, float(old.std()), 0.01 * float(old.mean()))
        key = figure.replace("_mae", "_per_structure")
        difference = np.asarray(after[key]) - np.asarray(before[key])
        weights = np.asarray(before["n_free"], float) if figure == "force_mae" else np.ones(n)
        weights = weights / weights.sum() if weights.sum() > 0 else np.full(n, 1.0 / n)
        rise = float(new.mean() - old.mean())
        result["previous"][figure], result["now"][figure] = float(old.mean()), float(new.mean())
        result["tolerance"][figure] = tolerance
        if n >= 2:
            error = _paired_standard_error(difference, weights)
            result["standard_error"][figure] = error
            result["spread"][figure] = tolerance + result["t"] * error if error > 0 else tolerance
            result["p_value"][figure] = float(student_t.sf((rise - tolerance) / error, n - 1)) if error > 0 \
                else float(not rise > tolerance)
        else:
            result["standard_error"][figure] = result["spread"][figure] = result["p_value"][figure] = None
        if not np.isfinite(new.mean()) or (n >= 2 and rise > result["spread"][figure]):
            result["worse"].append(figure)
    result["flagged"] = bool(result["worse"])
    return result
