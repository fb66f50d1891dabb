import math

import numpy as np
import pytest
import torch

from advsample import uncertainty


def test_log_partition_matches_direct_sum_and_survives_huge_energies():
    energies = np.array([0.0, 0.1, 0.5, 1.0])
    kT = 0.3
    direct = math.log(np.mean(np.exp(-(energies - energies.min()) / kT)))
    assert uncertainty.log_partition(energies, kT) == pytest.approx(direct)
    huge = np.array([1e5, 1e5 + 1.0, 2e5])  # exp(-E/kT) underflows without the log-space form
    assert math.isfinite(uncertainty.log_partition(huge, 0.01))
    with pytest.raises(ValueError, match="kT must be positive"):
        uncertainty.log_partition(energies, 0.0)
    with pytest.raises(ValueError, match="empty training set"):
        uncertainty.log_partition([], 1.0)


def test_adversarial_score_trades_uncertainty_against_energy():
    variance = torch.tensor([1.0, math.e**2, math.e**2])
    energy = torch.tensor([0.0, 0.0, 4.0])
    score = uncertainty.adversarial_log_score(variance, energy, kT=1.0)
    torch.testing.assert_close(score, torch.tensor([0.0, 2.0, -2.0]))
    assert torch.isfinite(uncertainty.adversarial_log_score(torch.tensor([1.0]), torch.tensor([1e6]), 1e-3)).all()


def test_variances_over_members():
    energies = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    torch.testing.assert_close(uncertainty.energy_variance(energies), torch.tensor([1.0, 0.0]))
    forces = torch.zeros(2, 3, 3)
    forces[0, 0] = 1.0  # atom 0 disagrees by 1 in every component
    per_atom = uncertainty.force_variance_per_atom(forces)
    torch.testing.assert_close(per_atom, torch.tensor([0.25, 0.0, 0.0]))
    per_structure = uncertainty.force_variance_per_structure(forces, torch.tensor([0, 0, 1]), 2)
    torch.testing.assert_close(per_structure, torch.tensor([0.125, 0.0]))


def test_calibration_metrics():
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.1, 2.0, 20000)
    calibrated_error = rng.normal(0.0, sigma)
    assert uncertainty.miscalibration_area(sigma, calibrated_error) < 0.02
    assert uncertainty.miscalibration_area(sigma, 5 * calibrated_error) > 0.2
    assert uncertainty.spearman(sigma, np.abs(calibrated_error)) > 0.3
    assert uncertainty.spearman(sigma, sigma) == pytest.approx(1.0)
