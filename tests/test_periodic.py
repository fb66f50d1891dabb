"""Periodic structures: minimum-image selection descriptor and stability checks; the adatom system."""
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.emt import EMT

from advsample.committee import Committee
from advsample.metrics import StabilityCheck, md_stability
from advsample.models.schnet import SchNetCommittee
from advsample.objective import Objective
from advsample.select import SelectionConfig, descriptor, select
from advsample.systems.adatom import adatom_slab, hop_endpoints


@pytest.fixture(scope="module")
def endpoints():
    """The adatom relaxed (EMT) in its hollow and in the next hollow along x."""
    return hop_endpoints(EMT())


@pytest.fixture(scope="module")
def slab_committee():
    return Committee(SchNetCommittee(n_members=2, species=(13, 79), n_features=8, n_interactions=1, seed=0))


def across_the_edge(slab: Atoms, gap: float) -> Atoms:
    """The slab with the adatom put ``gap`` Å from an Al atom's image across the x cell edge."""
    atoms = slab.copy()
    top = atoms.positions[:-1, 2].max()
    al = int(np.flatnonzero(np.isclose(atoms.positions[:-1, 2], top))[0])  # a free top-layer Al
    atoms.positions[al, 0] = 0.05
    atoms.positions[-1] = atoms.positions[al] + [atoms.cell[0, 0] - gap, 0.0, 0.0]  # x = L + 0.05 - gap
    return atoms


def test_descriptor_uses_minimum_image_distances(endpoints):
    start, _ = endpoints
    shifted = start.copy()
    shifted.positions[-1] += start.cell[0]  # the same structure: the adatom moved by a lattice vector
    assert np.allclose(descriptor(shifted), descriptor(start))
    wrapped = start.copy()
    wrapped.wrap()
    assert np.allclose(descriptor(wrapped), descriptor(start))
    # the molecule rule is unchanged: a non-periodic copy sees the shift
    molecule = shifted.copy()
    molecule.pbc = False
    assert not np.allclose(descriptor(molecule), descriptor(start))


def test_selection_distance_filter_sees_a_duplicate_across_the_edge(endpoints):
    start, end = endpoints
    copy = start.copy()
    copy.positions[-1] += start.cell[1]  # the training structure again, one cell over
    candidates = []
    for atoms, variance in ((copy, 2.0), (end, 1.0)):
        atoms = atoms.copy()
        atoms.info.update(committee_energy=0.0, committee_variance=variance, log_score=np.log(variance))
        candidates.append(atoms)
    config = SelectionConfig(budget=1, min_distance=0.01, uncertainty_percentile=None)
    ranked, report = select(candidates, [start], config, Objective(0.1), 0.0)
    assert report["dropped_distance"] == 1
    assert ranked[0] is candidates[1]  # the other hollow first, the duplicate only as a last resort


def test_a_contact_across_the_cell_edge_is_a_collapse(endpoints, slab_committee):
    start, _ = endpoints
    contact = across_the_edge(start, gap=0.45)
    al = int(np.argmin(contact.get_distances(len(contact) - 1, range(len(contact) - 1), mic=True)))
    assert np.linalg.norm(contact.positions[-1] - contact.positions[al]) > 5.0  # far apart without images
    assert "collapsed" in StabilityCheck(start).failure(contact)
    result = md_stability(slab_committee, [contact], temperature_K=300, n_runs=1, n_steps=3)
    assert result["md_stable_fraction"] == 0.0
    assert "collapsed" in result["failures"][0] and "Al" in result["failures"][0]
    assert result["steps_completed"] == [0] and result["time_to_failure_fs"] == [0.0]


def test_a_hop_is_not_a_failure_but_leaving_the_surface_is():
    from ase.build import add_adsorbate, fcc100
    from ase.constraints import FixAtoms
    from ase.optimize import BFGS

    def relaxed(atoms):
        atoms = atoms.copy()
        atoms.calc = EMT()
        BFGS(atoms, logfile=None).run(fmax=0.05, steps=100)
        atoms.calc = None
        return atoms

    slab = fcc100("Al", size=(4, 2, 3))  # long enough along x that the next hollow has other neighbours
    add_adsorbate(slab, "Au", 1.7, "hollow")
    slab.center(axis=2, vacuum=4.0)
    slab.set_constraint(FixAtoms(mask=[atom.tag > 1 for atom in slab]))
    start = relaxed(slab)
    moved = start.copy()
    moved.positions[-1, 0] += start.cell[0, 0] / 4  # one hollow along x
    end = relaxed(moved)
    au = len(start) - 1
    before = start.get_distances(au, range(au), mic=True)
    after = end.get_distances(au, range(au), mic=True)
    bonded_before, bonded_after = before < 3.0, after < 3.0
    # a hop: two of the four Au-Al bonds replaced by two others, the old ones stretched beyond 1.5x
    assert bonded_before.sum() == 4 and bonded_after.sum() == 4 and (bonded_before & bonded_after).sum() == 2
    assert (after[bonded_before] / before[bonded_before]).max() > 1.5
    check = StabilityCheck(start)
    assert check.failure(end) is None
    gone = start.copy()
    gone.positions[-1, 2] += 5.0  # desorbed into the vacuum
    assert "isolated" in check.failure(gone) and f"Au{au}" in check.failure(gone)


def test_a_molecule_that_splits_in_two_fragments():
    chain = Atoms("H4", positions=[[0, 0, 0], [0.7, 0, 0], [1.4, 0, 0], [2.1, 0, 0]])  # bonds < 1.2 x 0.62 Å
    check = StabilityCheck(chain)
    split = chain.copy()
    split.positions[2:] += [3.0, 0, 0]  # each H2 intact, the chain broken
    reason = check.failure(split)
    assert reason is not None and "fragmented" in reason
    assert check.failure(chain) is None


def test_fixed_atoms_stay_fixed_in_md_and_frames_keep_the_cell(endpoints, slab_committee):
    start, _ = endpoints
    result = md_stability(slab_committee, [start], temperature_K=450, n_runs=2, n_steps=6, timestep_fs=1.0,
                          frames_every=3, min_distance=0.0, bond_stretch=10.0)
    fixed = start.constraints[0].index
    assert len(fixed) == 8
    for frames in result["frames"]:
        assert len(frames) == 3  # steps 0, 3, 6
        last = frames[-1]
        assert np.array_equal(last.positions[fixed], start.positions[fixed])
        assert not np.allclose(last.positions[-1], start.positions[-1])  # the free atoms moved
        assert np.allclose(last.cell, start.cell) and list(last.pbc) == [True, True, False]
        assert [type(c).__name__ for c in last.constraints] == ["FixAtoms"]


def test_reference_check_on_the_slab_counts_its_calls(endpoints, slab_committee):
    start, _ = endpoints
    result = md_stability(slab_committee, [start], temperature_K=300, n_runs=1, n_steps=4, reference=EMT(),
                          energy_tolerance_eV=0.2, n_check_frames=2)
    # an untrained committee is eV away from EMT: the first checked frame fails
    assert result["md_stable_fraction"] == 0.0 and "off the reference" in result["failures"][0]
    assert result["md_reference_calls"] == 1 and result["time_to_failure_fs"] == [2 * 0.5]


def test_adatom_slab_is_the_neb_tutorial_system():
    slab = adatom_slab()
    assert slab.get_chemical_formula() == "Al12Au" and list(slab.pbc) == [True, True, False]
    assert len(slab.constraints[0].index) == 8  # bottom two of three layers


def test_adatom_system_runs_a_round_of_active_learning(tmp_path):
    from ase.io import read

    from advsample.loop import ActiveLearning
    from advsample.samplers import make_sampler
    from advsample.systems import get_system

    system = get_system("adatom", smoke=True)
    assert system.subsets == {"hop_path": 5, "thermal": 2}
    assert abs(system.subset("hop_path")[0].get_potential_energy() - system.initial[0].get_potential_energy()) < 1.0
    run = ActiveLearning.from_system(system, tmp_path, make_sampler("adversarial", n_steps=5), progress=False)
    records = run.run(1)
    last = records[-1].metrics
    assert last["labels_used"] == system.selection.budget and last["reference_calls"] >= system.selection.budget
    extra = last["extra"]
    for metric in system.metrics:
        assert np.isfinite(extra[metric.name]) or metric.name == "barrier_error_eV"
    assert abs(extra["barrier_reference_eV"] - 0.374) < 0.002  # EMT, ASE NEB with 3 images
    assert 0.0 <= extra["md_stable_fraction"] <= 1.0
    saved = read(tmp_path / "round_001" / "selected.extxyz", ":")
    assert all(list(a.pbc) == [True, True, False] and np.allclose(a.cell, system.initial[0].cell) for a in saved)
    assert all(len(a.constraints) == 1 and len(a.constraints[0].index) == 8 for a in saved)


def test_a_cell_attack_round_labels_strained_slabs(tmp_path):
    from ase.io import read

    from advsample.loop import ActiveLearning
    from advsample.samplers import make_sampler
    from advsample.systems import get_system

    system = get_system("adatom", smoke=True)
    sampler = make_sampler("adversarial", n_steps=5, strain_learning_rate=0.005, max_strain=0.03)
    ActiveLearning.from_system(system, tmp_path, sampler, progress=False).run(1)
    saved = read(tmp_path / "round_001" / "selected.extxyz", ":")
    cell = system.initial[0].cell.array
    assert all(np.allclose(a.cell[2], cell[2]) for a in saved)  # no strain along the vacuum
    assert any(not np.allclose(a.cell[:2], cell[:2]) for a in saved)  # the in-plane lattice was attacked
    assert all(np.abs(np.linalg.solve(cell, a.cell.array) - np.eye(3)).max() <= 0.03 + 1e-6 for a in saved)


def test_notebook_05_runs_in_smoke_mode(smoke_run):
    """The notebook's smoke run (shared with tests/test_notebooks.py: conftest.smoke_run) and what it measured."""
    from pathlib import Path

    nbformat = pytest.importorskip("nbformat")
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "05_periodic.ipynb"
    committed = nbformat.read(notebook, as_version=4)
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", []) and "smoke: bool = False" in code[0].source
    executed, summary, _ = smoke_run("05_periodic")
    assert summary["notebook"] == "05_periodic" and summary["smoke"] is True and summary["labels_used"] == 2
    assert len(summary["md_stable_fraction"]) == 2 and summary["barrier_reference_eV"] == pytest.approx(0.374, abs=2e-3)
    images = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # slab views, σ on the path, attack strip, NEB profiles, survival curves


def test_silica_sodalite_is_the_iza_framework_with_water_in_the_cage():
    from ase.neighborlist import neighbor_list

    from advsample.systems.sodalite import silica_sodalite, water_in_sodalite, window_direction

    host = silica_sodalite()
    assert host.get_chemical_formula() == "O24Si12" and host.pbc.all()
    i, j, d = neighbor_list("ijd", host, 2.0)
    numbers = host.numbers
    assert np.allclose(d, 1.607, atol=2e-3)  # every Si–O bond, minimum image
    assert set(np.bincount(i, minlength=len(host))[numbers == 14]) == {4}  # SiO4 tetrahedra
    assert set(np.bincount(i, minlength=len(host))[numbers == 8]) == {2}  # bridging oxygens
    cell = water_in_sodalite(rotation_seed=3)
    distances = cell.get_all_distances(mic=True)[36:, :36]
    assert distances.min() > 2.5  # the guest sits in the cage, clear of the framework
    pushed = water_in_sodalite(1.5 * window_direction())
    assert pushed.get_all_distances(mic=True)[36:, :36].min() < distances.min()  # towards a six-ring


def test_sodalite_reference_is_periodic_gfn1_xtb():
    pytest.importorskip("tblite")
    from advsample.systems.sodalite import REFERENCE, water_in_sodalite

    from advsample.label import label_structures

    result = label_structures([water_in_sodalite()], REFERENCE, progress=False)
    assert not result.failures
    forces = result.labeled[0].get_forces()
    assert np.isfinite(forces).all() and abs(forces.sum(0)).max() < 1e-3  # Newton's third law in the cell
