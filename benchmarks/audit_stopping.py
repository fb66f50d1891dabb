"""Audit-driven stopping against a fixed round count, over committee seeds (issue 36, item 4).

For each system and seed, one fixed-count active-learning run (the adversarial sampler, ``--rounds`` rounds).
Afterwards each round's committee is asked by :func:`advsample.audit.audit_stop` for every (target temperature,
force tolerance) rule of the system's table. The rule changes no round before it fires, so a run with it is this
run cut at the first round where it fires. Each round's committee is also tested by batched NN-MD at each target
(``--md-runs`` Langevin runs, energies checked against the reference). Reported per rule and seed:
the round it stops at (the last round when it never fires), the labels it saves against the fixed count, and the
NN-MD stable fraction at its stop against the last round's. Over the seeds: the mean labels saved and the paired
difference in stable fraction, with a Wilcoxon signed-rank p.

    python benchmarks/audit_stopping.py [--systems double_well_2d,adatom] [--seeds 5] [--rounds N] [--md-runs 64]
                                        [--out DIR] [--workers 2] [--quick] [--json]

Runs are kept under ``--out`` (one run directory per system and seed) and resume where they stopped.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine, set_threads  # noqa: E402

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

LEFT_WELL = [(-1.5, 0.0), (-1.2, 1.2)]


def _left_well_starts(system, n: int = 16):
    from advsample.surfaces import double_well_2d

    return double_well_2d().sample(n, seed=7, max_energy=-1.0, region=LEFT_WELL)


def _initial_starts(system, n: int = 8):
    return list(system.initial)[:n]


SETTINGS = {  # per system: its factory options, audit starts and settings, the rules, NN-MD, rounds (full, quick)
    "double_well_2d": dict(
        system=dict(n_initial=64, n_test=60, epochs=300, hidden=(32, 32), n_members=4, attack_steps=20, budget=4,
                    md_steps=10),
        loop=dict(validation_fraction=0.3), starts=_left_well_starts,
        audit=dict(n_replicas=2, max_starts=16, n_steps=60, learning_rate=0.02, initial_displacement=0.2,
                   frames_every=2, energy_unit="arb. units"),
        rules=((5802.0, 4.0), (11605.0, 4.0)),  # (target K, tolerance): kT 0.5 and 1.0 in the toy's unit read as eV
        md=dict(n_steps=1000, timestep_fs=1.0, n_check_frames=20, energy_tolerance_eV=0.5, check_every=10),
        rounds=(2, 8)),
    "adatom": dict(
        system=dict(), loop=dict(), starts=_initial_starts,
        audit=dict(n_replicas=2, max_starts=4, n_steps=60, learning_rate=0.02, initial_displacement=0.05,
                   frames_every=3, min_distance=1.5),
        rules=((450.0, 0.25), (450.0, 0.5), (450.0, 1.0)),  # the system's own stability temperature
        md=dict(n_steps=500, timestep_fs=2.0, n_check_frames=5, energy_tolerance_eV=0.2, check_every=5),
        rounds=(1, 6)),
}
QUICK = dict(system=dict(epochs=40), md_runs=8, md_steps=50, seeds=2)


def run_seed(name: str, seed: int, out: str, rounds: int, md_runs: int, quick: bool, threads: int | None) -> dict:
    """One seed of one system: the fixed-count run (resumed from ``out``), then every round asked by every rule and
    tested by NN-MD at every target."""
    set_threads(threads)
    from advsample.audit import AuditConfig, audit_stop
    from advsample.loop import ActiveLearning
    from advsample.metrics import md_stability
    from advsample.systems import get_system

    settings = SETTINGS[name]
    options = {**settings["system"], **(QUICK["system"] if quick else {})}
    system = get_system(name, **options)
    started = time.process_time()
    run = ActiveLearning.from_system(system, Path(out) / name / f"seed{seed}", sampler="adversarial", seed=seed,
                                     progress=False, **settings["loop"])
    records = run.run(rounds)
    run_cpu = time.process_time() - started
    starts = settings["starts"](system)
    config = AuditConfig(**settings["audit"])
    rules = {f"{target:g}K_tol{tolerance:g}": audit_stop(starts, target, tolerance, config)
             for target, tolerance in settings["rules"]}
    md = {**settings["md"], **({"n_steps": QUICK["md_steps"]} if quick else {})}
    reference = system.reference.build() if hasattr(system.reference, "build") else system.reference
    first = len(records[0].train)
    per_round = []
    for record in records:
        row = {"round": record.round, "labels": len(record.train) - first, "rules": {}, "md_stable_fraction": {},
               "audit_cpu_s": {}, "md_cpu_s": 0.0}
        for key, rule in rules.items():
            audit_cpu = time.process_time()
            row["rules"][key] = rule(record.committee, record.round, record.train)
            row["audit_cpu_s"][key] = time.process_time() - audit_cpu
        md_cpu = time.process_time()
        for target in sorted({t for t, _ in settings["rules"]}):
            result = md_stability(record.committee, starts[:8], temperature_K=target, n_runs=md_runs, seed=seed,
                                  reference=reference, **md)
            row["md_stable_fraction"][f"{target:g}"] = result["md_stable_fraction"]
        row["md_cpu_s"] = time.process_time() - md_cpu
        per_round.append(row)
    return {"system": name, "seed": seed, "rounds": per_round, "run_cpu_s": run_cpu, "md_runs": md_runs,
            "rules": {key: {"target_K": t, "tolerance": tol} for key, (t, tol) in zip(rules, settings["rules"])}}


def stopping(seed_result: dict) -> dict:
    """Per rule of one seed: the round it stops at (None: never; the run then ends at its last round), the labels
    it used and saved, and the NN-MD stable fraction at its stop and at the last round."""
    rounds = seed_result["rounds"]
    last = rounds[-1]
    out = {}
    for key, rule in seed_result["rules"].items():
        fired = next((r for r in rounds if r["rules"][key] is not None), None)
        stop = fired or last
        target = f"{rule['target_K']:g}"
        out[key] = {"stop_round": fired["round"] if fired else None, "labels": stop["labels"],
                    "labels_saved": last["labels"] - stop["labels"],
                    "stable_at_stop": stop["md_stable_fraction"][target],
                    "stable_last": last["md_stable_fraction"][target],
                    "stable_best": max(r["md_stable_fraction"][target] for r in rounds)}
    return out


def summary(seed_results: list[dict]) -> dict:
    """Per rule over the seeds: how many stopped early, mean labels saved (and of how many), the paired difference
    stable-at-stop − stable-last with its Wilcoxon signed-rank p (None when every difference is 0 or one seed)."""
    per_seed = [stopping(r) for r in seed_results]
    out = {}
    for key in seed_results[0]["rules"]:
        rows = [s[key] for s in per_seed]
        diff = [r["stable_at_stop"] - r["stable_last"] for r in rows]
        p = (float(stats.wilcoxon(diff).pvalue) if len(diff) > 1 and any(d != 0 for d in diff) else None)
        out[key] = {"n_seeds": len(rows), "n_stopped_early": sum(r["stop_round"] is not None and r["labels_saved"] > 0
                                                                 for r in rows),
                    "stop_rounds": [r["stop_round"] for r in rows],
                    "labels_fixed": seed_results[0]["rounds"][-1]["labels"],
                    "labels_saved_mean": float(np.mean([r["labels_saved"] for r in rows])),
                    "stable_at_stop_mean": float(np.mean([r["stable_at_stop"] for r in rows])),
                    "stable_last_mean": float(np.mean([r["stable_last"] for r in rows])),
                    "stable_difference_mean": float(np.mean(diff)), "wilcoxon_p": p, "per_seed": rows}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", default=None, help=f"comma-separated of {', '.join(SETTINGS)} "
                                                        "(default: both; --quick: double_well_2d)")
    parser.add_argument("--seeds", type=int, default=None, help="committee seeds 0..N-1 (default 5; quick 2)")
    parser.add_argument("--rounds", type=int, default=None, help="the fixed round count (default per system)")
    parser.add_argument("--md-runs", type=int, default=None, help="NN-MD runs per round and target (default 64)")
    parser.add_argument("--out", default="benchmarks/results/audit_stopping", help="run directories (resumed)")
    parser.add_argument("--workers", type=int, default=1, help="processes, one seed each")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--quick", action="store_true", help="two seeds of the double well, tiny runs (a test)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    names = (args.systems or ("double_well_2d" if args.quick else ",".join(SETTINGS))).split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown system(s) {unknown}; choose from {sorted(SETTINGS)}")
    for flag, value in (("--seeds", args.seeds), ("--rounds", args.rounds), ("--md-runs", args.md_runs),
                        ("--workers", args.workers)):
        if value is not None and value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    seeds = args.seeds or (QUICK["seeds"] if args.quick else 5)
    md_runs = args.md_runs or (QUICK["md_runs"] if args.quick else 64)
    started = time.perf_counter()
    jobs = [(n, s, args.out, args.rounds or SETTINGS[n]["rounds"][0 if args.quick else 1], md_runs, args.quick,
             args.threads) for n in names for s in range(seeds)]
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(run_seed, *zip(*jobs)))
    else:
        results = [run_seed(*job) for job in jobs]
    out = {"benchmark": "audit_stopping", "quick": args.quick, "systems": {}, "machine": machine()}
    for name in names:
        mine = [r for r in results if r["system"] == name]
        out["systems"][name] = {"summary": summary(mine), "seeds": mine,
                                "settings": {k: v for k, v in SETTINGS[name].items() if k != "starts"}}
        for key, rule in out["systems"][name]["summary"].items():
            p = "n/a" if rule["wilcoxon_p"] is None else f"{rule['wilcoxon_p']:.2f}"
            print(f"{name} {key}: stops early on {rule['n_stopped_early']} of {rule['n_seeds']} seeds "
                  f"(rounds {rule['stop_rounds']}), saves {rule['labels_saved_mean']:.1f} of {rule['labels_fixed']} "
                  f"labels; NN-MD stable at its stop {rule['stable_at_stop_mean']:.2f} vs after every round "
                  f"{rule['stable_last_mean']:.2f} (paired difference {rule['stable_difference_mean']:+.2f}, "
                  f"Wilcoxon p {p})")
    out["wall_s"] = time.perf_counter() - started
    emit(out, args.json)
    return out


if __name__ == "__main__":
    main()
