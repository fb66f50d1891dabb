"""Toy potential energy surfaces as ASE calculators.

A toy system is one particle (an H atom) whose free coordinates are x (1D) or x, y (2D);
the rest are held by an ASE ``FixCartesian`` constraint, so the same attack, loop and
plots serve toys and molecules. Energies are in the toy's arbitrary units; forces are
−∇E by autograd of the energy function, which is written once with torch operations.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.constraints import FixCartesian

from .structures import labeled

EnergyFunction = Callable[[torch.Tensor], torch.Tensor]


class ToySurface(Calculator):
    """An analytic surface E(q), q = the first ``n_dims`` Cartesian coordinates of one particle.

    energy_fn: maps q [..., n_dims] (torch) to E [...]; bounds: ((xmin, xmax), (ymin, ymax))
    of the region of interest, used for grids, plots and test sets.
    """

    implemented_properties = ["energy", "forces"]

    def __init__(self, energy_fn: EnergyFunction, n_dims: int, bounds: Sequence[Sequence[float]], name: str = "toy"):
        super().__init__()
        if n_dims not in (1, 2):
            raise ValueError(f"toy surfaces have 1 or 2 free coordinates, got n_dims={n_dims}")
        if len(bounds) != n_dims:
            raise ValueError(f"bounds needs one (min, max) pair per dimension ({n_dims}), got {len(bounds)}")
        self.energy_fn = energy_fn
        self.n_dims = n_dims
        self.bounds = tuple(tuple(float(v) for v in b) for b in bounds)
        self.surface_name = name

    # -- evaluation --------------------------------------------------------------------
    def energy_and_gradient(self, q) -> tuple[np.ndarray, np.ndarray]:
        """E [...] and dE/dq [..., n_dims] at coordinates q [..., n_dims]."""
        q = torch.as_tensor(np.asarray(q, dtype=float)).requires_grad_(True)
        if q.shape[-1] != self.n_dims:
            raise ValueError(f"coordinates must end in {self.n_dims}, got shape {tuple(q.shape)}")
        energy = self.energy_fn(q)
        (gradient,) = torch.autograd.grad(energy.sum(), q)
        return energy.detach().numpy(), gradient.numpy()

    def energy(self, q) -> np.ndarray:
        """E [...] at q [..., n_dims]."""
        with torch.no_grad():
            return self.energy_fn(torch.as_tensor(np.asarray(q, dtype=float))).numpy()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if len(self.atoms) != 1:
            raise ValueError(f"toy surface {self.surface_name} takes one particle, got {len(self.atoms)} atoms")
        q = self.atoms.positions[0, : self.n_dims]
        energy, gradient = self.energy_and_gradient(q)
        forces = np.zeros((1, 3))
        forces[0, : self.n_dims] = -gradient
        self.results = {"energy": float(energy), "forces": forces}

    # -- structures --------------------------------------------------------------------
    def particle(self, q: Sequence[float]) -> Atoms:
        """One particle at free coordinates q [n_dims]; other coordinates fixed at 0."""
        q = np.atleast_1d(np.asarray(q, dtype=float))
        if q.shape != (self.n_dims,):
            raise ValueError(f"{self.surface_name}: a point needs {self.n_dims} coordinate(s), got shape {q.shape}")
        position = np.zeros(3)
        position[: self.n_dims] = q
        mask = [axis >= self.n_dims for axis in range(3)]
        return Atoms("H", positions=[position], constraint=FixCartesian(0, mask=mask))

    def labeled_points(self, q) -> list[Atoms]:
        """Particles at points q [B, n_dims], labeled with this surface's energy and forces."""
        q = np.asarray(q, dtype=float).reshape(-1, self.n_dims)
        energies, gradients = self.energy_and_gradient(q)
        out = []
        for point, energy, gradient in zip(q, energies, gradients):
            forces = np.zeros((1, 3))
            forces[0, : self.n_dims] = -gradient
            out.append(labeled(self.particle(point), energy, forces, label_source=self.surface_name))
        return out

    def coordinates(self, atoms_list: Sequence[Atoms]) -> np.ndarray:
        """[B, n_dims] free coordinates of toy particles."""
        return np.array([a.positions[0, : self.n_dims] for a in atoms_list]).reshape(-1, self.n_dims)

    def grid(self, n: int = 100) -> tuple[np.ndarray, ...]:
        """Grid over the bounds: 1D → (x [n], E [n]); 2D → (x [n], y [n], E [n, n]) with E[iy, ix]."""
        axes = [np.linspace(lo, hi, n) for lo, hi in self.bounds]
        if self.n_dims == 1:
            return axes[0], self.energy(axes[0][:, None])
        xx, yy = np.meshgrid(*axes)
        return axes[0], axes[1], self.energy(np.stack([xx, yy], axis=-1))

    def sample(self, n: int, seed: int = 0, max_energy: float | None = None, region=None) -> list[Atoms]:
        """n labeled points drawn uniformly in ``region`` (default: bounds) with E below ``max_energy``."""
        region = self.bounds if region is None else tuple(tuple(r) for r in region)
        rng = np.random.default_rng(seed)
        low, high = np.array([r[0] for r in region]), np.array([r[1] for r in region])
        points = np.empty((0, self.n_dims))
        undefined = drawn = 0
        for _ in range(1000):
            q = rng.uniform(low, high, size=(max(4 * n, 64), self.n_dims))
            energy = self.energy(q)
            finite = np.isfinite(energy)  # NaN or inf: the surface is undefined there, never a label
            keep = finite if max_energy is None else finite & (np.where(finite, energy, np.inf) < max_energy)
            undefined += int(np.count_nonzero(~finite))
            drawn += len(q)
            points = np.concatenate([points, q[keep]])
            if len(points) >= n:
                if undefined:
                    import warnings

                    warnings.warn(f"{self.surface_name}: {undefined} of {drawn} points drawn in {region} had a non-finite "
                                  "energy (NaN or inf) and were left out of the sample: the surface is undefined there",
                                  RuntimeWarning, stacklevel=2)
                return self.labeled_points(points[:n])
        raise ValueError(f"{self.surface_name}: could not find {n} points below energy {max_energy} in {region}")


def _double_well_1d(q: torch.Tensor) -> torch.Tensor:
    x = q[..., 0]
    return 5 * x**4 - 10 * x**2 + 1.5 * x


def _double_well_2d(q: torch.Tensor) -> torch.Tensor:
    x, y = q[..., 0], q[..., 1]
    return 10 * x**4 - 10 * x**2 + 2 * x + 4 * y**4


_MB_A = (-200.0, -100.0, -170.0, 15.0)
_MB_a = (-1.0, -1.0, -6.5, 0.7)
_MB_b = (0.0, 0.0, 11.0, 0.6)
_MB_c = (-10.0, -10.0, -6.5, 0.7)
_MB_x0 = (1.0, 0.0, -0.5, -1.0)
_MB_y0 = (0.0, 0.5, 1.5, 1.0)


def _muller_brown(q: torch.Tensor) -> torch.Tensor:
    x, y = q[..., 0], q[..., 1]
    energy = torch.zeros_like(x)
    for A, a, b, c, x0, y0 in zip(_MB_A, _MB_a, _MB_b, _MB_c, _MB_x0, _MB_y0):
        dx, dy = x - x0, y - y0
        energy = energy + A * torch.exp(a * dx**2 + b * dx * dy + c * dy**2)
    return energy


def double_well_1d() -> ToySurface:
    """E = 5x⁴ − 10x² + 1.5x: minima near x = −1.04 (deeper) and x = +0.96."""
    return ToySurface(_double_well_1d, 1, [(-1.6, 1.6)], name="double_well_1d")


def double_well_2d() -> ToySurface:
    """E = 10x⁴ − 10x² + 2x + 4y⁴: left well (x ≈ −0.75) deeper than right (x ≈ +0.65)."""
    return ToySurface(_double_well_2d, 2, [(-1.5, 1.5), (-1.2, 1.2)], name="double_well_2d")


def muller_brown() -> ToySurface:
    """The Müller–Brown surface (three minima, two saddles)."""
    return ToySurface(_muller_brown, 2, [(-1.5, 1.2), (-0.5, 2.0)], name="muller_brown")


SURFACES = {"double_well_1d": double_well_1d, "double_well_2d": double_well_2d, "muller_brown": muller_brown}


def get_surface(name: str) -> ToySurface:
    """A surface by name (see :data:`SURFACES`)."""
    if name not in SURFACES:
        raise ValueError(f"unknown surface {name!r}; choose one of {sorted(SURFACES)}")
    return SURFACES[name]()
