"""MACE committees (optional extra: ``pip install -e ".[mace]"``, mace-torch 0.3.16).

Two ways to get one, both a :class:`~advsample.models.base.MemberList` of M independent
MACE models (member m sees ``positions[m]``; energies [M, B] in eV):

* built from code (``MACECommittee(n_members, species, ...)``): M freshly initialised
  MACE models (seeds ``seed + m``, no download), trained by
  :func:`advsample.train.train_committee` like any other committee (the committee's
  energy shift/scale apply, the models' own E0s are zero);
* loaded from the user's own trained MACE model files
  (``MACECommittee(model_paths=[...])``, one file per member, saved with
  ``torch.save(model, path)`` as mace's training writes them): energies in eV as the
  models predict them, so the committee's shift/scale stay off (``normalized = False``).
  The files are whole pickled Python modules, and unpickling one runs any code it holds:
  they are loaded only with ``allow_pickle=True`` (``MACECommittee.from_files(paths,
  allow_pickle=True)``; ``Committee.load(checkpoint, allow_pickle=True)`` for a checkpoint
  of such a committee, which stores the paths and its weights, never the permission).

Import order: mace-torch pins e3nn 0.4.4, which fails to import under torch ≥ 2.6
unless ``mace`` is imported first (it sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for the
whole process, so every ``torch.load`` in advsample passes ``weights_only`` explicitly).
This module imports ``mace`` before ``e3nn``; import it through here.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ase.data import chemical_symbols
from torch import nn

try:
    import mace  # noqa: F401  (first: makes e3nn importable under torch >= 2.6)
    from mace import modules as mace_modules
    from e3nn import o3
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "MACE committees need the optional mace extra: pip install -e \".[mace]\" (mace-torch==0.3.16)"
    ) from error

from ..structures import Batch
from . import register_model
from .base import MemberList
from .neighbours import NeighbourCache, batch_neighbours


class MACEMember(nn.Module):
    """One MACE model as a committee member: (batch, positions [N, 3] Å) -> energies [B] (eV or raw).

    Builds MACE's graph (one-hot species, edges within ``r_max`` including periodic
    images) from the batch; neighbour lists are cached per geometry, so training
    lists each structure once.
    """

    def __init__(self, model: nn.Module, cache_size: int = 4096):
        super().__init__()
        self.model = model
        self.species = [int(z) for z in model.atomic_numbers.tolist()]
        self.r_max = float(model.r_max)
        lookup = torch.full((len(chemical_symbols),), -1, dtype=torch.long)
        lookup[torch.tensor(self.species)] = torch.arange(len(self.species))
        self.register_buffer("species_lookup", lookup, persistent=False)
        self.neighbour_cache = NeighbourCache(cache_size)

    def node_attrs(self, numbers: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[N] atomic numbers -> [N, S] one-hot; ValueError for elements the model lacks."""
        index = self.species_lookup[numbers.clamp(0, len(chemical_symbols) - 1)]
        if bool((index < 0).any()):
            unknown = sorted({int(z) for z in numbers[index < 0].tolist()})
            raise ValueError(
                f"element(s) {', '.join(chemical_symbols[z] for z in unknown)} not known to this MACE model; "
                f"it was built for {', '.join(chemical_symbols[z] for z in self.species)}"
            )
        return torch.nn.functional.one_hot(index, len(self.species)).to(dtype)

    def forward(self, batch: Batch, positions: torch.Tensor) -> torch.Tensor:
        """Energies [B] from positions [N, 3] (Å), differentiable with respect to them."""
        B = batch.n_structures
        i, j, shifts = batch_neighbours(self.neighbour_cache, batch, positions, range(B), self.r_max)
        unit_shifts = shifts.new_zeros(shifts.shape)  # only used for stress/virials, not computed
        if not positions.requires_grad and torch.is_grad_enabled():
            positions = positions.clone().requires_grad_(True)
        elif not torch.is_grad_enabled():
            positions = positions.detach()
        n_atoms = batch.n_atoms
        data = {
            "positions": positions,
            "node_attrs": self.node_attrs(batch.numbers, positions.dtype),
            "edge_index": torch.stack([i, j]),
            "shifts": shifts,
            "unit_shifts": unit_shifts,
            "cell": batch.cells.reshape(-1, 3).to(positions.dtype),
            "batch": batch.structure_index,
            "ptr": torch.cat([n_atoms.new_zeros(1), torch.cumsum(n_atoms, 0)]),
        }
        return self.model(data, training=self.training, compute_force=False)["energy"]


def build_mace(
    species: Sequence[int],
    r_max: float,
    hidden_irreps: str,
    max_ell: int,
    num_interactions: int,
    correlation: int,
    avg_num_neighbors: float,
    seed: int,
) -> nn.Module:
    """A freshly initialised MACE model (E0s zero), seeded without touching the global RNG."""
    interaction = mace_modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The TorchScript type system", category=UserWarning)
        torch.manual_seed(seed)
        return mace_modules.MACE(
            r_max=r_max,
            num_bessel=8,
            num_polynomial_cutoff=5,
            max_ell=max_ell,
            interaction_cls=interaction,
            interaction_cls_first=interaction,
            num_interactions=num_interactions,
            num_elements=len(species),
            hidden_irreps=o3.Irreps(hidden_irreps),
            MLP_irreps=o3.Irreps("16x0e"),
            atomic_energies=np.zeros(len(species)),
            avg_num_neighbors=avg_num_neighbors,
            atomic_numbers=list(species),
            correlation=correlation,
            gate=torch.nn.functional.silu,
        )


def load_mace(path: str | Path, allow_pickle: bool = False) -> nn.Module:
    """A user's trained MACE model file (a pickled module, as mace's training saves it).

    ``allow_pickle`` must be True: unpickling the file runs any code it holds.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"MACE model file {path} does not exist")
    if not allow_pickle:
        raise ValueError(
            f"{path} is a pickled Python module: loading it runs any code it holds. Load MACE model "
            "files you trust with allow_pickle=True (MACECommittee.from_files(paths, allow_pickle=True), "
            "or Committee.load(checkpoint, allow_pickle=True) for a checkpoint that refers to them)"
        )
    # a whole pickled module: only weights_only=False reads it; the caller has allowed it
    model = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(model, nn.Module) or not hasattr(model, "atomic_numbers") or not hasattr(model, "r_max"):
        raise ValueError(f"{path} does not hold a MACE model (torch.save(model, path) of a mace.modules model)")
    return model


def file_sha256(path: str | Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _member_signature(model: nn.Module) -> dict:
    """What members of one committee must share: species, precision, cutoff and architecture
    (parameter names and shapes)."""
    return {
        "species": [int(z) for z in model.atomic_numbers.tolist()],
        "precision": str(next(model.parameters()).dtype).replace("torch.", ""),
        "r_max": float(model.r_max),
        "architecture": {name: tuple(p.shape) for name, p in model.state_dict().items()},
    }


def check_members(paths: Sequence[str], models: Sequence[nn.Module]) -> None:
    """ValueError naming the file whose species, precision, cutoff or architecture differ from the first's."""
    first = _member_signature(models[0])
    for path, model in zip(paths[1:], models[1:]):
        other = _member_signature(model)
        for key in ("species", "precision", "r_max"):
            if other[key] != first[key]:
                raise ValueError(f"MACE model file {path} has {key} {other[key]}, but {paths[0]} has {first[key]}: "
                                 "the members of one committee must share species, precision and architecture")
        if other["architecture"] != first["architecture"]:
            differ = sorted(set(other["architecture"].items()) ^ set(first["architecture"].items()))[:3]
            raise ValueError(f"MACE model file {path} has another architecture than {paths[0]} (parameters differ: "
                             f"{', '.join(f'{n} {tuple(s)}' for n, s in differ)}): the members of one committee "
                             "must share species, precision and architecture")


@register_model
class MACECommittee(MemberList):
    """M independent MACE models as one committee model; raw energies [M, B].

    From code (all JSON-serialisable, returned by :meth:`config`):
        n_members, species (atomic numbers), r_max (Å), hidden_irreps (e.g. "16x0e + 16x1o"),
        max_ell, num_interactions, correlation, avg_num_neighbors, seed (member m: seed + m).
    From files: ``model_paths`` (one trained MACE model per member) and
    ``allow_pickle=True`` (the files are pickles, see the module); the other architecture
    arguments are then ignored and energies are the models' own (eV). The files are data:
    :meth:`config` records each one's resolved path and ``model_sha256`` checksum, so a
    checkpoint or a resumed run refuses a file whose contents changed (naming it), and the
    same file reached by another (relative) path is the same model. Members must share
    species, precision and architecture (refused at load, naming the file).
    """

    invariances = frozenset({"translation", "rotation", "permutation"})

    def __init__(
        self,
        n_members: int = 3,
        species: Sequence[int] = (1, 7),
        r_max: float = 4.0,
        hidden_irreps: str = "16x0e + 16x1o",
        max_ell: int = 2,
        num_interactions: int = 2,
        correlation: int = 2,
        avg_num_neighbors: float = 3.0,
        seed: int = 0,
        model_paths: Sequence[str] | None = None,
        allow_pickle: bool = False,
        model_sha256: Sequence[str] | None = None,
    ):
        if model_paths is not None:
            paths = [str(Path(p).resolve()) for p in model_paths]
            checksums = [file_sha256(p) if Path(p).is_file() else None for p in paths]
            if model_sha256 is not None:  # a checkpoint or run made with these files: same contents?
                if len(model_sha256) != len(paths):
                    raise ValueError(f"model_sha256 has {len(model_sha256)} checksums for {len(paths)} MACE model files")
                for path, recorded, now in zip(paths, model_sha256, checksums):
                    if now is not None and recorded != now:
                        raise ValueError(
                            f"MACE model file {path} changed since this committee was made (sha256 recorded "
                            f"{recorded[:16]}..., now {now[:16]}...): restore the file, or start a new run with it"
                        )
            models = [load_mace(p, allow_pickle) for p in paths]
            check_members(paths, models)
            members = [MACEMember(m) for m in models]
            architecture = {}
            self_sha256 = checksums
        else:
            if n_members < 1:
                raise ValueError(f"n_members must be >= 1, got {n_members}")
            paths = None
            architecture = {
                "species": sorted({int(z) for z in species}),
                "r_max": float(r_max),
                "hidden_irreps": str(hidden_irreps),
                "max_ell": int(max_ell),
                "num_interactions": int(num_interactions),
                "correlation": int(correlation),
                "avg_num_neighbors": float(avg_num_neighbors),
            }
            members = [MACEMember(build_mace(**architecture, seed=int(seed) + m)) for m in range(int(n_members))]
            self_sha256 = None
        super().__init__(members)
        self.model_sha256 = self_sha256
        self.seed = int(seed)
        self.model_paths = paths
        self.allow_pickle = bool(allow_pickle) and paths is not None
        self._architecture = architecture

    @property
    def species(self) -> list[int]:
        """Atomic numbers the members know (checked against a run's data before anything is paid)."""
        return list(self.members[0].species)

    @property
    def normalized(self) -> bool:
        # trained models from files predict eV themselves; models from code learn via the shift/scale
        return self.model_paths is None

    @classmethod
    def from_files(cls, paths: Sequence[str | Path], allow_pickle: bool = False) -> "MACECommittee":
        """A committee of the user's own trained MACE model files (one per member); see the module
        for why ``allow_pickle=True`` is required."""
        if len(paths) == 0:
            raise ValueError("give at least one MACE model file")
        return cls(model_paths=[str(p) for p in paths], allow_pickle=allow_pickle)

    @staticmethod
    def gather_config(configs: Sequence[dict]) -> dict:
        """The config of several committees joined (``Committee.gather``): files concatenated, or members summed."""
        from_files = [c.get("model_paths") is not None for c in configs]
        if all(from_files):
            paths = [p for c in configs for p in c["model_paths"]]
            allow = all(c.get("allow_pickle", False) for c in configs)
            gathered = {"n_members": len(paths), "model_paths": paths, "seed": configs[0]["seed"], "allow_pickle": allow}
            if all(c.get("model_sha256") is not None for c in configs):
                gathered["model_sha256"] = [h for c in configs for h in c["model_sha256"]]
            return gathered
        if any(from_files):
            raise ValueError("gather cannot join MACE committees from files with committees built from code")
        for other in configs[1:]:
            if {**other, "n_members": 0, "seed": 0} != {**configs[0], "n_members": 0, "seed": 0}:
                raise ValueError("gather needs committees of the same model architecture")
        return {**configs[0], "n_members": sum(c["n_members"] for c in configs)}

    def config(self) -> dict:
        if self.model_paths is not None:  # allow_pickle: for rebuilds in this process; checkpoints drop it
            return {"n_members": self.n_members, "model_paths": list(self.model_paths),
                    "model_sha256": list(self.model_sha256), "seed": self.seed, "allow_pickle": self.allow_pickle}
        return {"n_members": self.n_members, **self._architecture, "seed": self.seed}
