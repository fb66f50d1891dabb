import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.io import read

from advsample.attack import AttackConfig, attack
from advsample.committee import Committee
from advsample.models import MLPCommittee, SchNetCommittee
from advsample.structures import labels_of


@pytest.fixture(scope="module")
def attack_inputs(trained_committee):
    committee, train, _ = trained_committee
    energies, _ = labels_of(train)
    return committee, train[:48], energies


def test_energy_grows_with_kT_and_uncertainty_rises(attack_inputs, surface_2d):
    committee, seeds, energies = attack_inputs
    final_energy = {}
    for kT in (0.3, 1.0, 5.0):
        result = attack(committee, seeds, energies, AttackConfig(kT=kT, n_steps=60, learning_rate=0.02), progress=False)
        final = result.final()
        final_energy[kT] = surface_2d.energy(surface_2d.coordinates(final)).mean()
        ratio = result.variance[-1].mean() / result.variance[0].mean()
        assert ratio > (10 if kT >= 1.0 else 1.5), f"kT={kT}: final/initial σ² = {ratio:.1f}"
    assert final_energy[0.3] < final_energy[1.0] < final_energy[5.0]


def test_the_attack_differentiates_the_displacements_not_the_committee(attack_inputs):
    committee, seeds, energies = attack_inputs
    for parameter in committee.parameters():
        parameter.grad = None
    result = attack(committee, seeds[:5], energies, AttackConfig(kT=1.0, n_steps=5), progress=False)
    assert result.variance[-1].mean() > result.variance[0].mean()  # δ still climbs the objective
    assert all(parameter.grad is None for parameter in committee.parameters())  # no weight gradients paid for


def test_fixed_coordinates_do_not_move_and_steps_are_recorded(attack_inputs, tmp_path):
    committee, seeds, energies = attack_inputs
    result = attack(committee, seeds[:5], energies, AttackConfig(kT=1.0, n_steps=10, max_displacement=0.05), progress=False)
    assert result.positions.shape == (11, 5, 3)
    assert result.variance.shape == result.energy_mean.shape == result.log_score.shape == (11, 5)
    assert np.all(result.positions[:, :, 2] == 0.0)  # z is fixed by the toy's constraint
    start = np.array([a.positions[0] for a in seeds[:5]])
    assert np.linalg.norm(result.positions[-1] - start, axis=-1).max() <= 0.05 + 1e-6  # float32
    frames = result.trajectory(0)
    assert len(frames) == 11 and frames[3].info["attack_step"] == 3
    snapshots = result.snapshots(every=5)
    assert sorted({a.info["attack_step"] for a in snapshots}) == [5, 10]
    path = result.write(tmp_path / "attack.extxyz")
    assert len(read(path, ":")) == 55


def test_seed_with_colliding_atoms_is_stopped_and_recorded():
    # a committee whose energy falls as z1 - z0 shrinks: at low kT the attack compresses along z
    committee = Committee(MLPCommittee(3, (4,), n_atoms=2, input_axes=(2,), seed=0)).double()
    with torch.no_grad():
        for m in range(3):
            committee.model.weights[0][m] = torch.tensor([[-1.0], [1.0]]) * (1.0 + 0.2 * m)
            committee.model.weights[1][m] = 1.0
        committee.model.biases[0].zero_()
        committee.model.biases[1].zero_()
    near, far = molecule("H2"), molecule("H2")
    near.positions[1] = near.positions[0] + [0.0, 0.0, 0.55]  # pushed below 0.5 Å along z
    far.positions[1] = far.positions[0] + [0.74, 0.0, 0.0]  # along x: never closer than 0.74 Å
    config = AttackConfig(kT=0.01, n_steps=40, learning_rate=0.01, min_distance=0.5, uncertainty="energy")
    result = attack(committee, [near, far], [0.0, 1.0], config, progress=False)
    assert result.stop_step[1] == -1 and result.active[-1, 1]  # the far seed runs to the end
    b = 0
    assert 0 < result.stop_step[b] < 40, "the near seed must be stopped by the distance check"
    assert "closer than 0.5" in result.stop_reason[b]
    assert not result.active[result.stop_step[b]:, b].any()
    last = result.trajectory(b)[-1]
    assert last.get_distance(0, 1) >= 0.5
    # a stopped seed never moves again
    np.testing.assert_allclose(result.positions[-1][result.structure_index == b], result.positions[result.stop_step[b]][result.structure_index == b])


def _periodic_pair(x0: float, x1: float, cell: float = 4.0):
    """Two H atoms on the x axis of a periodic cubic cell of side ``cell`` Å."""
    return Atoms("H2", positions=[[x0, 1.0, 1.0], [x1, 1.0, 1.0]], cell=[cell] * 3, pbc=True)


def _schnet(min_distance: float):
    return Committee(SchNetCommittee(n_members=2, species=(1,), n_features=8, n_interactions=1, cutoff=2.0,
                                     min_distance=min_distance, seed=0)).double()


def test_contact_across_the_cell_edge_is_caught_by_the_attack():
    # 0.1 and 3.7 in a 4 Å cell are 0.4 Å apart through the boundary (3.6 Å in the cell)
    seeds = [_periodic_pair(1.0, 2.0), _periodic_pair(0.1, 3.7), _periodic_pair(0.5, 1.6)]
    config = AttackConfig(kT=1.0, n_steps=5, learning_rate=0.01, min_distance=0.5, uncertainty="energy")
    result = attack(_schnet(0.0), seeds, [0.0, 1.0], config, progress=False)
    assert result.stop_step.tolist() == [-1, 0, -1]
    assert "closer than 0.5" in result.stop_reason[1]
    assert result.active[-1].tolist() == [True, False, True]


def test_seed_refused_by_the_model_stops_alone_and_the_batch_goes_on():
    # the attack's own check is off; SchNet's overlap check (0.3 Å) refuses seeds 1 and 3
    seeds = [_periodic_pair(1.0, 2.0), _periodic_pair(1.0, 1.2), _periodic_pair(0.5, 1.6),
             _periodic_pair(0.05, 3.85), molecule("H2")]
    config = AttackConfig(kT=1.0, n_steps=6, learning_rate=0.01, min_distance=0.0, uncertainty="forces")
    result = attack(_schnet(0.3), seeds, [0.0, 1.0], config, progress=False)
    assert result.stop_step.tolist() == [-1, 0, -1, 0, -1]
    for b in (1, 3):
        assert "model refused the geometry" in result.stop_reason[b] and "min_distance" in result.stop_reason[b]
        assert not result.active[:, b].any()
    assert result.active[:, [0, 2, 4]].all()
    assert np.isfinite(result.variance[:, [0, 2, 4]]).all()
    moved = np.abs(result.positions[-1] - result.positions[0])[result.structure_index == 0]
    assert moved.max() > 1e-4  # the good seeds kept moving after the bad ones were left out


def test_bad_attack_settings():
    with pytest.raises(ValueError, match="kT must be positive"):
        AttackConfig(kT=0)
    with pytest.raises(ValueError, match="uncertainty"):
        AttackConfig(uncertainty="entropy")
    with pytest.raises(ValueError, match="at least one seed"):
        attack(Committee(MLPCommittee(2, (8,))), [], [0.0])


def test_minimum_image_distances_match_ase():
    from advsample.geometry import pair_distances, pair_distances_numpy

    rng = np.random.default_rng(0)
    cell = np.array([[4.0, 0, 0], [1.5, 4.0, 0], [0.7, 1.1, 4.2]])  # skewed, periodic in x and y only
    atoms = Atoms("H10", positions=rng.uniform(0, 5, (10, 3)), cell=cell, pbc=[True, True, False])
    expected = atoms.get_all_distances(mic=True)
    i, j = np.triu_indices(10, 1)
    np.testing.assert_allclose(pair_distances_numpy(atoms.positions, i, j, cell, atoms.pbc), expected[i, j], atol=1e-12)
    torch_distances = pair_distances(torch.tensor(atoms.positions), torch.tensor(i), torch.tensor(j),
                                     torch.zeros(10, dtype=torch.long), torch.tensor(cell)[None], torch.tensor(atoms.pbc)[None])
    np.testing.assert_allclose(torch_distances.numpy(), expected[i, j], atol=1e-12)
    assert not np.allclose(expected[i, j], atoms.get_all_distances()[i, j])  # the images matter here


def test_the_cell_attack_strains_periodic_cells_uphill_in_the_objective():
    from ase.build import bulk, fcc100

    slab = fcc100("Al", size=(2, 2, 3), vacuum=4.0)  # periodic in x and y only
    crystal = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 2, 2))
    seeds = [crystal, slab, molecule("H2O")]
    for atoms in seeds[:2]:
        atoms.rattle(0.02, seed=1)
    committee = Committee(SchNetCommittee(n_members=3, species=(1, 8, 13), n_features=8, n_interactions=1, seed=0))
    config = AttackConfig(kT=1.0, n_steps=8, learning_rate=1e-9, initial_displacement=0.0, min_distance=0.5,
                          strain_learning_rate=0.003, max_strain=0.02, uncertainty="forces")
    result = attack(committee, seeds, [0.0, 1.0], config, progress=False)
    assert result.cells.shape == (9, 3, 3, 3) and result.active.all()
    assert np.all(np.diff(result.log_score[:, :2], axis=0) > 0)  # strain alone climbs the objective
    final = result.final()
    strain = np.linalg.solve(crystal.cell.array, final[0].cell.array) - np.eye(3)
    assert 0 < np.abs(strain).max() <= 0.02 + 1e-6 and np.allclose(strain, strain.T, atol=1e-6)  # float32
    assert np.allclose(final[1].cell[2], slab.cell[2]) and not np.allclose(final[1].cell[:2], slab.cell[:2])
    assert np.allclose(final[2].cell, seeds[2].cell) and np.allclose(final[2].positions, seeds[2].positions, atol=1e-6)
    fractional = np.linalg.solve(final[0].cell.array.T, final[0].positions.T).T
    assert np.allclose(fractional, crystal.get_scaled_positions(wrap=False), atol=1e-6)  # atoms moved with the cell
    plain = attack(committee, seeds, [0.0, 1.0], AttackConfig(kT=1.0, n_steps=2), progress=False)
    assert plain.cells is None and np.allclose(plain.final()[0].cell, crystal.cell)
    with pytest.raises(ValueError, match="strain_learning_rate"):
        AttackConfig(strain_learning_rate=0.0)


# -- the attack as an init/step pair ----------------------------------------------------------
def test_init_and_step_functions_driven_by_hand_give_the_attack():
    from advsample.attack import attack_fns, attack_result

    slab = Atoms("H2", positions=[[1.0, 1.0, 1.0], [1.9, 1.0, 1.0]], cell=[4.0] * 3, pbc=True)
    seeds = [molecule("H2"), slab, _periodic_pair(1.0, 1.2), _periodic_pair(0.5, 1.5)]
    committee = _schnet(0.3)  # refuses the third seed (0.2 Å apart) at step 0
    config = AttackConfig(kT=0.5, n_steps=12, learning_rate=0.05, min_distance=0.0, max_displacement=0.3,
                          strain_learning_rate=0.01, max_strain=0.03, seed=3)
    energies = [0.0, 0.4, 1.0]
    result = attack(committee, seeds, energies, config, progress=False)

    init_fn, step_fn = attack_fns(committee, energies, config)
    state, steps = init_fn(seeds), 0
    while not state.done:
        state = step_fn(state)
        steps += 1
    by_hand = attack_result(state, energies, config)
    assert steps == config.n_steps + 1 and state.step == config.n_steps
    for key in ("positions", "variance", "energy_mean", "log_score", "active", "cells", "stop_step"):
        assert np.array_equal(getattr(by_hand, key), getattr(result, key), equal_nan=True), key
    assert by_hand.stop_reason == result.stop_reason and "model refused" in result.stop_reason[2]
    assert result.active[-1].tolist() == [True, True, False, True]
    with pytest.raises(ValueError, match="done"):
        step_fn(state)


def _default_objective(committee, seeds, positions, energies, kT):
    """log σ²_F − (Ē − E_min)/kT − log Q [B], written out here from the committee's outputs (float64);
    Q = (1/n) Σ exp(−(E_i − E_min)/kT) over the training energies (advsample.uncertainty.log_partition)."""
    from advsample.structures import Batch

    out = committee(Batch.from_atoms(seeds).to(committee.device, committee.dtype), forces=True,
                    positions=torch.as_tensor(positions, dtype=committee.dtype))
    e_min = min(energies)
    log_q = np.log(np.mean(np.exp(-(np.asarray(energies) - e_min) / kT)))
    return (np.log(out.force_variance.detach().numpy()) - (out.energy_mean.detach().numpy() - e_min) / kT - log_q)


@pytest.mark.parametrize("periodic", [False, True], ids=["molecule", "periodic_cell"])
def test_the_attack_step_follows_the_finite_difference_gradient_of_the_default_objective(periodic):
    from ase.build import bulk

    from advsample.attack import attack_fns

    if periodic:
        seeds = [bulk("Al", "fcc", a=4.05, cubic=True)]  # 4 atoms; cutoff 3.5 Å reaches the images
        seeds[0].rattle(0.05, seed=2)
        species = (13,)
    else:
        seeds = [molecule("NH3")]
        species = (1, 7)
    committee = Committee(SchNetCommittee(n_members=4, species=species, n_features=8, n_interactions=2, cutoff=3.5,
                                          seed=1)).double()
    energies, kT = [-0.2, 0.1, 0.5], 0.3
    config = AttackConfig(kT=kT, n_steps=3, initial_displacement=0.02, min_distance=0.1, seed=5)
    init_fn, step_fn = attack_fns(committee, energies, config)
    state = init_fn(seeds)
    # plain gradient ascent with step 1: the attack's step is then exactly its gradient ∂ log L/∂δ
    state.optimizer = torch.optim.SGD([state.delta], lr=1.0)
    delta0 = state.delta.detach().clone()
    step_fn(state)
    gradient = (state.delta.detach() - delta0).numpy()

    x0 = np.concatenate([a.positions for a in seeds]) + delta0.numpy()
    numeric = np.zeros_like(x0)
    h = 1e-5
    for atom in range(len(x0)):
        for axis in range(3):
            shift = np.zeros_like(x0)
            shift[atom, axis] = h
            up = _default_objective(committee, seeds, x0 + shift, energies, kT).sum()
            down = _default_objective(committee, seeds, x0 - shift, energies, kT).sum()
            numeric[atom, axis] = (up - down) / (2 * h)
    assert np.abs(numeric).max() > 1e-3  # a gradient worth checking
    np.testing.assert_allclose(gradient, numeric, rtol=1e-5, atol=1e-6 * np.abs(numeric).max())
    # and the score the attack recorded is the objective written out above
    assert np.allclose(state.records["log_score"][0], _default_objective(committee, seeds, x0, energies, kT))
