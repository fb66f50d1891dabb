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
    from advsample.viz.molecules import attack_slider, attack_strip, attack_trajectories

    frames = [nh3() for _ in range(4)]
    for t, atoms in enumerate(frames):
        atoms.positions[0, 2] = 0.38 - 0.1 * t
    sigma = np.linspace(0.0, 1.0, 16).reshape(4, 4)
    assert len(attack_trajectories(frames, every=2)[0]) == 3  # frames 0, 2 and the last
    figure = attack_strip(frames, sigma, n_panels=3)
    assert len(figure.axes) == 4  # 3 panels + colour bar
    slider = attack_slider(frames, sigma)
    assert len(slider) == 4 and "h = " in slider.labels[0]


def test_notebook_smoke_under_papermill(tmp_path):
    papermill = pytest.importorskip("papermill")
    output = tmp_path / "03_ammonia_inversion.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK), str(output), parameters={"smoke": True}, kernel_name="python3", cwd=str(tmp_path),
        progress_bar=False,
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["smoke"] is True and summary["labels_used"] > 0
    assert 0.0 <= summary["md_stable_initial"] <= 1.0 and 0.0 <= summary["md_stable_final"] <= 1.0
    # even the smoke committee's round-1 attack reaches near-planar NH3, absent from the data (|h| >= 0.199 Å)
    assert summary["min_abs_height_round1_A"] < 0.05
    executed = json.loads(output.read_text())
    images = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 4
    assert not any(o.get("output_type") == "error" for c in executed["cells"] for o in c.get("outputs", []))


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
