"""Batched NN-MD: equal to ASE's integrators replica by replica, energy conservation, replicas that stop alone."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.md import velocitydistribution as velocities
from ase.md.langevin import Langevin
from ase.md.verlet import VelocityVerlet

from advsample.calculator import CommitteeCalculator
from advsample.committee import Committee
from advsample.dynamics import (committee_force_fn, langevin, make_replicas, nve, run_stability)
from advsample.geometry import GeometryError
from advsample.metrics import md_stability
from advsample.models.schnet import SchNetCommittee
from advsample.systems.adatom import adatom_slab

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def committee():
    torch.manual_seed(0)
    model = SchNetCommittee(n_members=3, species=(1, 7, 8, 13, 79), n_features=8, n_interactions=1, cutoff=4.0, seed=0)
    return Committee(model).double()


@pytest.fixture(scope="module")
def starts():
    """A molecule, a periodic slab with FixAtoms (13 atoms, pbc T T F) and a second molecule of another size."""
    return [molecule("NH3"), adatom_slab(), molecule("H2O")]


def ase_trajectory(committee, start, k, seed, integrator, n_steps, temperature_K, timestep_fs, friction=0.02):
    """Positions [n_steps + 1, n, 3] of one ASE run seeded as replica k of make_replicas."""
    system = start.copy()
    rng = np.random.default_rng([seed, k])
    velocities.thermalize_momenta(system, temperature_K=temperature_K, rng=rng)
    if not system.constraints and not system.pbc.any():
        velocities.Stationary(system)
        velocities.ZeroRotation(system)
    system.calc = CommitteeCalculator(committee)
    if integrator == "nve":
        dynamics = VelocityVerlet(system, timestep=timestep_fs * units.fs)
    else:
        dynamics = Langevin(system, timestep=timestep_fs * units.fs, temperature_K=temperature_K, friction=friction,
                            fixcm=False, rng=rng)
    frames = []
    for _ in dynamics.irun(steps=n_steps):
        frames.append(system.positions.copy())
    return np.array(frames), system.get_potential_energy()


@pytest.mark.parametrize("integrator", ["nve", "langevin"])
def test_batched_md_equals_single_ase_runs(committee, starts, integrator):
    n_steps, temperature_K, timestep_fs, seed = 15, 600.0, 0.5, 3
    replicas = make_replicas(starts, 4, temperature_K, seed)  # replica 3 is another NH3 with its own seed
    force_fn = committee_force_fn(committee)
    if integrator == "nve":
        init_fn, step_fn = nve(force_fn, replicas, timestep_fs)
    else:
        init_fn, step_fn = langevin(force_fn, replicas, timestep_fs, temperature_K, 0.02)
    state = init_fn()
    batched = [state.positions.numpy().copy()]
    for _ in range(n_steps):
        state = step_fn(state)
        batched.append(state.positions.numpy().copy())
    batched = np.array(batched)  # [steps + 1, N, 3]
    assert state.live.all() and state.steps.tolist() == [n_steps] * 4
    for k in range(4):
        mine = replicas.owner == k
        reference, energy = ase_trajectory(committee, starts[k % 3], k, seed, integrator, n_steps, temperature_K,
                                           timestep_fs)
        assert np.abs(batched[:, mine] - reference).max() < 1e-9, f"replica {k}"
        assert float(state.energies[k]) == pytest.approx(energy, abs=1e-9)
        assert np.abs(reference[-1] - reference[0]).max() > 1e-3  # they did move
    slab = replicas.owner == 1
    held = starts[1].constraints[0].index
    assert np.array_equal(batched[-1, slab][held], starts[1].positions[held])  # FixAtoms kept


def emt_force_fn(batch):
    """EMT energies and forces of every structure of a batch (a real reference for energy conservation)."""
    energies, forces = [], []
    for atoms in batch.to_atoms():
        atoms.calc = EMT()
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
    return torch.tensor(energies, dtype=torch.float64), torch.as_tensor(np.concatenate(forces))


def max_drift_per_atom(step_maker, n_steps=100):
    cells = [bulk("Cu", cubic=True).repeat((2, 2, 1)), bulk("Al", cubic=True).repeat((1, 1, 2))]  # 16 and 8 atoms
    replicas = make_replicas(cells, 2, temperature_K=600.0, seed=1)
    init_fn, step_fn = step_maker(emt_force_fn, replicas, 2.0)
    state = init_fn()
    total0 = (state.energies + state.kinetic_energy(replicas)).numpy()
    n_atoms = np.array([16, 8])
    drift = 0.0
    for _ in range(n_steps):
        state = step_fn(state)
        total = (state.energies + state.kinetic_energy(replicas)).numpy()
        drift = max(drift, np.abs((total - total0) / n_atoms).max())
    assert state.live.all()
    return drift


def broken_nve(force_fn, replicas, timestep_fs):
    """Velocity Verlet with the second half kick left out: the kind of bug the drift test must catch."""
    init_fn, step_fn = nve(force_fn, replicas, timestep_fs)
    dt = timestep_fs * units.fs

    def step(state):
        state = step_fn(state)
        state.momenta = state.momenta - 0.5 * dt * state.forces
        return state

    return init_fn, step


def test_nve_conserves_the_emt_energy_of_periodic_cells():
    # 2 fs, 100 steps, 600 K on fcc Cu and Al with EMT: the total energy stays within 2 meV/atom
    bound = 2e-3
    assert max_drift_per_atom(nve) < bound
    assert max_drift_per_atom(broken_nve) > 10 * bound  # a wrong half step breaks the bound by far


def test_nve_drift_bound_and_replicas_that_stop_alone(committee, starts):
    # the NH3 with one H far away is isolated at step 0; the others keep going
    far = molecule("NH3")
    far.positions[3] += [0.0, -3.0, 0.0]
    result = run_stability(committee, [starts[0], far, starts[1]], n_replicas=3, n_steps=20, temperature_K=300,
                           check_every=5)
    assert result["steps_completed"] == [20, 0, 20]
    assert result["time_to_failure_fs"] == [None, 0.0, None]
    assert "isolated" in result["failures"][0] and result["n_stable"] == 2
    assert result["md_stable_fraction_summary"] == "0.67 [0.21, 0.94] (n=3)"
    assert result["md_stable_fraction_interval"] == pytest.approx([0.2077, 0.9385], abs=1e-4)
    tight = run_stability(committee, starts[:1], n_replicas=2, n_steps=20, temperature_K=1000,
                          max_drift_eV_per_atom=1e-9, check_every=5)
    assert tight["n_stable"] == 0 and all("drifted" in reason for reason in tight["failures"])
    assert tight["steps_completed"] == [5, 5]  # found at the first checked step


def test_a_replica_the_model_refuses_mid_run_stops_alone(committee, starts):
    """Replica 1 (H2O, 3 atoms) is refused from its 6th evaluation on; the others equal an undisturbed run."""
    base = committee_force_fn(committee)
    calls = {"n": 0}

    def refusing(batch):
        calls["n"] += 1
        if calls["n"] > 5:
            sizes = batch.n_atoms.tolist()
            if 3 in sizes:
                raise GeometryError("refused for the test", [sizes.index(3)])
        return base(batch)

    kwargs = dict(n_replicas=3, n_steps=12, temperature_K=400, integrator="langevin", frames_every=4, check_every=1)
    water_second = [starts[0], starts[2], starts[1]]
    disturbed = run_stability(committee, water_second, force_fn=refusing, **kwargs)
    undisturbed = run_stability(committee, water_second, **kwargs)
    assert disturbed["steps_completed"] == [12, 4, 12] and "refused for the test" in disturbed["failures"][0]
    assert undisturbed["n_stable"] == 3
    for k in (0, 2):
        for a, b in zip(disturbed["frames"][k], undisturbed["frames"][k]):
            assert np.allclose(a.positions, b.positions, atol=1e-12)
    assert len(disturbed["frames"][0]) == 4 and len(disturbed["frames"][1]) == 3  # steps 0, 4 and the refused one


def test_batched_checks_agree_with_one_check_per_replica(starts):
    """The checks of all replicas at once (dense distances for molecules, one graph for all) give
    each replica the reason its own StabilityCheck gives, on geometries rattled from intact to broken."""
    from advsample.dynamics import MDState, StabilityCheck, _Monitor

    chain = Atoms("H4", positions=[[0, 0, 0], [0.7, 0, 0], [1.4, 0.1, 0], [2.1, 0, 0]])  # bonds < 1.2 x 0.62 Å
    shapes = [*starts, chain]
    replicas = make_replicas(shapes, 48, 300.0)
    rng = np.random.default_rng(4)
    scale = np.repeat(np.linspace(0.0, 1.2, 48), np.bincount(replicas.owner))[:, None]
    positions = replicas.batch.positions.numpy() + scale * rng.normal(size=replicas.batch.positions.shape)
    positions[replicas.owner == 3] += np.array([[0, 0, 0], [0, 0, 0], [3.0, 0, 0], [3.0, 0, 0]])  # two H2: split
    n = replicas.n_replicas
    state = MDState(positions=torch.as_tensor(positions), momenta=torch.zeros(len(positions), 3),
                    forces=torch.zeros(len(positions), 3), energies=torch.zeros(n, dtype=torch.float64),
                    live=np.ones(n, dtype=bool), steps=np.zeros(n, dtype=int), reasons=[None] * n, step=1)
    _Monitor(replicas, shapes, 10, 1, set(), (1.5, 1.2, 0.6), None, 0.5, None, None)._geometry(state)
    expected = []
    for k in range(n):
        frame = shapes[k % 4].copy()
        frame.positions = positions[replicas.owner == k]
        expected.append(StabilityCheck(shapes[k % 4]).failure(frame))
    assert state.reasons == expected
    kinds = {reason.split(":")[0] for reason in expected if reason}
    assert {"atoms collapsed", "atom isolated", "fragmented"} <= kinds and expected.count(None) >= 4


def test_a_run_from_a_distorted_frame_is_judged_by_the_bonds_of_its_minimum():
    """Ethane with one CH3 pulled 1.5 Å off: by its own geometry the C–C pair is no bond (each methyl intact, no
    failure); judged by the bonds of the minimum it came from (bonds_from), the molecule is fragmented at step 0."""
    ethane = molecule("C2H6")
    pulled = ethane.copy()
    carbon = [k for k, z in enumerate(ethane.numbers) if z == 6]
    axis = ethane.positions[carbon[1]] - ethane.positions[carbon[0]]
    second = [k for k in range(len(ethane)) if k == carbon[1] or (ethane.numbers[k] == 1 and np.linalg.norm(
        ethane.positions[k] - ethane.positions[carbon[1]]) < 1.3)]
    pulled.positions[second] += 1.5 * axis / np.linalg.norm(axis)

    def still(batch):  # no forces: the frame stays where it is
        return torch.zeros(batch.n_structures, dtype=torch.float64), torch.zeros(len(batch.positions), 3)

    own = run_stability(None, [pulled], n_replicas=1, n_steps=1, temperature_K=0.0, force_fn=still)
    judged = run_stability(None, [pulled], n_replicas=1, n_steps=1, temperature_K=0.0, force_fn=still,
                           bonds_from=[ethane])
    assert own["n_stable"] == 1
    assert judged["n_stable"] == 0 and "fragmented: C" in judged["failures"][0] and "step 0" in judged["failures"][0]
    with pytest.raises(ValueError, match="bonds_from"):
        run_stability(None, [pulled], n_replicas=1, n_steps=1, force_fn=still, bonds_from=[molecule("CH4")])


def test_bad_input_is_named_before_any_md(committee, starts):
    with pytest.raises(ValueError, match="integrator"):
        run_stability(committee, starts, n_replicas=2, integrator="verlet")
    with pytest.raises(ValueError, match="check_every"):
        run_stability(committee, starts, n_replicas=2, check_every=0)
    with pytest.raises(ValueError, match="n_runs and n_steps"):
        run_stability(committee, starts, n_replicas=0)
    with pytest.raises(ValueError, match="start geometry"):
        run_stability(committee, [], n_replicas=2)
    with pytest.raises(ValueError, match="timestep_fs"):
        nve(committee_force_fn(committee), make_replicas(starts, 1, 300.0), 0.0)


def test_chunked_evaluation_equals_one_call_on_periodic_cells(committee):
    """Chunks of whole structures (at most 30 atoms: slab 13, Al bulk 32 alone) give the energies and
    forces of one call to 1e-10, and an NVE run chunked equals the unchunked one."""
    from advsample.dynamics import chunk_bounds
    from advsample.structures import Batch

    rng = np.random.default_rng(3)
    cells = [adatom_slab(), bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 2, 2)), adatom_slab(), adatom_slab()]
    for atoms in cells:
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
    batch = Batch.from_atoms(cells)
    whole = committee_force_fn(committee)(batch)
    for limit in (1, 13, 30, 45):
        bounds = chunk_bounds(batch.n_atoms.numpy(), limit)
        assert [lo for lo, _ in bounds] == [0] + [hi for _, hi in bounds[:-1]] and bounds[-1][1] == 4
        parts = committee_force_fn(committee, max_atoms_per_call=limit)(batch)
        assert parts[0].shape == whole[0].shape and parts[1].shape == whole[1].shape
        assert torch.allclose(parts[0], whole[0], atol=1e-10, rtol=0) and torch.allclose(parts[1], whole[1], atol=1e-10,
                                                                                         rtol=0)
    assert chunk_bounds(batch.n_atoms.numpy(), 30) == [(0, 1), (1, 2), (2, 4)]  # 13 | 32 alone | 13 + 13
    kwargs = dict(n_replicas=4, n_steps=6, temperature_K=600, frames_every=3, check_every=1)
    one, chunks = (run_stability(committee, cells[:2], max_atoms_per_call=m, **kwargs) for m in (None, 20))
    assert one["steps_completed"] == chunks["steps_completed"]
    for a, b in zip(sum(one["frames"], []), sum(chunks["frames"], [])):
        assert np.allclose(a.positions, b.positions, atol=1e-10, rtol=0)


def test_chunked_geometry_error_names_the_whole_batch_index_and_bad_limits(committee):
    from advsample.dynamics import chunked
    from advsample.structures import Batch

    def refuse_slabs(batch):
        sizes = batch.n_atoms.tolist()
        if 13 in sizes:
            raise GeometryError("slab refused", [sizes.index(13)])
        return committee_force_fn(committee)(batch)

    batch = Batch.from_atoms([molecule("NH3"), molecule("H2O"), adatom_slab()])
    with pytest.raises(GeometryError) as error:
        chunked(refuse_slabs, 7)(batch)  # chunks: NH3+H2O (7 atoms) | slab
    assert error.value.structures == [2]
    for bad in (0, -3, 2.5, True, "64"):
        with pytest.raises(ValueError, match="max_atoms_per_call"):
            run_stability(committee, [molecule("NH3")], n_replicas=2, n_steps=1, max_atoms_per_call=bad)


def test_md_speed_benchmark_quick(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "md_speed.py"), "--quick", "--json"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads(process.stdout.strip().splitlines()[-1])
    assert {"machine", "systems", "replicas"} <= set(result)
    for system in result["systems"].values():
        for row in system["rows"]:
            assert {"replicas", "batched_replica_steps_per_s", "bare_replica_steps_per_s", "ase_replica_steps_per_s",
                    "speedup_vs_ase", "overhead_vs_bare", "peak_memory_MiB"} <= set(row)
            assert row["batched_replica_steps_per_s"] > 0 and row["overhead_vs_bare"] > 0


# -- compile=True: the committee evaluated through torch.compile(dynamic=True) ---------------------
@pytest.fixture(scope="module")
def small_float32_committee():
    """The smallest committee worth compiling: 2 members x 8 features, 1 interaction, float32."""
    return Committee(SchNetCommittee(n_members=2, species=(13, 79), n_features=8, n_interactions=1, cutoff=4.0,
                                     seed=1))


def nve_positions(force_fn, replicas, n_steps):
    init_fn, step_fn = nve(force_fn, replicas, 0.5)
    state = init_fn()
    for _ in range(n_steps):
        state = step_fn(state)
    assert state.live.all()
    return state.positions.numpy(), state.forces.numpy()


@pytest.mark.slow
def test_compiled_nve_equals_eager_on_periodic_cells(small_float32_committee):
    """compile=True: 3 slab replicas (13 atoms, pbc T T F, 8 fixed), 20 NVE steps at 600 K give the
    eager trajectory to 1e-4 A (float32) and its forces; a second force function of the same
    committee, other replica counts and pair counts do not recompile. Compiling costs tens of
    seconds (cold cache): marked slow, it still runs."""
    import warnings

    from torch._dynamo.utils import counters

    from advsample.structures import Batch

    committee = small_float32_committee
    replicas = make_replicas([adatom_slab()], 3, 600.0, seed=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        compiled = committee_force_fn(committee, compile=True)
        compiled(replicas.batch)  # the first call compiles
    failed = [str(w.message) for w in caught if "compile=True" in str(w.message)]
    if failed:
        pytest.skip(f"torch.compile cannot build here: {failed[0]}")
    graphs = counters["stats"]["unique_graphs"]
    positions, forces = nve_positions(compiled, replicas, 20)
    eager_positions, eager_forces = nve_positions(committee_force_fn(committee), replicas, 20)
    assert np.abs(positions - eager_positions).max() < 1e-4  # Å after 20 steps (measured: 4e-11)
    assert np.abs(forces - eager_forces).max() < 1e-4  # eV/Å, forces at the end (measured: 3e-8)
    rng = np.random.default_rng(0)
    moved = Batch.from_atoms([adatom_slab()] * 4)
    moved = moved.with_positions(moved.positions + torch.as_tensor(rng.normal(0, 0.1, moved.positions.shape)))
    energies, forces = committee_force_fn(committee, compile=True)(moved)
    eager_energies, eager_forces = committee_force_fn(committee)(moved)
    assert torch.allclose(energies, eager_energies, atol=1e-4, rtol=0)  # eV
    assert torch.allclose(forces, eager_forces, atol=1e-5, rtol=0)  # eV/Å at the same positions
    one = Batch.from_atoms([adatom_slab()])  # one structure: evaluated eagerly, not compiled for size 1
    assert all(torch.equal(x, y) for x, y in zip(committee_force_fn(committee, compile=True)(one),
                                                 committee_force_fn(committee)(one)))
    assert counters["stats"]["unique_graphs"] == graphs  # nothing compiled again


def test_compile_falls_back_to_eager_with_one_warning(committee, monkeypatch):
    """A compiler that fails on the first call (as with no C++ compiler) or a torch.compile that is
    unavailable: one warning naming the reason, then the eager results, run to the end."""
    from advsample import dynamics

    def failing_compile(fn, dynamic=None):
        def compiled(*args, **kwargs):
            raise RuntimeError("InductorError: no working C++ compiler found (simulated)")
        return compiled

    def unavailable(fn, dynamic=None):
        raise RuntimeError("Dynamo is not supported on this Python (simulated)")

    kwargs = dict(n_replicas=3, n_steps=8, temperature_K=600.0, frames_every=8, seed=2)
    eager = run_stability(committee, [adatom_slab()], **kwargs)
    for fake, reason in ((failing_compile, "no working C\\+\\+ compiler"), (unavailable, "unavailable")):
        monkeypatch.setattr(dynamics, "_COMPILED_ENERGIES", {})
        monkeypatch.setattr(dynamics, "_COMPILE_FAILED", __import__("weakref").WeakKeyDictionary())
        monkeypatch.setattr(torch, "compile", fake)
        with pytest.warns(RuntimeWarning, match=reason) as caught:
            result = run_stability(committee, [adatom_slab()], compile=True, **kwargs)
            run_stability(committee, [adatom_slab()], compile=True, **kwargs)  # remembered: no second warning
        assert len([w for w in caught if "compile=True" in str(w.message)]) == 1
        assert result["steps_completed"] == eager["steps_completed"] == [8] * 3
        for a, b in zip(sum(result["frames"], []), sum(eager["frames"], [])):
            assert np.array_equal(a.positions, b.positions)
    with pytest.raises(ValueError, match="compile must be True or False"):
        committee_force_fn(committee, compile="yes")
    with pytest.raises(ValueError, match="compile must be True or False"):  # md_stability passes it on
        md_stability(committee, [adatom_slab()], n_runs=2, n_steps=2, compile="yes")
    with pytest.raises(ValueError, match="force_fn"):
        run_stability(committee, [adatom_slab()], n_replicas=2, compile=True, force_fn=committee_force_fn(committee))
