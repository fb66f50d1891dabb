import numpy as np
import pytest

from advsample.calculator import CommitteeCalculator
from advsample.calibration import (Calibration, calibrate, calibration_from_errors, calibration_of,
                                   calibration_report, conformal_scale, coverage, fit_power)
from advsample.committee import Committee
from advsample.models import MLPCommittee
from advsample.surfaces import double_well_2d
from advsample.train import TrainConfig, train_committee


def synthetic(n, c=3.0, power=1.0, seed=0):
    """σ log-uniform over two decades, errors ~ N(0, (c σ^power)²)."""
    rng = np.random.default_rng(seed)
    sigma = np.exp(rng.uniform(np.log(0.01), np.log(1.0), n))
    return sigma, rng.normal(0.0, c * sigma**power)


@pytest.mark.parametrize("stated", [0.8, 0.95])
def test_conformal_reaches_stated_coverage_on_held_out_data(stated):
    sigma, error = synthetic(2000, seed=1)
    scale = conformal_scale(sigma, error, stated)
    # the true scale is c·z_{(1+coverage)/2}: 3·1.96 at 95 %
    from scipy import stats
    assert scale == pytest.approx(3.0 * stats.norm.ppf(0.5 + stated / 2), rel=0.08)
    new_sigma, new_error = synthetic(20000, seed=2)
    assert coverage(scale * new_sigma, new_error) == pytest.approx(stated, abs=0.02)
    # raw σ (c = 3) is far from covering: the calibration is what makes it right
    assert coverage(1.96 * new_sigma, new_error) < 0.6


def test_conformal_finite_sample_correction():
    scores = np.arange(1, 20, dtype=float)  # n = 19, ⌈20·0.95⌉ = 19th smallest
    assert conformal_scale(np.ones(19), scores, 0.95) == 19.0
    assert conformal_scale(np.ones(19), scores, 0.5) == 10.0  # ⌈20·0.5⌉ = 10th, not the plain median
    with pytest.raises(ValueError, match="coverage"):
        conformal_scale(np.ones(3), np.ones(3), 1.0)
    with pytest.raises(ValueError, match="same length"):
        conformal_scale(np.ones(3), np.ones(4))


@pytest.mark.parametrize("distribution", ["gaussian", "laplace"])
def test_power_fit_recovers_scale_and_exponent(distribution):
    rng = np.random.default_rng(3)
    sigma = np.exp(rng.uniform(np.log(0.01), np.log(1.0), 5000))
    true_std = 2.0 * sigma**0.5
    error = (rng.normal(0.0, true_std) if distribution == "gaussian"
             else rng.laplace(0.0, true_std / np.sqrt(2.0)))
    a, b = fit_power(sigma, error, distribution)
    assert a == pytest.approx(2.0, rel=0.08)
    assert b == pytest.approx(0.5, abs=0.05)


def test_calibration_plain_data_round_trip():
    sigma, error = synthetic(500)
    calibration = calibration_from_errors(sigma, error, sigma[:50], error[:50], coverage=0.9)
    data = calibration.as_dict()
    assert all(isinstance(v, (int, float, str, list)) for v in data.values())
    assert Calibration.from_dict(data) == calibration
    with pytest.raises(ValueError, match="version"):
        Calibration.from_dict({**data, "version": 99})


@pytest.fixture(scope="module")
def trained():
    surface = double_well_2d()
    train = surface.sample(60, seed=0, max_energy=2.0)
    held_out = surface.sample(120, seed=1, max_energy=2.0)
    test = surface.sample(200, seed=2, max_energy=2.0)
    committee = Committee(MLPCommittee(4, (16, 16), input_axes=(0, 1), seed=0))
    train_committee(committee, train, None, TrainConfig(epochs=150, progress=False))
    return committee, held_out, test


def test_calibration_survives_checkpoint_and_reaches_the_calculator(trained, tmp_path):
    committee, held_out, test = trained
    calibration = calibrate(committee, held_out, coverage=0.9)
    assert calibration_of(committee) == calibration
    path = committee.save(tmp_path / "committee.pt")
    loaded = Committee.load(path, device="cpu")
    assert calibration_of(loaded) == calibration
    atoms = test[0].copy()
    atoms.calc = CommitteeCalculator(loaded)
    atoms.get_potential_energy()
    results = atoms.calc.results
    sigma = results["forces_std"]
    np.testing.assert_allclose(results["forces_interval"], calibration.force_scale * sigma)
    np.testing.assert_allclose(results["forces_std_calibrated"], calibration.force_sigma(sigma))
    assert results["energy_interval"] == pytest.approx(calibration.energy_scale * results["energy_std"])
    # an uncalibrated committee gives the raw keys only
    plain = Committee(MLPCommittee(4, (16, 16), input_axes=(0, 1), seed=0))
    atoms.calc = CommitteeCalculator(plain)
    atoms.get_potential_energy()
    assert "forces_interval" not in atoms.calc.results


def test_calibrated_force_intervals_cover_a_test_set(trained):
    committee, held_out, test = trained
    calibration = calibrate(committee, held_out, coverage=0.9)
    report = calibration_report(calibration, committee, test)
    assert report["force_coverage_conformal"] == pytest.approx(0.9, abs=0.07)
    assert report["force_miscalibration_area_calibrated"] < report["force_miscalibration_area_raw"]


def test_test_errors_report_coverage_beside_miscalibration_area(trained):
    from advsample.metrics import test_errors

    committee, held_out, test = trained
    committee.calibration = None
    assert "force_coverage" not in test_errors(committee, test)
    calibration = calibrate(committee, held_out, coverage=0.9)
    errors = test_errors(committee, test)
    report = calibration_report(calibration, committee, test)
    assert errors["force_coverage"] == pytest.approx(report["force_coverage_conformal"])
    assert errors["force_coverage_stated"] == 0.9 and "force_miscalibration_area" in errors


# -- per-round calibration in the active-learning loop ------------------------------------------------

def toy_run(run_dir, **overrides):
    from advsample.loop import ActiveLearning
    from advsample.systems import get_system

    system = get_system("double_well_2d", n_initial=64, n_test=60, epochs=150, hidden=(32, 32), n_members=4,
                        attack_steps=20, budget=4, md_steps=10)
    return ActiveLearning.from_system(system, run_dir, progress=False, **{"validation_fraction": 0.3, **overrides})


def test_each_round_is_calibrated_on_validation_and_reports_coverage(tmp_path):
    import json

    records = toy_run(tmp_path / "run").run(2)
    assert len(records) == 3
    for record in records:
        folder = tmp_path / "run" / f"round_{record.round:03d}"
        metrics = json.loads((folder / "metrics.json").read_text())
        # fitted on the fixed validation set (30 % of 64 initial structures: 19, one atom with 2 free coordinates)
        assert metrics["calibration"]["fitted"] and metrics["calibration"]["n_structures"] == 19
        assert metrics["calibration"]["n_force"] == 38 and metrics["calibration"]["force_scale"] > 0
        saved = calibration_of(Committee.load(folder / "committee.pt"))
        assert saved is not None and saved.force_scale == metrics["calibration"]["force_scale"]
        # coverage of the calibrated intervals on the test set, beside the miscalibration areas
        test = metrics["test"]
        assert 0 < test["force_coverage"] <= 1 and test["force_coverage_stated"] == 0.95
        assert "force_miscalibration_area" in test and "force_miscalibration_area_calibrated" in test
        assert metrics["timings"]["calibrate_s"] >= 0
    # the coverage is that of the stored calibration on the test set (recomputed here, not copied)
    from ase.io import read

    from advsample.metrics import test_errors
    last = records[-1]
    test_set = read(tmp_path / "run" / "test.extxyz", ":")
    assert test_errors(last.committee, test_set)["force_coverage"] == pytest.approx(
        last.metrics["test"]["force_coverage"])


def test_round_calibration_skipped_with_a_reason_or_opted_out(tmp_path):
    small = toy_run(tmp_path / "small", validation_fraction=0.1).run(0)[0]  # 6 structures, 12 force components
    assert not small.metrics["calibration"]["fitted"]
    assert "12 free force components" in small.metrics["calibration"]["reason"]
    assert "needs at least 19" in small.metrics["calibration"]["reason"]
    assert small.committee.calibration is None and "force_coverage" not in small.metrics["test"]
    off = toy_run(tmp_path / "off", calibration_coverage=None).run(0)[0]
    assert off.metrics["calibration"] == {"fitted": False, "reason": "calibration_coverage=None (opted out)"}
    assert "force_coverage" not in off.metrics["test"]
    with pytest.raises(ValueError, match="calibration_coverage must be in"):
        toy_run(tmp_path / "bad", calibration_coverage=1.5)
