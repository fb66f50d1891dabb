"""Does the audit rank committees as NN-MD does, at a fraction of its CPU? (issue 36)

For each system, committees at several stages of training (trained on growing subsets of
the data: the 2D double well's pool cut at growing x, so the right well is a hole until
the last stages; NH3's pool plus GFN2-xTB MD frames of ever hotter runs, ``ammonia_thermal``;
NH3's pool in growing random subsets, ``ammonia``), each calibrated on its own
held-out split (:mod:`advsample.calibration`), then side by side in one process:

* the audit (:func:`advsample.audit.audit`): its predicted safe temperature and CPU time;
* batched NN-MD (:func:`advsample.metrics.md_stability`, Langevin) at several temperatures:
  the stable fraction per temperature and its mean, and CPU time.

Reported: the Spearman rank correlation across committees between the predicted safe
temperature and the mean NN-MD stable fraction (goal >= 0.8), the audit's CPU time over
NN-MD's (goal <= 1/10), and each committee's calibrated force coverage on a held-out test
half beside its miscalibration area.

    python benchmarks/audit.py [--quick] [--json] [--systems double_well_2d,ammonia_thermal,ammonia] [--md-runs 64]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
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


def double_well_stages(quick: bool):
    """(name, train, validation) per stage, the test set, the start structures, the reference."""
    from advsample.surfaces import double_well_2d

    surface = double_well_2d()
    pool = surface.sample(60 if quick else 200, seed=0, max_energy=1.0)
    validation = surface.sample(40 if quick else 100, seed=1, max_energy=1.0)
    test = surface.sample(200, seed=2, max_energy=1.0)
    cuts = (0.0, 0.5, 1.5) if quick else (-0.2, 0.0, 0.3, 0.5, 0.7, 1.5)  # training data at x < cut
    stages = [(f"x<{cut}", [a for a in pool if a.positions[0, 0] < cut],
               [a for a in validation if a.positions[0, 0] < cut]) for cut in cuts]
    starts = surface.sample(32, seed=7, max_energy=-1.0, region=[(-1.5, 0.0), (-1.2, 1.2)])
    return stages, test, starts, surface


def ammonia_stages(quick: bool):
    from advsample.systems import get_system

    system = get_system("ammonia")
    rng = np.random.default_rng(0)
    pool = [system.initial[k] for k in rng.permutation(len(system.initial))]
    n_validation = 12
    validation, pool = pool[:n_validation], pool[n_validation:]
    sizes = (8, 32, len(pool)) if quick else (6, 10, 16, 32, 64, len(pool))
    stages = [(f"n={n}", pool[:n], validation) for n in sizes]
    return stages, system.test, system.initial, system


def reference_md_frames(start, calculator, temperature_K: float, n_frames: int, every: int = 10, seed: int = 0):
    """Labeled frames of a reference Langevin MD (0.5 fs) from ``start``: every ``every`` steps."""
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from advsample.structures import labeled

    atoms = start.copy()
    atoms.calc = calculator
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    dynamics = Langevin(atoms, 0.5 * units.fs, temperature_K=temperature_K, friction=0.02,
                        rng=np.random.default_rng(seed + 1))
    frames = []
    for _ in range(n_frames):
        dynamics.run(every)
        copy = atoms.copy()
        copy.calc = None
        frames.append(labeled(copy, atoms.get_potential_energy(), atoms.get_forces(), label_source="GFN2-xTB MD"))
    return frames


def ammonia_thermal_stages(quick: bool):
    """NH3 committees trained on the pool plus reference-MD frames of ever hotter runs: a data set that
    reaches further up the surface at each stage (as active learning's rounds do)."""
    from advsample.systems import get_system

    system = get_system("ammonia")
    rng = np.random.default_rng(0)
    pool = [system.initial[k] for k in rng.permutation(len(system.initial))]
    validation, pool = pool[:12], pool[12:]
    start = min(system.initial, key=lambda a: a.get_potential_energy())
    temperatures = (600, 2400) if quick else (300, 600, 1200, 2400)
    n_frames = 10 if quick else 40
    thermal = {T: reference_md_frames(start, system.reference, T, n_frames, seed=k)
               for k, T in enumerate(temperatures)}
    stages = [("pool", pool, validation)]
    for k, T in enumerate(temperatures):
        new = [f for t in temperatures[: k + 1] for f in thermal[t]]
        stages.append((f"+MD<={T}K", pool + [f for i, f in enumerate(new) if i % 5], validation + new[::5]))
    return stages, system.test, system.initial, system


SETTINGS = {
    "double_well_2d": dict(
        stages=double_well_stages, model=lambda system: _mlp(), epochs=(150, 800), energy_unit="arb. units",
        audit=dict(kT_values=(0.3, 1.0, 3.0), force_tolerance=2.0, n_replicas=2, max_starts=32, n_steps=80,
                   learning_rate=0.02, initial_displacement=0.2, frames_every=2),
        md_kT=(0.5, 0.75, 1.0, 1.25), md_steps=(100, 1000),
        md=dict(timestep_fs=1.0, n_check_frames=20, energy_tolerance_eV=0.5, check_every=10),
        md_reference=True),
    "ammonia_thermal": dict(
        stages=ammonia_thermal_stages, model=lambda system: system.make_committee(0), epochs=(100, 600),
        energy_unit="eV",
        audit=dict(kT_values=(0.05, 0.1, 0.2, 0.4), force_tolerance=1.0, n_replicas=4, max_starts=8, n_steps=60,
                   learning_rate=0.01, initial_displacement=0.02, frames_every=3, min_distance=0.6),
        md_kT=(0.05, 0.1, 0.2, 0.4), md_steps=(400, 2000), md=dict(timestep_fs=0.5, check_every=10),
        md_reference=False),
    "ammonia": dict(
        stages=ammonia_stages, model=lambda system: system.make_committee(0), epochs=(100, 600), energy_unit="eV",
        audit=dict(kT_values=(0.05, 0.1, 0.2, 0.4), force_tolerance=1.0, n_replicas=4, max_starts=8, n_steps=60,
                   learning_rate=0.01, initial_displacement=0.02, frames_every=3, min_distance=0.6),
        md_kT=(0.05, 0.1, 0.2, 0.4), md_steps=(400, 2000), md=dict(timestep_fs=0.5, check_every=10),
        md_reference=False),
}


def _mlp():
    from advsample.committee import Committee
    from advsample.models import MLPCommittee

    return Committee(MLPCommittee(4, (32, 32), input_axes=(0, 1), seed=0))


def run_system(name: str, quick: bool, md_runs: int | None = None) -> dict:
    settings = SETTINGS[name]
    stages, test, starts, reference = settings["stages"](quick)
    half = len(test) // 2
    rows = []
    audit_settings = {**settings["audit"], **({"n_steps": 30, "n_replicas": 1} if quick else {})}
    audit_config = AuditConfig(**audit_settings, energy_unit=settings["energy_unit"])
    n_runs = md_runs or (16 if quick else 64)
    for stage, train, validation in stages:
        committee = settings["model"](reference)
        started = time.perf_counter()
        train_committee(committee, train, None, TrainConfig(epochs=settings["epochs"][0 if quick else 1],
                                                            progress=False))
        train_s = time.perf_counter() - started
        calibration = calibrate(committee, validation, coverage=0.95)
        report = calibration_report(calibration, committee, test[half:])
        result = audit(committee, starts, audit_config, progress=False)
        md_cpu, fractions = time.process_time(), {}
        for kT in settings["md_kT"]:
            md = md_stability(committee, starts[:8], temperature_K=kT / units.kB, n_runs=n_runs, seed=0,
                              n_steps=settings["md_steps"][0 if quick else 1],
                              reference=reference if settings["md_reference"] else None, **settings["md"])
            fractions[f"{kT / units.kB:.0f}"] = md["md_stable_fraction"]
        md_cpu = time.process_time() - md_cpu
        row = {"stage": stage, "n_train": len(train), "train_s": train_s,
               "safe_temperature_K": result.safe_temperature_K, "safe_bound": result.safe_bound,
               "audit_cpu_s": result.time_s, "audit_committee_calls": result.committee_calls,
               "md_stable_fraction": fractions, "md_stable_fraction_mean": float(np.mean(list(fractions.values()))),
               "md_cpu_s": md_cpu, "md_runs_per_temperature": n_runs, "md_steps": settings["md_steps"][0 if quick else 1],
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
            "md_temperatures_K": [round(kT / units.kB) for kT in settings["md_kT"]]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="three committees, short training and MD (a test)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--systems", default=None, help="comma-separated of double_well_2d, ammonia_thermal, "
                                                        "ammonia (random subsets) (default: double_well_2d,ammonia_thermal; "
                                                        "--quick: double_well_2d)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--md-runs", type=int, default=None, help="NN-MD runs per temperature (default 64; quick 16)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    names = (args.systems or ("double_well_2d" if args.quick else "double_well_2d,ammonia_thermal")).split(",")
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
