import numpy as np
import pytest

from advsample.surfaces import SURFACES, ToySurface, get_surface


@pytest.mark.parametrize("name", sorted(SURFACES))
def test_forces_are_minus_energy_gradient(name):
    surface = get_surface(name)
    rng = np.random.default_rng(0)
    low = np.array([b[0] for b in surface.bounds])
    high = np.array([b[1] for b in surface.bounds])
    step = 1e-5
    for q in rng.uniform(low, high, size=(5, surface.n_dims)):
        atoms = surface.particle(q)
        atoms.calc = surface
        forces = atoms.get_forces()
        for axis in range(surface.n_dims):
            shifted = np.array([q + step * np.eye(surface.n_dims)[axis], q - step * np.eye(surface.n_dims)[axis]])
            e_plus, e_minus = surface.energy(shifted)
            assert forces[0, axis] == pytest.approx(-(e_plus - e_minus) / (2 * step), rel=1e-5, abs=1e-5)
        assert np.all(forces[0, surface.n_dims :] == 0)


def test_known_minima_of_the_double_wells():
    one_d = get_surface("double_well_1d")
    x, energy = one_d.grid(4001)
    assert x[np.argmin(energy)] == pytest.approx(-1.035, abs=0.01)  # the deeper, left well
    two_d = get_surface("double_well_2d")
    x, y, energy = two_d.grid(601)
    iy, ix = np.unravel_index(np.argmin(energy), energy.shape)
    assert (x[ix], y[iy]) == pytest.approx((-0.755, 0.0), abs=0.01)
    muller = get_surface("muller_brown")
    assert muller.energy(np.array([-0.558, 1.442])) == pytest.approx(-146.7, abs=0.1)


def test_constraint_keeps_the_particle_in_its_plane():
    surface = get_surface("double_well_2d")
    atoms = surface.particle([0.3, 0.2])
    atoms.set_positions([[0.4, 0.1, 5.0]])
    assert atoms.positions[0, 2] == 0.0


def test_user_surface_from_one_energy_function():
    harmonic = ToySurface(lambda q: 0.5 * (q**2).sum(-1), 2, [(-1, 1), (-1, 1)], name="harmonic")
    point = harmonic.labeled_points([[0.5, -0.2]])[0]
    np.testing.assert_allclose(point.get_forces()[0], [-0.5, 0.2, 0.0])
    assert point.get_potential_energy() == pytest.approx(0.145)


def test_sampling_respects_the_energy_window_and_bad_points_are_rejected():
    surface = get_surface("double_well_2d")
    points = surface.sample(50, seed=1, max_energy=0.0, region=[(-1.5, 0.0), (-1.2, 1.2)])
    assert len(points) == 50
    assert max(a.get_potential_energy() for a in points) < 0.0
    with pytest.raises(ValueError, match="2 coordinate"):
        surface.particle([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="unknown surface"):
        get_surface("nope")
