"""Structures <-> tensors.

A :class:`Batch` packs a list of ``ase.Atoms`` of different sizes into flat tensors
(atoms of all structures concatenated), the layout every model and the attack use.
Labeled structures carry their reference energy (eV or the toy's units) and forces
in a ``SinglePointCalculator``; :func:`labeled` and :func:`labels_of` are the only
places that read or write that convention.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms, FixCartesian


@dataclass
class Batch:
    """Flat tensors for B structures with N atoms in total.

    positions: [N, 3] (Å); numbers: [N] atomic numbers; structure_index: [N] in 0..B-1;
    cells: [B, 3, 3] (Å); pbc: [B, 3] bool; fixed: [N, 3] bool, True where an ASE
    constraint holds that coordinate.
    """

    positions: torch.Tensor
    numbers: torch.Tensor
    structure_index: torch.Tensor
    cells: torch.Tensor
    pbc: torch.Tensor
    fixed: torch.Tensor

    @property
    def n_structures(self) -> int:
        return int(self.cells.shape[0])

    @property
    def n_atoms(self) -> torch.Tensor:
        """[B] number of atoms per structure."""
        return torch.bincount(self.structure_index, minlength=self.n_structures)

    def to(self, device=None, dtype=None) -> "Batch":
        """Move to a device; ``dtype`` applies to the floating tensors."""
        return Batch(
            positions=self.positions.to(device=device, dtype=dtype),
            numbers=self.numbers.to(device),
            structure_index=self.structure_index.to(device),
            cells=self.cells.to(device=device, dtype=dtype),
            pbc=self.pbc.to(device),
            fixed=self.fixed.to(device),
        )

    def with_positions(self, positions: torch.Tensor) -> "Batch":
        """Same structures, new positions [N, 3]."""
        if positions.shape != self.positions.shape:
            raise ValueError(
                f"positions must have shape {tuple(self.positions.shape)}, got {tuple(positions.shape)}"
            )
        return replace(self, positions=positions)

    def deformed(self, positions: torch.Tensor, strain: torch.Tensor) -> tuple["Batch", torch.Tensor]:
        """The batch and ``positions`` [N, 3] under a homogeneous strain ε [B, 3, 3] per structure:
        cell rows h → h(1 + ε), x → x(1 + ε) (differentiable in both)."""
        moved = positions + torch.einsum("ni,nij->nj", positions, strain[self.structure_index])
        return replace(self, cells=self.cells + torch.bmm(self.cells, strain)), moved

    def select(self, keep: torch.Tensor) -> tuple["Batch", torch.Tensor]:
        """The structures ``keep`` [B] bool as a batch of their own (in order), and their atoms [N] bool."""
        atoms = keep[self.structure_index]
        renumber = torch.cumsum(keep.long(), 0) - 1
        sub = Batch(
            positions=self.positions[atoms], numbers=self.numbers[atoms],
            structure_index=renumber[self.structure_index[atoms]], cells=self.cells[keep], pbc=self.pbc[keep],
            fixed=self.fixed[atoms],
        )
        return sub, atoms

    @classmethod
    def from_atoms(cls, atoms_list: Sequence[Atoms], dtype=torch.float64, device=None) -> "Batch":
        """Pack a list of ``ase.Atoms`` (any sizes) into one batch."""
        if isinstance(atoms_list, Atoms):
            atoms_list = [atoms_list]
        if len(atoms_list) == 0:
            raise ValueError("cannot build a Batch from an empty list of structures")
        for i, atoms in enumerate(atoms_list):
            if not isinstance(atoms, Atoms):
                raise TypeError(f"structure {i} is a {type(atoms).__name__}, expected ase.Atoms")
            if len(atoms) == 0:
                raise ValueError(f"structure {i} has no atoms")
        positions = np.concatenate([a.get_positions() for a in atoms_list])
        if not np.all(np.isfinite(positions)):
            raise ValueError("positions contain NaN or infinity")
        numbers = np.concatenate([a.numbers for a in atoms_list])
        index = np.concatenate([np.full(len(a), i) for i, a in enumerate(atoms_list)])
        cells = np.stack([a.cell.array for a in atoms_list])
        pbc = np.stack([a.pbc for a in atoms_list])
        fixed = np.concatenate([fixed_mask(a) for a in atoms_list])
        return cls(
            positions=torch.as_tensor(positions, dtype=dtype, device=device),
            numbers=torch.as_tensor(numbers, dtype=torch.long, device=device),
            structure_index=torch.as_tensor(index, dtype=torch.long, device=device),
            cells=torch.as_tensor(cells, dtype=dtype, device=device),
            pbc=torch.as_tensor(pbc, dtype=torch.bool, device=device),
            fixed=torch.as_tensor(fixed, dtype=torch.bool, device=device),
        )

    def to_atoms(self, template: Sequence[Atoms] | None = None, positions: torch.Tensor | None = None) -> list[Atoms]:
        """Unpack to ``ase.Atoms``; copies constraints and info from ``template`` if given."""
        pos = (self.positions if positions is None else positions).detach().cpu().numpy().astype(float)
        index = self.structure_index.cpu().numpy()
        numbers = self.numbers.cpu().numpy()
        out = []
        for b in range(self.n_structures):
            sel = index == b
            if template is not None:
                atoms = template[b].copy()
                atoms.calc = None
                atoms.set_positions(pos[sel], apply_constraint=False)
            else:
                atoms = Atoms(
                    numbers=numbers[sel],
                    positions=pos[sel],
                    cell=self.cells[b].detach().cpu().numpy(),
                    pbc=self.pbc[b].cpu().numpy(),
                )
            out.append(atoms)
        return out


# -- the strain map (stress, the bias stress, the cell attack) ---------------------------------
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))  # ASE's order: xx, yy, zz, yz, xz, xy


def strained(batch: Batch, positions: torch.Tensor) -> tuple[torch.Tensor, Batch, torch.Tensor]:
    """A zero strain ε [B, 3, 3] requiring grad, and the batch and ``positions`` [N, 3] under it
    (:meth:`Batch.deformed`: x → x(1 + ε), cell rows h → h(1 + ε), per structure): ∂E/∂ε of their
    energies is the virial."""
    strain = torch.zeros(batch.n_structures, 3, 3, dtype=positions.dtype, device=positions.device, requires_grad=True)
    return (strain, *batch.deformed(positions, strain))


def voigt_stress(virial: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Stress [B, 6] (energy/Å³, ASE's Voigt order): the symmetrised ∂E/∂ε [B, 3, 3] over each cell's volume."""
    symmetric = 0.5 * (virial + virial.transpose(1, 2))
    volume = torch.linalg.det(cells).abs()[:, None]
    return torch.stack([symmetric[:, a, b] for a, b in VOIGT], dim=1) / volume


def fixed_mask(atoms: Atoms) -> np.ndarray:
    """[N, 3] bool: coordinates held fixed by ``FixAtoms`` / ``FixCartesian`` constraints."""
    mask = np.zeros((len(atoms), 3), dtype=bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            mask[constraint.index] = True
        elif isinstance(constraint, FixCartesian):
            mask[constraint.index] |= np.asarray(constraint.mask, dtype=bool)
        else:
            raise ValueError(
                f"unsupported constraint {type(constraint).__name__}: "
                "advsample understands FixAtoms and FixCartesian"
            )
    return mask


def held_atoms(atoms: Atoms) -> np.ndarray:
    """[N] bool: atoms that cannot move at all (``FixAtoms``, or ``FixCartesian`` on x, y and z).

    Other ASE constraints (``FixInternals``, ``FixBondLength``, ...) hold no atom in place
    and are ignored here; ASE applies them itself in dynamics and optimizers.
    """
    held = np.zeros(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            held[constraint.index] = True
        elif isinstance(constraint, FixCartesian) and np.all(constraint.mask):
            held[constraint.index] = True
    return held


def labeled(atoms: Atoms, energy: float, forces: np.ndarray, **info) -> Atoms:
    """A copy of ``atoms`` carrying a reference ``energy`` and ``forces`` [N, 3]."""
    forces = np.asarray(forces, dtype=float)
    if forces.shape != (len(atoms), 3):
        raise ValueError(f"forces must have shape ({len(atoms)}, 3), got {forces.shape}")
    out = atoms.copy()
    out.calc = SinglePointCalculator(out, energy=float(energy), forces=forces)
    out.info.update(info)
    return out


def labels_of(atoms_list: Sequence[Atoms]) -> tuple[np.ndarray, np.ndarray]:
    """Reference energies [B] and concatenated forces [N, 3] of labeled structures.

    Raises ``ValueError`` naming the structure when a label is missing or not finite.
    """
    if len(atoms_list) == 0:
        raise ValueError("empty training set: no labeled structures")
    energies, forces = [], []
    for i, atoms in enumerate(atoms_list):
        results = getattr(atoms.calc, "results", None) or {}
        if "energy" not in results or "forces" not in results:
            raise ValueError(
                f"structure {i} ({atoms.get_chemical_formula()}) has no energy/forces label; "
                "label it with advsample.label or structures.labeled first"
            )
        energy = float(results["energy"])
        force = np.asarray(results["forces"], dtype=float)
        if force.shape != (len(atoms), 3):
            raise ValueError(f"structure {i}: forces have shape {force.shape}, expected ({len(atoms)}, 3)")
        if not np.isfinite(energy) or not np.all(np.isfinite(force)):
            raise ValueError(f"structure {i}: NaN or infinite value in its energy/forces label")
        energies.append(energy)
        forces.append(force)
    return np.asarray(energies), np.concatenate(forces)
