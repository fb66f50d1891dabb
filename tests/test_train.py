import numpy as np
import pytest
from ase.build import molecule

from advsample.committee import Committee
from advsample.models import MLPCommittee
from advsample.structures import labeled, labels_of
from advsample.train import TrainConfig, split_validation, train_committee


def test_validation_split_is_fixed_by_seed(left_well_data):
    train_a, validation_a = split_validation(left_well_data, 0.2, seed=3)
    train_b, validation_b = split_validation(left_well_data, 0.2, seed=3)
    assert [id(a) for a in validation_a] == [id(a) for a in validation_b]
    assert len(validation_a) == round(0.2 * len(left_well_data))
    assert not {id(a) for a in train_a} & {id(a) for a in validation_a}


def test_training_is_seeded_and_lowers_the_loss(left_well_data):
    def fit(bootstrap):
        committee = Committee(MLPCommittee(3, (32, 32), seed=0))
        history = train_committee(
            committee, left_well_data[:60], left_well_data[60:80],
            TrainConfig(epochs=150, progress=False, seed=4, bootstrap=bootstrap),
        )
        return committee, history

    (c1, h1), (c2, h2) = fit(True), fit(True)
    np.testing.assert_array_equal(h1.validation_loss, h2.validation_loss)
    assert h1.validation_loss[-1] < 0.2 * h1.validation_loss[0]
    points = left_well_data[80:90]
    np.testing.assert_array_equal(c1.predict(points)["energies"], c2.predict(points)["energies"])
    _, h3 = fit(False)
    assert h3.validation_loss != h1.validation_loss  # bootstrap changes what members see


def test_early_stopping_keeps_best_weights(left_well_data):
    committee = Committee(MLPCommittee(2, (16,), seed=0))
    history = train_committee(
        committee, left_well_data[:40], left_well_data[40:60],
        TrainConfig(epochs=3000, patience=5, learning_rate=0.05, progress=False),
    )
    assert history.stopped_early and len(history.epoch) < 3000
    assert sum(history.best_validation_loss) <= min(history.validation_loss) + 1e-9


def test_bad_training_input_is_rejected():
    committee = Committee(MLPCommittee(2, (8,)))
    with pytest.raises(ValueError, match="empty training set"):
        train_committee(committee, [], None, TrainConfig(epochs=1, progress=False))
    with pytest.raises(ValueError, match="no energy/forces label"):
        train_committee(committee, [molecule("H2")], None, TrainConfig(epochs=1, progress=False))
    nan_label = labeled(molecule("H2"), float("nan"), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        train_committee(committee, [nan_label], None, TrainConfig(epochs=1, progress=False))
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)


@pytest.mark.parametrize("reuse_geometry", [True, False])
def test_a_training_step_gives_every_weight_its_full_gradient(reuse_geometry):
    import torch

    from advsample.models import SchNetCommittee
    from advsample.systems.ammonia import ammonia_dataset
    from advsample.train import _Targets, training_step

    data = ammonia_dataset()[:6]
    committee = Committee(SchNetCommittee(3, species=(1, 7), n_features=8, seed=0))
    committee.fit_normalization(labels_of(data)[0], [len(a) for a in data])
    targets, config = _Targets(data, committee, reuse_geometry), TrainConfig(progress=False)
    committee.model.zero_grad()
    targets.member_losses(committee, config).sum().backward()  # every leaf, the geometry's included
    expected = [p.grad.clone() for p in committee.model.parameters()]
    optimizer = torch.optim.SGD(committee.model.parameters(), lr=0.0)  # a step that leaves the weights alone
    training_step(committee, targets, config, optimizer)
    for parameter, gradient in zip(committee.model.parameters(), expected):
        assert parameter.grad is not None
        torch.testing.assert_close(parameter.grad, gradient, rtol=1e-5, atol=1e-7)


def test_a_structure_loss_weight_of_zero_takes_its_term_out_of_the_loss(left_well_data):
    """atoms.info["config_energy_weight"] = 0 (MACE's key): that structure's energy label no longer
    moves the loss, its forces still do; weight 0.5 halves its term; a negative weight is refused
    naming the structure."""
    from advsample.train import _Targets

    committee = Committee(MLPCommittee(2, (8,), seed=0))
    committee.fit_normalization(labels_of(left_well_data[:6])[0], [1] * 6)
    config = TrainConfig(progress=False)

    def losses(structures):
        return _Targets(structures, committee).member_losses(committee, config, create_graph=False).detach().numpy()

    def relabel(atoms, energy_shift=0.0, force_shift=0.0, **info):
        energy, forces = labels_of([atoms])
        out = labeled(atoms.copy(), float(energy[0]) + energy_shift, forces + force_shift)
        out.info.update(info)
        return out

    data = [relabel(a) for a in left_well_data[:6]]
    base = losses(data)
    moved = data[:5] + [relabel(data[5], energy_shift=30.0)]
    assert (losses(moved) > base + 1).all()  # a 30-unit energy error counts ...
    forces_only = data[:5] + [relabel(data[5], energy_shift=30.0, config_energy_weight=0.0)]
    unweighted_rest = losses(data[:5] + [relabel(data[5], config_energy_weight=0.0)])
    np.testing.assert_allclose(losses(forces_only), unweighted_rest, rtol=1e-6)  # ... not with energy weight 0
    off = losses(data[:5] + [relabel(data[5], force_shift=5.0, config_energy_weight=0.0, config_forces_weight=0.0)])
    pushed = losses(data[:5] + [relabel(data[5], force_shift=5.0, config_energy_weight=0.0)])
    assert (np.abs(pushed - off) > 1).all()  # its forces still count
    half = losses(data[:5] + [relabel(data[5], force_shift=5.0, config_energy_weight=0.0, config_forces_weight=0.5)])
    np.testing.assert_allclose(half - off, 0.5 * (pushed - off), rtol=1e-4)
    with pytest.raises(ValueError, match=r"structure 5 .*config_forces_weight"):
        losses(data[:5] + [relabel(data[5], config_forces_weight=-1.0)])
