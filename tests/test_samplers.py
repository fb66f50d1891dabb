import numpy as np
import pytest

from advsample.objective import Objective
from advsample.samplers import MixedSampler, make_sampler
from advsample.structures import labels_of


@pytest.mark.parametrize("name", ["adversarial", "random", "random_scored", "md"])
def test_every_sampler_proposes_scored_candidates(name, trained_committee):
    committee, train, _ = trained_committee
    energies, _ = labels_of(train)
    options = {"n_steps": 20} if name in ("adversarial", "md") else {}
    if name == "md":
        options.update(n_seeds=2, temperature_K=3000)
    sampler = make_sampler(name, **options)
    objective = Objective(kT=1.0)
    proposal = sampler.propose(committee, train[:10], energies, objective, seed=1, progress=False)
    assert len(proposal.candidates) > 0
    for atoms in proposal.candidates:
        assert {"committee_energy", "committee_variance", "log_score"} <= set(atoms.info)
        assert atoms.positions[0, 2] == 0.0  # constraint respected
    again = sampler.propose(committee, train[:10], energies, objective, seed=1, progress=False)
    np.testing.assert_allclose(
        [a.positions for a in proposal.candidates], [a.positions for a in again.candidates]
    )  # seeded: same candidates twice


def test_mixed_sampler_splits_the_budget():
    mixed = make_sampler("mixed", share=0.25)
    assert isinstance(mixed, MixedSampler)
    assert [n for _, n in mixed.parts(20)] == [5, 15]
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("nope")


def test_kT_is_set_once_per_run_not_per_sampler():
    with pytest.raises(TypeError, match="set once per run"):
        make_sampler("adversarial", kT=1.0)
    with pytest.raises(TypeError, match="set once per run"):
        make_sampler("md", uncertainty_kind="energy")
    with pytest.raises(ValueError, match="temperature_K must be positive"):
        make_sampler("md", temperature_K=-11604)
    with pytest.raises(ValueError, match="kT must be a positive"):
        Objective(kT=0)
    with pytest.raises(ValueError, match="uncertainty"):
        Objective(kT=1.0, uncertainty="sigma")


def test_md_temperature_follows_the_objective_unless_given(trained_committee):
    """Without temperature_K, committee MD runs at k_B T = the objective's kT: the same frames as at that
    temperature given explicitly, and other frames at another kT."""
    from ase import units

    committee, train, _ = trained_committee
    energies, _ = labels_of(train)

    def frames(sampler, kT):
        proposal = sampler.propose(committee, train[:2], energies, Objective(kT=kT), seed=3, progress=False)
        return np.array([a.positions for a in proposal.candidates])

    implicit = frames(make_sampler("md", n_steps=20, n_seeds=2), 2.0)
    np.testing.assert_allclose(implicit, frames(make_sampler("md", n_steps=20, n_seeds=2, temperature_K=2.0 / units.kB), 2.0))
    assert not np.allclose(implicit, frames(make_sampler("md", n_steps=20, n_seeds=2), 0.2))


def test_md_trajectory_the_model_refuses_ends_alone():
    from ase.build import molecule

    from advsample.committee import Committee
    from advsample.models import SchNetCommittee

    committee = Committee(SchNetCommittee(n_members=2, species=(1, 8), n_features=8, n_interactions=1,
                                          min_distance=0.5, seed=0))
    squeezed = molecule("H2")
    squeezed.positions[1] = squeezed.positions[0] + [0, 0, 0.3]  # 0.3 Å: the model refuses it
    seeds = [squeezed, molecule("H2O")]
    proposal = make_sampler("md", temperature_K=300, timestep_fs=0.2, n_steps=10, interval=5, n_seeds=None).propose(
        committee, seeds, [0.0, 1.0], Objective(kT=0.1), progress=False)
    assert [len(t) for t in proposal.trajectories] == [0, 2]
    assert len(proposal.candidates) == 2 and all(len(a) == 3 for a in proposal.candidates)
