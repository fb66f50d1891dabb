"""The round's objective bound once (E_min, log Q) and the candidates it scores as typed data."""
from dataclasses import replace

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


# -- the paper's objective: per-atom energies in the Boltzmann factor, the max force variance ----------
def _output(forces, structure_index, free=None, energies=None):
    """A CommitteeOutput of given member forces [M, N, 3] (energies [M, B] zeros unless given)."""
    from advsample.committee import CommitteeOutput

    n_structures = int(structure_index.max()) + 1
    energies = torch.zeros(forces.shape[0], n_structures, dtype=forces.dtype) if energies is None else energies
    free = torch.ones(forces.shape[1], 3, dtype=torch.bool) if free is None else free
    return CommitteeOutput(energies, forces, structure_index, free)


def test_the_default_objective_is_the_total_energy_mean_variance_score_bit_for_bit(trained_committee):
    from advsample import uncertainty
    from advsample.structures import Batch

    committee, train, _ = trained_committee
    energies, _ = labels_of(train)
    assert Objective(0.7) == Objective(0.7, "forces", "total", "mean")
    bound = Objective(0.7).bind(energies, n_atoms=[5] * len(energies))  # sizes are read only by per_atom
    e_min = float(np.min(energies))
    log_q = uncertainty.log_partition(energies, 0.7, e_min)
    assert (bound.energy_reference, bound.log_q, bound.atom_reference) == (e_min, log_q, None)
    out = committee(Batch.from_atoms(train[:9]), forces=True)
    by_formula = uncertainty.adversarial_log_score(out.force_variance, out.energy_mean, 0.7, log_q, e_min)
    variance, score = bound.evaluate(out)
    assert torch.equal(variance, out.force_variance) and torch.equal(score, by_formula)
    candidates = bound.score(committee, train[:9])
    np.testing.assert_array_equal(candidates.score, by_formula.detach().numpy().astype(float))
    key = uncertainty.adversarial_log_score(torch.as_tensor(candidates.variance), torch.as_tensor(candidates.energy_mean),
                                            0.7, 0.0, e_min).numpy()
    np.testing.assert_array_equal(bound.rank_key(candidates.energy_mean, candidates.variance), key)


def test_per_atom_energies_are_the_total_form_at_kT_times_N_for_one_size():
    rng = np.random.default_rng(0)
    kT, n = 0.05, 13
    train_energies = -40.0 + rng.normal(0.0, 0.5, size=20)
    energy, variance = torch.as_tensor(-40.0 + rng.normal(0.0, 1.0, 6)), torch.as_tensor(rng.uniform(0.01, 1.0, 6))
    total_at_NkT = Objective(kT * n).bind(train_energies).log_score(variance, energy)
    with_sizes = Objective(kT, energy_scale="per_atom").bind(train_energies, n_atoms=n)
    without_sizes = Objective(kT, energy_scale="per_atom").bind(train_energies)
    for bound in (with_sizes, without_sizes):
        np.testing.assert_allclose(bound.log_score(variance, energy, [n] * 6).numpy(), total_at_NkT.numpy(), rtol=1e-12)
        np.testing.assert_allclose(bound.rank_key(energy, variance, n_atoms=[n] * 6), total_at_NkT.numpy(), rtol=1e-12)
    # the unbound key ranks the same (it differs by the constant log Q)
    key = Objective(kT, energy_scale="per_atom").rank_key(energy, variance, float(train_energies.min()), n_atoms=n)
    assert np.argsort(key).tolist() == np.argsort(total_at_NkT.numpy()).tolist()
    assert not np.allclose(Objective(kT).bind(train_energies).log_score(variance, energy), total_at_NkT)

    # mixed sizes with the training sizes: E/N everywhere, e_min and Q over the training set's E_i/N_i
    sizes = np.array([10, 13] * 10)
    bound = Objective(kT, energy_scale="per_atom").bind(train_energies, n_atoms=sizes)
    per_atom = train_energies / sizes
    log_q = np.log(np.mean(np.exp(-(per_atom - per_atom.min()) / kT)))
    scored_sizes = np.array([10, 13, 10, 13, 13, 10])
    expected = np.log(variance.numpy()) - (energy.numpy() / scored_sizes - per_atom.min()) / kT - log_q
    np.testing.assert_allclose(bound.log_score(variance, energy, scored_sizes).numpy(), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="different sizes"):
        Objective(kT, energy_scale="per_atom").rank_key(energy, variance, 0.0, n_atoms=scored_sizes)


def test_forces_max_is_at_least_the_mean_variance_and_equals_it_when_atoms_are_alike():
    gen = torch.Generator().manual_seed(0)
    index = torch.tensor([0, 0, 0, 1, 1])
    free = torch.ones(5, 3, dtype=torch.bool)
    free[1] = False  # a fixed atom: left out of both reductions
    free[3, 2] = False  # a fixed coordinate
    forces = torch.randn(4, 5, 3, generator=gen, dtype=torch.float64)
    forces[:, 1] *= 100.0  # the fixed atom's variance would otherwise be the maximum
    out = _output(forces, index, free)
    mean = Objective(uncertainty="forces").variance(out)
    largest = Objective(uncertainty="forces_max").variance(out)
    assert (largest >= mean).all() and (largest > mean).all()
    variance = forces.var(0, unbiased=False)
    assert float(largest[0]) == pytest.approx(float(torch.stack([variance[0].mean(), variance[2].mean()]).max()))
    assert float(largest[1]) == pytest.approx(float(torch.stack([variance[3, :2].mean(), variance[4].mean()]).max()))
    # every atom with the same variance: max == mean
    alike = torch.randn(4, 1, 1, generator=gen, dtype=torch.float64).expand(4, 5, 3).clone()
    out = _output(alike, index, free)
    torch.testing.assert_close(Objective(uncertainty="forces_max").variance(out), Objective().variance(out))
    with pytest.raises(ValueError, match="forces=True"):
        Objective(uncertainty="forces_max").variance(replace(_output(forces, index), forces=None))


def _score_of(committee, seeds, positions, bound):
    from advsample.structures import Batch

    out = committee(Batch.from_atoms(seeds).to(committee.device, committee.dtype), forces=True,
                    positions=torch.as_tensor(positions, dtype=committee.dtype))
    return bound.evaluate(out)[1].detach().numpy()


@pytest.mark.parametrize("energy_scale,uncertainty", [("per_atom", "forces"), ("total", "forces_max"),
                                                      ("per_atom", "forces_max")])
def test_the_attack_ascends_the_finite_difference_gradient_of_the_new_scores(energy_scale, uncertainty):
    from ase.build import molecule
    from ase.constraints import FixAtoms

    from advsample.attack import attack_fns
    from advsample.committee import Committee
    from advsample.models import SchNetCommittee

    water = molecule("H2O")
    water.set_constraint(FixAtoms([0]))  # fixed atoms count in N, not in σ²
    seeds = [molecule("NH3"), water]  # two sizes in one batch
    committee = Committee(SchNetCommittee(n_members=4, species=(1, 7, 8), n_features=8, n_interactions=2, cutoff=3.5,
                                          seed=1)).double()
    energies, kT = [-0.2, 0.1, 0.5], 0.3
    bound = Objective(kT, uncertainty, energy_scale).bind(energies, n_atoms=[3, 4, 4])
    config = AttackConfig(kT=kT, n_steps=3, initial_displacement=0.02, min_distance=0.1, seed=5)
    init_fn, step_fn = attack_fns(committee, energies, config, objective=bound)
    state = init_fn(seeds)
    state.optimizer = torch.optim.SGD([state.delta], lr=1.0)  # the step is then exactly ∂ log L/∂δ
    delta0 = state.delta.detach().clone()
    step_fn(state)
    gradient = (state.delta.detach() - delta0).numpy()

    x0 = np.concatenate([a.positions for a in seeds]) + delta0.numpy()
    numeric, h = np.zeros_like(x0), 1e-5
    for atom in range(len(x0)):
        for axis in range(3):
            shift = np.zeros_like(x0)
            shift[atom, axis] = h
            up, down = (_score_of(committee, seeds, x0 + s, bound).sum() for s in (shift, -shift))
            numeric[atom, axis] = (up - down) / (2 * h)
    numeric[4] = 0.0  # the fixed O never moves
    assert np.abs(numeric).max() > 1e-3
    np.testing.assert_allclose(gradient, numeric, rtol=1e-5, atol=1e-6 * np.abs(numeric).max())
    np.testing.assert_allclose(state.records["log_score"][0], _score_of(committee, seeds, x0, bound), rtol=1e-12)


def test_bad_objective_options_are_named():
    for options, name in ((dict(energy_scale="atom"), "energy_scale"), (dict(force_reduction="min"), "force_reduction"),
                          (dict(uncertainty="forces_min"), "uncertainty"),
                          (dict(uncertainty="energy", force_reduction="max"), "force_reduction")):
        with pytest.raises(ValueError, match=name):
            Objective(0.1, **options)
    per_atom = Objective(0.1, energy_scale="per_atom")
    with pytest.raises(ValueError, match="n_atoms"):
        per_atom.bind([0.0, 1.0], n_atoms=[3])
    with pytest.raises(ValueError, match="n_atoms"):
        per_atom.bind([0.0, 1.0], n_atoms=[3, 0])
    with pytest.raises(ValueError, match="n_atoms"):
        per_atom.bind([0.0, 1.0]).log_score(torch.ones(2), torch.zeros(2))
    with pytest.raises(ValueError, match="uncertainty"):
        AttackConfig(kT=0.1, uncertainty="max")
