"""Interatomic distances under periodic boundary conditions, and the geometry error.

Minimum-image displacements: a displacement d = x_j - x_i [P, 3] (Å) is taken to
fractional coordinates f = d C⁻¹ (C: the cell [3, 3], rows = cell vectors), wrapped to
[-0.5, 0.5) along the periodic directions, and the shortest of the 27 neighbouring
images (±1 cell along each periodic direction) is kept. This is exact whenever the
shortest image lies within one cell of the wrapped one, i.e. for any cell that is not
extremely skewed. Missing (zero) cell vectors along non-periodic directions are
completed with unit vectors (``ase.cell.Cell.complete``) first; directions without pbc
never wrap.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import torch
from ase.cell import Cell


class GeometryError(ValueError):
    """A model (or the attack) refuses a geometry; ``structures``: batch indices at fault."""

    def __init__(self, message: str, structures: Sequence[int] = ()):
        super().__init__(message)
        self.structures = sorted({int(s) for s in structures})


_SHIFTS = np.array(list(itertools.product((-1, 0, 1), repeat=3)), dtype=float)  # [27, 3]


def complete_cells(cells: np.ndarray) -> np.ndarray:
    """[B, 3, 3] cells with zero vectors completed (orthogonal unit vectors), so they invert."""
    cells = np.asarray(cells, dtype=float).reshape(-1, 3, 3)
    return np.stack([Cell(c).complete().array for c in cells])


def minimum_image_numpy(vectors: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Shortest periodic images of displacements ``vectors`` [P, 3] (Å) in one cell [3, 3], pbc [3]."""
    vectors = np.asarray(vectors, dtype=float).reshape(-1, 3)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    if not pbc.any():
        return vectors
    cell = complete_cells(cell)[0]
    fractional = vectors @ np.linalg.inv(cell)
    fractional[:, pbc] -= np.round(fractional[:, pbc])
    shifts = _SHIFTS * pbc  # [27, 3]; no shift along non-periodic directions
    images = (fractional[:, None, :] + shifts[None]) @ cell  # [P, 27, 3]
    best = np.argmin((images**2).sum(-1), axis=1)
    return images[np.arange(len(images)), best]


def pair_distances_numpy(positions: np.ndarray, i: np.ndarray, j: np.ndarray, cell: np.ndarray,
                         pbc: np.ndarray) -> np.ndarray:
    """Minimum-image distances [P] (Å) of atom pairs (i [P], j [P]) of one structure.

    positions [N, 3] (Å); cell [3, 3]; pbc [3] bool.
    """
    positions = np.asarray(positions, dtype=float)
    vectors = positions[np.asarray(j)] - positions[np.asarray(i)]
    return np.linalg.norm(minimum_image_numpy(vectors, cell, pbc), axis=-1)


def pair_distances(positions: torch.Tensor, i: torch.Tensor, j: torch.Tensor, structure_index: torch.Tensor,
                   cells: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
    """Minimum-image distances [P] (Å) of atom pairs (i [P], j [P]) in a batch (differentiable).

    positions [N, 3] (Å); structure_index [N] in 0..B-1 (i and j must share a structure);
    cells [B, 3, 3] (Å); pbc [B, 3] bool. Pairs in non-periodic structures are plain distances.
    """
    vectors = positions[j] - positions[i]  # [P, 3]
    if not bool(pbc.any()) or vectors.shape[0] == 0:
        return vectors.norm(dim=-1)
    structure = structure_index[i]  # [P]
    full = torch.as_tensor(complete_cells(cells.detach().cpu().numpy()), dtype=positions.dtype,
                           device=positions.device)  # [B, 3, 3]
    cell = full[structure]  # [P, 3, 3]
    periodic = pbc[structure].to(positions.dtype)  # [P, 3]
    fractional = torch.linalg.solve(cell.transpose(1, 2), vectors.unsqueeze(-1)).squeeze(-1)  # d = f C
    fractional = fractional - torch.round(fractional).detach() * periodic
    shifts = torch.as_tensor(_SHIFTS, dtype=positions.dtype, device=positions.device)  # [27, 3]
    images = torch.einsum("psk,pkl->psl", fractional[:, None, :] + shifts[None] * periodic[:, None, :], cell)
    return images.norm(dim=-1).amin(dim=1)
