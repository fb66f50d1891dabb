"""benchmarks/headline.py: the paper's experiment (Gen1, arms at N and N/10, Gen2 arms) runs in
--quick, reports every arm with its statistics and costs, and --reuse skips finished arms."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "headline.py")
ARMS = ("gen1", "md_N", "adversarial_N10", "adversarial_N", "random_N10", "md_attack_N10",
        "gen2+adversarial_N10", "gen2+md_N10", "gen2+random_N10")


def _run(out: str, *extra: str) -> tuple[dict, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, SCRIPT, "--quick", "--json", "--out", out, *extra], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), time.perf_counter() - start


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("headline"))
    result, seconds = _run(out)
    return out, result, seconds


def test_every_arm_has_its_statistics_and_costs(first):
    _, result, _ = first
    assert list(result["arms"]) == list(ARMS)
    for name, arm in result["arms"].items():
        for integrator in ("nve", "langevin"):
            entry = arm[integrator]
            assert entry["n_trajectories"] == result["trajectories_per_arm"] >= 1
            low, high = entry["interval"]
            assert 0 <= low <= entry["stable_fraction"] <= high <= 1
            if name != "md_N":
                assert 0 <= entry["logrank_p_vs_md_N"] <= 1
                assert 0 <= entry["logrank_stratified_p_vs_md_N"] <= 1
            assert sum(k for k, _ in entry["stable_per_seed"].values()) == entry["n_stable"]
            if name.startswith("gen2+") and name != "gen2+md_N10":
                assert 0 <= entry["logrank_p_vs_gen2+md_N10"] <= 1
        for key in ("reference_calls_total", "reference_cpu_s_total", "sampling_cpu_s_total", "training_cpu_s_total"):
            assert arm[key] >= 0
        assert arm["total_cpu_s"] == pytest.approx(
            arm["reference_cpu_s_total"] + arm["sampling_cpu_s_total"] + arm["training_cpu_s_total"])
    arms = result["arms"]
    # budgets: N = 4 in --quick, N/10 rounds up to one label; Gen2 arms carry md_N's labels
    assert arms["gen1"]["labels"] == 0
    assert arms["md_N"]["labels"] == arms["adversarial_N"]["labels"] == 4
    assert arms["adversarial_N10"]["labels"] == arms["random_N10"]["labels"] == arms["md_attack_N10"]["labels"] == 1
    assert arms["gen2+adversarial_N10"]["labels"] == arms["gen2+md_N10"]["labels"] == 5
    # every label was paid by at least one reference call; sampling costs CPU in every sampled arm
    assert all(arms[a]["reference_calls_total"] >= arms[a]["labels"] for a in ARMS)
    assert all(arms[a]["sampling_cpu_s_total"] > 0 for a in ARMS if a != "gen1")
    assert arms["gen2+md_N10"]["training_cpu_s_total"] > arms["md_N"]["training_cpu_s_total"]
    assert set(result["headline"]["nve"]) == {"gen1", "gen2"}


def test_rows_record_where_picks_sit(first):
    out, _, _ = first
    with open(os.path.join(out, "rows.json")) as handle:
        rows = json.load(handle)
    attack = next(r for r in rows if r["arm"] == "adversarial_N")
    assert len(attack["picked"]) == 4
    for point in attack["picked"]:
        assert point["sigma"] >= 0 and point["distance_A"] >= 0 and point["n_atoms"] == 13


def test_reuse_skips_finished_arms(first):
    """--reuse: finished arms are read back; an arm whose row is missing resumes its round from its run
    directory (no reference call paid again) and gives the same row."""
    out, result, seconds = first
    labels = os.path.join(out, "runs", "adversarial_N__seed0", "labels.jsonl")
    with open(labels, "rb") as handle:
        paid = handle.read()
    os.remove(os.path.join(out, "arms", "adversarial_N__seed0.json"))
    again, seconds_again = _run(out, "--reuse")
    assert again["arms"] == result["arms"]
    assert seconds_again < seconds
    with open(labels, "rb") as handle:
        assert handle.read() == paid


def test_reuse_tests_a_trained_arm_again_when_only_the_test_changes(tmp_path):
    """--reuse with another NN-MD test (more steps, more runs): every arm keeps its committee,
    training set, labels and costs (nothing retrained, no reference call paid) and is tested again
    at the new settings."""
    out = str(tmp_path)
    arms = "gen1,md_N,adversarial_N10"
    first, _ = _run(out, "--arms", arms)
    committees = {name: os.path.getmtime(os.path.join(out, "committees", name)) for name in os.listdir(
        os.path.join(out, "committees"))}
    labels = os.path.join(out, "runs", "md_N__seed0", "labels.jsonl")
    with open(labels, "rb") as handle:
        paid = handle.read()
    again, _ = _run(out, "--reuse", "--arms", arms, "--md-steps", "30", "--trajectories", "6")
    assert again["trajectories_per_arm"] == 6 and again["settings"]["md_steps"] == 30
    for name in arms.split(","):
        before, after = first["arms"][name], again["arms"][name]
        for key in ("labels", "reference_calls_total", "training_cpu_s_total", "total_cpu_s"):
            assert after[key] == before[key], (name, key)
        assert after["nve"]["n_trajectories"] == 6 != before["nve"]["n_trajectories"]
    with open(os.path.join(out, "arms", "md_N__seed0.json")) as handle:
        row = json.load(handle)
    assert row["retested_from"]["md_steps"] == first["settings"]["md_steps"]
    assert row["stability"]["nve"]["n_steps"] == 30 and row["stability"]["nve"]["n_runs"] == 6
    assert {name: os.path.getmtime(os.path.join(out, "committees", name)) for name in committees} == committees
    with open(labels, "rb") as handle:
        assert handle.read() == paid


def test_a_row_from_before_a_new_setting_is_reused_not_tested_again(tmp_path):
    """--reuse at the same settings reads an arm back untouched even when its row predates a setting
    (``gen1_interval``): no second NN-MD test of a committee whose test did not change."""
    out = str(tmp_path)
    _run(out, "--arms", "gen1")
    path = os.path.join(out, "arms", "gen1__seed0.json")
    with open(path) as handle:
        row = json.load(handle)
    del row["settings"]["gen1_interval"]
    with open(path, "w") as handle:
        json.dump(row, handle)
    _run(out, "--reuse", "--arms", "gen1")
    with open(path) as handle:
        again = json.load(handle)
    assert "retested_from" not in again and again["stability"] == row["stability"]


def test_bad_arguments_are_refused_naming_them():
    done = subprocess.run([sys.executable, SCRIPT, "--quick", "--integrators", "verlet"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and "--integrators" in done.stderr and "verlet" in done.stderr
    done = subprocess.run([sys.executable, SCRIPT, "--quick", "--kT-sweep", "-1"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 2 and "--kT-sweep" in done.stderr


def test_md_stability_takes_any_system_and_names_options_its_factory_lacks():
    """benchmarks/md_stability.py --system module:factory: accepted; an option the factory does not
    take (--neb-steps on a system without a hop path) is refused naming it, before any work."""
    script = os.path.join(ROOT, "benchmarks", "md_stability.py")
    done = subprocess.run([sys.executable, script, "--system", "tests.user_systems:tilted_well", "--neb-steps", "5"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    assert "tests.user_systems:tilted_well" in done.stderr and "--neb-steps (neb_steps=5)" in done.stderr
    done = subprocess.run([sys.executable, script, "--system", "nosuch.module:factory"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and "nosuch" in done.stderr


def test_neb_barrier_flags_an_unconverged_band():
    """molecules.neb_barrier(unconverged="flag"): the last band's barrier, images flagged, no raise."""
    from ase.calculators.emt import EMT

    from advsample.molecules import neb_barrier
    from advsample.systems.adatom import hop_endpoints, path_barrier, relaxed

    start, end = hop_endpoints()
    barrier, images = neb_barrier(start, end, EMT(), n_images=3, steps=1, unconverged="flag")
    assert all(image.info["neb_converged"] is False for image in images)
    assert barrier == pytest.approx(max(i.info["energy"] for i in images) - images[0].info["energy"])
    converged, images = neb_barrier(start, end, EMT(), n_images=3)
    assert all(image.info["neb_converged"] for image in images)
    assert converged == pytest.approx(0.374, abs=0.01) and converged == pytest.approx(path_barrier(images))
    with pytest.raises(ValueError, match="unconverged"):
        neb_barrier(start, end, EMT(), unconverged="ignore")
    assert relaxed(start, EMT()).get_positions().shape == start.get_positions().shape


def test_each_arm_is_one_round_of_the_loop_and_its_costs_are_the_rounds(first):
    """An arm's row carries the costs its run directory's round recorded (reference calls incl.
    failed and out-of-window ones, CPU of labeling, sampling, selection, training) and its picks."""
    out, _, _ = first
    with open(os.path.join(out, "rows.json")) as handle:
        rows = {r["arm"]: r for r in json.load(handle)}
    for arm in ARMS[1:]:
        run_dir = os.path.join(out, "runs", f"{arm}__seed0")
        with open(os.path.join(run_dir, "round_001", "metrics.json")) as handle:
            metrics = json.load(handle)
        with open(os.path.join(run_dir, "settings.json")) as handle:
            assert set(json.load(handle)["start"]) == {"committee", "train", "validation"}
        row, timings = rows[arm], metrics["timings"]
        assert row["reference_calls"] == metrics["round_reference_calls"]["total"] >= row["new_labels"]
        assert (row["reference_cpu_s"], row["sampling_cpu_s"], row["select_cpu_s"], row["training_cpu_s"]) == (
            timings["label_cpu_s"], timings["sample_cpu_s"], timings["select_cpu_s"], timings["train_cpu_s"])
        assert row["new_labels"] == metrics["new_labels"] == row["budget"] == len(row["picked"])
        assert row["n_train"] == metrics["n_train"] == rows[row["parent"]]["n_train"] + row["budget"]
        assert metrics["training"]["continued"]  # the parent's weights, continued


def test_gen1_data_are_computed_once_per_output_directory(tmp_path, monkeypatch):
    """Gen1's reference-MD set is computed once and read back by every later seed (same frames,
    the one computation's CPU seconds); other settings compute it again."""
    import argparse

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import headline

    system = headline.build_system("adatom", {"smoke": True}, 500.0)
    args = argparse.Namespace(out=str(tmp_path), system="adatom", gen1_labels=len(system.initial) + 2,
                              gen1_temperature_K=300.0)
    frames, cpu = headline.gen1_data(system, args)
    assert len(frames) == args.gen1_labels and cpu > 0
    computed = headline.reference_md
    monkeypatch.setattr(headline, "reference_md", lambda *a, **k: pytest.fail("Gen1's data computed twice"))
    again, cpu_again = headline.gen1_data(system, args)
    assert cpu_again == cpu
    assert [a.positions.tolist() for a in again] == [a.positions.tolist() for a in frames]
    assert [a.get_potential_energy() for a in again] == [a.get_potential_energy() for a in frames]
    monkeypatch.setattr(headline, "reference_md", computed)
    hotter, _ = headline.gen1_data(system, argparse.Namespace(**{**vars(args), "gen1_temperature_K": 600.0}))
    assert [a.positions.tolist() for a in hotter] != [a.positions.tolist() for a in frames]
    longer, _ = headline.gen1_data(system, argparse.Namespace(**{**vars(args), "gen1_interval": 3}))
    assert [a.positions.tolist() for a in longer] != [a.positions.tolist() for a in frames]
    assert sorted(os.listdir(tmp_path)) == ["gen1_data.pkl", "gen1_data.pkl.lock"]  # replaced atomically


def test_rows_written_before_gen1_interval_existed_are_reused_at_its_default():
    """A row without ``gen1_interval`` (written before the option) counts as the default interval."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import headline

    now = {"system": "adatom", "gen1_interval": headline.GEN1_MD["interval"], "per_seed": 3}
    old = {"system": "adatom", "per_seed": 5}
    assert headline.training_settings(old) == headline.training_settings(now)
    assert headline.training_settings(old) != headline.training_settings({**now, "gen1_interval": 50})
    assert headline.parse(["--quick"]).gen1_interval == headline.GEN1_MD["interval"]
    with pytest.raises(SystemExit):
        headline.parse(["--quick", "--gen1-interval", "0"])


def test_objective_sweep_adds_the_papers_objective_arms():
    """--objective-sweep: two Gen2 attack arms from md_N with the authors' per-atom energies and max
    force variance in their objective; refused with the highest-σ seeding (it scores by the default)."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import headline
    from advsample.systems import get_system

    sweep = {"gen2+adversarial_peratom_N10", "gen2+adversarial_forcesmax_N10", "gen2+adversarial_peratom_seeds8_N10"}
    chosen = {a.name: a for a in headline.selected_arms(headline.parse(["--quick", "--objective-sweep"]))}
    assert sweep <= set(chosen) and {chosen[name].parent for name in sweep} == {"md_N"}
    assert not sweep & {a.name for a in headline.selected_arms(headline.parse(["--quick"]))}
    system = get_system("double_well_2d")
    _, per_atom = headline.make_arm_sampler(system, chosen["gen2+adversarial_peratom_N10"], 1, 10)
    _, largest = headline.make_arm_sampler(system, chosen["gen2+adversarial_forcesmax_N10"], 1, 10)
    assert (per_atom.energy_scale, per_atom.force_reduction) == ("per_atom", "mean")
    assert (largest.energy_scale, largest.force_reduction, largest.uncertainty) == ("total", "max", "forces")
    wide, wide_objective = headline.make_arm_sampler(system, chosen["gen2+adversarial_peratom_seeds8_N10"], 2, 40)
    narrow, _ = headline.make_arm_sampler(system, chosen["gen2+adversarial_peratom_N10"], 2, 40)
    assert (wide.n_seeds, narrow.n_seeds, wide_objective.energy_scale) == (16, 4, "per_atom")
    from advsample.samplers import BondStretchSampler

    bonds = chosen["gen2+bond_stretch_holesrelative_callsN5"]  # the holesrelative attack arm's rules and objective
    twin = chosen["gen2+adversarial_peratom_holesrelative_callsN5"]
    assert (bonds.parent, bonds.method, bonds.window(), bonds.budget_unit) == ("md_N", "bond_stretch", twin.window(),
                                                                               "reference_calls")
    from_gen1 = chosen["bond_stretch_holesrelative_callsN5"]
    assert (from_gen1.parent, from_gen1.window()) == ("gen1", chosen["adversarial_peratom_holesrelative_callsN5"].window())
    stretch, stretch_objective = headline.make_arm_sampler(system, bonds, 2, 40)
    assert isinstance(stretch, BondStretchSampler) and stretch.n_seeds == 16
    assert stretch_objective.energy_scale == "per_atom"
    with pytest.raises(SystemExit):
        headline.parse(["--quick", "--objective-sweep", "--seed-choice", "sigma"])


def test_arms_at_equal_reference_calls_pay_exactly_their_budget(first):
    """The --objective-sweep arms with ``budget_unit="reference_calls"`` (the per-atom attack with an
    energy floor, and MD-driven labels) pay exactly their budget of calls and train on the labels
    inside the window only; the floor reaches the round's selection."""
    out, _, _ = first
    extra = ("--objective-sweep", "--reuse", "--arms",
             "gen1,md_N,gen2+adversarial_peratom_floor_callsN5,gen2+md_callsN5,gen2+md_holesrelative_callsN5")
    _run(out, *extra)
    with open(os.path.join(out, "rows.json")) as handle:
        rows = {r["arm"]: r for r in json.load(handle)}
    for arm in ("gen2+adversarial_peratom_floor_callsN5", "gen2+md_callsN5", "gen2+md_holesrelative_callsN5"):
        row = rows[arm]
        with open(os.path.join(out, "runs", f"{arm}__seed0", "round_001", "metrics.json")) as handle:
            metrics = json.load(handle)
        assert row["budget_unit"] == metrics["budget_unit"] == "reference_calls"
        assert row["reference_calls"] == metrics["round_reference_calls"]["total"] == row["budget"]
        assert row["new_labels"] == len(row["picked"]) <= row["budget"]
        assert row["n_train"] == rows["md_N"]["n_train"] + row["new_labels"]
    with open(os.path.join(out, "runs", "gen2+adversarial_peratom_floor_callsN5__seed0", "settings.json")) as handle:
        assert "energy_floor=-5.0" in json.load(handle)["selection"]
    with open(os.path.join(out, "runs", "gen2+md_holesrelative_callsN5__seed0", "settings.json")) as handle:
        selection = json.load(handle)["selection"]  # the holes' loss weights reach the round's selection
    assert all(s in selection for s in ("label_ceiling=25.0", "above_window_weights=(0.0, 1.0)",
                                        "above_window_force_cap=2.0"))
    relative = {a.name: a for a in headline_arms()}["gen2+adversarial_peratom_holesrelative_callsN5"]
    assert (relative.above_window_weights, relative.above_window_force_cap, relative.label_ceiling_eV) == (
        (0.0, 1.0), 2.0, 25.0)
    holes = {a.name: a for a in headline_arms()}["gen2+adversarial_peratom_holes_callsN5"]
    assert (holes.label_ceiling_eV, holes.energy_floor_eV, holes.budget_unit) == (25.0, -5.0, "reference_calls")
    control = {a.name: a for a in headline_arms()}["gen2+md_holes_callsN5"]
    assert (control.method, control.label_ceiling_eV, control.energy_floor_eV, control.budget_unit) == (
        "md", 25.0, -5.0, "reference_calls")


def headline_arms():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import headline

    return headline.arms(objective_sweep=True)


def test_an_added_integrator_is_tested_alone_and_the_earlier_results_kept(tmp_path, monkeypatch):
    """--reuse with ``--integrators nve,langevin`` after ``nve``: only Langevin is run, NVE's results
    stay as measured; any other change of the test runs every integrator again."""
    import argparse

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import headline

    calls = []

    def fake(system, committee, args, seed, integrators=None):
        calls.append(list(integrators or args.integrators))
        return {i: {"n_stable": 7, "n_runs": 9} for i in integrators or args.integrators}, []

    monkeypatch.setattr(headline, "stability", fake)
    old = {"system": "adatom", "per_seed": 9, "md_steps": 40, "integrators": ["nve"], "temperature_K": 1000.0,
           "energy_tolerance": None}
    row = {"arm": "md_N", "seed": 0, "settings": old, "stability": {"nve": {"n_stable": 3, "n_runs": 9}}}
    both = {**old, "integrators": ["nve", "langevin"]}
    assert headline.added_integrators(row, both) == ["langevin"]
    assert headline.added_integrators(row, {**both, "md_steps": 80}) == []
    args = argparse.Namespace(out=str(tmp_path), integrators=["nve", "langevin"])
    os.makedirs(tmp_path / "arms")
    new = headline.retest(None, row, None, args, both, log=lambda message: None)
    assert calls == [["langevin"]]
    assert new["stability"] == {"nve": {"n_stable": 3, "n_runs": 9}, "langevin": {"n_stable": 7, "n_runs": 9}}
    again = headline.retest(None, row, None, args, {**both, "md_steps": 80}, log=lambda message: None)
    assert calls[-1] == ["nve", "langevin"] and again["stability"]["nve"]["n_stable"] == 7


def test_the_headline_ratio_takes_any_attack_arm_from_gen1():
    """headline_ratio: among arms from Gen1 whose method is an attack, the one with the fewest labels
    that reaches md_N's stable fraction, with its label, call and CPU ratios; None when none reaches it."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import headline

    def line(parent, method, labels, calls, cpu, fraction):
        return {"parent": parent, "method": method, "labels": labels, "reference_calls_total": calls,
                "total_cpu_s": cpu, "nve": {"stable_fraction": fraction}}

    table = {"gen1": line(None, None, 0, 0, 0, 0.69), "md_N": line("gen1", "md", 150, 158, 52, 0.85),
             "adversarial_N10": line("gen1", "adversarial", 15, 16, 120, 0.80),
             "adversarial_peratom_holesrelative_callsN5": line("gen1", "adversarial", 20, 30, 260, 0.86),
             "random_N10": line("gen1", "random", 15, 15, 10, 0.90)}  # not an attack: never the answer
    ratio = headline.headline_ratio(table, "nve")["gen1"]
    assert ratio["adversarial_arm"] == "adversarial_peratom_holesrelative_callsN5"
    assert (ratio["label_ratio"], ratio["calls_ratio"], ratio["cpu_ratio"]) == pytest.approx((20 / 150, 30 / 158, 5.0))
    table["adversarial_peratom_holesrelative_callsN5"]["nve"]["stable_fraction"] = 0.84
    assert headline.headline_ratio(table, "nve")["gen1"]["adversarial_arm"] is None


def test_arm_table_counts_only_the_arms_tested_with_the_integrator():
    """An integrator added to some arms later (--reuse): the table of that integrator has those arms only; an
    integrator no arm has is refused by name (notebook 06 with -p integrator langevin on such a folder)."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import headline

    def row(arm, integrators):
        test = {"n_steps": 10, "timestep_fs": 0.5, "time_to_failure_fs": [None, 2.0, None, None]}
        return {"arm": arm, "seed": 0, "parent": None if arm == "gen1" else "gen1", "method": None, "labels": 0.0,
                "reference_calls_total": 0.0, "reference_cpu_s_total": 0.0, "sampling_cpu_s_total": 0.0,
                "training_cpu_s_total": 0.0, "total_cpu_s": 0.0, "reference_cpu_s": 0.0, "training_cpu_s": 1.0,
                "stability": {i: test for i in integrators}}

    rows = [row("gen1", ["nve", "langevin"]), row("md_N", ["nve"])]
    assert set(headline.arm_table(rows, ["nve"])) == {"gen1", "md_N"}
    langevin = headline.arm_table(rows, ["langevin"])
    assert set(langevin) == {"gen1"} and langevin["gen1"]["langevin"]["n_stable"] == 3
    with pytest.raises(ValueError, match=r"no arm of these rows was tested with \['npt'\]"):
        headline.arm_table(rows, ["npt"])
