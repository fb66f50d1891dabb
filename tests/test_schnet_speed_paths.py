"""SchNet's batched-MD fast path: one radial input shared by all members, parameters out of autograd,
no graph break in ``geometry_energies`` — the same energies and forces as the per-member paths."""
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from advsample.committee import Committee
from advsample.dynamics import committee_force_fn
from advsample.models.schnet import SchNetCommittee
from advsample.structures import Batch
from advsample.systems.adatom import adatom_slab


def _committee(species, n_interactions=2, cutoff=5.0):
    model = SchNetCommittee(n_members=3, species=species, n_features=8, n_interactions=n_interactions,
                            cutoff=cutoff, n_rbf=6, seed=3)
    committee = Committee(model, energy_shift=-0.7, energy_scale=1.3).double()
    with torch.no_grad():  # non-zero biases: every parameter matters
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1),
                                             dtype=parameter.dtype))
    return committee


def _moved(starts, scale=0.05, seed=0):
    batch = Batch.from_atoms(starts)
    rng = np.random.default_rng(seed)
    return batch.with_positions(batch.positions + torch.as_tensor(rng.normal(0, scale, batch.positions.shape)))


CASES = {
    # molecules and a periodic slab with fixed atoms: the first interaction by per-element sums
    "molecules+slab": (lambda: _committee((1, 7, 8, 13, 79)), [molecule("NH3"), adatom_slab(), molecule("H2O")]),
    # many species and few pairs (N·S > 2P): the first interaction by pair messages too
    "sparse": (lambda: _committee(tuple(range(1, 40)), cutoff=3.0), [molecule("CH4"), molecule("H2O")]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_shared_features_equal_member_views(case):
    """geometry_energies on one [P, K] input = on its [M, P, K] member views; the gradient is the members' sum."""
    make, starts = CASES[case]
    committee = make()
    model = committee.model
    batch = _moved(starts)
    geometry = committee.fixed_geometry(batch)
    N, S, P = batch.positions.shape[0], len(model.species), geometry.i.shape[0]
    assert (N * S <= 2 * P) == (case != "sparse")  # both branches of the first interaction are covered
    shared = geometry.features.detach().clone().requires_grad_(True)
    views = geometry.features.detach().clone().requires_grad_(True)
    e_shared = model.geometry_energies(batch, geometry, shared)
    e_views = model.geometry_energies(batch, geometry, views.unsqueeze(0).expand(3, -1, -1))
    assert e_shared.shape == e_views.shape == (3, batch.n_structures)
    assert torch.allclose(e_shared, e_views, atol=1e-12, rtol=0)
    assert e_views.std(0).min() > 1e-3  # the members differ: a mix-up between members would show
    (g_shared,) = torch.autograd.grad(e_shared.sum(), shared)
    (g_views,) = torch.autograd.grad(e_views.sum(), views)
    assert torch.allclose(g_shared, g_views, atol=1e-12, rtol=0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_force_fn_equals_the_committee_and_minus_grad_energy(case):
    """committee_force_fn (shared input, frozen parameters, its own scatter) = Committee's position-autograd
    mean; and its forces are −∂E/∂x of its own energies by central differences."""
    make, starts = CASES[case]
    committee = make()
    batch = _moved(starts)
    force_fn = committee_force_fn(committee)
    energies, forces = force_fn(batch)
    out = committee(batch, forces=True)  # no geometry: autograd through the positions, per member
    assert torch.allclose(energies, out.energy_mean, atol=1e-10, rtol=0)
    assert torch.allclose(forces, out.forces_mean, atol=1e-10, rtol=0)
    assert forces.abs().max() > 1e-3
    h = 1e-5
    rng = np.random.default_rng(1)
    for atom in rng.choice(batch.positions.shape[0], 4, replace=False):
        axis = int(rng.integers(3))
        b = int(batch.structure_index[atom])
        shifted = []
        for sign in (1, -1):
            positions = batch.positions.clone()
            positions[atom, axis] += sign * h
            shifted.append(force_fn(batch.with_positions(positions))[0][b])
        assert abs(-(shifted[0] - shifted[1]) / (2 * h) - forces[atom, axis]) < 1e-6  # eV/Å


def test_parameters_stay_trainable_and_unknown_elements_still_refused():
    """The parameters' requires_grad is restored after each call, an error included; an element the model
    lacks is still a clear ValueError (checked eagerly, before any network work)."""
    committee = _committee((1, 7))
    force_fn = committee_force_fn(committee)
    force_fn(Batch.from_atoms([molecule("NH3")] * 2))
    assert all(p.requires_grad for p in committee.parameters() if p.dtype.is_floating_point and p.ndim)
    with pytest.raises(ValueError, match=r"element\(s\) O not known to this model"):
        force_fn(Batch.from_atoms([molecule("NH3"), molecule("H2O")]))
    with pytest.raises(ValueError, match="closer than min_distance"):  # fails inside the evaluation
        force_fn(Batch.from_atoms([Atoms("NH", positions=[[0, 0, 0], [0, 0, 0.1]])] * 2))
    assert all(p.requires_grad for p in committee.model.parameters())
    loss = committee(Batch.from_atoms([molecule("NH3")]), forces=True, create_graph=True).forces.pow(2).sum()
    loss.backward()  # still trainable
    assert committee.model.filters.grad is not None


def test_geometry_energies_is_one_graph():
    """No graph break in geometry_energies (the species check runs eagerly, before it): dynamo captures the
    forward in one graph, so the compiled forward and backward are one each."""
    torch._dynamo.reset()
    committee = _committee((13, 79))
    batch = _moved([adatom_slab()] * 3)
    geometry = committee.fixed_geometry(batch)
    model = committee.model
    features = geometry.features.detach().requires_grad_(True)
    explanation = torch._dynamo.explain(type(model).geometry_energies)(model, batch, geometry, features)
    assert explanation.graph_break_count == 0, [str(r.reason)[:200] for r in explanation.break_reasons]
    assert explanation.graph_count == 1
