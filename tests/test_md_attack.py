"""md_attack: committee-MD frames for the thermal share, the attack seeded at MD frames for the rest."""
import numpy as np
import pytest

from advsample.objective import Objective
from advsample.samplers import MDAttackSampler, SeededAttackSampler, UncertaintyMDSampler, make_sampler
from advsample.structures import labels_of


def test_md_attack_splits_the_budget_between_md_and_the_md_seeded_attack():
    sampler = make_sampler("md_attack", n_steps=50, attack={"n_steps": 20}, share=0.3)
    assert isinstance(sampler, MDAttackSampler) and sampler.name == "md_attack"
    (md, n_md), (attack, n_attack) = sampler.parts(20)
    assert (n_md, n_attack) == (6, 14)
    assert isinstance(md, UncertaintyMDSampler) and md.ranking == "sigma" and md.n_steps == 50
    assert isinstance(attack, SeededAttackSampler) and attack.ranking == "score"
    assert attack.source is md and attack.attack.config.n_steps == 20
    with pytest.raises(ValueError, match="share"):
        make_sampler("md_attack", share=1.5)


def test_the_seeded_attack_starts_from_md_frames_not_training_points(trained_committee):
    committee, train, _ = trained_committee
    energies, _ = labels_of(train)
    seeds = train[:10]
    sampler = make_sampler("md_attack", n_seeds=2, n_steps=40, attack={"n_steps": 10}).second
    proposal = sampler.propose(committee, seeds, energies, Objective(1.0), seed=2, progress=False)
    attack_seeds = np.array([a.positions[0, :2] for a in proposal.attack.seeds])
    training = np.array([a.positions[0, :2] for a in seeds])
    assert len(attack_seeds) == len(seeds)  # as many attack seeds as the attack alone would take
    distance = np.linalg.norm(attack_seeds[:, None] - training[None], axis=-1).min(axis=1)
    assert distance.min() > 1e-6  # every attack seed is an MD frame, none a training point
    md_frames = [a.positions[0, :2] for t in UncertaintyMDSampler(n_seeds=2, n_steps=40).propose(
        committee, seeds, energies, Objective(1.0), seed=2, progress=False).trajectories for a in t]
    for position in attack_seeds:
        assert np.min(np.linalg.norm(np.array(md_frames) - position, axis=-1)) < 1e-9  # drawn from those frames
    assert len(proposal.candidates) > 0
    assert np.isfinite(proposal.candidates.variance).all() and np.isfinite(proposal.candidates.score).all()
    assert all(a.positions[0, 2] == 0.0 for a in proposal.candidates)
