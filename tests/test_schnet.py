"""SchNetCommittee: forces are -dE/dx, physical invariances, periodic images, batching, input checks."""
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from scipy.spatial.transform import Rotation

from advsample.committee import Committee
from advsample.models import MODELS, SchNetCommittee
from advsample.structures import Batch


def make_committee(dtype=torch.float64, **kwargs):
    config = dict(n_members=3, species=(1, 6, 7, 8, 29), n_features=16, n_interactions=2, cutoff=4.0, n_rbf=12, seed=0)
    config.update(kwargs)
    return Committee(SchNetCommittee(**config)).to(dtype=dtype)


def ammonia(seed=0):
    atoms = molecule("NH3")
    atoms.positions += np.random.default_rng(seed).normal(scale=0.05, size=atoms.positions.shape)
    return atoms


def small_cell():
    atoms = Atoms("CuCuH", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.1], [0.25, 0.3, 0.6]], cell=[4.2, 4.5, 4.8], pbc=True)
    atoms.rattle(0.05, seed=1)
    return atoms


def energies_forces(committee, atoms_list):
    out = committee(Batch.from_atoms(atoms_list), forces=True)
    return out.energies.detach().numpy(), out.forces.detach().numpy()


def test_registered_and_config_roundtrip():
    model = SchNetCommittee(n_members=2, seed=3)
    assert MODELS["SchNetCommittee"] is SchNetCommittee
    rebuilt = SchNetCommittee(**model.config())
    assert rebuilt.config() == model.config()
    for (name, a), (_, b) in zip(model.state_dict().items(), rebuilt.state_dict().items()):
        assert a.shape[0] == 2, name  # member axis first everywhere
        assert torch.equal(a, b), name
    # members differ (independent initialisation)
    assert not torch.allclose(model.embedding[0], model.embedding[1])


def test_forces_are_negative_gradient():
    committee = make_committee()
    atoms_list = [ammonia(0), molecule("CH3OH"), small_cell()]
    batch = Batch.from_atoms(atoms_list)
    out = committee(batch, forces=True)
    x0 = batch.positions.clone()
    h = 1e-5
    rng = np.random.default_rng(0)
    for atom in rng.choice(len(x0), size=6, replace=False):
        for axis in range(3):
            plus, minus = x0.clone(), x0.clone()
            plus[atom, axis] += h
            minus[atom, axis] -= h
            e_plus = committee(batch, forces=False, positions=plus).energies
            e_minus = committee(batch, forces=False, positions=minus).energies
            numeric = -(e_plus - e_minus).sum(1) / (2 * h)  # only the structure holding the atom changes
            torch.testing.assert_close(out.forces[:, atom, axis], numeric, atol=1e-6, rtol=1e-5)


def test_rotation_translation_permutation():
    committee = make_committee()
    atoms = molecule("CH3OH")
    atoms.rattle(0.05, seed=2)
    e0, f0 = energies_forces(committee, [atoms])
    rotation = Rotation.random(random_state=4).as_matrix()
    moved = atoms.copy()
    moved.positions = atoms.positions @ rotation.T + np.array([3.0, -1.0, 7.5])
    e1, f1 = energies_forces(committee, [moved])
    np.testing.assert_allclose(e1, e0, atol=1e-10)
    np.testing.assert_allclose(f1, f0 @ rotation.T, atol=1e-10)
    order = np.random.default_rng(5).permutation(len(atoms))
    e2, f2 = energies_forces(committee, [atoms[order]])
    np.testing.assert_allclose(e2, e0, atol=1e-10)
    np.testing.assert_allclose(f2, f0[:, order], atol=1e-10)


def test_periodic_supercell_energy_is_extensive():
    committee = make_committee()
    cell = small_cell()
    e_cell, f_cell = energies_forces(committee, [cell])
    e_super, f_super = energies_forces(committee, [cell.repeat((2, 2, 2))])
    np.testing.assert_allclose(e_super, 8 * e_cell, rtol=1e-10)
    np.testing.assert_allclose(f_super[:, : len(cell)], f_cell, atol=1e-10)
    # and periodicity matters: the same atoms without pbc give another energy
    e_free, _ = energies_forces(committee, [Atoms(cell.numbers, cell.positions)])
    assert not np.allclose(e_free, e_cell)


def test_batch_equals_one_by_one():
    committee = make_committee()
    atoms_list = [ammonia(1), small_cell(), molecule("CH3OH"), ammonia(2), molecule("H2O")]
    e_batch, f_batch = energies_forces(committee, atoms_list)
    start = 0
    for b, atoms in enumerate(atoms_list):
        e, f = energies_forces(committee, [atoms])
        np.testing.assert_allclose(e_batch[:, b], e[:, 0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(f_batch[:, start : start + len(atoms)], f, atol=1e-12)
        start += len(atoms)


def test_first_interaction_by_element_equals_pair_form():
    """Φ summed per neighbour element (N · n_species <= P) gives the pair form's energies and forces."""
    few = make_committee()  # 5 elements: the cells below take the per-element sum
    many_species = (1, 6, 7, 8, 29) + tuple(range(30, 80))
    many = make_committee(species=many_species)  # 55 elements: N · n_species > P, the pair form
    rows = [many_species.index(z) for z in few.model.species]
    state = few.model.state_dict()
    embedding = many.model.embedding.detach().clone()
    embedding[:, rows] = state["embedding"]
    state["embedding"] = embedding
    many.model.load_state_dict(state)
    many.energy_shift.copy_(few.energy_shift)
    many.energy_scale.copy_(few.energy_scale)
    structures = [small_cell(), small_cell().repeat((2, 1, 1)), molecule("CH3OH")]
    for atoms in structures:
        batch = Batch.from_atoms([atoms])
        i, _, _, _ = few.model._pairs(batch, batch.positions.unsqueeze(0))
        n = len(atoms)
        assert n * len(few.model.species) <= i.shape[0] < n * len(many.model.species)
        e_few, f_few = energies_forces(few, [atoms])
        e_many, f_many = energies_forces(many, [atoms])
        np.testing.assert_allclose(e_few, e_many, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(f_few, f_many, atol=1e-11)
        # the training path (fixed geometry) agrees as well
        fixed = few(batch, forces=True, geometry=few.fixed_geometry(batch))
        np.testing.assert_allclose(fixed.forces.detach().numpy(), f_many, atol=1e-11)


def test_fixed_geometry_lists_each_pair_once():
    """Training's geometry holds each unordered pair once (i < j) and gives forward's energies and forces."""
    committee = make_committee()
    for atoms in [small_cell().repeat((2, 1, 1)), molecule("CH3OH"), ammonia(3)]:
        batch = Batch.from_atoms([atoms])
        i, j, _, _ = committee.model._pairs(batch, batch.positions.unsqueeze(0))
        geometry = committee.fixed_geometry(batch)
        assert bool((geometry.i < geometry.j).all()) and 2 * geometry.i.shape[0] == i.shape[0]
        listed = sorted(zip(geometry.i.tolist(), geometry.j.tolist()))
        assert listed == sorted((a, b) for a, b in zip(i.tolist(), j.tolist()) if a < b)
        fixed = committee(batch, forces=True, geometry=geometry)
        e, f = energies_forces(committee, [atoms])
        np.testing.assert_allclose(fixed.energies.detach().numpy(), e, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(fixed.forces.detach().numpy(), f, atol=1e-11)


def test_atoms_beyond_cutoff_do_not_interact():
    committee = make_committee(cutoff=3.0)
    a, b = ammonia(0), ammonia(1)
    far = a + b.copy()
    far.positions[len(a) :] += [10.0, 0, 0]
    e_far, _ = energies_forces(committee, [far])
    e_a, _ = energies_forces(committee, [a])
    e_b, _ = energies_forces(committee, [b])
    np.testing.assert_allclose(e_far, e_a + e_b, rtol=1e-12)


def test_float32_and_gather():
    committee = make_committee(dtype=torch.float32)
    out = committee(Batch.from_atoms([ammonia(0), ammonia(1)]), forces=True)
    assert out.energies.dtype == torch.float32 and out.energies.shape == (3, 2)
    assert out.forces.shape == (3, 8, 3) and torch.isfinite(out.forces).all()
    other = Committee(SchNetCommittee(**{**committee.model.config(), "n_members": 2, "seed": 9}))
    gathered = Committee.gather([committee.double(), other.double()]).double()
    assert gathered.n_members == 5
    e = gathered(Batch.from_atoms([ammonia(0)]), forces=False).energies
    e_first = committee(Batch.from_atoms([ammonia(0)]), forces=False).energies
    torch.testing.assert_close(e[:3], e_first)


def test_unknown_element():
    committee = make_committee(species=(1, 7))
    with pytest.raises(ValueError, match=r"element\(s\) C not known.*species H, N"):
        committee(Batch.from_atoms([molecule("CH4")]))


def test_overlapping_atoms():
    committee = make_committee()
    atoms = ammonia(0)
    atoms.positions[1] = atoms.positions[0] + [0.1, 0, 0]
    with pytest.raises(ValueError, match=r"structure 0: atoms 0 and 1 are 0.1 Å apart.*overlapping"):
        committee(Batch.from_atoms([atoms]))


def test_cell_too_small_for_cutoff():
    committee = make_committee(cutoff=4.0)
    with pytest.raises(ValueError, match=r"periodic cell too small for the cutoff.*repeat\(\(2, 2, 2\)\)"):
        committee(Batch.from_atoms([bulk("Cu", "fcc", a=3.6)]))


def test_slab_with_zero_cell_vector_along_the_open_direction():
    committee = make_committee(cutoff=3.5)
    sheet = Atoms("C2", positions=[[0, 0, 0], [1.42, 0, 0.1]], cell=[[4.26, 0, 0], [2.13, 3.69, 0], [0, 0, 0]])
    sheet.pbc = [True, True, False]
    sheet.rattle(0.02, seed=3)
    e_cell, _ = energies_forces(committee, [sheet])
    e_super, _ = energies_forces(committee, [sheet.repeat((2, 3, 1))])
    np.testing.assert_allclose(e_super, 6 * e_cell, rtol=1e-10)


@pytest.mark.parametrize("pbc", [(True, True, True), (True, True, False), (True, False, True), (False, False, False)])
def test_neighbour_list_has_the_pairs_of_ase(pbc):
    """vesin's pairs equal ASE's neighbor_list('ijS'): triclinic cells, atoms outside the cell, open axes."""
    from ase.neighborlist import neighbor_list

    from advsample.models.neighbours import neighbour_list

    rng = np.random.default_rng(sum(pbc))
    cell = np.array([[6.1, 0.0, 0.0], [1.7, 5.8, 0.0], [0.9, -1.1, 6.4]])
    if not pbc[2]:
        cell[2] = 0.0  # a slab: no cell vector along the open direction
    positions = rng.uniform(-1.5, 7.5, size=(23, 3))
    i, j, shift = neighbour_list(positions, cell, np.array(pbc), 4.2)
    ai, aj, ashift = neighbor_list("ijS", Atoms(positions=positions, cell=cell, pbc=pbc), 4.2)
    ours = sorted(zip(i.tolist(), j.tolist(), map(tuple, shift.tolist())))
    theirs = sorted(zip(ai.tolist(), aj.tolist(), map(tuple, ashift.tolist())))
    assert len(ours) > 50 and ours == theirs
    assert i.dtype == torch.long and (np.diff(i.numpy()) >= 0).all()  # sorted by i
