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


# -- --from-headline: committees of a finished headline run, one fixed calibration set ------------------------------

@pytest.fixture(scope="module")
def headline_dir(tmp_path_factory):
    """A headline run's layout (rows.json, committees/<arm>__seed<s>.pt) with two tiny host-guest committees
    (smoke cells) trained on different amounts of data, their NN-MD results made up for the test."""
    import json

    from advsample.systems import get_system
    from advsample.train import TrainConfig, train_committee

    root = tmp_path_factory.mktemp("headline")
    options = {"smoke": True, "cache_dir": str(root / "cache"), "progress": False}
    system = get_system("host_guest", **options)
    rows = []
    for k, (arm, n_train, n_stable) in enumerate((("gen1", 2, 3), ("md_N", len(system.initial), 7))):
        committee = system.make_committee(k)
        train_committee(committee, system.initial[:n_train], None, TrainConfig(epochs=3, progress=False))
        (root / "committees").mkdir(exist_ok=True)
        committee.save(root / "committees" / f"{arm}__seed0.pt")
        rows.append({"arm": arm, "seed": 0, "n_train": n_train, "settings": {
            "system": "host_guest", "options": options, "effective_temperature_K": 500.0},
            "stability": {"nve": {"n_stable": n_stable, "n_runs": 8, "temperature_K": 1000.0, "n_steps": 10,
                                  "cpu_s": 5.0, "time_to_failure_fs": [None] * n_stable + [4.0] * (8 - n_stable),
                                  "failures": [f"run {r} (start {r}), step 8: atom isolated: H{len(system.initial[0]) - 1}"
                                               " has no neighbour within bonding range" for r in range(n_stable, 8)]}}})
    rows.append({**rows[0], "arm": "random_N10"})  # no committee file: skipped
    (root / "rows.json").write_text(json.dumps(rows))
    return root, system


def test_headline_entries_read_rows_with_committees_only(headline_dir, tmp_path):
    root, _ = headline_dir
    entries = benchmark.headline_entries(root)
    assert [(e["arm"], e["n_stable"], e["md_stable_fraction"]) for e in entries] == [("gen1", 3, 3 / 8),
                                                                                      ("md_N", 7, 7 / 8)]
    assert [e["arm"] for e in benchmark.headline_entries(root, arms=("md_N",))] == ["md_N"]
    with pytest.raises(ValueError, match="no \\(arm, seed\\)"):
        benchmark.headline_entries(root, arms=("adversarial_N",))
    with pytest.raises(FileNotFoundError, match="rows.json"):
        benchmark.headline_entries(tmp_path)


def test_fixed_calibration_set_is_one_cached_reproducible_set(headline_dir, tmp_path):
    from advsample.reference import CalculatorSpec

    _, system = headline_dir
    calculator = system.reference.build() if isinstance(system.reference, CalculatorSpec) else system.reference
    settings = {**benchmark.HEADLINE_CALIBRATION, "n_frames": 2, "temperatures_K": (800.0,)}
    frames = benchmark.fixed_calibration_set(system, calculator, settings, tmp_path)
    cells = list(benchmark.cell_groups(system.initial))
    assert len(cells) == 2 and len(frames) == 2 * len(cells)
    assert [f.info["cell_name"] for f in frames] == [c for c in cells for _ in range(2)]
    training = {a.positions.tobytes() for a in system.initial}
    assert not any(f.positions.tobytes() in training for f in frames)  # held out from the training data

    class NoCalls:
        def __getattr__(self, name):
            raise AssertionError("the cached set must not call the reference")

    again = benchmark.fixed_calibration_set(system, NoCalls(), settings, tmp_path)
    for a, b in zip(frames, again):
        np.testing.assert_allclose(a.positions, b.positions)
        np.testing.assert_allclose(a.get_forces(), b.get_forces())


@pytest.fixture(scope="module")
def quick_headline(headline_dir):
    """The --from-headline --quick --json run over both committees: (returned dict, the printed JSON line)."""
    import contextlib
    import io
    import json

    root, _ = headline_dir
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        out = benchmark.main(["--from-headline", str(root), "--arms", "all", "--quick", "--json",
                              "--calibration-cache", str(root / "calibration"), "--md-check", "2", "--md-steps", "5"])
    return out, json.loads(printed.getvalue().strip().splitlines()[-1])


def test_from_headline_quick_json(quick_headline):
    out, printed = quick_headline
    result = out["headline"]
    assert printed["headline"]["n_calibration_frames"] == result["n_calibration_frames"] == 2 * 2 * 4
    rows = result["committees"]
    assert [r["arm"] for r in rows] == ["gen1", "md_N"]
    for row in rows:
        assert set(row["per_cell"]) == set(result["cells"]) and len(result["cells"]) == 2
        assert row["safe_temperature_K"] == min(c["safe_temperature_K"] for c in row["per_cell"].values())
        assert 0 <= row["fraction_over_tolerance_effective"] <= 1 and row["test_force_mae"] > 0
        assert row["force_scale"] > 0 and row["audit_cpu_s"] > 0
        assert 0 < row["runaway_runs"] <= 2 * len(result["cells"]) * len(result["audit"]["kT_values"])  # --md-check 2
        assert 0 <= row["runaway_survival"] <= 1 and 0 < row["md_check_cpu_s"] < row["audit_cpu_s"]
        assert abs(row["effective_kT"] - 0.043) < 1e-9  # the sweep's kT nearest k_B * 500 K
        assert row["bond_scan_cpu_s"] > 0 and row["bond_barrier_weakest"].rsplit(":", 1)[0] in result["cells"]
        assert 0 < row["bond_barrier_at_stretch_A"] <= 2.0 and np.isfinite(row["bond_barrier"])
        assert 0 <= row["bond_survival"] <= 1 and set(row["bond_survival_by_cell"]) == set(result["cells"])
        assert row["bond_survival_time_fs"] == pytest.approx(row["md_steps"] * 0.5)
        by_cell = row["md_stable_fraction_by_cell"]  # the runs of each cell: the fraction lies between the cells'
        assert set(by_cell) == set(result["cells"]) and min(by_cell.values()) <= row["md_stable_fraction"] <= max(by_cell.values())
        for cell, (moved, anchor, _) in row["bond_likeliest_break"].items():
            assert [moved, anchor] in row["bond_guest_bonds"][cell]
        tolerances = row["safe_temperature_K_by_tolerance"]
        assert list(tolerances.values()) == sorted(tolerances.values())  # a laxer tolerance is never less safe
        fractions = row["fraction_over_tolerance_effective_by_tolerance"]
        assert list(fractions.values()) == sorted(fractions.values(), reverse=True)
    assert result["bond_survival_by_cell_vs_md"]["pooled"]["n"] == 2 * len(result["cells"])  # (committee, cell) pairs
    assert rows[0]["weights_sha256"] != rows[1]["weights_sha256"] and result["same_weights"] == []
    copy = {**rows[1], "arm": "random_N10", "weights_sha256": rows[0]["weights_sha256"]}
    assert benchmark.headline_summary([*rows, copy])["same_weights"] == [[["gen1", 0], ["random_N10", 0]]]
    assert result["md_rank_reliability"] is None  # two committees: nothing to rank
    triple = benchmark.headline_summary([*rows, copy])["md_rank_reliability"]
    assert set(triple) == {"split_half", "full", "ceiling", "n_splits", "disattenuated"}
    correlation = result["spearman_vs_md_stable"]["test_force_mae"]
    assert correlation["n"] == 2 and (correlation["rho"] != correlation["rho"] or abs(correlation["rho"]) == pytest.approx(1))
    assert result["audit_over_md_cpu"] == pytest.approx(result["audit_cpu_s"] / 10.0)
    assert "runaway_survival" in result["declared_md_check"] and result["audit"]["md_steps"] == 5
    assert result["audit"]["md_start"] == "frame" and "minimum" in result["declared_md_start"]
    for row in rows:  # the check's own CPU (relaxation + short runs) is part of the audit's
        assert 0 < row["relax_cpu_s"] and row["md_check_cpu_s"] + row["relax_cpu_s"] < row["audit_cpu_s"]
    assert 0 < result["md_check_over_md_cpu"] < result["audit_over_md_cpu"]
    assert result["nn_md_at_cpu_fraction"]["0.1"] is None  # two committees: no baseline ranking


def test_merge_joins_parts_and_refuses_a_committee_twice(quick_headline, tmp_path):
    import json

    _, printed = quick_headline
    paths = []
    for k, row in enumerate(printed["headline"]["committees"]):  # two parts of one committee each
        part = {**printed, "headline": {**printed["headline"], "committees": [row]}}
        paths.append(tmp_path / f"part{k}.json")
        paths[-1].write_text("progress lines\n" + json.dumps(part) + "\n")
    paths[0].write_text(json.dumps(json.loads(paths[0].read_text().splitlines()[-1]), indent=1))  # a stored file
    merged = benchmark.merge_headline(paths)
    assert [r["arm"] for r in merged["committees"]] == ["gen1", "md_N"]
    for name, value in merged["spearman_vs_md_stable"].items():  # the same ranking as the run over both
        if name in benchmark.HEADLINE_MEASURES:
            assert value == pytest.approx(printed["headline"]["spearman_vs_md_stable"][name], nan_ok=True)
    with pytest.raises(ValueError, match="appears twice"):
        benchmark.merge_headline([paths[0], paths[0]])


def test_a_cell_whose_committee_relaxation_collapses_is_unsafe_and_the_others_are_audited(headline_dir):
    """A committee whose descent from a cell's minimum reaches overlapping atoms (the model's GeometryError) gives
    that cell safe T 0 at every tolerance, without stopping the audit of the other cells (a real headline committee
    trained on a collapsed label did this)."""
    from advsample.audit import AuditConfig
    from advsample.committee import Committee

    root, system = headline_dir
    committee = Committee.load(root / "committees" / "gen1__seed0.pt")
    cells = benchmark.cell_groups(system.initial)
    (good, good_members), (bad, bad_members) = list(cells.items())[:2]
    overlapping = bad_members[0].copy()
    overlapping.positions[1] = overlapping.positions[0] + [0.1, 0.0, 0.0]  # under the model's 0.3 Å
    config = AuditConfig(**{**benchmark.HEADLINE_AUDIT, "n_steps": 5, "n_replicas": 2}, energy_unit="eV")
    result = benchmark.audit_cells(committee, {good: good_members[0], bad: overlapping}, config, 0.043)
    assert result["collapsed_cells"] == [bad]
    assert "overlapping" in result["per_cell"][bad]["collapsed_on_relax"]
    assert result["per_cell"][good]["per_kT"] and "collapsed_on_relax" not in result["per_cell"][good]
    assert result["safe_temperature_K"] == 0.0
    assert set(result["safe_temperature_K_by_tolerance"].values()) == {0.0}
    assert 0 <= result["fraction_over_tolerance_effective"] <= 1  # from the good cell's frames alone
    only_bad = benchmark.audit_cells(committee, {bad: overlapping}, config, 0.043)
    assert only_bad["fraction_over_tolerance_effective"] != only_bad["fraction_over_tolerance_effective"]  # NaN


def test_spearman_uses_the_finite_pairs_only():
    value = benchmark.spearman([1.0, 2.0, float("nan"), 3.0], [0.1, 0.2, 0.9, 0.3])
    assert value["n"] == 3 and value["rho"] == pytest.approx(1.0)
    assert benchmark.spearman([1.0, 1.0], [0.1, 0.2])["rho"] != benchmark.spearman([1.0, 1.0], [0.1, 0.2])["rho"]


def test_merge_ranks_a_selection_and_records_a_post_hoc_exclusion(quick_headline, tmp_path, capsys):
    import json

    _, printed = quick_headline
    part = {**printed, "headline": {**printed["headline"], "arm_level_exploratory": {"stale": 1}}}
    path = tmp_path / "all.json"
    path.write_text(json.dumps(part) + "\n")
    merged = benchmark.merge_headline([path])
    assert "arm_level_exploratory" not in merged  # a part's own summary is not carried as the merge's
    assert merged["selection"] == {"arms": None, "seeds": None, "excluded_post_hoc": []}
    only = benchmark.merge_headline([path], arms=("md*",))
    assert [r["arm"] for r in only["committees"]] == ["md_N"]
    left = benchmark.merge_headline([path], exclude=[("md_N", "0")])
    assert [r["arm"] for r in left["committees"]] == ["gen1"] and left["selection"]["excluded_post_hoc"] == [["md_N", 0]]
    with pytest.raises(ValueError, match="no committee"):
        benchmark.merge_headline([path], exclude=[("md_N", 5)])
    with pytest.raises(ValueError, match="no committee left"):
        benchmark.merge_headline([path], seeds=[7])
    root = str(tmp_path)
    for argv in (["--exclude", "md_N:0"], ["--merge", str(path), "--exclude", "md_N"]):
        with pytest.raises(SystemExit):
            benchmark.main(["--from-headline", root, *argv])
        assert "--exclude" in capsys.readouterr().err


def test_md_rank_reliability_bounds_what_any_measure_can_reach():
    """The NN-MD fractions' own noise: committees of clearly different stability rank reliably, and a measure's
    Spearman is corrected by the ceiling; committees equal but for chance leave nothing to rank."""
    from advsample.stats import rank_reliability

    rng = np.random.default_rng(0)
    truth = np.linspace(0.2, 0.95, 40)
    stable = rng.binomial(55, truth)
    rows = [{"n_stable": int(k), "n_runs": 55, "md_stable_fraction": k / 55, **{
        name: sign * t for name, sign in benchmark.HEADLINE_MEASURES.items()}} for k, t in zip(stable, truth)]
    def correlations(rows):
        stable = [r["md_stable_fraction"] for r in rows]
        return {name: benchmark.spearman([r[name] for r in rows], stable) for name in benchmark.HEADLINE_MEASURES}

    out = benchmark.md_rank_reliability(rows, correlations(rows))
    expected = rank_reliability(stable, [55] * 40)
    assert out["ceiling"] == pytest.approx(expected.ceiling) and out["ceiling"] > 0.9
    rho = benchmark.spearman(truth, stable / 55)["rho"]  # every measure here is the truth itself (signed)
    assert out["disattenuated"]["safe_temperature_K"] == pytest.approx(rho / out["ceiling"])
    assert out["disattenuated"]["test_force_mae"] == pytest.approx(-rho / out["ceiling"])
    flat = [{**r, "n_stable": int(k), "md_stable_fraction": k / 55} for r, k in zip(rows, rng.binomial(55, 0.8, 40))]
    assert benchmark.md_rank_reliability(flat, correlations(flat))["ceiling"] < 0.6


def test_a_bond_scan_alone_joins_an_audit_by_merge(quick_headline, headline_dir, tmp_path):
    """--measures bond_scan gives the same barriers as the full run; --merge joins them to an audit's rows of the
    same committees, and refuses a committee measured twice the same way."""
    import json

    _, printed = quick_headline
    root, _ = headline_dir
    bonds = benchmark.run_headline(root, None, calibration_settings=dict(n_frames=4, temperatures_K=(600.0, 1000.0),
                                                                         relax_steps=20), measures=("bond_scan",))
    full = {r["arm"]: r for r in printed["headline"]["committees"]}
    for row in bonds["committees"]:
        assert "safe_temperature_K" not in row and bonds["audit"] is None
        assert row["bond_barrier"] == pytest.approx(full[row["arm"]]["bond_barrier"], abs=1e-6)
    audit_only = {**printed, "headline": {**printed["headline"], "committees": [
        {k: v for k, v in r.items() if not k.startswith("bond_")} for r in printed["headline"]["committees"]]}}
    paths = [tmp_path / "audit.json", tmp_path / "bonds.json"]
    paths[0].write_text(json.dumps(audit_only))
    paths[1].write_text(json.dumps({"headline": bonds}, default=float))
    merged = benchmark.merge_headline(paths)
    assert [r["arm"] for r in merged["committees"]] == ["gen1", "md_N"]
    for row in merged["committees"]:
        assert "safe_temperature_K" in row and row["bond_barrier"] == pytest.approx(full[row["arm"]]["bond_barrier"], abs=1e-6)
    assert merged["audit"] == printed["headline"]["audit"]  # the audited part's settings
    assert merged["declared_bond_survival"] == benchmark.BOND_SURVIVAL_DECLARED  # the scan part's declaration kept
    with pytest.raises(ValueError, match="appears twice"):
        benchmark.merge_headline([paths[1], paths[1]])
    with pytest.raises(ValueError, match="measures must be"):
        benchmark.run_headline(root, None, measures=("attack",))


def test_test_runs_start_in_cells_round_robin_and_failures_are_matched_to_bonds():
    """Run k starts in starts[k % len] (as run_stability assigns them); a failure names atoms, a hit is a named atom
    of its cell's likeliest bond, chance the mean over the cell's bonds."""
    from ase import Atoms

    starts = [Atoms("H", info={"cell_name": name}) for name in ("A", "A", "B")]
    cells = benchmark.run_start_cells(starts, 7)
    assert cells == ["A", "A", "B", "A", "A", "B", "A"]
    likeliest = {"A": [5, 1, "H5-C1"], "B": [7, 2, "H7-N2"]}
    bonds = {"A": [[5, 1], [6, 1], [3, 2]], "B": [[7, 2], [8, 2]]}
    failures = ["run 0 (start 0), step 10: atom isolated: H5 has no neighbour within bonding range (nearest 1.2 Å)",
                "run 2 (start 2), step 20: fragmented: N2 and H8, bonded at the start, are no longer joined by bonds",
                "run 3 (start 0), step 30: fragmented: C1 and N2, bonded at the start, are no longer joined by bonds",
                "run 4 (start 1), step 40: energy 9.1 eV off the reference"]  # names no atom: not counted
    hits = benchmark.failure_hits(failures, cells, likeliest, bonds)
    assert hits["named"] == 3 and hits["hits"] == 3  # H5; N2 (the anchor of B's H7-N2); C1 (the anchor of A's)
    assert hits["chance"] == pytest.approx(1 / 3 + 2 / 2 + 3 / 3)  # H5: 1 of A's 3; N2/H8: both of B's; C1/N2: all 3 of A's


def test_reused_md_only_for_the_same_committees(tmp_path):
    """--md-from takes an earlier run's NN-MD only where the committee audits exactly as it did there."""
    import json

    earlier = {"systems": {"toy": {"committees": [
        {"stage": "pool", "n_train": 10, "calibration": "own", "safe_temperature_K": 300.0,
         "by_calibration": {"own": {"safe_temperature_K": 300.0}, "fixed": {"safe_temperature_K": 250.0}},
         "md_stable_fraction": {"300": 0.5}, "md_stable_fraction_mean": 0.5, "md_cpu_s": 9.0,
         "md_runs_per_temperature": 64, "md_steps": 100}]}}}
    path = tmp_path / "earlier.json"
    path.write_text("progress line\n" + json.dumps(earlier))
    reused = benchmark.reused_md(path, "toy")
    same = {"own": {"safe_temperature_K": 300.0}, "fixed": {"safe_temperature_K": 250.0}}
    md = benchmark.reused_stage(reused, "pool", 10, same, path)
    assert md == {k: earlier["systems"]["toy"]["committees"][0][k] for k in benchmark.MD_KEYS}
    with pytest.raises(SystemExit, match="not the same committee"):
        benchmark.reused_stage(reused, "pool", 10, {**same, "fixed": {"safe_temperature_K": 251.0}}, path)
    with pytest.raises(SystemExit, match="not in it"):
        benchmark.reused_stage(reused, "pool", 11, same, path)
    with pytest.raises(SystemExit, match="no series"):
        benchmark.reused_md(path, "ethanol")


def test_verified_cells_combine_like_the_audit():
    def frame(true_error, flagged, failed):  # the committee -true_error/10 below the reference there
        return {"true_error": true_error, "energy_error": -true_error / 10, "flagged": flagged, "failed": failed}

    checked = {"A": dict(frames=[frame(1.0, False, False), frame(5.0, False, True)], safe_temperature_K=40.0,
                         safe_bound="estimate", reference_calls=3, reference_failures=[], reference_s=0.5,
                         safe_temperature_by_reach={"frame": (40.0, "estimate"), "path": (60.0, "estimate")}),
               "B": dict(frames=[frame(2.0, True, True)], safe_temperature_K=900.0, safe_bound="lower",
                         reference_calls=2, reference_failures=[{"index": 1, "reason": "SCF"}], reference_s=0.25,
                         safe_temperature_by_reach={"frame": (900.0, "lower"), "path": (900.0, "lower")})}
    out = benchmark.verified_cells(checked, {"A": {}, "B": {}})
    assert out["verified_safe_temperature_K"] == 40.0 and out["verified_bound"] == "estimate"
    assert out["verified_median_true_error"] == 2.0 and out["verified_reference_calls"] == 5
    assert out["verified_hole_depth"] == pytest.approx(0.5)  # the committee 0.5 below the reference at its worst
    assert benchmark.hole_depth([{"energy_error": -0.3}, {"energy_error": 0.1}]) == pytest.approx(0.3)
    assert benchmark.hole_depth([{"energy_error": 0.2}]) == 0.0  # above the reference everywhere: no hole
    assert out["verified_reference_failures"] == 1 and out["verified_counts"] == {  # over every cell's frames
        "flagged_and_failed": 1, "flagged_not_failed": 0, "failed_not_flagged": 1, "neither": 1}
    assert out["verified_by_cell"] == {"A": 40.0, "B": 900.0} and out["verified_safe_temperature_path_K"] == 60.0
    collapsed = benchmark.verified_cells({"B": checked["B"]}, {"B": {}, "C": {"collapsed_on_relax": "overlap"}})
    assert collapsed["verified_safe_temperature_K"] == 0.0 and collapsed["verified_bound"] == "estimate"
    assert collapsed["verified_safe_temperature_path_K"] == 0.0
    assert benchmark.verified_cells({"B": checked["B"]}, {"B": {}})["verified_bound"] == "lower"  # all bounds: a bound
    assert benchmark.lowest([]) == (0.0, "estimate")


def test_md_checked_cells_combine_like_the_audit():
    def run(kT, survived, ran_away):
        return {"kT": kT, "survived": survived, "ran_away": ran_away, "reason": "fragmented" if ran_away else ""}

    checked = {"A": dict(frames=[run(0.043, 1.0, False), run(0.172, 0.25, True)], safe_temperature_K=300.0,
                         safe_bound="estimate", cpu_s=2.0,
                         safe_temperature_by_reach={"frame": (300.0, "estimate"), "path": (700.0, "estimate")}),
               "B": dict(frames=[run(0.043, 0.5, True)], safe_temperature_K=100.0, safe_bound="estimate", cpu_s=1.0,
                         safe_temperature_by_reach={"frame": (100.0, "estimate"), "path": (150.0, "estimate")})}
    out = benchmark.md_checked_cells(checked, {"A": {}, "B": {}}, 0.043)
    assert out["md_checked_safe_temperature_K"] == 100.0 and out["md_checked_safe_temperature_path_K"] == 150.0
    assert out["runaway_survival"] == pytest.approx((1.0 + 0.25 + 0.5) / 3)
    assert out["runaway_survival_effective"] == pytest.approx(0.75)  # the runs at kT 0.043 only
    assert out["runaway_runs"] == 3 and out["runaway_ran_away"] == 2 and out["md_check_cpu_s"] == 3.0
    assert out["runaway_fraction"] == pytest.approx(2 / 3)
    collapsed = benchmark.md_checked_cells({"A": checked["A"]}, {"A": {}, "C": {"collapsed_on_relax": "x"}}, 0.043)
    assert collapsed["md_checked_safe_temperature_K"] == 0.0  # a cell that collapsed is unsafe at 0 K


def test_the_nn_md_test_subsampled_to_a_cpu_fraction_is_the_baseline():
    """Committees whose runs survive with probabilities far apart: a tenth of the runs ranks them almost as the rest
    do; committees that are all alike: the subsample ranks nothing (ρ near 0). Thermal rows: one group per T."""
    rng = np.random.default_rng(1)
    apart = [{"n_stable": int(rng.binomial(200, p)), "n_runs": 200} for p in np.linspace(0.05, 0.95, 12)]
    alike = [{"n_stable": int(rng.binomial(200, 0.5)), "n_runs": 200} for _ in range(12)]
    strong = benchmark.subsampled_md_baseline(apart, 0.1, draws=50)
    weak = benchmark.subsampled_md_baseline(alike, 0.1, draws=50)
    assert strong["runs_drawn"] == [20, 20] and strong["n"] == 12 and strong["draws"] == 50
    assert strong["rho_mean"] > 0.8 and abs(weak["rho_mean"]) < 0.3
    assert strong["rho_5"] <= strong["rho_mean"] <= strong["rho_95"]
    assert benchmark.subsampled_md_baseline(apart[:2], 0.1) is None  # two committees: nothing to rank
    assert benchmark.subsampled_md_baseline([{"n_stable": 5, "n_runs": 10}] * 3, 0.01)["runs_drawn"] == [1, 1]
    thermal = {"md_stable_fraction": {"300": 0.75, "600": 0.25}, "md_runs_per_temperature": 64}
    assert benchmark.md_groups(thermal) == [(48, 64), (16, 64)]
    assert benchmark.subsampled_md_baseline([thermal] * 3, 0.5, draws=5)["runs_drawn"] == [32, 32]


def test_baselines_of_stored_results(tmp_path, capsys):
    import json

    rows = [{"n_stable": n, "n_runs": 50} for n in (5, 20, 35, 48)]
    (tmp_path / "h.json").write_text(json.dumps({"headline": {"committees": rows, "audit_over_md_cpu": 0.2}}))
    out = benchmark.main(["--baselines", str(tmp_path / "h.json"), "--json"])
    result = out[f"{tmp_path / 'h.json'}:headline"]
    assert result["n"] == 4 and set(result["baselines"]) == {"0.1", "0.2"}
    assert result["baselines"]["0.2"]["runs_drawn"] == [10, 10]
    printed = capsys.readouterr().out
    assert "NN-MD at 0.1 of its CPU" in printed and json.loads(printed.splitlines()[-1])["mode"] == "baselines"


def test_a_measure_combined_with_a_few_runs_against_the_test_at_the_same_cpu():
    """A measure that knows each committee's true survival probability lifts a few runs' ranking; one that is noise
    does not; the test alone gets the combined CPU's runs."""
    rng = np.random.default_rng(2)
    p = np.linspace(0.2, 0.9, 20)
    rows = [{"n_stable": int(rng.binomial(55, q)), "n_runs": 55, "runaway_survival": q,
             "runaway_fraction": rng.random()} for q in p]
    informed = benchmark.combined_with_runs(rows, "runaway_survival", 0.1, 3, draws=40)
    noise = benchmark.combined_with_runs(rows, "runaway_fraction", 0.1, 3, draws=40)
    assert informed["with_runs"][0] > informed["runs_alone"] + 0.1 and informed["k"] == 3 and informed["n"] == 20
    assert noise["with_runs"][0] < informed["with_runs"][0]
    assert informed["test_runs"] == round((0.1 + 3 / 55) * 55) and informed["cpu_fraction"] == pytest.approx(0.1 + 3 / 55)
    assert benchmark.combined_with_runs(rows[:2], "runaway_survival", 0.1, 3) is None


def test_two_measures_of_the_same_committees_compared_by_a_paired_bootstrap(tmp_path, capsys):
    """A measure that knows each committee's survival probability against one that is noise: the difference of
    their Spearman ρ is positive and its bootstrap interval excludes 0; a measure against itself differs by 0.
    Stored results whose NN-MD fractions differ are not the same committees' test: refused."""
    import json

    rng = np.random.default_rng(3)
    p = np.linspace(0.1, 0.9, 30)
    stable = [int(rng.binomial(60, q)) for q in p]
    rows = lambda values: [{"arm": "gen1", "seed": k, "md_stable_fraction": n / 60, "runaway_survival": v}  # noqa: E731
                           for k, (n, v) in enumerate(zip(stable, values))]
    informed, noise = rows(p), rows(rng.random(30))
    out = benchmark.rho_difference(informed, noise, "runaway_survival", draws=300)
    assert out["n"] == 30 and out["rho_a"] > 0.7 and abs(out["rho_b"]) < 0.5
    assert out["bootstrap_2_5"] > 0 and out["fraction_a_not_better"] < 0.025
    fractions = [{**r, "runaway_fraction": -r["runaway_survival"]} for r in informed]  # safer sign −: a is better
    assert benchmark.rho_difference(fractions, [{**r, "runaway_fraction": r["runaway_survival"]} for r in noise],
                                    "runaway_fraction", draws=300)["fraction_a_not_better"] < 0.025
    same = benchmark.rho_difference(informed, informed, "runaway_survival", draws=50)
    assert same["difference"] == 0 and same["bootstrap_97_5"] == 0
    for name, committees in (("a", informed), ("b", noise)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"headline": {"committees": committees}}))
    result = benchmark.main(["--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--json"])
    assert result["headline"]["difference"] == pytest.approx(out["difference"])
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["mode"] == "compare"
    (tmp_path / "unfinished.json").write_text("")
    with pytest.raises(SystemExit, match="empty, no JSON result"):
        benchmark.main(["--compare", str(tmp_path / "a.json"), str(tmp_path / "unfinished.json")])
    shifted = [{**r, "md_stable_fraction": 1.0} for r in noise]
    (tmp_path / "c.json").write_text(json.dumps({"headline": {"committees": shifted}}))
    with pytest.raises(SystemExit, match="not the same committees"):
        benchmark.main(["--compare", str(tmp_path / "a.json"), str(tmp_path / "c.json")])
