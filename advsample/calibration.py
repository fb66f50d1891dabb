"""Calibrated committee uncertainty: a raw σ turned into an error bar that means the same for every committee.

Fitted once per committee on held-out labeled structures (validation or test), two ways:

* **conformal scaling** at a stated coverage 1 − α: scores zᵢ = |eᵢ|/σᵢ, and s the
  ⌈(n + 1)(1 − α)⌉-th smallest of the n scores (split-conformal, finite-sample corrected),
  so a new |e| ≤ s·σ with probability ≥ 1 − α when the held-out errors are exchangeable
  with the new ones. ``interval`` = s·σ is the error bar at that coverage.
* **scale and power** σ_cal = a·σᵇ, (a, b) by the negative log-likelihood of the errors
  under a Gaussian N(0, σ_cal²) or a Laplace law of standard deviation σ_cal (for fixed b
  the best a is closed form; b by a bounded 1D search). ``sigma`` is σ_cal, a calibrated
  standard deviation.

Force components: the error of each free Cartesian component of the committee-mean force
against the label, with the per-atom σ (member std averaged over x, y, z, as
:class:`~advsample.calculator.CommitteeCalculator` reports ``forces_std``). Energies: the
committee-mean energy error with σ_E. Units: the reference's energy unit (eV for
molecules) and energy unit/Å.

A :class:`Calibration` is plain data (:meth:`Calibration.as_dict`), kept on the committee
as ``committee.calibration`` and in its checkpoint (loaded with ``weights_only=True``).

uncertainty-toolbox is not used: it needs scikit-learn (for isotonic recalibration we do not
use), and the measures needed here — coverage and miscalibration area — are a few lines
(:func:`coverage`, :func:`advsample.uncertainty.miscalibration_area`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from ase import Atoms
from scipy import optimize, stats

from . import uncertainty
from .structures import Batch, labels_of

DISTRIBUTIONS = ("gaussian", "laplace")
CALIBRATION_VERSION = 1


def conformal_scale(sigma, error, coverage: float = 0.95) -> float:
    """s with |error| ≤ s·σ for the ⌈(n+1)·coverage⌉-th of n held-out scores (finite-sample corrected).

    ``sigma``, ``error``: [n] predicted std and signed (or absolute) errors. With fewer than
    coverage/(1 − coverage) points the guarantee cannot be met; the largest score is returned.
    """
    sigma, error = _pair(sigma, error)
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be in (0, 1), got {coverage!r}")
    scores = np.sort(np.abs(error) / sigma)
    k = min(math.ceil((len(scores) + 1) * coverage), len(scores))
    return float(scores[k - 1])


def fit_power(sigma, error, distribution: str = "gaussian") -> tuple[float, float]:
    """(a, b) of σ_cal = a·σᵇ maximising the likelihood of ``error`` [n] (σ_cal a standard deviation)."""
    sigma, error = _pair(sigma, error)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    log_sigma, absolute = np.log(sigma), np.abs(error) + 1e-300

    def best_a(b: float) -> float:
        scaled = absolute / np.exp(b * log_sigma)
        if distribution == "gaussian":
            return float(np.sqrt(np.mean(scaled**2)))
        return float(np.sqrt(2.0) * np.mean(scaled))  # Laplace scale mean|e|/σᵇ, its std √2 times that

    def nll(b: float) -> float:
        sigma_cal = best_a(b) * np.exp(b * log_sigma)
        if distribution == "gaussian":
            return float(np.mean(np.log(sigma_cal) + 0.5 * (absolute / sigma_cal) ** 2))
        scale = sigma_cal / np.sqrt(2.0)
        return float(np.mean(np.log(2 * scale) + absolute / scale))

    b = float(optimize.minimize_scalar(nll, bounds=(0.0, 3.0), method="bounded").x)
    return best_a(b), b


@dataclass(frozen=True)
class Calibration:
    """One committee's calibration. Scales are dimensionless; power-law ``a`` carries unit^(1−b).

    force_scale, energy_scale: conformal s at ``coverage``; force_power, energy_power: (a, b)
    of σ_cal = a·σᵇ; n_force, n_energy: held-out components/structures they were fitted on.
    """

    coverage: float
    distribution: str
    force_scale: float
    force_power: tuple[float, float]
    energy_scale: float
    energy_power: tuple[float, float]
    n_force: int
    n_energy: int
    version: int = CALIBRATION_VERSION

    def force_interval(self, sigma):
        """Half-width of the force-component error bar at ``coverage`` (conformal): s·σ, same shape as σ."""
        return self.force_scale * np.asarray(sigma, dtype=float)

    def energy_interval(self, sigma):
        """Half-width of the energy error bar at ``coverage`` (conformal): s·σ_E."""
        return self.energy_scale * np.asarray(sigma, dtype=float)

    def force_sigma(self, sigma):
        """Calibrated std of force components a·σᵇ (same shape as σ)."""
        a, b = self.force_power
        return a * np.power(np.clip(np.asarray(sigma, dtype=float), 1e-300, None), b)

    def energy_sigma(self, sigma):
        """Calibrated std of energies a·σ_Eᵇ."""
        a, b = self.energy_power
        return a * np.power(np.clip(np.asarray(sigma, dtype=float), 1e-300, None), b)

    def as_dict(self) -> dict:
        """Plain data (floats, ints, str, lists) for checkpoints and JSON."""
        data = asdict(self)
        data["force_power"], data["energy_power"] = list(self.force_power), list(self.energy_power)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Calibration":
        if data.get("version") != CALIBRATION_VERSION:
            raise ValueError(f"calibration version {data.get('version')!r}; this advsample reads {CALIBRATION_VERSION}")
        return cls(**{**data, "force_power": tuple(data["force_power"]), "energy_power": tuple(data["energy_power"])})


def held_out_errors(committee, structures: Sequence[Atoms]) -> dict[str, np.ndarray]:
    """Committee errors and σ on labeled structures: force components over free coordinates
    (``force_error``, ``force_sigma`` [n_free], σ per atom broadcast over x, y, z) and energies
    (``energy_error``, ``energy_sigma`` [B])."""
    if len(structures) == 0:
        raise ValueError("calibration needs labeled held-out structures, got none")
    energies, forces = labels_of(structures)
    prediction = committee.predict(list(structures))
    free = ~Batch.from_atoms(list(structures)).fixed.numpy()
    sigma_atom = np.broadcast_to(prediction["forces_std_per_atom"][:, None], forces.shape)
    return {
        "force_error": (prediction["forces_mean"] - forces)[free],
        "force_sigma": sigma_atom[free],
        "energy_error": prediction["energy_mean"] - np.asarray(energies),
        "energy_sigma": prediction["energy_std"],
    }


def fit_calibration(committee, held_out: Sequence[Atoms], coverage: float = 0.95,
                    distribution: str = "gaussian") -> Calibration:
    """Fit a :class:`Calibration` of ``committee`` on labeled ``held_out`` structures (never its training set)."""
    return calibration_from_errors(**held_out_errors(committee, held_out), coverage=coverage,
                                   distribution=distribution)


def calibration_from_errors(force_sigma, force_error, energy_sigma, energy_error, coverage: float = 0.95,
                            distribution: str = "gaussian") -> Calibration:
    """A :class:`Calibration` from held-out σ and errors (force components [n], energies [B])."""
    return Calibration(
        coverage=float(coverage), distribution=distribution,
        force_scale=conformal_scale(force_sigma, force_error, coverage),
        force_power=fit_power(force_sigma, force_error, distribution),
        energy_scale=conformal_scale(energy_sigma, energy_error, coverage),
        energy_power=fit_power(energy_sigma, energy_error, distribution),
        n_force=int(np.size(force_error)), n_energy=int(np.size(energy_error)),
    )


def calibrate(committee, held_out: Sequence[Atoms], coverage: float = 0.95,
              distribution: str = "gaussian") -> Calibration:
    """Fit on ``held_out`` and keep the calibration on the committee (saved with its checkpoint)."""
    calibration = fit_calibration(committee, held_out, coverage, distribution)
    committee.calibration = calibration.as_dict()
    return calibration


def calibration_of(committee) -> Calibration | None:
    """The committee's stored :class:`Calibration`, or None if it was never calibrated."""
    data = getattr(committee, "calibration", None)
    return None if data is None else Calibration.from_dict(data)


def coverage(interval, error) -> float:
    """Fraction of ``error`` [n] inside ±``interval`` [n]."""
    interval, error = np.ravel(np.asarray(interval, dtype=float)), np.ravel(np.asarray(error, dtype=float))
    return float(np.mean(np.abs(error) <= interval))


def calibration_report(calibration: Calibration, committee, structures: Sequence[Atoms]) -> dict[str, float]:
    """Coverage of the calibrated force and energy intervals on labeled ``structures`` (held out from
    the fit), beside the miscalibration area of raw σ and of the power-law σ_cal (0 = calibrated)."""
    errors = held_out_errors(committee, structures)
    fs, fe, es, ee = errors["force_sigma"], errors["force_error"], errors["energy_sigma"], errors["energy_error"]
    z = stats.norm.ppf(0.5 + calibration.coverage / 2) if calibration.distribution == "gaussian" else \
        math.log(1 / (1 - calibration.coverage)) / math.sqrt(2.0)  # Laplace: |e| ≤ b·ln(1/α), b = σ/√2
    return {
        "stated_coverage": calibration.coverage,
        "force_coverage_conformal": coverage(calibration.force_interval(fs), fe),
        "force_coverage_power": coverage(z * calibration.force_sigma(fs), fe),
        "energy_coverage_conformal": coverage(calibration.energy_interval(es), ee),
        "force_miscalibration_area_raw": uncertainty.miscalibration_area(fs, fe),
        "force_miscalibration_area_calibrated": uncertainty.miscalibration_area(calibration.force_sigma(fs), fe),
        "energy_miscalibration_area_raw": uncertainty.miscalibration_area(es, ee),
        "energy_miscalibration_area_calibrated": uncertainty.miscalibration_area(calibration.energy_sigma(es), ee),
    }


def _pair(sigma, error) -> tuple[np.ndarray, np.ndarray]:
    sigma, error = np.ravel(np.asarray(sigma, dtype=float)), np.ravel(np.asarray(error, dtype=float))
    if sigma.shape != error.shape:
        raise ValueError(f"sigma and error must have the same length, got {sigma.size} and {error.size}")
    if sigma.size == 0:
        raise ValueError("calibration needs at least one held-out error, got none")
    if not (np.all(np.isfinite(sigma)) and np.all(np.isfinite(error))):
        raise ValueError("sigma and error must be finite")
    return np.clip(sigma, 1e-12, None), error
