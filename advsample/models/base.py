"""The member-model contract, and an adapter that makes M independent modules one committee model.

A committee model holds all M members of a :class:`~advsample.committee.Committee`:

``forward(batch, positions) -> energies``
    ``batch``: a :class:`~advsample.structures.Batch` (B structures, N atoms in all);
    ``positions`` [M, N, 3] in Å, one view per member; returns raw energies [M, B].
    The committee passes one geometry expanded to M equal views; member m's energy is
    differentiated only through ``positions[m]`` (the committee gets every member's
    forces from one ``autograd.grad`` of the summed energies), and it must be twice
    differentiable (the force loss and the attack differentiate the forces).
``n_members``: M.
``config()``: JSON-serialisable keyword arguments that rebuild the model, including
    ``n_members`` and ``seed`` (the active-learning loop rebuilds round r with seed + r).
``stacked``: True when every ``state_dict`` tensor carries the member axis first
    (weights [M, ...], evaluated with batched matmuls; members can be gathered by
    concatenation); False for :class:`MemberList` models (state keys ``members.<m>.…``).
``invariances``: what the energy claims to be invariant under, a subset of
    ``{"translation", "rotation", "permutation"}`` (permutation of same-element atoms);
    :func:`check_model` tests exactly these.
``normalized``: True when the committee maps raw outputs to energies with its fitted
    shift and scale (E = scale · raw + shift · n_atoms, both fitted by training);
    False for models that already return energies in eV (a pretrained potential):
    the committee keeps shift 0 and scale 1 for them.

Optional, for training (positions never change there): ``fixed_geometry(batch) ->``
:class:`FixedGeometry` computes a batch's pairs and radial pair features φ(d) with
their derivatives ∂φ/∂d once, and ``geometry_energies(batch, geometry, features)``
maps member features [M, P, K] to raw energies [M, B], equal to ``forward`` at the
batch's positions. Forces then follow from ∂E/∂φ by the chain rule with the stored
derivatives (:meth:`FixedGeometry.forces`), so the force loss's double backward never
runs through the geometry. The attack and MD never use it (they move the atoms).

Classes are registered by name in :data:`advsample.models.MODELS` (checkpoints store the
class name and ``config()``). :func:`check_model` checks a model against this contract.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from ase import Atoms
from torch import nn

from ..structures import Batch

INVARIANCES = frozenset({"translation", "rotation", "permutation"})


class _Registry(dict):
    """Model classes by name; optional ones (their extra's import) load on first lookup."""

    lazy = {"MACECommittee": "advsample.models.mace"}

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, name) or name in self.lazy

    def __missing__(self, name):
        if name not in self.lazy:
            raise KeyError(name)
        import importlib

        module = importlib.import_module(self.lazy[name])  # ImportError names the extra to install
        self[name] = getattr(module, name)
        return self[name]


MODELS = _Registry()
"""Model classes by class name, for checkpoints (filled by :mod:`advsample.models` and :func:`register_model`)."""


def register_model(cls):
    """Make a model class loadable from checkpoints by its class name."""
    MODELS[cls.__name__] = cls
    return cls


@runtime_checkable
class CommitteeModel(Protocol):
    """What :class:`~advsample.committee.Committee` needs from its model (see the module docstring)."""

    n_members: int
    stacked: bool
    invariances: frozenset
    normalized: bool

    def forward(self, batch: Batch, positions: torch.Tensor) -> torch.Tensor:
        """Raw energies [M, B] from member views of the positions [M, N, 3] (Å)."""

    def config(self) -> dict:
        """Keyword arguments that rebuild the model (with ``n_members`` and ``seed``)."""


@dataclass
class FixedGeometry:
    """Pairs and radial features of one batch at fixed positions (see the module docstring).

    ``i``, ``j`` [P]: atom indices as the model lists its pairs (SchNet: each unordered pair once),
    r_ij = x_j − x_i (+ periodic shift); ``features`` [P, K]:
    φ(d_ij); ``derivatives`` [P, K]: ∂φ/∂d at d_ij (per Å); ``unit`` [P, 3]: r_ij / d_ij,
    i.e. ∂d_ij/∂x_j; ``n_atoms``: N.
    """

    i: torch.Tensor
    j: torch.Tensor
    features: torch.Tensor
    derivatives: torch.Tensor
    unit: torch.Tensor
    n_atoms: int

    def select(self, atoms: torch.Tensor) -> "FixedGeometry":
        """The geometry of whole structures of the batch: ``atoms`` [N] bool (``Batch.select``'s mask), renumbered."""
        keep = atoms[self.i]  # a pair lies inside one structure: its i decides
        renumber = torch.cumsum(atoms.long(), 0) - 1
        return FixedGeometry(renumber[self.i[keep]], renumber[self.j[keep]], self.features[keep],
                             self.derivatives[keep], self.unit[keep], int(atoms.sum()))

    def forces(self, gradient: torch.Tensor) -> torch.Tensor:
        """Forces [M, N, 3] from ∂E/∂φ [M, P, K] (energy per feature unit): F = −Σ_p ∂E/∂d_p ∂d_p/∂x."""
        along = (gradient * self.derivatives).sum(-1, keepdim=True) * self.unit  # [M, P, 3]: ∂E/∂d_p · u_p
        forces = gradient.new_zeros(gradient.shape[0], self.n_atoms, 3)
        return forces.index_add(1, self.i, along).index_add(1, self.j, -along)


class MemberList(nn.Module):
    """M independent modules as one committee model (for members that cannot be stacked).

    Each member maps ``(batch, positions [N, 3])`` to energies [B]; member m gets
    ``positions[m]``. Subclasses build the members from ``config()`` and set
    ``invariances`` and ``normalized``; state keys are ``members.<m>.<name>``.
    """

    stacked = False
    invariances: frozenset = frozenset()
    normalized = True

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if len(members) == 0:
            raise ValueError("a committee needs at least one member")
        self.members = nn.ModuleList(members)

    @property
    def n_members(self) -> int:
        return len(self.members)

    def forward(self, batch: Batch, positions: torch.Tensor) -> torch.Tensor:
        """Raw energies [M, B] from member views of the positions [M, N, 3]."""
        M = self.n_members
        if positions.dim() != 3 or positions.shape[0] != M or positions.shape[2] != 3:
            raise ValueError(f"positions must have shape [{M}, N, 3], got {tuple(positions.shape)}")
        return torch.stack([member(batch, positions[m]) for m, member in enumerate(self.members)])


# -- per-member state (train.py keeps each member's best weights) ----------------------
def member_state(model: nn.Module) -> dict:
    """A detached copy of the model's state, to be updated member by member."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def update_members(model: nn.Module, state: dict, members: torch.Tensor) -> None:
    """Copy the current weights of the members flagged in ``members`` [M] bool into ``state``.

    Stacked models: index the member axis (dim 0) of every tensor. :class:`MemberList`
    models: copy the keys under ``members.<m>.``. Anything else is refused: silently
    masking the wrong axis would mix members.
    """
    members = members.detach().cpu().bool()
    if members.shape != (model.n_members,):
        raise ValueError(f"members must be a [{model.n_members}] bool mask, got shape {tuple(members.shape)}")
    current = model.state_dict()
    if getattr(model, "stacked", False):
        for key, value in current.items():
            if value.dim() == 0 or value.shape[0] != model.n_members:
                raise ValueError(
                    f"{type(model).__name__} says stacked=True but its state {key!r} has shape "
                    f"{tuple(value.shape)}, not [n_members={model.n_members}, ...]"
                )
            mask = members.to(value.device)
            state[key][mask] = value.detach()[mask]
        return
    if not isinstance(getattr(model, "members", None), nn.ModuleList):
        raise ValueError(f"{type(model).__name__} is neither stacked nor a MemberList: cannot copy member weights")
    for m in torch.nonzero(members).flatten().tolist():
        prefix = f"members.{m}."
        for key, value in current.items():
            if key.startswith(prefix):
                state[key] = value.detach().clone()


# -- conformance -----------------------------------------------------------------------
class ModelContractError(AssertionError):
    """A committee model breaks the member-model contract (the message says which part)."""


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def check_model(
    committee,
    structures: Sequence[Atoms],
    step: float = 1e-4,
    rtol: float = 1e-4,
    atol: float = 1e-6,
) -> None:
    """Check a committee's model against the member-model contract; raises ModelContractError.

    ``committee``: a :class:`~advsample.committee.Committee` (used through its methods, so this
    module, below the committee, imports nothing above it). Works on a float64 copy. ``structures``: a few unlabeled ``ase.Atoms`` the model
    accepts (same-element atoms present if it claims permutation invariance). Checks:
    shapes [M, N, 3] -> [M, B]; member m's gradient flows only through positions[m]; forces = −∇E
    by central finite differences (``step`` Å); the claimed invariances; the checkpoint
    round trip (rebuild from class name + ``config()``, load the state); the attack's
    gradient d(σ²_E)/dx against finite differences; a model with ``fixed_geometry``
    gives the same energies and forces through it as through ``forward``.
    (Over 80 lines as one checklist of the member contract, each check a short block in the order above, all
    on one float64 copy and one batch.)
    """
    committee = copy.deepcopy(committee).to(torch.float64).to("cpu")
    model = committee.model
    name = type(model).__name__
    missing = [a for a in ("n_members", "stacked", "invariances", "normalized", "config") if not hasattr(model, a)]
    if missing:
        raise ModelContractError(f"{name} lacks {', '.join(missing)} (see advsample.models.base)")
    unknown = set(model.invariances) - INVARIANCES
    if unknown:
        raise ModelContractError(f"{name} claims unknown invariances {sorted(unknown)}; known: {sorted(INVARIANCES)}")
    config = model.config()
    if "n_members" not in config or "seed" not in config:
        raise ModelContractError(f"{name}.config() must contain n_members and seed, got {sorted(config)}")
    batch = Batch.from_atoms(list(structures))
    M, B, N = model.n_members, batch.n_structures, batch.positions.shape[0]
    x = batch.positions.unsqueeze(0).expand(M, -1, -1).clone()

    def energies(positions: torch.Tensor, b: Batch = batch) -> torch.Tensor:
        with torch.no_grad():
            return model(b, positions)

    e0 = energies(x)
    if tuple(e0.shape) != (M, B):
        raise ModelContractError(f"{name}.forward returned shape {tuple(e0.shape)}, expected [M={M}, B={B}]")

    # member independence: member 0's energy has no gradient through the other members' views
    if M > 1:
        views = x.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(model(batch, views)[0].sum(), views, allow_unused=True)
        if gradient is not None and bool(gradient[1:].abs().max() > 0):
            raise ModelContractError(f"{name}: member 0's energy depends on other members' positions")

    # forces = -dE/dx (the committee's own forces, as every consumer sees them)
    out = committee(batch, forces=True)
    rng = np.random.default_rng(0)
    for atom in sorted(set(rng.integers(0, N, size=min(N, 4)).tolist())):
        for axis in range(3):
            shift = torch.zeros_like(batch.positions)
            shift[atom, axis] = step
            e_plus = committee(batch, forces=False, positions=batch.positions + shift).energies
            e_minus = committee(batch, forces=False, positions=batch.positions - shift).energies
            s = int(batch.structure_index[atom])
            numeric = -(e_plus - e_minus)[:, s] / (2 * step)
            analytic = out.forces[:, atom, axis]
            if not torch.allclose(analytic, numeric, rtol=rtol, atol=atol * max(1.0, float(numeric.abs().max()))):
                raise ModelContractError(
                    f"{name}: forces are not -dE/dx: atom {atom} axis {axis}: model forces "
                    f"{analytic.tolist()}, finite differences {numeric.tolist()}"
                )

    # the training path through fixed geometry (optional): same energies and forces
    geometry = committee.fixed_geometry(batch)
    if geometry is not None:
        fixed = committee(batch, forces=True, geometry=geometry)
        tolerance = atol * max(1.0, float(out.forces.abs().max()))
        if not torch.allclose(fixed.energies, out.energies, rtol=rtol, atol=atol * max(1.0, float(e0.abs().max()))):
            raise ModelContractError(f"{name}: energies through fixed_geometry differ from forward")
        if not torch.allclose(fixed.forces, out.forces, rtol=rtol, atol=tolerance):
            worst = float((fixed.forces - out.forces).abs().max())
            raise ModelContractError(f"{name}: forces through fixed_geometry differ from forward by up to {worst:.3g}")

    # claimed invariances
    scale = atol + rtol * float(e0.abs().max())
    if "translation" in model.invariances:
        moved = x + torch.tensor([0.37, -0.21, 0.13], dtype=x.dtype)
        if not torch.allclose(energies(moved), e0, rtol=0, atol=scale):
            raise ModelContractError(f"{name} claims translation invariance but a rigid translation changed E")
    if "rotation" in model.invariances:
        rotations = [torch.as_tensor(_random_rotation(rng)) for _ in range(B)]
        rotated, cells = x.clone(), batch.cells.clone()
        for b in range(B):
            sel = batch.structure_index == b
            centre = x[:, sel].mean(1, keepdim=True)
            rotated[:, sel] = (x[:, sel] - centre) @ rotations[b].T + centre
            cells[b] = batch.cells[b] @ rotations[b].T
        rotated_batch = Batch(rotated[0], batch.numbers, batch.structure_index, cells, batch.pbc, batch.fixed)
        if not torch.allclose(energies(rotated, rotated_batch), e0, rtol=0, atol=scale):
            raise ModelContractError(f"{name} claims rotation invariance but a rigid rotation changed E")
    if "permutation" in model.invariances:
        order = torch.arange(N)
        for b in range(B):
            atoms = torch.nonzero(batch.structure_index == b).flatten()
            for z in batch.numbers[atoms].unique():
                same = atoms[batch.numbers[atoms] == z]
                order[same] = same[torch.randperm(len(same), generator=torch.Generator().manual_seed(b))]
        permuted_batch = Batch(x[0][order], batch.numbers[order], batch.structure_index, batch.cells, batch.pbc,
                               batch.fixed[order])
        if not torch.allclose(energies(x[:, order], permuted_batch), e0, rtol=0, atol=scale):
            raise ModelContractError(f"{name} claims permutation invariance but swapping same-element atoms changed E")

    # checkpoint round trip: rebuilt from its class name and config, same energies
    if name not in MODELS:
        raise ModelContractError(f"{name} is not registered in advsample.models.MODELS (use register_model)")
    data = committee.checkpoint()
    rebuilt = type(committee)(MODELS[name](**data["model_config"])).to(torch.float64)
    rebuilt.load_state_dict(data["state_dict"])
    if not torch.allclose(rebuilt(batch, forces=False).energies, out.energies, rtol=1e-10, atol=1e-10):
        raise ModelContractError(f"{name}: a committee rebuilt from its checkpoint predicts other energies")

    # the attack's gradient: d sigma^2_E / dx against finite differences
    positions = batch.positions.clone().requires_grad_(True)
    variance = committee(batch, forces=False, create_graph=True, positions=positions).energy_variance.sum()
    (gradient,) = torch.autograd.grad(variance, positions)
    for atom in sorted(set(rng.integers(0, N, size=min(N, 3)).tolist())):
        for axis in range(3):
            shift = torch.zeros_like(batch.positions)
            shift[atom, axis] = step
            v_plus = committee(batch, forces=False, positions=batch.positions + shift).energy_variance.sum()
            v_minus = committee(batch, forces=False, positions=batch.positions - shift).energy_variance.sum()
            numeric = float(v_plus - v_minus) / (2 * step)
            analytic = float(gradient[atom, axis])
            if abs(analytic - numeric) > rtol * 10 * abs(numeric) + atol * max(1.0, float(variance.detach())):
                raise ModelContractError(
                    f"{name}: d(sigma^2)/dx wrong at atom {atom} axis {axis}: autograd {analytic:.6g}, "
                    f"finite differences {numeric:.6g}"
                )
