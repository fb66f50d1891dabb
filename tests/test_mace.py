"""MACE committees (the optional mace extra): from code, from the user's model files, in the loop and the attack.

Skipped cleanly when mace-torch is not installed (pip install -e ".[mace]").
"""
import numpy as np
import pytest
import torch

pytest.importorskip("mace", reason="mace extra not installed (pip install -e '.[mace]')")

from advsample.attack import AttackConfig, attack  # noqa: E402
from advsample.calculator import CommitteeCalculator  # noqa: E402
from advsample.committee import Committee  # noqa: E402
from advsample.models.mace import MACECommittee, build_mace  # noqa: E402
from advsample.molecules import relabel_xtb  # noqa: E402
from advsample.systems.ammonia import ammonia_dataset  # noqa: E402
from advsample.structures import labels_of  # noqa: E402
from advsample.train import TrainConfig  # noqa: E402

SMALL = {"species": (1, 7), "hidden_irreps": "8x0e + 8x1o", "num_interactions": 1, "r_max": 4.0}


@pytest.fixture(scope="module")
def xtb_data():
    data = ammonia_dataset()
    return relabel_xtb(data[:10]), relabel_xtb(data[100:106])


def saved_models(tmp_path, n=2):
    """Small MACE models with non-zero E0s, saved whole as mace's training does; returns (paths, models)."""
    paths, models = [], []
    for m in range(n):
        model = build_mace(species=(1, 7), r_max=4.0, hidden_irreps="8x0e + 8x1o", max_ell=2, num_interactions=1,
                           correlation=2, avg_num_neighbors=3.0, seed=10 + m).double()
        model.atomic_energies_fn.atomic_energies.fill_(-1.5 - m)  # eV per atom: must reach the committee's energies
        path = tmp_path / f"member{m}.model"
        torch.save(model, path)
        paths.append(str(path))
        models.append(model)
    return paths, models


def test_committee_from_model_files_predicts_what_mace_predicts(tmp_path):
    from mace.calculators import MACECalculator

    paths, _ = saved_models(tmp_path)
    with pytest.raises(ValueError, match="pickled Python module: loading it runs any code"):
        MACECommittee.from_files(paths)  # unpickling runs code: only with the caller's explicit permission
    committee = Committee(MACECommittee.from_files(paths, allow_pickle=True))
    assert not committee.model.normalized
    atoms = ammonia_dataset()[:2]
    committee.fit_normalization(np.array([-50.0, -51.0]), np.array([4, 4]))  # opted out: no shift/scale
    assert float(committee.energy_shift) == 0.0 and float(committee.energy_scale) == 1.0
    ours = committee.predict(atoms)
    reference = MACECalculator(model_paths=paths, device="cpu", default_dtype="float64")
    for b, structure in enumerate(atoms):
        structure = structure.copy()
        structure.calc = reference
        structure.get_potential_energy()
        np.testing.assert_allclose(ours["energies"][:, b], reference.results["energy_comm"], rtol=1e-8)
        np.testing.assert_allclose(ours["forces"][:, 4 * b : 4 * b + 4], reference.results["forces_comm"],
                                   rtol=1e-6, atol=1e-8)
    # a checkpoint of a file committee rebuilds from the files and restores its (possibly fine-tuned) weights
    saved = committee.save(tmp_path / "committee.pt")
    assert "allow_pickle" not in Committee._read(saved)["model_config"]  # the permission is not stored
    with pytest.raises(ValueError, match="allow_pickle=True"):
        Committee.load(saved, device="cpu")  # a shared checkpoint that names model files does not unpickle them
    restored = Committee.load(saved, device="cpu", allow_pickle=True)
    np.testing.assert_allclose(restored.predict(atoms)["energies"], ours["energies"], rtol=1e-10)
    # members of two file committees gathered into one, in order
    halves = [Committee(MACECommittee.from_files([p], allow_pickle=True)) for p in paths]
    np.testing.assert_allclose(Committee.gather(halves).predict(atoms)["energies"], ours["energies"], rtol=1e-10)
    with pytest.raises(ValueError, match="from files with committees built from code"):
        Committee.gather([halves[0], Committee(MACECommittee(1, **SMALL))])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MACECommittee.from_files([tmp_path / "missing.model"], allow_pickle=True)


def test_unknown_element_is_a_clear_error():
    from ase.build import molecule

    committee = Committee(MACECommittee(2, **SMALL))
    with pytest.raises(ValueError, match="not known to this MACE model"):
        committee.predict([molecule("H2O")])


def test_mace_committee_runs_two_rounds_on_nh3_and_the_attack_raises_sigma(tmp_path, xtb_data):
    from advsample.systems.ammonia import XTB_SPEC
    from advsample.loop import ActiveLearning
    from advsample.samplers import make_sampler
    from advsample.select import SelectionConfig

    initial, test = xtb_data
    committee = Committee(MACECommittee(3, **SMALL, seed=0))
    loop = ActiveLearning(
        tmp_path / "run", committee, XTB_SPEC, initial,
        make_sampler("adversarial", n_steps=8, learning_rate=0.01, snapshot_every=4, n_seeds=4),
        test=test, selection=SelectionConfig(budget=3, min_distance=0.0), kT=0.5,
        train_config=TrainConfig(epochs=15, patience=100), validation_fraction=0.0, seed=0, progress=False,
    )
    records = loop.run(2)
    assert [r.round for r in records] == [0, 1, 2]
    assert [r.metrics["n_train"] for r in records] == [10, 13, 16]
    assert all(np.isfinite(r.metrics["test"]["force_mae"]) for r in records)
    assert (tmp_path / "run" / "round_002" / "committee.pt").exists()

    # the attack on the trained MACE committee climbs in sigma
    trained = records[-1].committee
    energies, _ = labels_of(initial)
    result = attack(trained, initial[:4], energies, AttackConfig(kT=0.5, n_steps=15, learning_rate=0.01),
                    progress=False)
    assert result.variance[-1].mean() > 1.5 * result.variance[0].mean()

    # and it serves ASE as a calculator
    atoms = initial[0].copy()
    atoms.calc = CommitteeCalculator(trained)
    assert np.isfinite(atoms.get_potential_energy()) and atoms.calc.results["energies"].shape == (3,)
    np.testing.assert_allclose(atoms.get_forces().sum(0), 0.0, atol=1e-4)  # translation invariance: no net force
