import numpy as np
import pytest
from ase import Atoms

from advsample.select import SelectionConfig, select


def candidate(x, energy, variance):
    atoms = Atoms("H", positions=[[x, 0, 0]])
    atoms.info.update(committee_energy=energy, committee_variance=variance)
    return atoms


def test_score_ranking_prefers_likely_uncertain_points_over_sigma_alone():
    candidates = [candidate(0, 0.0, 1.0), candidate(1, 100.0, 1e6), candidate(2, 1.0, 10.0)]
    by_score, _ = select(candidates, [], SelectionConfig(budget=1, kT=1.0, uncertainty_percentile=None), 0.0)
    by_sigma, _ = select(candidates, [], SelectionConfig(budget=1, kT=1.0, ranking="sigma", uncertainty_percentile=None), 0.0)
    assert [a.positions[0, 0] for a in by_score] == [2, 0, 1]
    assert by_sigma[0].positions[0, 0] == 1  # σ alone chases the absurd-energy point


def test_energy_ceiling_threshold_and_distance():
    candidates = [candidate(0.0, 0.5, 4.0), candidate(0.01, 0.5, 3.9), candidate(1.0, 9.0, 50.0), candidate(2.0, 0.1, 0.1)]
    train = [candidate(5.0, 0.0, 0.0)]
    config = SelectionConfig(budget=2, kT=1.0, energy_ceiling=5.0, min_distance=0.1, uncertainty_percentile=50)
    ranked, report = select(candidates, train, config, 0.0, train_variance=np.array([0.5, 1.0]))
    xs = [a.positions[0, 0] for a in ranked]
    assert 1.0 not in xs and report["dropped_energy_ceiling"] == 1  # above the window
    assert xs[0] == 0.0 and report["dropped_distance"] == 1
    assert xs[-2:] == [2.0, 0.01]  # below the σ threshold, then too close to a pick: fallbacks, last


def test_selection_settings_are_validated():
    with pytest.raises(ValueError, match="budget"):
        SelectionConfig(budget=0)
    with pytest.raises(ValueError, match="unknown ranking"):
        SelectionConfig(ranking="best")
    with pytest.raises(ValueError, match="kT"):
        SelectionConfig(kT=-1)
