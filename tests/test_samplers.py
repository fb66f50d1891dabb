import numpy as np
import pytest

from advsample.samplers import MixedSampler, make_sampler
from advsample.structures import labels_of


@pytest.mark.parametrize("name", ["adversarial", "random", "random_scored", "md"])
def test_every_sampler_proposes_scored_candidates(name, trained_committee):
    committee, train, _ = trained_committee
    energies, _ = labels_of(train)
    options = {"n_steps": 20} if name in ("adversarial", "md") else {}
    if name == "md":
        options.update(n_seeds=2, temperature_K=3000)
    sampler = make_sampler(name, kT=1.0, **options)
    proposal = sampler.propose(committee, train[:10], energies, seed=1, progress=False)
    assert len(proposal.candidates) > 0
    for atoms in proposal.candidates:
        assert {"committee_energy", "committee_variance", "log_score"} <= set(atoms.info)
        assert atoms.positions[0, 2] == 0.0  # constraint respected
    again = sampler.propose(committee, train[:10], energies, seed=1, progress=False)
    np.testing.assert_allclose(
        [a.positions for a in proposal.candidates], [a.positions for a in again.candidates]
    )  # seeded: same candidates twice


def test_mixed_sampler_splits_the_budget():
    mixed = make_sampler("mixed", share=0.25)
    assert isinstance(mixed, MixedSampler)
    assert [n for _, n in mixed.parts(20)] == [5, 15]
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("nope")
