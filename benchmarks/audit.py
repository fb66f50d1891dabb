"""Does the audit rank committees as NN-MD does, at a fraction of its CPU? (issue 36)

For each system, committees at several stages of training, each calibrated on its own
held-out split (:mod:`advsample.calibration`), then side by side in one process:

* the audit (:func:`advsample.audit.audit`): its predicted safe temperature and CPU time;
* batched NN-MD (:func:`advsample.metrics.md_stability`, Langevin, 64 runs per temperature)
  at four temperatures: the stable fraction per temperature and its mean, and CPU time.

The series (one function each, the systems a table of their settings, ``SETTINGS``):

* ``thermal_stages`` — the system's initial data plus reference-MD frames of ever hotter runs
  (the data reach further up the surface at each stage, as active learning's rounds do):
  ``ammonia_thermal`` (NH3, GFN2-xTB), ``ethanol`` (GFN2-xTB, anti conformer only at first),
  ``adatom`` (Au/Al(100) slab, EMT) and ``host_guest`` (SOD:methylamine, GFN-FF, the
  headline's small SchNet);
* ``subset_stages`` — growing random subsets of NH3's initial data (``ammonia``);
* ``double_well_stages`` — the 2D double well's pool cut at growing x (``double_well_2d``).

Reported: the Spearman rank correlation across committees between the predicted safe
temperature and the mean NN-MD stable fraction (goal >= 0.8), the audit's CPU time over
NN-MD's (goal <= 1/10), and each committee's calibrated force coverage on a held-out test
half beside its miscalibration area.

    python benchmarks/audit.py [--quick] [--json] [--systems ammonia_thermal,ethanol,adatom,host_guest] [--md-runs 64]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, set_threads  # noqa: E402

import numpy as np  # noqa: E402
from ase import units  # noqa: E402
from scipy import stats  # noqa: E402

from advsample.audit import AuditConfig, audit  # noqa: E402
from advsample.calibration import calibrate, calibration_report  # noqa: E402
from advsample.metrics import md_stability  # noqa: E402
from advsample.train import TrainConfig, train_committee  # noqa: E402


def double_well_stages(quick: bool, series: dict):
    """The series as every stages function returns it: ``stages`` ((name, train, validation) per stage), ``test``,
    ``audit_starts``, ``md_starts``, ``make_committee``, ``reference`` (calculator) and ``train`` (TrainConfig, its
    epochs replaced by the table's)."""
    from advsample.surfaces import double_well_2d

    surface = double_well_2d()
    pool = surface.sample(60 if quick else 200, seed=0, max_energy=1.0)
    validation = surface.sample(40 if quick else 100, seed=1, max_energy=1.0)
    test = surface.sample(200, seed=2, max_energy=1.0)
    cuts = (0.0, 0.5, 1.5) if quick else (-0.2, 0.0, 0.3, 0.5, 0.7, 1.5)  # training data at x < cut
    stages = [(f"x<{cut}", [a for a in pool if a.positions[0, 0] < cut],
               [a for a in validation if a.positions[0, 0] < cut]) for cut in cuts]
    starts = surface.sample(32, seed=7, max_energy=-1.0, region=[(-1.5, 0.0), (-1.2, 1.2)])
    return dict(stages=stages, test=test, audit_starts=starts, md_starts=starts, make_committee=_mlp,
                reference=surface, train=TrainConfig())


def _system_pool(series: dict):
    """The built System, its calculator, and its initial data shuffled (seed 0) as (validation, pool)."""
    from advsample.reference import CalculatorSpec
    from advsample.systems import get_system

    system = get_system(series["system"], **series.get("options", {}))
    calculator = system.reference.build() if isinstance(system.reference, CalculatorSpec) else system.reference
    rng = np.random.default_rng(0)
    pool = [system.initial[k] for k in rng.permutation(len(system.initial))]
    n_validation = series.get("n_validation", 12)
    return system, calculator, pool[:n_validation], pool[n_validation:]


def subset_stages(quick: bool, series: dict):
    """Committees trained on growing random subsets of the system's initial data (one fixed validation split)."""
    system, calculator, validation, pool = _system_pool(series)
    sizes = (8, 32, len(pool)) if quick else (6, 10, 16, 32, 64, len(pool))
    stages = [(f"n={n}", pool[:n], validation) for n in sizes]
    return _series(stages, system, calculator, series)


def _series(stages, system, calculator, series: dict) -> dict:
    """The stages with the System's test set, committee factory and training settings, and the audit's starts: the
    initial data, or (``series["relax_starts"]`` = n) its n lowest-energy structures relaxed with the reference
    (the audit measures energies from the lowest start: give it minima, not thermal frames)."""
    audit_starts = system.initial
    if series.get("relax_starts"):
        lowest = sorted(system.initial, key=lambda a: a.get_potential_energy())[: series["relax_starts"]]
        audit_starts = [relaxed_reference(a, calculator) for a in lowest]
    return dict(stages=stages, test=system.test, audit_starts=audit_starts, md_starts=system.initial,
                make_committee=lambda: system.make_committee(0), reference=calculator, train=system.train)


def relaxed_reference(atoms, calculator, fmax: float = 0.05, steps: int = 300):
    """``atoms`` relaxed with BFGS on the reference ``calculator`` (constraints kept), labeled there."""
    from ase.optimize import BFGS

    from advsample.structures import labeled

    atoms = atoms.copy()
    atoms.calc = calculator
    BFGS(atoms, logfile=None).run(fmax=fmax, steps=steps)
    out = labeled(atoms, atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False),
                  label_source="reference minimum")
    return out


def reference_md_frames(start, calculator, temperature_K: float, n_frames: int, every: int = 10, seed: int = 0,
                        timestep_fs: float = 0.5):
    """Labeled frames of a reference Langevin MD (``timestep_fs``) from ``start``: every ``every`` steps.

    Constraints of ``start`` (e.g. the slab's fixed layers) are kept; forces are stored unconstrained."""
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from advsample.structures import labeled

    atoms = start.copy()
    atoms.calc = calculator
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    options = {"fixcm": False} if atoms.constraints else {}
    dynamics = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K, friction=0.02,
                        rng=np.random.default_rng(seed + 1), **options)
    frames = []
    for _ in range(n_frames):
        dynamics.run(every)
        copy = atoms.copy()
        copy.calc = None
        frames.append(labeled(copy, atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False),
                              label_source=f"reference MD {temperature_K:g} K"))
    return frames


def thermal_stages(quick: bool, series: dict):
    """Committees trained on the system's initial data plus reference-MD frames of ever hotter runs (from its
    lowest-energy initial structure): a data set that reaches further up the surface at each stage, as active
    learning's rounds do. Every 5th new frame goes to the stage's calibration split, not training."""
    system, calculator, validation, pool = _system_pool(series)
    start = min(system.initial, key=lambda a: a.get_potential_energy())
    temperatures = series["temperatures_K"][1 if quick else 0]
    n_frames = series["n_frames"][1 if quick else 0]
    thermal = {T: reference_md_frames(start, calculator, T, n_frames, every=series.get("every", 10), seed=k,
                                      timestep_fs=series.get("timestep_fs", 0.5))
               for k, T in enumerate(temperatures)}
    stages = [("pool", pool, validation)]
    for k, T in enumerate(temperatures):
        new = [f for t in temperatures[: k + 1] for f in thermal[t]]
        stages.append((f"+MD<={T}K", pool + [f for i, f in enumerate(new) if i % 5], validation + new[::5]))
    return _series(stages, system, calculator, series)


MOLECULE_AUDIT = dict(kT_values=(0.05, 0.1, 0.2, 0.4), force_tolerance=1.0, n_replicas=4, max_starts=8, n_steps=60,
                      learning_rate=0.01, initial_displacement=0.02, frames_every=3, min_distance=0.6)
SETTINGS = {  # per system: the series (stages function and its table), training epochs (quick, full), audit, NN-MD
    "double_well_2d": dict(
        stages=double_well_stages, series={}, epochs=(150, 800), energy_unit="arb. units",
        audit=dict(kT_values=(0.3, 1.0, 3.0), force_tolerance=2.0, n_replicas=2, max_starts=32, n_steps=80,
                   learning_rate=0.02, initial_displacement=0.2, frames_every=2),
        md_kT=(0.5, 0.75, 1.0, 1.25), md_steps=(100, 1000),
        md=dict(timestep_fs=1.0, n_check_frames=20, energy_tolerance_eV=0.5, check_every=10),
        md_reference=True),
    "ammonia_thermal": dict(
        stages=thermal_stages, series=dict(system="ammonia", temperatures_K=((300, 600, 1200, 2400), (600, 2400)),
                                           n_frames=(40, 10)),
        epochs=(100, 600), energy_unit="eV", audit=MOLECULE_AUDIT,
        md_kT=(0.05, 0.1, 0.2, 0.4), md_steps=(400, 2000), md=dict(timestep_fs=0.5, check_every=10),
        md_reference=False),
    "ammonia": dict(
        stages=subset_stages, series=dict(system="ammonia"), epochs=(100, 600), energy_unit="eV",
        audit=MOLECULE_AUDIT, md_kT=(0.05, 0.1, 0.2, 0.4), md_steps=(400, 2000),
        md=dict(timestep_fs=0.5, check_every=10), md_reference=False),
    "ethanol": dict(  # GFN2-xTB; initial data: 300 K MD of the anti conformer only
        stages=thermal_stages, series=dict(system="ethanol", temperatures_K=((300, 600, 1200, 2400), (600, 2400)),
                                           n_frames=(30, 8), relax_starts=2),
        epochs=(60, 400), energy_unit="eV",
        audit={**MOLECULE_AUDIT, "kT_values": (0.025, 0.05, 0.1, 0.2), "n_replicas": 8},
        md_kT=(0.05, 0.1, 0.15, 0.2), md_steps=(200, 2000), md=dict(timestep_fs=0.5, check_every=10),
        md_reference=False),
    "adatom": dict(  # Au on Al(100), EMT; initial data: 300 K MD in one hollow; NN-MD energies checked against EMT
        stages=thermal_stages, series=dict(system="adatom", options=dict(n_initial=40, n_features=16), n_validation=8,
                                           temperatures_K=((600, 900, 1200), (600, 1200)), n_frames=(30, 8),
                                           every=5, timestep_fs=2.0, relax_starts=2),
        epochs=(60, 300), energy_unit="eV",
        audit=dict(kT_values=(0.025, 0.05, 0.1, 0.2), force_tolerance=0.5, n_replicas=4, max_starts=8, n_steps=60,
                   learning_rate=0.02, initial_displacement=0.05, frames_every=3, min_distance=1.5),
        md_kT=(0.025, 0.05, 0.075, 0.1), md_steps=(100, 400),
        md=dict(timestep_fs=2.0, check_every=5, energy_tolerance_eV=0.2, n_check_frames=3), md_reference=True),
    "host_guest": dict(  # SOD:methylamine, GFN-FF; the headline's small SchNet (16 features, 1 interaction)
        stages=thermal_stages, series=dict(system="host_guest", n_validation=10, temperatures_K=(
            (900, 1800), (900, 1800)), n_frames=(20, 5), every=5, options=dict(
            cells=["SOD:methylamine"], n_initial=60, n_thermal=20, n_window=4, md_interval=10, n_features=16,
            n_interactions=1, progress=False), relax_starts=1),
        epochs=(20, 150), energy_unit="eV",
        audit=dict(kT_values=(0.05, 0.1, 0.2, 0.4), force_tolerance=2.0, n_replicas=8, max_starts=8, n_steps=40,
                   learning_rate=0.01, initial_displacement=0.02, frames_every=3, min_distance=0.8),
        md_kT=(0.05, 0.075, 0.1, 0.15), md_steps=(100, 400), md=dict(timestep_fs=0.5, check_every=10),
        md_reference=False),
}

DEFAULT_SYSTEMS = "ammonia_thermal,ethanol,adatom,host_guest"  # the four


def _mlp():
    from advsample.committee import Committee
    from advsample.models import MLPCommittee

    return Committee(MLPCommittee(4, (32, 32), input_axes=(0, 1), seed=0))


def run_system(name: str, quick: bool, md_runs: int | None = None) -> dict:
    settings = SETTINGS[name]
    build_cpu = time.process_time()
    series = settings["stages"](quick, settings["series"])
    stages, test, reference = series["stages"], series["test"], series["reference"]
    train_config = replace(series["train"], epochs=settings["epochs"][0 if quick else 1], progress=False)
    build_cpu = time.process_time() - build_cpu
    half = len(test) // 2
    rows = []
    audit_settings = {**settings["audit"], **({"n_steps": 30, "n_replicas": 1} if quick else {})}
    audit_config = AuditConfig(**audit_settings, energy_unit=settings["energy_unit"])
    n_runs = md_runs or (16 if quick else 64)
    for stage, train, validation in stages:
        committee = series["make_committee"]()
        started = time.perf_counter()
        train_committee(committee, train, None, train_config)
        train_s = time.perf_counter() - started
        calibration = calibrate(committee, validation, coverage=0.95)
        report = calibration_report(calibration, committee, test[half:])
        result = audit(committee, series["audit_starts"], audit_config, progress=False)
        md_cpu, fractions = time.process_time(), {}
        for kT in settings["md_kT"]:
            md = md_stability(committee, series["md_starts"][:8], temperature_K=kT / units.kB, n_runs=n_runs, seed=0,
                              n_steps=settings["md_steps"][0 if quick else 1],
                              reference=reference if settings["md_reference"] else None, **settings["md"])
            fractions[f"{kT / units.kB:.0f}"] = md["md_stable_fraction"]
        md_cpu = time.process_time() - md_cpu
        row = {"stage": stage, "n_train": len(train), "train_s": train_s,
               "safe_temperature_K": result.safe_temperature_K, "safe_bound": result.safe_bound,
               "audit_cpu_s": result.time_s, "audit_committee_calls": result.committee_calls,
               "md_stable_fraction": fractions, "md_stable_fraction_mean": float(np.mean(list(fractions.values()))),
               "md_cpu_s": md_cpu, "md_runs_per_temperature": n_runs, "md_steps": settings["md_steps"][0 if quick else 1],
               "force_scale": calibration.force_scale, "audit_per_kT": [  # what set the safe T
                   {k: row[k] for k in ("kT", "n_over_tolerance", "max_error", "min_energy_above_min_over_tolerance")}
                   for row in result.per_kT],
               **{k: report[k] for k in ("force_coverage_conformal", "force_coverage_power",
                                         "force_miscalibration_area_raw", "force_miscalibration_area_calibrated")}}
        rows.append(row)
        print(json.dumps({name: row}), file=sys.stderr)
    safe = [r["safe_temperature_K"] for r in rows]
    stable = [r["md_stable_fraction_mean"] for r in rows]
    rho = stats.spearmanr(safe, stable).statistic if len(set(safe)) > 1 and len(set(stable)) > 1 else float("nan")
    audit_cpu, md_cpu = sum(r["audit_cpu_s"] for r in rows), sum(r["md_cpu_s"] for r in rows)
    return {"committees": rows, "spearman_safe_T_vs_md_stable": float(rho), "audit_cpu_s": audit_cpu,
            "md_cpu_s": md_cpu, "audit_over_md_cpu": audit_cpu / md_cpu if md_cpu else float("nan"),
            "stated_coverage": 0.95, "audit_tolerance": settings["audit"]["force_tolerance"],
            "md_temperatures_K": [round(kT / units.kB) for kT in settings["md_kT"]], "data_cpu_s": build_cpu,
            "settings": {k: settings[k] for k in ("series", "epochs", "audit", "md_kT", "md_steps", "md", "md_reference")}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="three committees, short training and MD (a test)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--systems", default=None, help=f"comma-separated of {', '.join(SETTINGS)} (default: "
                                                        f"{DEFAULT_SYSTEMS}; --quick: double_well_2d)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--md-runs", type=int, default=None, help="NN-MD runs per temperature (default 64; quick 16)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    names = (args.systems or ("double_well_2d" if args.quick else DEFAULT_SYSTEMS)).split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown system(s) {unknown}; choose from {sorted(SETTINGS)}")
    started = time.perf_counter()
    out = {"benchmark": "audit", "quick": args.quick, "systems": {n: run_system(n, args.quick, args.md_runs) for n in names},
           "machine": machine(), "wall_s": time.perf_counter() - started}
    for n, result in out["systems"].items():
        print(f"{n}: Spearman(safe T, NN-MD stable fraction) = {result['spearman_safe_T_vs_md_stable']:.2f} "
              f"(goal >= 0.8); audit CPU / NN-MD CPU = {result['audit_over_md_cpu']:.3f} (goal <= 0.1)")
        for row in result["committees"]:
            print(f"  {row['stage']:>8}: safe T {row['safe_temperature_K']:8.0f} K ({row['safe_bound']}), "
                  f"MD stable {row['md_stable_fraction_mean']:.2f} {row['md_stable_fraction']}, "
                  f"coverage {row['force_coverage_conformal']:.3f}, audit {row['audit_cpu_s']:.1f} s, "
                  f"MD {row['md_cpu_s']:.1f} s")
    if args.json:
        print(json.dumps(out, default=float))
    return out


if __name__ == "__main__":
    main()
