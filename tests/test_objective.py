"""The round's objective bound once (E_min, log Q) and the candidates it scores as typed data."""
import numpy as np
import pytest
import torch

from advsample.attack import AttackConfig, attack
from advsample.candidates import Candidates
from advsample.objective import Objective
from advsample.structures import labels_of


def test_bind_fixes_the_training_minimum_and_partition_function_once():
    energies = np.array([1.0, 0.2, 3.5])
    bound = Objective(kT=0.5).bind(energies)
    assert bound.energy_reference == 0.2
    assert bound.log_q == pytest.approx(np.log(np.mean(np.exp(-(energies - 0.2) / 0.5))))  # the mean Boltzmann factor
    assert bound.bind(np.array([-100.0])) is bound  # already bound: the round's constants stay
    score = bound.log_score(torch.tensor([2.0]), torch.tensor([1.2]))
    assert float(score) == pytest.approx(np.log(2.0) - (1.2 - 0.2) / 0.5 - bound.log_q)
    with pytest.raises(ValueError, match="no training energies"):
        Objective(kT=0.5).bind([])


def test_bound_scores_are_the_stored_labels_and_one_call_gives_sigma_E(trained_committee):
    committee, train, _ = trained_committee
    energies, _ = labels_of(train)
    objective = Objective(kT=1.0)
    candidates = objective.bind(energies).score(committee, train[:7], source="test")
    assert isinstance(candidates, Candidates) and len(candidates) == 7 and candidates.source == "test"
    predicted = committee.predict(train[:7])
    np.testing.assert_allclose(candidates.energy_mean, predicted["energy_mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(candidates.energy_std, predicted["energy_std"], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(candidates.force_std, predicted["forces_std"], rtol=1e-4, atol=1e-7)
    # the notebooks' annotated copies carry exactly the typed values as labels, and read back the same
    annotated = objective.score(committee, train[:7], energies)
    assert [a.info["log_score"] for a in annotated] == pytest.approx(candidates.score.tolist())
    back = Candidates.from_annotated(annotated)
    for key in ("energy_mean", "variance", "score", "energy_std"):
        np.testing.assert_array_equal(getattr(back, key), getattr(candidates, key))
    with pytest.raises(ValueError, match="committee_energy"):
        Candidates.from_annotated(train[:1])


def test_the_attack_with_the_bound_objective_equals_the_attack_from_training_energies(trained_committee):
    committee, train, _ = trained_committee
    energies, _ = labels_of(train)
    config = AttackConfig(kT=1.0, n_steps=8, uncertainty="forces")
    bound = Objective(kT=1.0).bind(energies)
    plain = attack(committee, train[:4], energies, config, progress=False)
    with_bound = attack(committee, train[:4], energies, config, progress=False, objective=bound)
    np.testing.assert_array_equal(plain.log_score, with_bound.log_score)
    np.testing.assert_array_equal(plain.positions, with_bound.positions)
    # the candidates' arrays are the recorded ones: σ_E from the attack's own calls
    candidates = with_bound.candidates(every=2)
    assert len(candidates) == len(with_bound.snapshots(2))
    refreshed = bound.score(committee, candidates.structures)
    np.testing.assert_allclose(candidates.energy_std, refreshed.energy_std, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(candidates.score, refreshed.score, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="kT"):
        attack(committee, train[:2], energies, AttackConfig(kT=2.0, n_steps=1), progress=False, objective=bound)


def test_candidates_take_and_concat_keep_values_with_their_structures(trained_committee):
    committee, train, _ = trained_committee
    energies, _ = labels_of(train)
    bound = Objective(kT=1.0).bind(energies)
    a, b = bound.score(committee, train[:3], "a"), bound.score(committee, train[3:5], "b")
    joined = Candidates.concat([a, b])
    assert len(joined) == 5 and joined.source == "a"
    picked = joined.take([4, 0])
    assert picked[0] is joined[4] and picked.energy_mean.tolist() == [joined.energy_mean[4], joined.energy_mean[0]]
    with pytest.raises(ValueError, match="one value per structure"):
        Candidates(train[:2], [0.0], [1.0, 1.0], [0.0, 0.0])
