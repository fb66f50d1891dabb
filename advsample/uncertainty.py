"""Committee disagreement as uncertainty, the adversarial objective in log space, calibration.

Shapes: M members, B structures, N atoms in total. Energies in the reference's unit
(eV for molecules, arbitrary units for toy surfaces); variances in that unit squared.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats


def energy_variance(energies: torch.Tensor) -> torch.Tensor:
    """[M, B] member energies -> [B] variance over members."""
    return energies.var(dim=0, unbiased=False)


def force_variance_per_atom(forces: torch.Tensor) -> torch.Tensor:
    """[M, N, 3] member forces -> [N] variance over members, averaged over x, y, z."""
    return forces.var(dim=0, unbiased=False).mean(dim=-1)


def force_variance_per_structure(
    forces: torch.Tensor, structure_index: torch.Tensor, n_structures: int, free: torch.Tensor | None = None
) -> torch.Tensor:
    """[M, N, 3] member forces -> [B] force variance averaged over each structure's free coordinates.

    ``free`` [N, 3] bool excludes coordinates held by constraints (default: all free).
    """
    variance = forces.var(dim=0, unbiased=False)  # [N, 3]
    if free is None:
        free = torch.ones_like(variance, dtype=torch.bool)
    weights = free.to(variance.dtype)
    total = torch.zeros(n_structures, dtype=variance.dtype, device=variance.device)
    count = torch.zeros_like(total)
    total.index_add_(0, structure_index, (variance * weights).sum(-1))
    count.index_add_(0, structure_index, weights.sum(-1))
    return total / count.clamp(min=1)


def force_variance_max_per_structure(
    forces: torch.Tensor, structure_index: torch.Tensor, n_structures: int, free: torch.Tensor | None = None
) -> torch.Tensor:
    """[M, N, 3] member forces -> [B] the largest per-atom force variance of each structure.

    An atom's variance is averaged over its free coordinates (``free`` [N, 3] bool, default all);
    atoms with none are left out, and a structure with none gives 0. Differentiable (the gradient
    goes to the atom that holds the maximum, split evenly between ties), so the attack can ascend it.
    """
    variance = forces.var(dim=0, unbiased=False)  # [N, 3]
    weights = torch.ones_like(variance) if free is None else free.to(variance.dtype)
    per_atom = (variance * weights).sum(-1) / weights.sum(-1).clamp(min=1)  # [N], 0 for a fully fixed atom
    start = torch.zeros(n_structures, dtype=variance.dtype, device=variance.device)
    # variances are >= 0, so the zero start never hides an atom's value
    return start.scatter_reduce(0, structure_index, per_atom, reduce="amax", include_self=True)


def log_partition(train_energies, kT: float, energy_reference: float | None = None) -> float:
    """log Q = logsumexp(-(E_train - E_ref)/kT) - log n, E_ref defaults to min(E_train)."""
    if kT <= 0:
        raise ValueError(f"kT must be positive, got {kT}")
    energies = torch.as_tensor(np.asarray(train_energies, dtype=float))
    if energies.numel() == 0:
        raise ValueError("empty training set: log Q needs training energies")
    reference = float(energies.min()) if energy_reference is None else float(energy_reference)
    return float(torch.logsumexp(-(energies - reference) / kT, dim=0) - math.log(energies.numel()))


def adversarial_log_score(
    variance: torch.Tensor, energy_mean: torch.Tensor, kT: float, log_q: float = 0.0, energy_reference: float = 0.0
) -> torch.Tensor:
    """log L_adv = log σ² − (Ē − E_ref)/kT − log Q, elementwise over [B]. Never exponentiates."""
    if kT <= 0:
        raise ValueError(f"kT must be positive, got {kT}")
    return torch.log(variance.clamp(min=1e-30)) - (energy_mean - energy_reference) / kT - log_q


def spearman(sigma, error) -> float:
    """Rank correlation between predicted σ and the true absolute error (1 = perfect ranking)."""
    sigma, error = np.ravel(sigma), np.ravel(error)
    if sigma.size < 3:
        return float("nan")
    return float(stats.spearmanr(sigma, error).statistic)


def miscalibration_area(sigma, error, n_bins: int = 100) -> float:
    """Area between observed and expected coverage of centred Gaussian intervals (0 = calibrated).

    ``error`` is the signed or absolute error, ``sigma`` the predicted std of the same values.
    """
    sigma = np.clip(np.ravel(np.asarray(sigma, dtype=float)), 1e-12, None)
    z = np.abs(np.ravel(np.asarray(error, dtype=float))) / sigma
    expected = np.linspace(0.0, 1.0, n_bins)
    bounds = stats.norm.ppf(0.5 + expected / 2.0)
    observed = np.array([(z <= b).mean() for b in bounds])
    return float(np.trapezoid(np.abs(observed - expected), expected))
