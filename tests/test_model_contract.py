"""One conformance test of the member-model contract, run over every shipped model (and the MemberList adapter)."""
import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc100

from advsample.committee import Committee
from advsample.models import MODELS, MLPCommittee, MemberList, ModelContractError, SchNetCommittee, check_model
from advsample.models.base import update_members
from advsample.systems.ammonia import ammonia_dataset
from advsample.structures import Batch, labeled
from advsample.train import TrainConfig, _Targets, train_committee


class SchNetMembers(MemberList):
    """M one-member SchNets as independent modules: the generic adapter under test."""

    invariances = frozenset({"translation", "rotation", "permutation"})

    def __init__(self, n_members=3, seed=0, **options):
        self.options = options
        super().__init__([_OneSchNet(SchNetCommittee(1, seed=seed + m, **options)) for m in range(n_members)])
        self.seed = seed

    def config(self):
        return {"n_members": self.n_members, "seed": self.seed, **self.options}


class _OneSchNet(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch, positions):
        return self.model(batch, positions.unsqueeze(0))[0]


class NotMinusGradient(torch.nn.Module):
    """Broken on purpose: part of the energy is computed from detached positions, so forces miss it."""

    stacked, invariances, normalized = True, frozenset({"translation"}), True

    def __init__(self, n_members=2, seed=0):
        super().__init__()
        self.n_members, self.seed = n_members, seed
        self.k = torch.nn.Parameter(torch.linspace(1.0, 2.0, n_members))

    def config(self):
        return {"n_members": self.n_members, "seed": self.seed}

    def forward(self, batch, positions):
        centred = positions - positions.mean(1, keepdim=True)
        atom = (centred**2).sum(-1) * self.k[:, None] + (centred.detach() ** 4).sum(-1)  # [M, N]
        return atom.new_zeros(self.n_members, batch.n_structures).index_add(1, batch.structure_index, atom)


MODELS["SchNetMembers"] = SchNetMembers
MODELS["NotMinusGradient"] = NotMinusGradient


def ammonia(n=3):
    return ammonia_dataset()[:n]


def slab():
    atoms = fcc100("Al", (2, 2, 3), vacuum=5.0)
    add_adsorbate(atoms, "Au", 1.7, "hollow")
    atoms.rattle(0.05, seed=1)
    return atoms


def points():
    from advsample.surfaces import double_well_2d

    return double_well_2d().sample(4, seed=0)


CASES = {
    "mlp": (lambda: MLPCommittee(3, (16, 16), seed=0), points),
    "schnet": (lambda: SchNetCommittee(3, species=(1, 7), n_features=8, seed=0), ammonia),
    "schnet_periodic": (lambda: SchNetCommittee(3, species=(13, 79), n_features=8, cutoff=4.0, seed=0),
                        lambda: [slab()]),
    "member_list": (lambda: SchNetMembers(3, species=(1, 7), n_features=8), ammonia),
    "mace": (lambda: MODELS["MACECommittee"](2, species=(1, 7), hidden_irreps="8x0e + 8x1o", num_interactions=1),
             ammonia),
    "mace_periodic": (lambda: MODELS["MACECommittee"](2, species=(13, 79), r_max=3.5, hidden_irreps="8x0e + 8x1o",
                                                      num_interactions=1), lambda: [slab()]),
}


def case(name):
    if name.startswith("mace"):
        pytest.importorskip("mace", reason="mace extra not installed (pip install -e '.[mace]')")
    build, structures = CASES[name]
    return Committee(build()), structures()


@pytest.mark.parametrize("name", CASES)
def test_model_meets_the_contract(name):
    committee, structures = case(name)
    check_model(committee, structures)


def test_a_model_whose_forces_are_not_minus_grad_e_fails_clearly():
    with pytest.raises(ModelContractError, match="forces are not -dE/dx"):
        check_model(Committee(NotMinusGradient()), ammonia())


def test_a_fixed_geometry_with_wrong_derivatives_fails_clearly():
    class WrongDerivatives(SchNetCommittee):
        def fixed_geometry(self, batch):
            geometry = super().fixed_geometry(batch)
            geometry.derivatives = 1.1 * geometry.derivatives
            return geometry

    MODELS["WrongDerivatives"] = WrongDerivatives
    try:
        with pytest.raises(ModelContractError, match="forces through fixed_geometry differ"):
            check_model(Committee(WrongDerivatives(2, species=(1, 7), n_features=8)), ammonia())
    finally:
        del MODELS["WrongDerivatives"]


def test_training_through_the_fixed_geometry_follows_the_per_step_path():
    """Molecules, a periodic slab with a fixed layer and a rattled bulk cell in one batch: same losses."""
    from ase.build import bulk
    from ase.constraints import FixAtoms

    fixed_slab = slab()
    fixed_slab.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))
    cell = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 1, 1))
    cell.rattle(0.05, seed=2)
    species = (1, 7, 13, 79)
    data = _labeled(ammonia(2) + _rattled([fixed_slab], 2, seed=4) + [cell])
    histories = []
    for reuse in (True, False):
        committee = Committee(SchNetCommittee(2, species=species, n_features=8, cutoff=4.0, seed=1))
        config = TrainConfig(epochs=8, progress=False, reuse_geometry=reuse)
        histories.append(train_committee(committee, data, None, config).train_loss)
    np.testing.assert_allclose(histories[0], histories[1], rtol=1e-4)
    assert histories[0][-1] < histories[0][0]


def test_a_minibatch_cut_from_the_training_targets_equals_one_built_from_its_structures():
    """``_Targets.subset``: the same batch, fixed geometry, labels and losses as building the minibatch anew."""
    from ase.build import bulk

    from advsample.train import _Targets

    cell = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 1, 1))
    cell.rattle(0.05, seed=2)
    data = _labeled(ammonia(3) + _rattled([slab()], 2, seed=4) + [cell])
    committee = Committee(SchNetCommittee(2, species=(1, 7, 13, 79), n_features=8, cutoff=4.0, seed=1))
    committee.fit_normalization([a.get_potential_energy() for a in data], [len(a) for a in data])
    index = np.array([1, 3, 5])  # NH3, slab, bulk
    cut, built = _Targets(data, committee).subset(index), _Targets([data[k] for k in index], committee)
    for name in ("positions", "numbers", "structure_index", "cells", "pbc", "fixed"):
        assert torch.equal(getattr(cut.batch, name), getattr(built.batch, name)), name
    order = lambda g: np.lexsort((g.unit[:, 0].numpy(), g.j.numpy(), g.i.numpy()))  # noqa: E731
    a, b = order(cut.geometry), order(built.geometry)
    assert torch.equal(cut.geometry.i[a], built.geometry.i[b]) and torch.equal(cut.geometry.j[a], built.geometry.j[b])
    for name in ("features", "derivatives", "unit"):
        torch.testing.assert_close(getattr(cut.geometry, name)[a], getattr(built.geometry, name)[b])
    assert cut.geometry.n_atoms == built.geometry.n_atoms
    assert torch.equal(cut.energies, built.energies) and torch.equal(cut.forces, built.forces)
    config = TrainConfig(progress=False)
    torch.testing.assert_close(cut.member_losses(committee, config), built.member_losses(committee, config))


def test_a_false_invariance_claim_fails():
    class ClaimsRotation(MLPCommittee):
        invariances = frozenset({"rotation"})

    MODELS["ClaimsRotation"] = ClaimsRotation
    try:
        model = ClaimsRotation(2, (8,), n_atoms=4, input_axes=(0, 1, 2))  # raw NH3 coordinates
        with pytest.raises(ModelContractError, match="claims rotation invariance"):
            check_model(Committee(model), ammonia())
    finally:
        del MODELS["ClaimsRotation"]


def _labeled(structures, seed=0):
    """Smooth synthetic labels from a harmonic pair potential (any structure, any cell)."""
    out = []
    for atoms in structures:
        d = atoms.get_all_distances(mic=True)
        i, j = np.triu_indices(len(atoms), 1)
        energy = float(((d[i, j] - 1.5) ** 2).sum())
        vectors = atoms.get_all_distances(mic=True, vector=True)  # [n, n, 3] r_j - r_i
        forces = np.zeros((len(atoms), 3))
        for a, b in zip(i, j):
            g = 2 * (d[a, b] - 1.5) * vectors[a, b] / d[a, b]
            forces[a] += g
            forces[b] -= g
        out.append(labeled(atoms, energy, forces))
    return out


def _rattled(structures, n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        atoms = structures[k % len(structures)].copy()
        atoms.positions += rng.normal(scale=0.03, size=atoms.positions.shape)
        out.append(atoms)
    return out


@pytest.mark.parametrize("name", ["mlp", "schnet", "member_list", "mace"])
def test_each_member_ends_at_its_own_best_validation_weights(name):
    committee, structures = case(name)
    if name == "mlp":
        from advsample.surfaces import double_well_2d

        data = double_well_2d().sample(24, seed=1)
    else:
        data = _labeled(_rattled(structures, 12, seed=2))
    train, validation = data[:8], data[8:]
    # a large learning rate: members improve at different epochs, then some get worse
    config = TrainConfig(epochs=12, learning_rate=0.05, patience=100, progress=False, seed=0)
    history = train_committee(committee, train, validation, config)
    final = _Targets(validation, committee).member_losses(committee, config, create_graph=False).detach()
    np.testing.assert_allclose(final.cpu().numpy(), history.best_validation_loss, rtol=1e-4)
    per_epoch_best = np.minimum.accumulate(np.asarray(history.validation_loss))  # members summed
    assert sum(history.best_validation_loss) <= per_epoch_best[-1] + 1e-6


def test_update_members_copies_only_the_flagged_members():
    for model in (SchNetCommittee(3, n_features=4, seed=0), SchNetMembers(3, n_features=4)):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        state = {k: torch.zeros_like(v) for k, v in before.items()}
        update_members(model, state, torch.tensor([False, True, False]))
        for key, value in state.items():
            if model.stacked:
                assert torch.equal(value[1], before[key][1]) and not value[[0, 2]].any()
            elif key.startswith("members.1."):
                assert torch.equal(value, before[key])
            else:
                assert not value.any()


@pytest.mark.parametrize("name", ["schnet", "member_list"])
def test_checkpoint_file_round_trip_and_gather(tmp_path, name):
    committee, structures = case(name)
    path = committee.save(tmp_path / "c.pt")
    restored = Committee.load(path, device="cpu")
    np.testing.assert_allclose(restored.predict(structures)["energies"], committee.predict(structures)["energies"],
                               rtol=1e-6)
    gathered = Committee.gather([committee, restored])
    energies = gathered.predict(structures)["energies"]
    assert energies.shape[0] == 2 * committee.n_members
    np.testing.assert_allclose(energies[committee.n_members:], energies[: committee.n_members], rtol=1e-6)


def test_training_lists_periodic_neighbours_once_per_structure():
    committee = Committee(SchNetCommittee(2, species=(13, 79), n_features=4, cutoff=4.0))
    data = _labeled(_rattled([slab()], 4, seed=3))
    per_step = Committee(SchNetCommittee(2, species=(13, 79), n_features=4, cutoff=4.0))
    train_committee(per_step, data[:3], data[3:], TrainConfig(epochs=5, progress=False, reuse_geometry=False))
    assert per_step.model.neighbour_cache.misses == 4  # 3 training + 1 validation geometry, listed once
    assert per_step.model.neighbour_cache.hits >= 5 * 4 - 4  # and looked up at every step
    train_committee(committee, data[:3], data[3:], TrainConfig(epochs=5, progress=False))
    cache = committee.model.neighbour_cache
    assert cache.misses == 4 and len(cache) == 4 and cache.hits == 0  # the fixed geometry: listed once, kept
    moved = Batch.from_atoms(data[:1])
    shifted = committee(moved, positions=moved.positions + 0.01).energies  # a new geometry is listed anew
    assert cache.misses == 5
    from advsample.models.neighbours import NeighbourCache

    import copy
    import pickle

    assert len(copy.deepcopy(committee).model.neighbour_cache) == 0  # copies do not carry the lists along
    assert pickle.loads(pickle.dumps(cache)).max_structures == cache.max_structures
    committee.model.neighbour_cache = NeighbourCache(0)  # the per-forward path gives the same numbers
    torch.testing.assert_close(committee(moved, positions=moved.positions + 0.01).energies, shifted, rtol=0, atol=0)


def test_core_does_not_import_mace():
    import subprocess
    import sys

    code = ("import sys, advsample.committee, advsample.loop, advsample.models; "
            "bad = [m for m in ('mace', 'e3nn') if m in sys.modules]; assert not bad, bad; "
            "from advsample.models import MODELS; assert 'MACECommittee' in MODELS")
    subprocess.run([sys.executable, "-c", code], check=True)
