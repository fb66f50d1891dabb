"""The committee: M member models evaluated together, member axis first.

energies [M, B] (reference units), forces [M, N, 3] by autograd, per member in one
backward pass (each member sees its own view of the positions, so d(sum E)/dx_m is
member m's gradient). The model meets the contract of :mod:`advsample.models.base`
(stacked along a member axis, or a :class:`~advsample.models.MemberList` of independent
modules); members trained apart are joined with :meth:`Committee.gather`.
"""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from functools import cached_property
from inspect import signature
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
import torch
from ase import Atoms
from torch import nn

from . import uncertainty
from .models import MODELS, CommitteeModel, FixedGeometry
from .structures import Batch

CHECKPOINT_FORMAT = "advsample.committee"
CHECKPOINT_VERSION = 1


def default_device() -> str:
    """"cuda" when a GPU is visible, else "cpu": users with a GPU get it with no code change."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class CommitteeOutput:
    """Member predictions and their statistics for one batch.

    energies [M, B]; forces [M, N, 3] or None; structure_index [N]; free [N, 3] bool.
    """

    energies: torch.Tensor
    forces: torch.Tensor | None
    structure_index: torch.Tensor
    free: torch.Tensor

    @property
    def n_structures(self) -> int:
        return int(self.energies.shape[1])

    @cached_property
    def energy_mean(self) -> torch.Tensor:
        """[B]"""
        return self.energies.mean(0)

    @cached_property
    def energy_variance(self) -> torch.Tensor:
        """[B] variance over members."""
        return uncertainty.energy_variance(self.energies)

    @cached_property
    def forces_mean(self) -> torch.Tensor:
        """[N, 3]"""
        return self._forces().mean(0)

    @cached_property
    def force_variance_per_atom(self) -> torch.Tensor:
        """[N] member variance averaged over x, y, z."""
        return uncertainty.force_variance_per_atom(self._forces())

    @cached_property
    def force_variance(self) -> torch.Tensor:
        """[B] member variance averaged over each structure's free coordinates."""
        return uncertainty.force_variance_per_structure(
            self._forces(), self.structure_index, self.n_structures, self.free
        )

    def _forces(self) -> torch.Tensor:
        if self.forces is None:
            raise ValueError("forces were not computed: call the committee with forces=True")
        return self.forces


class Committee(nn.Module):
    """A committee of M potentials: E = energy_scale * model(batch) + energy_shift * n_atoms.

    ``model`` meets the contract of :mod:`advsample.models.base`. A model with
    ``normalized = False`` (a pretrained potential returning eV) keeps shift 0 and scale 1.
    """

    def __init__(self, model: nn.Module, energy_shift: float = 0.0, energy_scale: float = 1.0):
        super().__init__()
        if type(model).__name__ not in MODELS:
            raise ValueError(f"unknown model class {type(model).__name__}; register it with models.register_model")
        if not isinstance(model, CommitteeModel):
            missing = [a for a in ("n_members", "stacked", "invariances", "normalized") if not hasattr(model, a)]
            raise ValueError(
                f"{type(model).__name__} does not meet the committee-model contract "
                f"(missing {', '.join(missing) or 'forward/config'}; see advsample.models.base)"
            )
        if not model.normalized and (energy_shift != 0.0 or energy_scale != 1.0):
            raise ValueError(f"{type(model).__name__} returns energies itself (normalized=False): no shift/scale")
        self.model = model
        self.register_buffer("energy_shift", torch.tensor(float(energy_shift)))
        self.register_buffer("energy_scale", torch.tensor(float(energy_scale)))
        # plain data of advsample.calibration.Calibration (fitted on held-out labels), or None; saved in checkpoints
        self.calibration: dict | None = None

    @property
    def n_members(self) -> int:
        return int(self.model.n_members)

    @property
    def device(self) -> torch.device:
        return self.energy_shift.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def fixed_geometry(self, batch: Batch) -> FixedGeometry | None:
        """The model's :class:`~advsample.models.base.FixedGeometry` of ``batch``, or None if it has none."""
        if not hasattr(self.model, "fixed_geometry"):
            return None
        return self.model.fixed_geometry(batch.to(self.device, self.dtype))

    def forward(
        self, batch: Batch, forces: bool = True, create_graph: bool = False, positions: torch.Tensor | None = None,
        geometry: FixedGeometry | None = None,
    ) -> CommitteeOutput:
        """Predict energies [M, B] and (optionally) forces [M, N, 3].

        ``positions`` [N, 3] overrides the batch's positions (the attack passes x0 + δ so
        gradients reach δ). ``create_graph`` keeps the force graph (training, the attack).
        ``geometry``: this batch's :meth:`fixed_geometry` (training: the batch's own positions).
        """
        batch = batch.to(self.device, self.dtype)
        if geometry is not None:  # member views of the fixed radial features [M, P, K]
            if positions is not None:
                raise ValueError("give positions or a fixed geometry, not both")
            inputs = geometry.features.detach().requires_grad_(forces)
            energies_of, forces_of = lambda views: self.model.geometry_energies(batch, geometry, views), geometry.forces
        else:  # member views of the positions [M, N, 3]
            if positions is None:
                positions = batch.positions
            if positions.shape != batch.positions.shape:
                raise ValueError(f"positions must have shape [N, 3] = {list(batch.positions.shape)} for this batch of "
                                 f"{batch.n_structures} structure(s), got {list(positions.shape)}")
            inputs = positions.to(self.device, self.dtype)
            if forces and not inputs.requires_grad:
                inputs = inputs.detach().requires_grad_(True)
            energies_of, forces_of = lambda views: self.model(batch, views), torch.neg
        views = inputs.unsqueeze(0).expand(self.n_members, -1, -1)
        with torch.set_grad_enabled(forces or torch.is_grad_enabled()):
            raw = energies_of(views)
            energies = self.energy_scale * raw + self.energy_shift * batch.n_atoms.to(raw.dtype)
            member_forces = None
            if forces:
                (gradient,) = torch.autograd.grad(energies.sum(), views, create_graph=create_graph,
                                                  retain_graph=create_graph)
                member_forces = forces_of(gradient)
        if not create_graph:
            energies = energies.detach()
        return CommitteeOutput(energies, member_forces, batch.structure_index, ~batch.fixed)

    def predict(self, atoms_list: Sequence[Atoms], batch_size: int = 512) -> dict[str, np.ndarray]:
        """NumPy predictions for many structures, in chunks.

        Returns energies [M, B], energy_mean/energy_std [B], forces [M, N, 3],
        forces_mean [N, 3], forces_std_per_atom [N], forces_std [B] (per structure).
        """
        if isinstance(atoms_list, Atoms):
            atoms_list = [atoms_list]
        chunks = []
        for start in range(0, len(atoms_list), batch_size):
            batch = Batch.from_atoms(atoms_list[start : start + batch_size])
            out = self(batch, forces=True)
            chunks.append(
                {
                    "energies": out.energies,
                    "forces": out.forces,
                    "energy_std": out.energy_variance.sqrt(),
                    "forces_std_per_atom": out.force_variance_per_atom.sqrt(),
                    "forces_std": out.force_variance.sqrt(),
                }
            )
        result = {
            key: torch.cat([c[key].detach() for c in chunks], dim=1 if key in ("energies", "forces") else 0)
            .cpu()
            .numpy()
            for key in chunks[0]
        }
        result["energy_mean"] = result["energies"].mean(0)
        result["forces_mean"] = result["forces"].mean(0)
        return result

    def fit_normalization(self, energies: np.ndarray, n_atoms: np.ndarray) -> None:
        """Set shift (mean energy per atom) and scale (std of the remainder) from training labels.

        No-op for models that return energies themselves (``normalized = False``).
        """
        if not self.model.normalized:
            return
        energies = np.asarray(energies, dtype=float)
        n_atoms = np.asarray(n_atoms, dtype=float)
        shift = float(np.sum(energies) / np.sum(n_atoms))
        scale = float(np.std(energies - shift * n_atoms))
        self.energy_shift.fill_(shift)
        self.energy_scale.fill_(scale if scale > 1e-8 else 1.0)

    # -- persistence -------------------------------------------------------------------
    def checkpoint(self) -> dict:
        """Plain data only (str, numbers, lists, dicts, tensors): loadable with ``weights_only=True``."""
        # a permission to unpickle model files is never stored: Committee.load's caller gives it
        config = {k: v for k, v in self.model.config().items() if k != "allow_pickle"}
        try:
            plain = json.loads(json.dumps(config, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{type(self.model).__name__}.config() must be plain JSON data to be saved: {exc}") from exc
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "model_class": type(self.model).__name__,
            "model_config": plain,
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            "calibration": None if self.calibration is None else json.loads(json.dumps(self.calibration)),
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.checkpoint(), path)
        return path

    @staticmethod
    def _read(source: str | Path | BinaryIO) -> dict:
        """The checkpoint dict, unpickled with ``weights_only=True``: a file that holds Python
        objects (which could run code when unpickled) is refused, never executed."""
        name = source if isinstance(source, (str, Path)) else "checkpoint"
        try:
            data = torch.load(Path(source) if isinstance(source, str) else source, map_location="cpu",
                              weights_only=True)
        except pickle.UnpicklingError as exc:
            found = [line.strip().split(" Please use")[0] for line in str(exc).splitlines() if "Unsupported global" in line]
            raise ValueError(
                f"{name} is not a plain-data advsample committee checkpoint: it holds pickled Python "
                f"objects, which advsample refuses to load because unpickling them could run code"
                + (f" ({found[0]})" if found else "")
            ) from exc
        except FileNotFoundError:
            raise
        except Exception as exc:  # torch raises many kinds on a damaged or foreign file
            raise ValueError(f"{name} cannot be read as a committee checkpoint: {type(exc).__name__}: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{name} is not an advsample committee checkpoint")
        if data.get("format_version") != CHECKPOINT_VERSION:
            raise ValueError(
                f"{name} has checkpoint format version {data.get('format_version')}, "
                f"this advsample reads version {CHECKPOINT_VERSION}"
            )
        return data

    @classmethod
    def load(cls, path: str | Path | BinaryIO, device: str | None = None, allow_pickle: bool = False) -> "Committee":
        """Rebuild a committee from a checkpoint file or bytes buffer (model class and config included).

        ``allow_pickle``: the model may unpickle the files its config names (a MACE committee
        from the user's model files); such files can run code, so it is never read from the checkpoint.
        """
        data = cls._read(path)
        if data["model_class"] not in MODELS:
            known = ", ".join(sorted({*MODELS, *MODELS.lazy}))
            raise ValueError(f"{path}: unknown model class {data['model_class']}; define it and register it with "
                             f"models.register_model before loading (known: {known})")
        model_class = MODELS[data["model_class"]]
        options = {"allow_pickle": True} if allow_pickle and "allow_pickle" in signature(model_class).parameters else {}
        model = model_class(**{**data["model_config"], **options})
        committee = cls(model)
        committee.load_state_dict(data["state_dict"])
        committee.calibration = data.get("calibration")
        return committee.to(device or default_device())

    def load_checkpoint(self, path: str | Path) -> None:
        """Load weights into this committee; fails clearly if the checkpoint is another model."""
        data = self._read(path)
        mine = (type(self.model).__name__, self.checkpoint()["model_config"])
        theirs = (data["model_class"], data["model_config"])
        if mine != theirs:
            raise ValueError(
                f"checkpoint {path} is from a different model: {theirs[0]} {theirs[1]}; "
                f"this committee is {mine[0]} {mine[1]}"
            )
        self.load_state_dict(data["state_dict"])
        self.calibration = data.get("calibration")

    @classmethod
    def gather(cls, committees: Sequence["Committee"]) -> "Committee":
        """One committee holding the members of several (same architecture, e.g. trained apart).

        Stacked models concatenate along the member axis, :class:`~advsample.models.MemberList`
        models renumber their members; normalization is taken from the first.
        """
        if not committees:
            raise ValueError("gather needs at least one committee")
        first = committees[0]
        name = type(first.model).__name__
        configs = [json.loads(json.dumps(c.model.config())) for c in committees]  # as checkpoints store them
        if any(type(c.model).__name__ != name for c in committees):
            raise ValueError("gather needs committees of the same model architecture")
        merge = getattr(type(first.model), "gather_config", None)  # a model's own rule, if it has one
        if merge is not None:
            config = merge(configs)
        else:
            config = configs[0]
            for other in configs[1:]:
                if {**other, "n_members": 0, "seed": 0} != {**config, "n_members": 0, "seed": 0}:
                    raise ValueError("gather needs committees of the same model architecture")
            config["n_members"] = sum(c.n_members for c in committees)
        gathered = cls(MODELS[name](**config), float(first.energy_shift), float(first.energy_scale))
        states = [c.model.state_dict() for c in committees]
        if first.model.stacked:
            gathered.model.load_state_dict({k: torch.cat([s[k].cpu() for s in states]) for k in states[0]})
        else:
            merged, offset = {}, 0
            for committee, state in zip(committees, states):
                for key, value in state.items():
                    _, m, rest = key.split(".", 2)  # members.<m>.<name>
                    merged[f"members.{int(m) + offset}.{rest}"] = value.cpu()
                offset += committee.n_members
            gathered.model.load_state_dict(merged)
        return gathered.to(first.device)
