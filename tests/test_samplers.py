import numpy as np
import pytest

from advsample.candidates import Candidates
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
    candidates = proposal.candidates
    assert isinstance(candidates, Candidates) and len(candidates) > 0 and candidates.source == sampler.name
    for atoms in candidates:
        assert not {"committee_energy", "committee_variance", "log_score"} & set(atoms.info)  # arrays, not info
        assert atoms.positions[0, 2] == 0.0  # constraint respected
    # scored once, by the sampler: its arrays are what the committee gives on the structures now
    fresh = objective.bind(energies).score(committee, candidates.structures)
    for key in ("energy_mean", "variance", "score", "energy_std"):
        np.testing.assert_allclose(getattr(candidates, key), getattr(fresh, key), rtol=1e-4, atol=1e-6, err_msg=key)
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


# -- batched committee MD equals one ASE Langevin run per seed ---------------------------------------
def ase_langevin_frames(seeds, make_calculator, temperature_K, timestep_fs, n_steps, interval, friction, seed=0,
                        stop_energy_std=None):
    """The reference: one ASE ``Langevin`` run per seed with its own calculator, seeded and stopped as
    :func:`advsample.samplers.langevin_frames` promises (frames every ``interval`` steps; a run ends at a
    GeometryError, frame not kept, or at the first σ_E over ``stop_energy_std``, frame kept)."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    from advsample.geometry import GeometryError

    trajectories = []
    for index, atoms in enumerate(seeds):
        system = atoms.copy()
        system.calc = make_calculator()
        rng = np.random.default_rng([seed, index])
        thermalize_momenta(system, temperature_K, rng=rng)
        dynamics = Langevin(system, timestep=timestep_fs * units.fs, temperature_K=temperature_K, friction=friction,
                            fixcm=False, rng=rng)
        frames, steps = [], dynamics.irun(steps=n_steps)
        while True:
            try:
                next(steps)
            except (StopIteration, GeometryError):
                break
            stop = stop_energy_std is not None and system.calc.results["energy_std"] > stop_energy_std
            if stop or (dynamics.nsteps % interval == 0 and dynamics.nsteps > 0):
                frame = system.copy()
                frame.calc = None
                frames.append(frame)
            if stop:
                break
        trajectories.append(frames)
    return trajectories


def reference_calculator(sampler, committee, objective):
    """A fresh ASE calculator for one trajectory of the ``md``, ``udd`` or ``biased_md`` sampler."""
    from advsample.biased_md import BiasedMDCalculator, UDDCalculator
    from advsample.calculator import CommitteeCalculator

    if sampler.name == "udd":
        return UDDCalculator(committee, *sampler.bias_parameters(objective))
    if sampler.name == "biased_md":
        return BiasedMDCalculator(committee, sampler.tau, sampler.window, sampler.burn_in_steps)
    return CommitteeCalculator(committee)


def assert_same_frames(batched, sequential, atol=1e-6):
    """Same frame counts per trajectory; positions equal to ``atol`` Å, momenta to 1e-5 of the largest; same
    cell, pbc and constraints. Returns the largest position difference (Å)."""
    assert [len(t) for t in batched] == [len(t) for t in sequential]
    largest = 0.0
    for ours, theirs in zip(batched, sequential):
        for a, b in zip(ours, theirs):
            assert a.calc is None
            np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=atol)
            scale = np.abs(b.get_momenta()).max()
            np.testing.assert_allclose(a.get_momenta(), b.get_momenta(), rtol=0, atol=1e-5 * scale)
            assert np.array_equal(a.cell, b.cell) and np.array_equal(a.pbc, b.pbc)
            assert [c.todict() for c in a.constraints] == [c.todict() for c in b.constraints]
            largest = max(largest, float(np.abs(a.positions - b.positions).max()))
    return largest


def float32_schnet(species=(1, 7), **options):
    from advsample.committee import Committee
    from advsample.models import SchNetCommittee

    return Committee(SchNetCommittee(n_members=4, species=species, n_features=8, n_interactions=1, seed=0, **options))


def nh3_seeds(n=4):
    """Rattled NH3; the second holds its N with FixAtoms."""
    from ase.build import molecule
    from ase.constraints import FixAtoms

    seeds = []
    for k in range(n):
        atoms = molecule("NH3")
        atoms.rattle(0.05, seed=k)
        seeds.append(atoms)
    seeds[1].set_constraint(FixAtoms([0]))
    return seeds


def committee_in(committee, dtype):
    """The committee itself (float32) or a float64 copy of it."""
    import copy

    import torch

    return committee if dtype == "float32" else copy.deepcopy(committee).to(dtype=torch.float64)


# float32: batched and single-structure forces differ by an ulp, which this hot toy MD (k_B T = 1) grows
# (measured: 4e-7 Å after 10 steps, 6e-6 Å after 40); float64: ASE's integrator to rounding (1e-14 Å)
PRECISIONS = [pytest.param("float32", 10, 1e-6, id="float32"), pytest.param("float64", 40, 1e-10, id="float64")]


@pytest.mark.parametrize("dtype, n_steps, atol", PRECISIONS)
def test_batched_md_frames_equal_ase_langevin_per_seed_on_the_double_well(trained_committee, dtype, n_steps, atol):
    from ase import units

    from advsample.calculator import CommitteeCalculator

    trained, train, _ = trained_committee
    committee = committee_in(trained, dtype)
    energies, _ = labels_of(train)
    seeds, temperature_K = train[:6], 1.0 / units.kB
    sampler = make_sampler("md", n_seeds=None, n_steps=n_steps, interval=5, temperature_K=temperature_K)
    proposal = sampler.propose(committee, seeds, energies, Objective(kT=1.0), seed=2, progress=False)
    reference = ase_langevin_frames(seeds, lambda: CommitteeCalculator(committee), temperature_K, sampler.timestep_fs,
                                    n_steps, 5, sampler.friction, seed=2)
    assert_same_frames(proposal.trajectories, reference, atol)
    assert [len(t) for t in proposal.trajectories] == [n_steps // 5] * 6
    assert all(a.positions[0, 2] == 0.0 and a.get_momenta()[0, 2] == 0.0 for t in proposal.trajectories for a in t)


def test_batched_md_frames_equal_ase_langevin_per_seed_on_ammonia():
    from advsample.calculator import CommitteeCalculator

    committee, seeds = float32_schnet(), nh3_seeds()
    sampler = make_sampler("md", n_seeds=None, n_steps=30, interval=5, temperature_K=1500.0, timestep_fs=0.5)
    proposal = sampler.propose(committee, seeds, [0.0], Objective(kT=0.1), seed=0, progress=False)
    reference = ase_langevin_frames(seeds, lambda: CommitteeCalculator(committee), 1500.0, 0.5, 30, 5,
                                    sampler.friction)
    assert_same_frames(proposal.trajectories, reference)
    held = proposal.trajectories[1]  # FixAtoms: N stays, with zero momentum; the H atoms move
    assert all(np.array_equal(a.positions[0], seeds[1].positions[0]) and not a.get_momenta()[0].any() for a in held)
    assert not np.allclose(held[-1].positions[1:], seeds[1].positions[1:])


def test_a_replica_refused_mid_run_ends_alone_and_the_others_are_unchanged():
    """The model refuses replica 1 at step 7 (GeometryError naming its batch index): it keeps its frame of
    step 5 only, and the others' frames are those of the run without any refusal."""
    from advsample.geometry import GeometryError
    from advsample.samplers import committee_forces, langevin_frames

    committee, seeds = float32_schnet(), nh3_seeds(3)
    plain = committee_forces(committee)
    calls = []

    def refusing(batch, replicas):
        calls.append(list(replicas))
        if len(calls) == 8 and 1 in replicas:  # step 7: the initial evaluation is call 1
            raise GeometryError("refused", structures=[list(replicas).index(1)])
        return plain(batch, replicas)

    options = dict(temperature_K=1500.0, timestep_fs=0.5, n_steps=20, interval=5, friction=0.02, seed=1)
    refused = langevin_frames(seeds, refusing, **options)
    expected = langevin_frames(seeds, plain, **options)
    assert [len(t) for t in refused] == [4, 1, 4]
    assert calls[7] == [0, 1, 2] and calls[8] == [0, 2] and calls[-1] == [0, 2]  # re-evaluated without it
    assert_same_frames(refused, [expected[0], expected[1][:1], expected[2]])


def test_chunked_langevin_frames_equal_one_call():
    """max_atoms_per_call=8 on NH3, NH3, NH3, N2H4 (4, 4, 4, 6 atoms): chunks [0, 1] | [2] | [3], each given
    its own replica indices (forces scaled per replica would differ otherwise); replica 3, refused at its
    8th evaluation inside its chunk, ends alone: the same frames as one call per step."""
    from ase.build import molecule

    from advsample.geometry import GeometryError
    from advsample.samplers import committee_forces, langevin_frames

    committee, seeds = float32_schnet(), nh3_seeds(3) + [molecule("N2H4")]
    plain = committee_forces(committee)

    def run(max_atoms_per_call):
        calls, seen = [], {}

        def forces(batch, replicas):
            calls.append(list(replicas))
            assert batch.n_atoms.tolist() == [len(seeds[r]) for r in replicas]
            seen[3] = seen.get(3, 0) + (3 in replicas)
            if 3 in replicas and seen[3] == 8:
                raise GeometryError("refused", structures=[list(replicas).index(3)])
            force, sigma = plain(batch, replicas)
            return force * (1 + 0.2 * np.asarray(replicas))[batch.structure_index.numpy(), None], sigma

        options = dict(temperature_K=1500.0, timestep_fs=0.5, n_steps=20, interval=5, friction=0.02, seed=1)
        return langevin_frames(seeds, forces, **options, max_atoms_per_call=max_atoms_per_call), calls

    (one, one_calls), (chunks, chunk_calls) = run(None), run(8)
    assert one_calls[0] == [0, 1, 2, 3] and chunk_calls[:3] == [[0, 1], [2], [3]]
    assert [len(t) for t in chunks] == [4, 4, 4, 1] and [0, 1] in chunk_calls[-2:]
    assert_same_frames(chunks, one)


def test_a_replica_gone_non_finite_ends_alone_before_it_is_evaluated():
    """NaN forces on replica 0 at step 3 make its positions of step 4 non-finite: it ends with no frame,
    is not evaluated there, and the others' frames are those of the run without it."""
    from advsample.samplers import committee_forces, langevin_frames

    committee, seeds = float32_schnet(), nh3_seeds(3)
    plain = committee_forces(committee)
    calls = []

    def poisoned(batch, replicas):
        calls.append(list(replicas))
        forces, energy_std = plain(batch, replicas)
        if len(calls) == 4:  # step 3
            forces[batch.structure_index.numpy() == 0] = np.nan
        return forces, energy_std

    options = dict(temperature_K=1500.0, timestep_fs=0.5, n_steps=20, interval=5, friction=0.02, seed=1)
    ended = langevin_frames(seeds, poisoned, **options)
    expected = langevin_frames(seeds, plain, **options)
    assert [len(t) for t in ended] == [0, 4, 4] and calls[3] == [0, 1, 2] and calls[4] == [1, 2]
    assert_same_frames(ended, [[], expected[1], expected[2]])


def test_energy_std_stop_ends_each_replica_at_its_own_first_frame_over_it(trained_committee):
    """With stop_energy_std, each replica ends at its first step over it (that frame kept), as one ASE run
    per seed does; the others go on."""
    from ase import units

    from advsample.calculator import CommitteeCalculator
    from advsample.samplers import committee_forces, langevin_frames

    trained, train, _ = trained_committee
    committee = committee_in(trained, "float64")  # 60 steps: float32 rounding would grow past 1e-6 Å
    seeds, temperature_K = train[:6], 1.0 / units.kB
    options = dict(temperature_K=temperature_K, timestep_fs=1.0, n_steps=60, interval=5, friction=0.02, seed=5)
    free = langevin_frames(seeds, committee_forces(committee), **options)
    largest = [np.sqrt(committee.predict(t)["energies"].var(0)).max() for t in free]
    threshold = float(np.median(largest))
    stopped = langevin_frames(seeds, committee_forces(committee), **options, stop_energy_std=threshold)
    reference = ase_langevin_frames(seeds, lambda: CommitteeCalculator(committee), **options,
                                    stop_energy_std=threshold)
    assert_same_frames(stopped, reference, 1e-10)
    ended = 0
    for trajectory, unstopped in zip(stopped, free):
        sigma = np.sqrt(committee.predict(trajectory)["energies"].var(0))
        assert np.all(sigma[:-1] <= threshold)  # no earlier frame passed it
        assert_same_frames([trajectory[:-1]], [unstopped[: len(trajectory) - 1]], 1e-10)  # until then: the free run
        ended += bool(sigma[-1] > threshold)
    assert ended >= 2 and any(len(t) == 12 for t in stopped), [len(t) for t in stopped]  # the others go on


@pytest.mark.parametrize("name", ["md", "udd", "biased_md"])
def test_batched_replicas_of_a_periodic_cell_equal_ase_langevin(name):
    """Three rattled Al cells (periodic images within the cutoff), not wrapped: frames as ASE's."""
    from ase.build import bulk

    committee = float32_schnet(species=(13,), cutoff=3.5)
    committee.fit_normalization(np.array([-13.0]), np.array([4]))
    seeds = []
    for k in range(3):
        atoms = bulk("Al", cubic=True)
        atoms.rattle(0.05, seed=k)
        seeds.append(atoms)
    options = dict(n_seeds=None, n_steps=20, interval=5, temperature_K=3000.0)
    sampler = make_sampler(name, **options, **({"stop_factor": None} if name != "md" else {}),
                           **({"burn_in_steps": 5, "window": 5} if name == "biased_md" else {}))
    objective = Objective(kT=0.1)
    proposal = sampler.propose(committee, seeds, np.array([-13.0]), objective, seed=0, progress=False)
    reference = ase_langevin_frames(seeds, lambda: reference_calculator(sampler, committee, objective), 3000.0,
                                    sampler.timestep_fs, 20, 5, sampler.friction)
    assert_same_frames(proposal.trajectories, reference)
    frames = [a for t in proposal.trajectories for a in t]
    assert len(frames) == 12 and all(a.pbc.all() and np.array_equal(a.cell, seeds[0].cell) for a in frames)
    assert any((a.get_scaled_positions(wrap=False) < 0).any() for a in frames)  # outside the cell: not wrapped


# -- the sampler table, methods and a System's typed settings ------------------------------------------
def test_make_sampler_finds_the_biased_samplers_with_only_the_samplers_module_imported():
    """udd / biased_md register themselves in advsample.biased_md; the table names that module, so
    make_sampler imports it on first use (samplers itself never imports its clients)."""
    import subprocess
    import sys

    code = ("import sys; from advsample.samplers import make_sampler; "
            "assert 'advsample.biased_md' not in sys.modules; "
            "s = make_sampler('udd', n_steps=7); b = make_sampler('biased_md', tau=0.5); "
            "print(type(s).__name__, s.n_steps, type(b).__name__, b.tau)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["UDDSampler", "7", "BiasedMDSampler", "0.5"]


def test_a_registered_sampler_is_a_method(monkeypatch):
    from dataclasses import dataclass

    from advsample import samplers
    from advsample.samplers import RandomDisplacementSampler, check_methods, register_sampler, sampler_names

    monkeypatch.setattr(samplers, "_TABLE", dict(samplers._TABLE))  # the table as it was after this test

    @dataclass
    class Jitter(RandomDisplacementSampler):
        name = "jitter_test"

    register_sampler("jitter_test", Jitter)
    assert "jitter_test" in sampler_names() and check_methods(["jitter_test"]) == ["jitter_test"]
    assert isinstance(make_sampler("jitter_test", displacement=0.2), Jitter)
    with pytest.raises(ValueError, match="_kT"):
        register_sampler("jitter_kT1", Jitter)


def test_mixed_sampler_proposes_every_part(trained_committee):
    committee, train, _ = trained_committee
    energies, _ = labels_of(train)
    mixed = make_sampler("mixed", share=0.5, attack={"n_steps": 10}, displacement=0.05)
    objective = Objective(kT=1.0)
    proposal = mixed.propose(committee, train[:4], energies, objective, seed=2, progress=False)
    parts = [s.propose(committee, train[:4], energies, objective, seed=2, progress=False) for s, _ in mixed.parts(10)]
    assert len(proposal.candidates) == sum(len(p.candidates) for p in parts) > len(parts[0].candidates) > 0
    assert proposal.attack is not None and proposal.attack.n_steps == 10
    np.testing.assert_allclose([a.positions for a in proposal.candidates],
                               [a.positions for p in parts for a in p.candidates])


@pytest.fixture(scope="module")
def toy_system():
    from advsample.systems import get_system

    return get_system("double_well_2d", smoke=True)


def test_a_systems_attack_and_md_settings_are_typed_and_checked(toy_system):
    from dataclasses import replace

    from advsample.samplers import AdversarialSampler, UncertaintyMDSampler

    system = replace(toy_system, attack={"n_steps": 13, "learning_rate": 0.03, "snapshot_every": 2},
                     md={"temperature_K": 500.0, "n_steps": 11})
    assert isinstance(system.attack, AdversarialSampler) and isinstance(system.md, UncertaintyMDSampler)
    attack = system.attack
    assert (attack.config.n_steps, attack.config.learning_rate, attack.snapshot_every) == (13, 0.03, 2)
    assert (system.md.temperature_K, system.md.n_steps, system.md.interval) == (500.0, 11, 5)  # the rest: defaults
    with pytest.raises(ValueError, match="attack: unknown option 'n_step'"):
        replace(toy_system, attack={"n_step": 13})
    with pytest.raises(ValueError, match="md: unknown option 'temperature'"):
        replace(toy_system, md={"temperature": 300.0})
    with pytest.raises(ValueError, match="system 'double_well_2d' attack: n_steps must be >= 1"):
        replace(toy_system, attack={"n_steps": 0})
    with pytest.raises(ValueError, match="unknown option 'kT'"):  # the objective's, not the attack's
        replace(toy_system, attack={"kT": 1.0})


@pytest.mark.parametrize("method", ["adversarial", "md", "udd", "biased_md", "md_attack", "mixed", "random_scored"])
def test_a_method_name_builds_the_sampler_with_the_systems_settings(toy_system, method, tmp_path):
    from dataclasses import replace

    from advsample.loop import ActiveLearning

    system = replace(toy_system, attack={"n_steps": 17, "n_seeds": 3}, md={"temperature_K": 432.0, "n_steps": 9},
                     displacement=0.07)
    run = ActiveLearning.from_system(system, tmp_path / method, method, progress=False)
    parts = [s for s, _ in run.sampler.parts(100)]
    for part in parts:
        attack = getattr(part, "attack", part)  # SeededAttackSampler holds the attack
        if hasattr(attack, "config"):
            assert (attack.config.n_steps, attack.n_seeds) == (17, 3)
        if hasattr(part, "temperature_K"):
            assert (part.temperature_K, part.n_steps) == (432.0, 9)
        if hasattr(part, "displacement"):
            assert part.displacement == 0.07
    assert type(run.sampler).__name__ == type(make_sampler(method)).__name__
    assert run.objective.kT == system.kT
    sweep = ActiveLearning.from_system(system, tmp_path / "sweep", "adversarial_kT0.37", progress=False)
    assert sweep.objective.kT == 0.37 and sweep.sampler.config.n_steps == 17
    given = make_sampler("adversarial", n_steps=2)  # a Sampler instance is used as given
    assert ActiveLearning.from_system(system, tmp_path / "given", given, progress=False).sampler is given
    with pytest.raises(TypeError, match="needs a System"):
        ActiveLearning.from_system("double_well_2d", tmp_path / "name", "adversarial")


def test_bond_stretch_pulls_one_h_along_its_bond_and_scores_it():
    """Each candidate is its seed with one N–H bond longer by 0.3–1.2 Å, the H moved alone along the bond;
    scored once by the objective; seeded; a seed with no such bond is refused by name."""
    from ase.build import molecule

    from advsample.samplers import BondStretchSampler
    from advsample.systems.ammonia import schnet_committee

    committee = schnet_committee(n_members=2, n_features=8)
    seeds = [molecule("NH3") for _ in range(3)]
    for k, atoms in enumerate(seeds):
        atoms.rattle(0.02, seed=k)
    energies = np.zeros(len(seeds))
    sampler = make_sampler("bond_stretch", n_per_seed=4)
    assert isinstance(sampler, BondStretchSampler)
    proposal = sampler.propose(committee, seeds, energies, Objective(kT=0.1), seed=3, progress=False)
    candidates = proposal.candidates
    assert len(candidates) == 12 and candidates.source == "bond_stretch"
    for k, atoms in enumerate(candidates):
        seed = seeds[k // 4]
        moved = np.flatnonzero(np.linalg.norm(atoms.positions - seed.positions, axis=1) > 1e-9)
        assert len(moved) == 1 and atoms.numbers[moved[0]] == 1  # one H, nothing else
        h = moved[0]
        stretch = atoms.get_distance(0, h) - seed.get_distance(0, h)
        assert 0.3 - 1e-9 <= stretch <= 1.2 + 1e-9
        direction = (atoms.positions[h] - seed.positions[h]) / np.linalg.norm(atoms.positions[h] - seed.positions[h])
        bond = (seed.positions[h] - seed.positions[0]) / seed.get_distance(0, h)
        assert direction @ bond == pytest.approx(1.0)  # along the N→H bond
    fresh = Objective(kT=0.1).bind(energies).score(committee, candidates.structures)
    np.testing.assert_allclose(candidates.score, fresh.score, rtol=1e-4, atol=1e-6)
    again = sampler.propose(committee, seeds, energies, Objective(kT=0.1), seed=3, progress=False)
    np.testing.assert_allclose([a.positions for a in candidates], [a.positions for a in again.candidates])
    with pytest.raises(ValueError, match="no seed has a bond"):
        BondStretchSampler(moved_numbers=(6,)).propose(committee, seeds, energies, Objective(kT=0.1), progress=False)
    with pytest.raises(ValueError, match="stretch_A"):
        BondStretchSampler(stretch_A=(1.0, 0.5))
