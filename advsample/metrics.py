"""How good is a committee: test errors, calibration of its uncertainty."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms

from . import uncertainty
from .committee import Committee
from .structures import Batch, labels_of


def test_errors(committee: Committee, test: Sequence[Atoms]) -> dict[str, float]:
    """Errors of the committee mean on labeled structures, and how well σ tracks the error.

    energy_mae/rmse (energy unit), force_mae/rmse over free coordinates (energy unit/Å),
    force_spearman: rank correlation of per-structure force σ with per-structure force error,
    force_miscalibration_area: Gaussian coverage mismatch of per-coordinate errors vs σ.
    """
    energies, forces = labels_of(test)
    prediction = committee.predict(test)
    free = ~Batch.from_atoms(test).fixed.numpy()
    force_error = (prediction["forces_mean"] - forces)[free]
    energy_error = prediction["energy_mean"] - energies
    per_atom_error = np.abs(prediction["forces_mean"] - forces).sum(-1) / np.maximum(free.sum(-1), 1)
    index = np.concatenate([np.full(len(a), i) for i, a in enumerate(test)])
    per_structure_error = np.bincount(index, weights=per_atom_error) / np.bincount(index)
    sigma_per_coordinate = np.broadcast_to(prediction["forces_std_per_atom"][:, None], forces.shape)[free]
    return {
        "energy_mae": float(np.abs(energy_error).mean()),
        "energy_rmse": float(np.sqrt((energy_error**2).mean())),
        "force_mae": float(np.abs(force_error).mean()),
        "force_rmse": float(np.sqrt((force_error**2).mean())),
        "force_std_mean": float(prediction["forces_std"].mean()),
        "force_spearman": uncertainty.spearman(prediction["forces_std"], per_structure_error),
        "force_miscalibration_area": uncertainty.miscalibration_area(sigma_per_coordinate, force_error),
    }
