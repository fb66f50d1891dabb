"""Round speed: continued training (warm start) vs retraining from scratch, rounds 1–3 at the same labels.

    python benchmarks/round_speed.py [--systems ammonia,ethanol,adatom,host_guest] [--seeds 3] [--rounds 3]
                                     [--option KEY=VALUE] [--train KEY=VALUE] [--threads N] [--quick] [--json]
    python benchmarks/round_speed.py --merge seed0.json seed1.json ... [--json]   (runs of other seeds, merged)

For each system and seed, one adversarial run retrains every round from scratch (the
system's full ``TrainConfig``: seed + round) and one continues each round from the previous
round's members (``warm_start=True``: ``TrainConfig.continued()``, the short schedule, the
normalisation kept, the whole training set replayed). Both start from the same round 0 (trained
once, copied), label the same budget per round, and are run one after the other in this process.
Reported per system:

* time per round by phase (sampling, selection, labels, training, metrics; wall and CPU
  seconds of the whole round), the speedup of rounds 2..R (wall time, mean over seeds);
* final (round R) test force MAE and the system's rare-event metric (its first declared metric
  of kind "rare-event"), mean and spread (min–max, std) over seeds, and whether the continued
  mean lies within the from-scratch seeds' range; beside them the first metric of kind
  "thermal" (committee-MD stable fraction where the system declares one);
* the committee's force σ on the held-out test structures (mean over structures): members
  that collapsed onto each other would show σ → 0.

Rounds the regression check flags (ActiveLearning's ``on_regression``) are counted; by default
the benchmark accepts them (``--on-regression accept``), so each mode is measured on its own
committees rather than on a round-0 committee carried forward.

Systems are built by ``get_system(name, **options)``: :data:`SYSTEM_OPTIONS` per system (for
``host_guest`` the headline's three built-in cells and network, a Gen1-sized initial set; see
there), then ``--option KEY=VALUE`` (a JSON value, repeatable, for every system named);
``--train KEY=VALUE`` replaces a field of each System's ``TrainConfig`` (e.g. ``continue_patience=25``).
``--quick`` builds the smoke-sized systems (``smoke=True``) without :data:`SYSTEM_OPTIONS`.

Goal: continued rounds 2–3 ≥ 3× faster (≥ 5× goal) with final errors within the from-scratch
spread. ``--quick``: smoke-sized systems, 2 seeds, 2 rounds (seconds; for tests).
With ``--json`` the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, key_values, machine, set_threads  # noqa: E402

import numpy as np  # noqa: E402

from advsample.loop import ActiveLearning  # noqa: E402
from advsample.systems import get_system  # noqa: E402

MODES = ("scratch", "continued")
PHASES = ("sample_s", "select_s", "label_s", "train_s", "metrics_s")

#: ``get_system`` keywords of a full (not ``--quick``) run, per system. host_guest: the headline's
#: cells (the System's default three, 43-45 atoms) and network (SchNet 4 x 16 features, 1
#: interaction), initial data from 600 K GFN-FF MD like the headline's Gen1 but 100 frames per
#: cell (300, 270 to train and 30 to validate; the headline's Gen1 has 450), and 100 epochs
#: (the headline: 200; continued rounds then 25). Sized by measurement: at 200 epochs round 0
#: trained 68 CPU-s and its metrics took 12 CPU-s, ~7.5 CPU-min per seed for both modes; 100
#: epochs halve the training so that 3 seeds fit the ~15 CPU-minutes a niced process gets
#: beside a full-priority job on 2 cores in an hour. Building the data: ~5 CPU-min once, cached.
SYSTEM_OPTIONS = {
    "host_guest": {"n_features": 16, "n_interactions": 1, "epochs": 100, "n_initial": 100,
                   "md_temperature_K": 600.0, "progress": False},
}


def rare_event_metric(system) -> str | None:
    """The system's first declared metric of kind "rare-event" (None if it declares none)."""
    return next((m.name for m in system.metrics if m.kind == "rare-event"), None)


def thermal_metric(system) -> str | None:
    """The system's first declared metric of kind "thermal" (e.g. the committee-MD stable fraction; None if none)."""
    return next((m.name for m in system.metrics if m.kind == "thermal"), None)


def system_options(name: str, quick: bool, options: dict | None = None) -> dict:
    """The ``get_system`` keywords of ``name``: smoke-sized with ``quick``, else :data:`SYSTEM_OPTIONS`;
    then ``options`` on top."""
    base = {"smoke": True} if quick else dict(SYSTEM_OPTIONS.get(name, {}))
    return {**base, **(options or {})}


def _copy_round_zero(source: Path, target: Path) -> None:
    """The run directory's fixed sets and round 0, not its settings or label cache (a new run's own)."""
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file() and path.name not in ("settings.json", "labels.jsonl"):
            shutil.copy2(path, target / path.name)
    shutil.copytree(source / "round_000", target / "round_000")


def run_mode(system, seed: int, rounds: int, mode: str, run_dir: Path, on_regression: str = "accept") -> list[dict]:
    """One run of ``rounds`` rounds after round 0; per round: phase times, wall/CPU seconds, errors."""
    run = ActiveLearning.from_system(system, run_dir, "adversarial", seed=seed, progress=False,
                                     warm_start=mode == "continued", on_regression=on_regression)
    metric, thermal = rare_event_metric(system), thermal_metric(system)
    out = []
    wall, cpu = time.perf_counter(), time.process_time()
    for record in run.irun(rounds):
        now_wall, now_cpu = time.perf_counter(), time.process_time()
        metrics = record.metrics
        timings = dict(metrics.get("timings", {}))
        timings.setdefault("train_s", metrics.get("training", {}).get("train_s", math.nan))
        predicted = record.committee.predict(system.test) if system.test else None
        out.append({
            "round": record.round,
            "resumed": record.resumed,
            "wall_s": now_wall - wall,
            "cpu_s": now_cpu - cpu,
            "phases_s": {k: float(timings[k]) for k in PHASES if k in timings},
            "epochs": metrics.get("training", {}).get("epochs"),
            "stopped_early": metrics.get("training", {}).get("stopped_early"),
            "regression": metrics.get("regression", {}).get("flagged") if isinstance(metrics.get("regression"), dict)
            else None,
            "labels_used": metrics["labels_used"],
            "test_force_mae": metrics.get("test", {}).get("force_mae", math.nan),
            "rare_event": metrics.get("extra", {}).get(metric, math.nan) if metric else math.nan,
            "thermal": metrics.get("extra", {}).get(thermal, math.nan) if thermal else math.nan,
            "test_force_sigma": float(np.mean(predicted["forces_std"])) if predicted is not None else math.nan,
        })
        wall, cpu = time.perf_counter(), time.process_time()
    return out


def _spread(values: list[float]) -> dict:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": math.nan, "min": math.nan, "max": math.nan, "std": math.nan, "values": values}
    return {"mean": statistics.fmean(finite), "min": min(finite), "max": max(finite),
            "std": statistics.pstdev(finite) if len(finite) > 1 else 0.0, "values": values}


def summarize(per_seed: dict[str, list[list[dict]]], rounds: int) -> dict:
    """Speedups of rounds 2..R and final errors, the continued mean against the from-scratch range."""
    later = range(2, rounds + 1) if rounds >= 2 else range(1, rounds + 1)
    summary = {"rounds_timed": list(later)}
    for mode, runs in per_seed.items():
        per_round = {r: _spread([run[r]["wall_s"] for run in runs]) for r in range(1, rounds + 1)}
        train = {r: _spread([run[r]["phases_s"].get("train_s", math.nan) for run in runs]) for r in range(1, rounds + 1)}
        summary[mode] = {
            "round_wall_s": {r: v["mean"] for r, v in per_round.items()},
            "round_train_s": {r: v["mean"] for r, v in train.items()},
            "phases_s": {r: {k: statistics.fmean(run[r]["phases_s"].get(k, 0.0) for run in runs) for k in PHASES}
                         for r in range(1, rounds + 1)},
            "later_rounds_wall_s": statistics.fmean(sum(run[r]["wall_s"] for r in later) for run in runs),
            "later_rounds_cpu_s": statistics.fmean(sum(run[r]["cpu_s"] for r in later) for run in runs),
            "later_rounds_train_s": statistics.fmean(sum(run[r]["phases_s"].get("train_s", math.nan) for r in later)
                                                     for run in runs),
            "epochs": {r: [run[r]["epochs"] for run in runs] for r in range(rounds + 1)},
            "final_test_force_mae": _spread([run[rounds]["test_force_mae"] for run in runs]),
            "final_rare_event": _spread([run[rounds]["rare_event"] for run in runs]),
            "final_thermal": _spread([run[rounds].get("thermal", math.nan) for run in runs]),
            "final_test_force_sigma": _spread([run[rounds]["test_force_sigma"] for run in runs]),
            "rounds_flagged": sum(bool(run[r]["regression"]) for run in runs for r in range(1, rounds + 1)),
        }
    scratch, continued = summary["scratch"], summary["continued"]
    summary["speedup_later_rounds"] = scratch["later_rounds_wall_s"] / continued["later_rounds_wall_s"]
    # CPU seconds of this process: steadier than wall time on a shared machine
    summary["speedup_later_rounds_cpu"] = scratch["later_rounds_cpu_s"] / continued["later_rounds_cpu_s"]
    summary["speedup_later_rounds_train"] = scratch["later_rounds_train_s"] / continued["later_rounds_train_s"]
    for key in ("final_test_force_mae", "final_rare_event"):
        low, high, mean = scratch[key]["min"], scratch[key]["max"], continued[key]["mean"]
        # within the from-scratch seeds' range, or better than all of them
        summary[f"{key}_within_scratch_spread"] = bool(math.isfinite(mean) and mean <= high) if math.isfinite(high) \
            else None
        summary[f"{key}_ratio"] = mean / scratch[key]["mean"] if scratch[key]["mean"] else math.nan
        del low
    return summary


def print_summary(name: str, summary: dict, rare_event: str | None, thermal: str | None) -> None:
    """One line per system: the speedups of the later rounds and the final errors, scratch [range] vs continued."""
    scratch, continued = summary["scratch"], summary["continued"]

    def spread(key: str, f: str) -> str:
        low, high = scratch[key]["min"], scratch[key]["max"]
        return f"scratch {scratch[key]['mean']:{f}} [{low:{f}}-{high:{f}}] vs continued {continued[key]['mean']:{f}}"

    print(f"{name}: rounds {summary['rounds_timed']} {summary['speedup_later_rounds']:.2f}x faster continued (wall; "
          f"CPU {summary['speedup_later_rounds_cpu']:.2f}x, training {summary['speedup_later_rounds_train']:.2f}x); "
          f"final test force MAE {spread('final_test_force_mae', '.4f')}; {rare_event} "
          f"{spread('final_rare_event', '.4g')}; {thermal} {spread('final_thermal', '.4g')}", flush=True)


def with_training(system, train: dict | None):
    """``system`` with the fields ``train`` of its ``TrainConfig`` replaced (e.g. ``continue_patience``); as is
    without. An unknown field raises a ValueError naming it."""
    if not train:
        return system
    fields = {f.name for f in dataclasses.fields(system.train)}
    unknown = sorted(set(train) - fields)
    if unknown:
        raise ValueError(f"--train: TrainConfig has no field(s) {unknown}; choose from {sorted(fields)}")
    return dataclasses.replace(system, train=dataclasses.replace(system.train, **train))


def bench_system(name: str, seeds: int, rounds: int, quick: bool, workdir: Path, on_regression: str = "accept",
                 first_seed: int = 0, options: dict | None = None, train: dict | None = None) -> dict:
    options = system_options(name, quick, options)
    system = with_training(get_system(name, **options), train)
    per_seed = {mode: [] for mode in MODES}
    for seed in range(first_seed, first_seed + seeds):
        base = workdir / f"{name}_seed{seed}"
        for mode in MODES:
            run_dir = base / mode
            if mode != MODES[0]:
                _copy_round_zero(base / MODES[0], run_dir)  # the same round 0, trained once
            start = time.perf_counter()
            rows = run_mode(system, seed, rounds, mode, run_dir, on_regression)
            per_seed[mode].append(rows)
            walls = ", ".join(f"{r['wall_s']:.1f}" for r in rows[1:])
            trains = ", ".join(f"{r['phases_s'].get('train_s', math.nan):.1f}" for r in rows[1:])
            last = rows[-1]
            print(f"{name} seed {seed} {mode:9s}: rounds 1..{rounds} wall {walls} s (train {trains} s, epochs "
                  f"{[r['epochs'] for r in rows]}); final test force MAE {last['test_force_mae']:.4f}, rare-event "
                  f"{last['rare_event']:.4g}, thermal {last['thermal']:.4g}, force sigma "
                  f"{last['test_force_sigma']:.4f} "
                  f"[{time.perf_counter() - start:.0f} s]", flush=True)
    summary = summarize(per_seed, rounds)
    print_summary(name, summary, rare_event_metric(system), thermal_metric(system))
    return {"options": options, "train": train or {}, "rare_event_metric": rare_event_metric(system),
            "thermal_metric": thermal_metric(system), "per_seed": per_seed, **summary}


def merge_results(results: list[dict]) -> dict:
    """One result from runs of this benchmark over different seeds (e.g. ``--seeds 1 --first-seed S``, one process
    per seed side by side): per system the seeds' rows in order of their first seed, summarized again by
    :func:`summarize` (the same aggregation as one multi-seed run); each run's command settings and machine kept
    under ``merged_from``. The runs must agree on rounds, ``on_regression``, ``quick`` and each system's options."""
    if not results:
        raise ValueError("merge_results: no results to merge")
    results = sorted(results, key=lambda r: r["first_seed"])
    first = results[0]
    for key in ("benchmark", "rounds", "on_regression", "quick"):
        values = {json.dumps(r.get(key)) for r in results}
        if len(values) > 1:
            raise ValueError(f"merge_results: the runs differ in {key!r}: {sorted(values)}")
    seeds = [seed for r in results for seed in range(r["first_seed"], r["first_seed"] + r["seeds"])]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"merge_results: a seed appears twice: {seeds}")
    merged = {key: first[key] for key in ("benchmark", "quick", "rounds", "on_regression")}
    merged.update(seeds=len(seeds), seed_list=seeds, first_seed=seeds[0], systems={},
                  merged_from=[{k: r.get(k) for k in ("seeds", "first_seed", "machine", "total_s")} for r in results])
    for name in first["systems"]:
        parts = [r["systems"].get(name) for r in results]
        settings = {json.dumps([part.get("options"), part.get("train", {})]) for part in parts if part is not None}
        if any(part is None for part in parts) or len(settings) > 1:
            raise ValueError(f"merge_results: system {name!r} is missing from a run or ran with other options/training")
        per_seed = {mode: [run for part in parts for run in part["per_seed"][mode]] for mode in MODES}
        merged["systems"][name] = {key: parts[0].get(key) for key in ("options", "rare_event_metric", "thermal_metric")}
        merged["systems"][name]["train"] = parts[0].get("train", {})
        merged["systems"][name].update(per_seed=per_seed, **summarize(per_seed, first["rounds"]))
    return merged


def read_result(path) -> dict:
    """The JSON object on the last line of a ``--json`` run's output file."""
    return json.loads(Path(path).read_text().strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default="ammonia,ethanol,adatom,host_guest")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per system (default 3; --quick 2)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds after round 0 (default 3; --quick 2)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", default=None, help="run directories (default: a temporary one, removed)")
    parser.add_argument("--quick", action="store_true", help="smoke-sized systems, 2 seeds, 2 rounds")
    parser.add_argument("--on-regression", default="accept", choices=("accept", "keep", "continue"),
                        help="ActiveLearning's on_regression (default accept: each mode's own committees are "
                             "measured; flagged rounds are reported)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a keyword of every named system's factory (JSON value, else a string), e.g. "
                             "n_initial=50; repeatable; on top of SYSTEM_OPTIONS")
    parser.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                        help="a field of the System's TrainConfig to replace (JSON value), e.g. continue_patience=25; "
                             "repeatable")
    parser.add_argument("--merge", nargs="+", default=None, metavar="FILE",
                        help="merge the outputs of --json runs over other seeds (last line of each file) and emit "
                             "the merged result instead of running")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.merge:
        result = merge_results([read_result(path) for path in args.merge])
        for name, summary in result["systems"].items():
            print_summary(name, summary, summary["rare_event_metric"], summary["thermal_metric"])
        emit(result, args.json)
        return result
    options, train = key_values(parser, "--option", args.option), key_values(parser, "--train", args.train)
    seeds = args.seeds or (2 if args.quick else 3)
    rounds = args.rounds or (2 if args.quick else 3)
    if seeds < 1 or rounds < 1:
        parser.error(f"--seeds and --rounds must be >= 1, got {seeds}, {rounds}")
    set_threads(args.threads)
    result = {"benchmark": "round_speed", "quick": args.quick, "seeds": seeds, "first_seed": args.first_seed,
              "rounds": rounds,
              "on_regression": args.on_regression,
              "machine": machine(), "systems": {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        for name in [s for s in args.systems.split(",") if s]:
            result["systems"][name] = bench_system(name, seeds, rounds, args.quick, Path(workdir), args.on_regression,
                                                   args.first_seed, options, train)
    result["machine"]["load_average_1min_end"] = os.getloadavg()[0]
    result["total_s"] = time.perf_counter() - start
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
