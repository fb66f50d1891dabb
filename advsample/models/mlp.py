"""A committee of MLPs stored as one module: weights [M, in, out], one batched matmul per layer.

For toy surfaces (one particle per structure, a few free coordinates) and other
fixed-size systems whose input is a slice of the Cartesian coordinates.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..structures import Batch


class MLPCommittee(nn.Module):
    """M independent MLPs evaluated together.

    Input per structure: the Cartesian components ``input_axes`` of its ``n_atoms`` atoms,
    flattened to [B, n_atoms * len(input_axes)]. Output: raw energies [M, B]. Raw
    coordinates are not translation, rotation or permutation invariant, and it claims none.
    """

    stacked = True
    invariances = frozenset()
    normalized = True

    def __init__(
        self,
        n_members: int = 5,
        hidden: Sequence[int] = (64, 64, 64),
        n_atoms: int = 1,
        input_axes: Sequence[int] = (0, 1),
        seed: int = 0,
    ):
        super().__init__()
        if n_members < 1:
            raise ValueError(f"n_members must be >= 1, got {n_members}")
        self.n_members = int(n_members)
        self.hidden = [int(h) for h in hidden]
        self.n_atoms = int(n_atoms)
        self.input_axes = [int(a) for a in input_axes]
        self.seed = int(seed)
        sizes = [self.n_atoms * len(self.input_axes), *self.hidden, 1]
        generator = torch.Generator().manual_seed(self.seed)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            # independent initialisation per member (the source of committee diversity)
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            w = (torch.rand(self.n_members, fan_in, fan_out, generator=generator) * 2 - 1) * bound
            b = (torch.rand(self.n_members, 1, fan_out, generator=generator) * 2 - 1) * 0.1
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))

    def config(self) -> dict:
        return {
            "n_members": self.n_members,
            "hidden": self.hidden,
            "n_atoms": self.n_atoms,
            "input_axes": self.input_axes,
            "seed": self.seed,
        }

    def forward(self, batch: Batch, positions: torch.Tensor) -> torch.Tensor:
        """Raw energies [M, B] from member views of the positions [M, N, 3]."""
        n_atoms = batch.n_atoms
        if not bool((n_atoms == self.n_atoms).all()):
            raise ValueError(
                f"this MLP committee takes structures of {self.n_atoms} atom(s); "
                f"got sizes {sorted(set(n_atoms.tolist()))}"
            )
        h = positions[:, :, self.input_axes].reshape(self.n_members, batch.n_structures, -1)  # [M, B, in]
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = torch.nn.functional.silu(h)
        return h.squeeze(-1)
