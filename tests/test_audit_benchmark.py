"""benchmarks/audit.py's series of committees: the reference-MD stages (issue 36). The --quick run itself is
tests/test_audit.py::test_benchmark_quick_json."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import audit as benchmark  # noqa: E402


@pytest.fixture(scope="module")
def adatom_stages():
    series = {**benchmark.SETTINGS["adatom"]["series"], "options": {"n_initial": 12, "smoke": True},
              "n_validation": 4, "n_frames": (10, 10)}
    return benchmark.thermal_stages(True, series), series


def test_thermal_stages_grow_hotter_and_keep_a_calibration_split(adatom_stages):
    built, series = adatom_stages
    stages, make_committee, reference = built["stages"], built["make_committee"], built["reference"]
    temperatures = series["temperatures_K"][1]
    assert [s[0] for s in stages] == ["pool"] + [f"+MD<={T}K" for T in temperatures]
    pool_train, pool_validation = stages[0][1], stages[0][2]
    assert len(pool_train) == 12 - 4 and len(pool_validation) == 4
    for k, (_, train, validation) in enumerate(stages[1:], start=1):
        new = 10 * k  # frames of the runs at or below this stage's temperature
        assert len(train) + len(validation) == 12 + new
        assert len(validation) == 4 + len(range(0, new, 5))  # every 5th new frame calibrates, never trains
        assert not {id(a) for a in train} & {id(a) for a in validation}
        assert {id(a) for a in stages[k - 1][1]} <= {id(a) for a in train}  # each stage's data contain the last's

    def mean_energy(frames):
        return np.mean([a.get_potential_energy() for a in frames])

    hottest = [a for a in stages[-1][1] if a.info.get("label_source") == f"reference MD {temperatures[-1]:g} K"]
    assert hottest and mean_energy(hottest) > mean_energy(pool_train)  # the hotter run reaches further up
    assert make_committee() is not make_committee() and callable(reference.get_potential_energy)
    lowest = min(a.get_potential_energy() for a in built["md_starts"])
    for start in built["audit_starts"]:  # reference minima: below every thermal frame, forces near zero
        assert start.get_potential_energy() < lowest
        free = np.ones(len(start), bool)
        free[start.constraints[0].get_indices()] = False
        assert np.abs(start.get_forces(apply_constraint=False)[free]).max() <= 0.05 + 1e-9


def test_reference_md_keeps_fixed_atoms_and_labels_unconstrained_forces(adatom_stages):
    from ase.calculators.emt import EMT

    stages = adatom_stages[0]["stages"]
    start = stages[0][1][0]
    fixed = start.constraints[0].get_indices()
    frames = benchmark.reference_md_frames(start, EMT(), 900.0, 3, every=5, seed=1, timestep_fs=2.0)
    for frame in frames:
        np.testing.assert_allclose(frame.positions[fixed], start.positions[fixed])
        assert np.abs(frame.get_forces(apply_constraint=False)[fixed]).max() > 0  # labels are not zeroed
        reference = EMT()
        copy = frame.copy()
        copy.calc = reference
        np.testing.assert_allclose(frame.get_potential_energy(), copy.get_potential_energy(), rtol=1e-10)


def test_unknown_system_is_refused(capsys):
    with pytest.raises(SystemExit):
        benchmark.main(["--systems", "nosuch"])
    assert "nosuch" in capsys.readouterr().err
