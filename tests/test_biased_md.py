"""UDD-AL and uncertainty-biased MD: the bias formulas, their forces by finite differences,
the samplers on the 2D double well and a periodic cell, and that the bias reaches higher σ."""
import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk, molecule

from advsample.biased_md import (
    UDD_AMPLITUDE_KT, UDD_WIDTH_KT, BiasedMDCalculator, BiasedMDSampler, UDDCalculator, UDDSampler,
)
from advsample.committee import Committee
from advsample.models import SchNetCommittee
from advsample.objective import Objective
from advsample.samplers import SAMPLERS, make_sampler
from advsample.structures import labels_of
from test_samplers import (
    ase_langevin_frames, assert_same_frames, committee_in, float32_schnet, nh3_seeds, reference_calculator,
)


def _schnet(species, cutoff=5.0, n_members=4):
    return Committee(SchNetCommittee(n_members=n_members, species=species, n_features=8, n_interactions=1,
                                     cutoff=cutoff, seed=0)).to(dtype=torch.float64)


def _nh3():
    atoms = molecule("NH3")
    atoms.rattle(0.05, seed=2)
    return atoms


def _al():
    atoms = bulk("Al", cubic=True)  # 4 atoms, 4.05 Å cube: periodic images within the 3.5 Å cutoff
    atoms.rattle(0.05, seed=3)
    return atoms


CASES = [pytest.param(lambda: _schnet((1, 7)), _nh3, id="NH3"),
         pytest.param(lambda: _schnet((13,), cutoff=3.5), _al, id="Al-periodic")]


def _member_energies(committee, atoms):
    return committee.predict([atoms])["energies"][:, 0]


def _central_difference(energy_of, atoms, step=1e-5):
    """−dE/dx [N, 3] of ``energy_of(atoms)`` by central differences."""
    forces = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for k in range(3):
            shifted = []
            for sign in (1, -1):
                copy = atoms.copy()
                copy.positions[i, k] += sign * step
                shifted.append(energy_of(copy))
            forces[i, k] = -(shifted[0] - shifted[1]) / (2 * step)
    return forces


@pytest.mark.parametrize("make_committee, make_atoms", CASES)
def test_udd_energy_is_the_published_formula_and_forces_its_negative_gradient(make_committee, make_atoms):
    committee, atoms = make_committee(), make_atoms()
    energies = _member_energies(committee, atoms)
    n_members, n_atoms = len(energies), len(atoms)
    sigma2_paper = 0.5 * np.sum((energies - energies.mean()) ** 2)  # σ²_E of Kulichenko et al.
    width = np.sqrt(sigma2_paper / (n_members * n_atoms))  # exponent −1: E_bias in its curved part
    amplitude = 0.7
    calculator = UDDCalculator(committee, amplitude, width)
    atoms.calc = calculator
    expected_bias = amplitude * (np.exp(-sigma2_paper / (n_members * n_atoms * width**2)) - 1.0)
    assert expected_bias == pytest.approx(amplitude * (np.exp(-1.0) - 1.0))
    assert atoms.get_potential_energy() == pytest.approx(energies.mean() + expected_bias, rel=1e-9)
    assert calculator.results["bias_energy"] == pytest.approx(expected_bias, rel=1e-9)

    def energy(copy):
        copy.calc = UDDCalculator(committee, amplitude, width)
        return copy.get_potential_energy()

    def bias(copy):
        copy.calc = UDDCalculator(committee, amplitude, width)
        copy.get_potential_energy()
        return copy.calc.results["bias_energy"]

    forces = atoms.get_forces()
    np.testing.assert_allclose(forces, _central_difference(energy, atoms), atol=1e-6 * max(1, np.abs(forces).max()))
    bias_forces = calculator.results["bias_forces"]
    assert np.abs(bias_forces).max() > 1e-3  # the bias is felt: not a trivial zero
    np.testing.assert_allclose(bias_forces, _central_difference(bias, atoms), atol=1e-6 * np.abs(bias_forces).max())


@pytest.mark.parametrize("make_committee, make_atoms", CASES)
def test_biased_md_force_bias_is_along_the_uncertainty_gradient(make_committee, make_atoms):
    committee, atoms = make_committee(), make_atoms()
    tau = 0.3
    calculator = BiasedMDCalculator(committee, tau=tau, window=1, burn_in_steps=0)
    atoms.calc = calculator
    forces = atoms.get_forces()
    bias_forces = calculator.results["bias_forces"]

    def sigma(copy):
        return np.std(_member_energies(committee, copy))

    gradient_sigma = -_central_difference(sigma, atoms)  # +∇σ_E
    cosine = np.sum(bias_forces * gradient_sigma) / (np.linalg.norm(bias_forces) * np.linalg.norm(gradient_sigma))
    assert cosine > 0.9999
    # adaptive strength with a one-step window: |F_bias| = τ |F̄|
    unbiased = forces - bias_forces
    assert np.linalg.norm(bias_forces) == pytest.approx(tau * np.linalg.norm(unbiased), rel=1e-6)
    assert calculator.results["energy"] == pytest.approx(
        calculator.results["energy_unbiased"] - tau * np.linalg.norm(unbiased) / np.linalg.norm(gradient_sigma)
        * calculator.results["energy_std"], rel=1e-4)


def test_biased_md_is_unbiased_during_its_burn_in():
    committee, atoms = _schnet((1, 7)), _nh3()
    calculator = BiasedMDCalculator(committee, tau=0.25, window=3, burn_in_steps=2)
    strengths = []
    for step in range(4):
        atoms.positions[0, 0] += 0.01 * step
        atoms.calc = calculator
        atoms.get_forces()
        strengths.append(np.linalg.norm(calculator.results["bias_forces"]))
    assert strengths[:2] == [0.0, 0.0] and min(strengths[2:]) > 0


def test_udd_defaults_are_the_published_glycine_parameters():
    # 15.4 and 0.12 kcal/mol at 350 K (0.0245 and 0.00019 Hartree in the reference code)
    sampler = UDDSampler(temperature_K=350.0)
    amplitude, width = sampler.bias_parameters(Objective(0.1))
    assert amplitude == pytest.approx(15.4 * units.kcal / units.mol)
    assert width == pytest.approx(0.12 * units.kcal / units.mol)
    assert amplitude == pytest.approx(0.0245 * units.Hartree, rel=2e-3)
    assert width == pytest.approx(0.00019 * units.Hartree, rel=1e-2)
    assert UDD_AMPLITUDE_KT == pytest.approx(22.14, abs=0.01) and UDD_WIDTH_KT == pytest.approx(0.1725, abs=1e-3)
    toy = UDDSampler().bias_parameters(Objective(2.0))  # toys: k_B T = the objective's kT
    assert toy == pytest.approx((UDD_AMPLITUDE_KT * 2.0, UDD_WIDTH_KT * 2.0))


def test_bad_bias_options_are_refused():
    with pytest.raises(ValueError, match="width"):
        UDDSampler(width=0.0)
    with pytest.raises(ValueError, match="tau"):
        BiasedMDSampler(tau=-1.0)
    with pytest.raises(ValueError, match="ranking"):
        UDDSampler(ranking="random")
    with pytest.raises(TypeError, match="once per run"):
        make_sampler("udd", kT=1.0)


@pytest.mark.parametrize("name", ["udd", "biased_md"])
def test_biased_samplers_propose_scored_candidates_on_the_double_well(name, trained_committee):
    assert name in SAMPLERS
    committee, train, _ = trained_committee
    energies, _ = labels_of(train)
    sampler = make_sampler(name, n_seeds=2, n_steps=20)
    proposal = sampler.propose(committee, train[:10], energies, Objective(1.0), seed=1, progress=False)
    assert sampler.ranking == "sigma" and len(proposal.candidates) == 2 * 20 // 5
    assert proposal.candidates.source == name
    assert all(np.isfinite(getattr(proposal.candidates, key)).all()
               for key in ("energy_mean", "variance", "score", "energy_std"))  # typed, scored once
    for atoms in proposal.candidates:
        assert atoms.positions[0, 2] == 0.0  # the toy's constraint holds under the bias
    again = sampler.propose(committee, train[:10], energies, Objective(1.0), seed=1, progress=False)
    np.testing.assert_allclose([a.positions for a in proposal.candidates], [a.positions for a in again.candidates])


@pytest.mark.parametrize("name", ["udd", "biased_md"])
def test_biased_samplers_run_on_a_periodic_cell(name):
    committee = _schnet((13,), cutoff=3.5, n_members=3)
    seeds = [_al()]
    committee.fit_normalization(np.array([-13.0]), np.array([4]))
    sampler = make_sampler(name, n_seeds=1, n_steps=10, interval=5, temperature_K=300.0, burn_in_steps=0) \
        if name == "biased_md" else make_sampler(name, n_seeds=1, n_steps=10, interval=5, temperature_K=300.0)
    proposal = sampler.propose(committee, seeds, np.array([-13.0]), Objective(0.1), seed=0, progress=False)
    assert len(proposal.candidates) == 2 and np.isfinite(proposal.candidates.score).all()
    for atoms in proposal.candidates:
        assert atoms.pbc.all() and np.allclose(atoms.cell, seeds[0].cell)
        assert not np.allclose(atoms.positions, seeds[0].positions)


@pytest.mark.parametrize("name", ["udd", "biased_md"])
def test_the_bias_reaches_higher_uncertainty_than_plain_md_at_equal_steps(name, trained_committee):
    """Physics: from the same seeds, temperature and steps, biased frames have a larger mean σ²
    (no uncertainty stop: the dynamics alone)."""
    committee, train, _ = trained_committee
    energies, _ = labels_of(train)
    objective = Objective(1.0)
    options = dict(n_seeds=4, n_steps=60)
    plain = make_sampler("md", **options).propose(committee, train[:10], energies, objective, seed=3, progress=False)
    biased = make_sampler(name, stop_factor=None, **options).propose(
        committee, train[:10], energies, objective, seed=3, progress=False)
    variance = {key: np.mean(p.candidates.variance)
                for key, p in (("md", plain), (name, biased))}
    assert variance[name] > 3 * variance["md"], variance


@pytest.mark.parametrize("name", ["udd", "biased_md"])
def test_trajectories_end_at_the_first_frame_over_the_uncertainty_threshold(name, trained_committee):
    committee, train, _ = trained_committee
    energies, _ = labels_of(train)
    sampler = make_sampler(name, n_seeds=3, n_steps=200, stop_factor=1.5)
    threshold = sampler.stop_energy_std(committee, train)
    assert threshold == pytest.approx(1.5 * np.sqrt(committee.predict(train)["energies"].var(0)).max())
    proposal = sampler.propose(committee, train, energies, Objective(1.0), seed=4, progress=False)
    stopped = 0
    for trajectory in proposal.trajectories:
        sigma = np.sqrt(committee.predict(trajectory)["energies"].var(0))
        assert np.all(sigma[:-1] <= threshold * (1 + 1e-6))  # no earlier frame passed it
        if len(trajectory) < 200 // 5:  # ended early: at a frame over the threshold
            assert sigma[-1] > threshold
            stopped += 1
    assert stopped >= 1
    never = make_sampler(name, n_seeds=3, n_steps=200, stop_factor=None)
    assert all(len(t) == 200 // 5 for t in never.propose(
        committee, train, energies, Objective(1.0), seed=4, progress=False).trajectories)


@pytest.mark.parametrize("name", ["udd", "biased_md"])
def test_batched_biased_frames_equal_ase_langevin_per_seed_on_the_double_well(name, trained_committee):
    """All replicas from one committee call per step: the frames of one ASE Langevin run per seed with
    the sampler's calculator (biased MD: each replica its own window and burn-in), σ_E stop included.

    In float64: the trained toy committee's float32 bias forces carry ~1e-2 relative rounding noise
    (∇ of the member spread; measured against float64, alone or in a batch alike), which this
    strongly biased MD at k_B T = 1 grows past 1e-6 Å within a few steps (float64: 1e-16 Å to
    ~1e-10 Å in 20 steps); float32 equality is checked on NH3 below."""
    trained, train, _ = trained_committee
    committee, n_steps = committee_in(trained, "float64"), 20
    energies, _ = labels_of(train)
    seeds, objective = train[:6], Objective(1.0)
    options = {"burn_in_steps": 5, "window": 5} if name == "biased_md" else {}
    sampler = make_sampler(name, n_seeds=None, n_steps=n_steps, interval=5, stop_factor=1.5, **options)
    proposal = sampler.propose(committee, seeds, energies, objective, seed=1, progress=False)
    reference = ase_langevin_frames(
        seeds, lambda: reference_calculator(sampler, committee, objective), sampler.temperature(objective),
        sampler.timestep_fs, n_steps, 5, sampler.friction, seed=1,
        stop_energy_std=sampler.stop_energy_std(committee, seeds))
    assert_same_frames(proposal.trajectories, reference, 1e-8)
    assert min(map(len, proposal.trajectories)) < n_steps // 5 == max(map(len, proposal.trajectories))  # some stop


@pytest.mark.parametrize("name", ["udd", "biased_md"])
def test_batched_biased_frames_equal_ase_langevin_per_seed_on_ammonia(name):
    committee, seeds, objective = float32_schnet(), nh3_seeds(), Objective(0.1)
    options = {"burn_in_steps": 5, "window": 5} if name == "biased_md" else {}
    sampler = make_sampler(name, n_seeds=None, n_steps=30, interval=5, temperature_K=1500.0, timestep_fs=0.5,
                           stop_factor=1.5, **options)
    proposal = sampler.propose(committee, seeds, [0.0], objective, seed=0, progress=False)
    reference = ase_langevin_frames(
        seeds, lambda: reference_calculator(sampler, committee, objective), 1500.0, 0.5, 30, 5,
        sampler.friction, stop_energy_std=sampler.stop_energy_std(committee, seeds))
    assert_same_frames(proposal.trajectories, reference)
    held = proposal.trajectories[1]  # FixAtoms on N
    assert all(np.array_equal(a.positions[0], seeds[1].positions[0]) and not a.get_momenta()[0].any() for a in held)


def _strained_energy(energy_of, atoms, a, b, step):
    """(E(+ε_ab) − E(−ε_ab)) / 2ε with the symmetric strain ε_ab = ε_ba (positions and cell scaled)."""
    values = []
    for sign in (1, -1):
        strain = np.eye(3)
        strain[a, b] += sign * step / (1 if a == b else 2)
        strain[b, a] += 0 if a == b else sign * step / 2
        copy = atoms.copy()
        copy.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        values.append(energy_of(copy))
    return (values[0] - values[1]) / (2 * step)


VOIGT_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


@pytest.mark.parametrize("name", ["udd", "biased_md"])
def test_the_bias_stress_is_the_strain_derivative_of_the_biased_energy(name):
    """Periodic Al: stress = (1/V)·∂E_biased/∂ε by finite differences (biased MD: s held at the
    calculator's value), and the bias part alone is the derivative of the bias term."""
    committee = _schnet((13,), cutoff=3.5)
    committee.fit_normalization(np.array([-13.0, -13.2]), np.array([4, 4]))
    atoms = _al()
    if name == "udd":
        calculator = UDDCalculator(committee, amplitude=0.5, width=0.02)
        bias = lambda e: 0.5 * (np.exp(-e.var() / (2 * len(atoms) * 0.02**2)) - 1.0)  # noqa: E731
    else:
        calculator = BiasedMDCalculator(committee, tau=0.5, window=1, burn_in_steps=0)
    atoms.calc = calculator
    stress, bias_stress = atoms.get_stress(voigt=True), calculator.results["bias_stress"]
    if name == "biased_md":
        strength = 0.5 * calculator.rescaling
        assert strength > 0
        bias = lambda e: -strength * e.std()  # noqa: E731
    volume = atoms.get_volume()

    def biased(copy):
        energies = _member_energies(committee, copy)
        return energies.mean() + bias(energies)

    numeric = [_strained_energy(biased, atoms, a, b, 1e-5) / volume for a, b in VOIGT_PAIRS]
    numeric_bias = [_strained_energy(lambda c: bias(_member_energies(committee, c)), atoms, a, b, 1e-5) / volume
                    for a, b in VOIGT_PAIRS]
    np.testing.assert_allclose(stress, numeric, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(bias_stress, numeric_bias, rtol=1e-4, atol=1e-8)
    assert np.abs(bias_stress).max() > 1e-6  # the bias does press on the cell
    with pytest.raises(Exception, match="periodic"):
        molecule_atoms = _nh3()
        molecule_atoms.calc = UDDCalculator(_schnet((1, 7)), amplitude=0.5, width=0.02)
        molecule_atoms.get_stress()


def test_constant_pressure_md_runs_on_the_biased_surface():
    """ASE's NPTBerendsen with the biased-MD calculator: the cell follows the bias stress, finite."""
    from ase.md.nptberendsen import NPTBerendsen

    committee = _schnet((13,), cutoff=3.5)
    committee.fit_normalization(np.array([-13.0, -13.2]), np.array([4, 4]))
    atoms = _al().repeat((2, 1, 1))
    calculator = BiasedMDCalculator(committee, tau=0.5, window=5, burn_in_steps=2)
    atoms.calc = calculator
    dynamics = NPTBerendsen(atoms, timestep=1.0 * units.fs, temperature_K=300, pressure_au=0.0,
                            taut=100 * units.fs, taup=500 * units.fs, compressibility_au=1e-2 / units.GPa)
    volume = atoms.get_volume()
    dynamics.run(10)
    # NPTBerendsen evaluates after rescaling the cell and after moving the atoms: the stress came
    # with those forces (no third evaluation per step for it)
    assert calculator.adaptive.n_calls <= 2 * 10 + 1
    assert np.all(np.isfinite(atoms.positions)) and atoms.get_volume() != pytest.approx(volume, rel=1e-6)
