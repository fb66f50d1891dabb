"""NH3 inversion: the notebook under papermill (smoke), md_stability, the attack's reach, viz fallbacks."""
import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from advsample.committee import Committee
from advsample.metrics import md_stability
from advsample.models.schnet import SchNetCommittee
from advsample.systems.ammonia import MIN_HEIGHT_A

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "03_ammonia_inversion.ipynb"
SUMMARY_KEYS = {
    "barrier_error_kcal_mol_initial", "barrier_error_kcal_mol_final", "min_abs_height_round1_A",
    "md_stable_initial", "md_stable_final", "labels_used", "smoke",
}


def nh3(h_far: float | None = None) -> Atoms:
    """Pyramidal NH3 (N–H 1.01 Å); with ``h_far`` the last H sits that far from N."""
    positions = [[0.0, 0.0, 0.38], [0.94, 0.0, 0.0], [-0.47, 0.814, 0.0], [-0.47, -0.814, 0.0]]
    atoms = Atoms("NH3", positions=positions)
    if h_far is not None:
        atoms.positions[3] = atoms.positions[0] + np.array([0.0, -h_far, 0.0])
    return atoms


@pytest.fixture(scope="module")
def tiny_committee():
    return Committee(SchNetCommittee(n_members=2, n_features=8, n_interactions=1, seed=0))


class ConstantEnergy(Calculator):
    implemented_properties = ["energy", "forces"]

    def __init__(self, energy, **kwargs):
        super().__init__(**kwargs)
        self.energy = energy

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": self.energy, "forces": np.zeros((len(self.atoms), 3))}


def test_md_stability_returns_a_seeded_fraction(tiny_committee):
    first = md_stability(tiny_committee, [nh3()], temperature_K=300, n_runs=3, n_steps=15, seed=1)
    again = md_stability(tiny_committee, [nh3()], temperature_K=300, n_runs=3, n_steps=15, seed=1)
    assert 0.0 <= first["md_stable_fraction"] <= 1.0
    assert first["n_runs"] == 3 and len(first["steps_completed"]) == 3
    assert first["n_stable"] == 3 - len(first["failures"])
    assert first == again


def test_md_stability_flags_a_dissociated_hydrogen(tiny_committee):
    result = md_stability(tiny_committee, [nh3(h_far=3.0)], n_runs=2, n_steps=10)
    assert result["md_stable_fraction"] == 0.0
    assert all("isolated" in reason for reason in result["failures"])
    assert result["steps_completed"] == [0, 0]  # fails before the first step


def test_md_stability_flags_collapse_and_reference_mismatch(tiny_committee):
    collapsed = nh3()
    collapsed.positions[1] = collapsed.positions[0] + [0.5, 0.0, 0.0]
    result = md_stability(tiny_committee, [collapsed], n_runs=1, n_steps=5)
    assert result["md_stable_fraction"] == 0.0 and "collapsed" in result["failures"][0]
    # the committee's energy vs a reference 1000 eV away: every run fails the energy check
    off = md_stability(tiny_committee, [nh3()], temperature_K=100, n_runs=2, n_steps=6,
                       reference=ConstantEnergy(1000.0), energy_tolerance_eV=0.5, n_check_frames=1)
    assert off["md_stable_fraction"] == 0.0
    assert all("off the reference" in reason for reason in off["failures"])


def test_md_stability_records_a_geometry_the_model_refuses(tiny_committee):
    """Atoms inside SchNet's own overlap limit (0.3 Å): the run fails with the model's reason, the metric goes on."""
    overlapping = nh3()
    overlapping.positions[1] = overlapping.positions[0] + [0.2, 0.0, 0.0]
    result = md_stability(tiny_committee, [overlapping, nh3()], temperature_K=100, n_runs=2, n_steps=4)
    assert "model refused the geometry" in result["failures"][0] and len(result["failures"]) == 1
    assert result["md_stable_fraction"] == 0.5


def test_md_stability_rejects_bad_input(tiny_committee):
    with pytest.raises(ValueError):
        md_stability(tiny_committee, [], n_runs=1, n_steps=1)
    with pytest.raises(ValueError):
        md_stability(tiny_committee, [nh3()], n_runs=0, n_steps=1)


def test_static_attack_views_colour_atoms_by_sigma():
    import matplotlib

    matplotlib.use("Agg")
    from advsample.systems.ammonia import umbrella_height
    from advsample.viz.molecules import attack_slider, attack_strip, attack_trajectories, cv_caption

    frames = [nh3() for _ in range(4)]
    for t, atoms in enumerate(frames):
        atoms.positions[0, 2] = 0.38 - 0.1 * t
        atoms.info["attack_step"] = t
    sigma = np.linspace(0.0, 1.0, 16).reshape(4, 4)
    assert len(attack_trajectories(frames, every=2)[0]) == 3  # frames 0, 2 and the last
    figure = attack_strip(frames, sigma, n_panels=3)
    assert len(figure.axes) == 4  # 3 panels + colour bar
    assert attack_slider(frames, sigma).labels[1] == "step 1"  # viz names no system: no h unless asked
    slider = attack_slider(frames, sigma, caption=cv_caption(umbrella_height))
    assert len(slider) == 4 and slider.labels[3] == "step 3, h = +0.08 Å"


def test_viz_draws_the_values_it_is_given():
    """The NH3 figures take the heights (or the function computing them) as arguments."""
    import matplotlib

    matplotlib.use("Agg")
    from advsample.viz import ammonia as figures

    twice = lambda structures: 2.0 * np.array([a.positions[0, 2] for a in structures])  # noqa: E731
    frames = []
    for b in range(2):
        for t in range(3):
            atoms = nh3()
            atoms.positions[0, 2] = 0.3 - 0.1 * t * (b + 1)
            atoms.info.update(attack_seed=b, attack_step=t)
            frames.append(atoms)
    trajectories, heights = figures.attack_heights(frames, twice)
    assert heights.shape == (3, 2) and len(trajectories) == 2
    np.testing.assert_allclose(heights[:, 1], [0.6, 0.2, -0.2])
    assert figures.closest_seed(heights) == 0  # heights[2, 0] ≈ 0.2 is not above heights[2, 1] ≈ −0.2
    heights[2, 1] = 0.01
    assert figures.closest_seed(heights) == 1
    histogram = figures.height_histogram([0.25, 0.3, -0.4], [-0.1, 0.0, 0.1], train_label="pool")
    assert "pool: min |h| = 0.250 Å" in histogram.axes[0].get_title()
    traces = figures.height_traces(heights, 1, train_edge_A=0.25)
    assert len(traces.axes[0].lines) == 2 + 1 + 2  # every seed, the highlighted one, both edges


def test_notebook_smoke_under_papermill(smoke_run):
    """The notebook's smoke run (shared with tests/test_notebooks.py: conftest.smoke_run) and what it measured."""
    executed, summary, _ = smoke_run("03_ammonia_inversion")
    assert SUMMARY_KEYS <= set(summary)
    assert summary["smoke"] is True and summary["labels_used"] > 0
    assert 0.0 <= summary["md_stable_initial"] <= 1.0 and 0.0 <= summary["md_stable_final"] <= 1.0
    # even the smoke committee's round-1 attack leaves the data (every training |h| >= 0.2 Å) towards planar
    # (measured: 0.134 Å with the 15-epoch smoke committee; near planar, < 0.05 Å, takes a trained one)
    assert summary["min_abs_height_round1_A"] < MIN_HEIGHT_A
    images = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 4
    assert not any(o.get("output_type") == "error" for c in executed.cells for o in c.get("outputs", []))


def test_notebook_runs_on_the_system():
    """One way to run NH3: notebook 03 builds the `ammonia` System and runs it with from_system."""
    source = "".join("".join(c["source"]) for c in json.loads(NOTEBOOK.read_text())["cells"])
    assert "ActiveLearning.from_system(system" in source and "ammonia(" in source
    assert "AmmoniaALConfig" not in source and "ammonia_active_learning" not in source


def test_notebook_is_clean_and_parameterised():
    notebook = json.loads(NOTEBOOK.read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", [])
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    source = "".join(code[0]["source"])
    for name in ("n_rounds", "labels_per_round", "kT", "energy_ceiling", "n_members", "epochs", "executor",
                 "seed", "smoke"):
        assert f"\n{name}: " in "\n" + source, name


def test_energy_uncertainty_attack_moves_seeds(tiny_committee):
    """uncertainty="energy" needs the graph of Ē and σ²_E to δ (it raised before the fix in attack.py)."""
    from advsample.attack import AttackConfig, attack

    result = attack(tiny_committee, [nh3(), nh3()], [0.0, 0.01],
                    AttackConfig(kT=0.1, uncertainty="energy", n_steps=3, learning_rate=0.01), progress=False)
    assert result.positions.shape == (4, 8, 3)
    assert np.abs(result.positions[-1] - result.positions[0]).max() > 0.005


def test_generated_data_are_pyramidal_seeded_and_labeled():
    """The package's own NH3 data: GFN2-xTB MD kept at |h| >= 0.2 Å, the same frames for a seed, new ones for another."""
    from advsample.structures import labels_of
    from advsample.systems.ammonia import _md_frames, ammonia_dataset, umbrella_heights

    data = ammonia_dataset(12, seed=3)
    heights = umbrella_heights(data)
    assert len(data) == 12 and np.abs(heights).min() >= MIN_HEIGHT_A
    assert len(set(np.sign(heights))) == 1  # one side of the inversion: a crossing restarts the trajectory
    energies, forces = labels_of(data)
    assert np.all(energies < -100) and forces.shape == (48, 3)  # absolute xTB eV
    positions = np.stack([a.positions for a in data])
    data[0].positions += 1.0  # a fresh copy each call: the cache is not changed through it
    np.testing.assert_array_equal(np.stack([a.positions for a in ammonia_dataset(12, seed=3)]), positions)
    _md_frames.cache_clear()  # computed again, not cached: the same frames
    np.testing.assert_allclose(np.stack([a.positions for a in ammonia_dataset(12, seed=3)]), positions, atol=1e-10)
    other = ammonia_dataset(12, seed=4)
    assert not np.allclose(np.stack([a.positions for a in other]), positions)


def test_read_ammonia_from_a_file_the_user_gives(tmp_path):
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from advsample.systems.ammonia import read_ammonia

    frames = []
    for k, h in enumerate((0.3, -0.25)):
        atoms = nh3()
        atoms.positions[0, 2] = h
        atoms.calc = SinglePointCalculator(atoms, energy=0.01 * k, forces=np.full((4, 3), 0.1 * k))
        frames.append(atoms)
    path = tmp_path / "ammonia.extxyz"
    write(path, frames)
    read_back = read_ammonia(path)
    assert [a.info["umbrella_height"] for a in read_back] == pytest.approx([0.3, -0.25])
    assert read_back[1].get_potential_energy() == pytest.approx(0.01)
    np.testing.assert_allclose(read_back[1].get_forces(), 0.1)
    assert read_back[0].info["source"] == str(path)
    with pytest.raises(FileNotFoundError, match="no file"):
        read_ammonia(tmp_path / "missing.extxyz")
    methane = Atoms("CH4", positions=np.eye(5, 3))
    methane.calc = SinglePointCalculator(methane, energy=0.0, forces=np.zeros((5, 3)))
    write(tmp_path / "mixed.extxyz", [frames[0], methane])
    with pytest.raises(ValueError, match="structure 1 of .*mixed.extxyz.* is CH4, not NH3"):
        read_ammonia(tmp_path / "mixed.extxyz")
    write(tmp_path / "bare.xyz", [nh3()])
    with pytest.raises(ValueError, match="structure 0 of .*bare.xyz.*no energy/forces label"):
        read_ammonia(tmp_path / "bare.xyz")
