import numpy as np
import pytest
from ase import Atoms

from advsample.objective import Objective
from advsample.select import SelectionConfig, select

OBJECTIVE = Objective(kT=1.0)


def candidate(x, energy, variance):
    atoms = Atoms("H", positions=[[x, 0, 0]])
    atoms.info.update(committee_energy=energy, committee_variance=variance)
    return atoms


def test_score_ranking_prefers_likely_uncertain_points_over_sigma_alone():
    candidates = [candidate(0, 0.0, 1.0), candidate(1, 100.0, 1e6), candidate(2, 1.0, 10.0)]
    by_score, _ = select(candidates, [], SelectionConfig(budget=1, uncertainty_percentile=None), OBJECTIVE, 0.0)
    by_sigma, _ = select(candidates, [], SelectionConfig(budget=1, ranking="sigma", uncertainty_percentile=None),
                         OBJECTIVE, 0.0)
    assert [a.positions[0, 0] for a in by_score] == [2, 0, 1]
    assert by_sigma[0].positions[0, 0] == 1  # σ alone chases the absurd-energy point


def test_energy_ceiling_threshold_and_distance():
    candidates = [candidate(0.0, 0.5, 4.0), candidate(0.01, 0.5, 3.9), candidate(1.0, 9.0, 50.0), candidate(2.0, 0.1, 0.1)]
    train = [candidate(5.0, 0.0, 0.0)]
    config = SelectionConfig(budget=2, energy_ceiling=5.0, min_distance=0.1, uncertainty_percentile=50)
    ranked, report = select(candidates, train, config, OBJECTIVE, 0.0, train_variance=np.array([0.5, 1.0]))
    xs = [a.positions[0, 0] for a in ranked]
    assert 1.0 not in xs and report["dropped_energy_ceiling"] == 1  # above the window
    assert xs[0] == 0.0 and report["dropped_distance"] == 1
    assert xs[-2:] == [2.0, 0.01]  # below the σ threshold, then too close to a pick: fallbacks, last


def test_an_energy_floor_keeps_artifacts_far_below_the_training_minimum_out():
    """energy_floor: a candidate (or label) far below E_min is outside the window, as one above the
    ceiling is (a fixed-topology reference at overlapping atoms gave a label 66 eV below it)."""
    from advsample.select import outside_window

    both = SelectionConfig(budget=1, energy_ceiling=5.0, energy_floor=-5.0)
    assert outside_window([-70.0, -0.5, 1.0, 6.0], both).tolist() == [True, False, False, True]
    floor_only = SelectionConfig(budget=1, energy_floor=-5.0)
    assert outside_window([-70.0, 60.0], floor_only).tolist() == [True, False]
    assert not outside_window([-70.0], SelectionConfig(budget=1)).any()  # no window: nothing outside
    artifact, fine = candidate(0.0, -70.0, 1e4), candidate(1.0, 0.5, 1.0)
    ranked, report = select([artifact, fine], [], SelectionConfig(budget=1, energy_ceiling=5.0, energy_floor=-5.0,
                                                                  uncertainty_percentile=None), OBJECTIVE, 0.0)
    assert [a.positions[0, 0] for a in ranked] == [1.0]
    assert report["dropped_energy_floor"] == 1 and report["dropped_energy_ceiling"] == 0
    ranked, _ = select([artifact, fine], [], SelectionConfig(budget=1, energy_floor=-5.0, uncertainty_percentile=None),
                       OBJECTIVE, 0.0)
    assert len(ranked) == 1
    with pytest.raises(ValueError, match="energy_floor must be negative"):
        SelectionConfig(energy_floor=1.0)


def test_an_upper_confidence_bound_keeps_uncertain_candidates_out_of_the_energy_window():
    near, sure = candidate(0.0, 4.0, 9.0), candidate(1.0, 4.5, 1.0)
    near.info["committee_energy_std"], sure.info["committee_energy_std"] = 1.5, 0.1
    plain = SelectionConfig(budget=1, energy_ceiling=5.0, uncertainty_percentile=None)
    ranked, _ = select([near, sure], [], plain, OBJECTIVE, 0.0)
    assert len(ranked) == 2  # both means lie inside the window
    ucb = SelectionConfig(budget=1, energy_ceiling=5.0, uncertainty_percentile=None, window_sigmas=1.0)
    assert select([near, sure], [], plain, OBJECTIVE, 0.0)[0][0] is not sure  # near ranks first on its score
    ranked, report = select([near, sure], [], ucb, OBJECTIVE, 0.0)
    assert [a.positions[0, 0] for a in ranked] == [1.0, 0.0]  # 4 + 1.5 > 5: near goes last, not dropped
    assert report["deferred_energy_bound"] == 1 and report["dropped_energy_ceiling"] == 0
    with pytest.raises(ValueError, match="committee_energy_std"):
        select([candidate(0.0, 0.0, 1.0)], [], ucb, OBJECTIVE, 0.0)
    with pytest.raises(ValueError, match="window_sigmas"):
        SelectionConfig(window_sigmas=-1.0)
    with pytest.raises(ValueError, match="budget_unit"):
        SelectionConfig(budget_unit="euros")


def test_selection_settings_are_validated():
    with pytest.raises(ValueError, match="budget"):
        SelectionConfig(budget=0)
    with pytest.raises(ValueError, match="unknown ranking"):
        SelectionConfig(ranking="best")
    with pytest.raises(ValueError, match="energy_ceiling"):
        SelectionConfig(energy_ceiling=0.0)


def test_random_ranking_is_plain_random_without_sigma_filter():
    """"random" ignores σ: low-σ candidates are picked as often as high-σ ones (no percentile filter)."""
    candidates = [candidate(float(i), 0.0, 10.0 if i % 2 else 0.01) for i in range(200)]
    config = SelectionConfig(budget=100, ranking="random", uncertainty_percentile=50)
    ranked, report = select(candidates, [], config, OBJECTIVE, 0.0, train_variance=np.array([1.0, 1.0]), seed=0)
    first = [a.info["committee_variance"] for a in ranked[:100]]
    assert report["threshold"] is None
    assert 35 <= sum(v < 1 for v in first) <= 65  # about half low-σ, as chance gives
    by_score, _ = select(candidates, [], SelectionConfig(budget=100), OBJECTIVE, 0.0,
                         train_variance=np.array([1.0, 1.0]))
    assert all(a.info["committee_variance"] > 1 for a in by_score[:100])  # the score ranking prefers high σ


def test_selection_reads_typed_candidates_and_returns_them_reordered_with_their_values():
    from advsample.candidates import Candidates
    from advsample.select import outside_window

    structures = [Atoms("H", positions=[[x, 0, 0]]) for x in range(4)]
    typed = Candidates(structures, energy_mean=[0.0, 100.0, 1.0, 6.0], variance=[1.0, 1e6, 10.0, 50.0],
                       score=[0.0] * 4, energy_std=[0.1, 0.1, 0.1, 0.1], source="test")
    config = SelectionConfig(budget=1, energy_ceiling=5.0, uncertainty_percentile=None)
    ranked, report = select(typed, [], config, OBJECTIVE, 0.0)
    assert isinstance(ranked, Candidates) and [a.positions[0, 0] for a in ranked] == [2, 0]
    assert ranked.energy_mean.tolist() == [1.0, 0.0] and ranked.variance.tolist() == [10.0, 1.0]
    assert report["dropped_energy_ceiling"] == 2 and not any(a.info for a in ranked)  # nothing by info keys
    # the same window decides candidates (Ē, with σ_E) and labels (reference energies)
    assert outside_window([4.95, 5.05], config).tolist() == [False, True]
    ucb = SelectionConfig(budget=1, energy_ceiling=5.0, window_sigmas=1.0)
    assert outside_window([4.95], ucb, energy_std=[0.1]).tolist() == [True]
    assert not outside_window([1e9], SelectionConfig(budget=1)).any()  # no ceiling: no window


def test_a_label_ceiling_widens_the_window_for_labels_only():
    """outside_window(labels=True) tests reference energies against label_ceiling (the floor still
    holds); candidates keep energy_ceiling; a label_ceiling below the ceiling, or without one, is refused."""
    from advsample.select import outside_window

    config = SelectionConfig(budget=1, energy_ceiling=5.0, energy_floor=-5.0, label_ceiling=25.0)
    energies = [-70.0, 1.0, 12.0, 40.0]
    assert outside_window(energies, config).tolist() == [True, False, True, True]
    assert outside_window(energies, config, labels=True).tolist() == [True, False, False, True]
    plain = SelectionConfig(budget=1, energy_ceiling=5.0)
    assert outside_window(energies, plain, labels=True).tolist() == outside_window(energies, plain).tolist()
    assert "label_ceiling" not in repr(plain) and "label_ceiling=25.0" in repr(config)
    for bad in ({"energy_ceiling": 5.0, "label_ceiling": 4.0}, {"label_ceiling": 4.0}):
        with pytest.raises(ValueError, match="label_ceiling"):
            SelectionConfig(**bad)


def test_labels_above_the_window_get_the_above_window_loss_weights():
    """above_window_weights=(energy, forces): labels above energy_ceiling (trained because of
    label_ceiling) get them, the rest 1; it needs a label_ceiling and weights >= 0, not both 0; unset,
    it is not in the settings repr (older run directories resume)."""
    from advsample.select import label_loss_weights

    config = SelectionConfig(budget=1, energy_ceiling=5.0, label_ceiling=25.0, above_window_weights=(0, 1))
    weights = label_loss_weights([-1.0, 4.9, 5.1, 20.0], config)
    assert weights.tolist() == [[1, 1], [1, 1], [0, 1], [0, 1]]
    plain = SelectionConfig(budget=1, energy_ceiling=5.0, label_ceiling=25.0)
    assert label_loss_weights([20.0], plain).tolist() == [[1, 1]]
    assert "above_window_weights" not in repr(plain) and "above_window_weights=(0.0, 1.0)" in repr(config)
    capped = SelectionConfig(budget=1, energy_ceiling=5.0, label_ceiling=25.0, above_window_weights=(0, 1),
                             above_window_force_cap=2.0)  # force weight x (2 / RMS force)^2 above the window only
    np.testing.assert_allclose(label_loss_weights([1.0, 10.0, 10.0], capped, force_rms=[10.0, 10.0, 1.0]),
                               [[1, 1], [0, 0.04], [0, 1]])
    with pytest.raises(ValueError, match="force_rms"):
        label_loss_weights([10.0], capped)
    assert "above_window_force_cap" not in repr(config) and "above_window_force_cap=2.0" in repr(capped)
    for bad, match in (({"energy_ceiling": 5.0, "above_window_weights": (0, 1)}, "needs a label_ceiling"),
                       ({"energy_ceiling": 5.0, "above_window_force_cap": 2.0}, "needs a label_ceiling"),
                       ({"energy_ceiling": 5.0, "label_ceiling": 25.0, "above_window_force_cap": 0.0}, "positive"),
                       ({"energy_ceiling": 5.0, "label_ceiling": 25.0, "above_window_weights": (0, 0)}, "not both 0"),
                       ({"energy_ceiling": 5.0, "label_ceiling": 25.0, "above_window_weights": (-1, 1)}, ">= 0"),
                       ({"energy_ceiling": 5.0, "label_ceiling": 25.0, "above_window_weights": (1,)}, "energy, forces")):
        with pytest.raises(ValueError, match=match):
            SelectionConfig(**bad)


def test_a_force_ceiling_keeps_artifact_labels_out():
    """force_ceiling: a label whose RMS force is above it is outside (paid, not trained on) whatever
    its energy; candidates (no forces) are not tested; rms_force is √⟨|F_i|²⟩; non-positive refused."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    from advsample.select import outside_window, rms_force

    config = SelectionConfig(budget=1, energy_ceiling=5.0, force_ceiling=100.0)
    assert outside_window([4.5, 4.5, 6.0], config, labels=True, force_rms=[462.0, 10.0, 10.0]).tolist() == [
        True, False, True]
    assert outside_window([4.5], config, force_rms=[462.0]).tolist() == [False]  # candidates: energy only
    atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 1]])
    atoms.calc = SinglePointCalculator(atoms, energy=0.0, forces=[[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    assert rms_force(atoms) == pytest.approx(np.sqrt(25 / 2))
    assert "force_ceiling=100.0" in repr(config) and "force_ceiling" not in repr(SelectionConfig(budget=1))
    with pytest.raises(ValueError, match="force_ceiling"):
        SelectionConfig(budget=1, force_ceiling=0.0)
