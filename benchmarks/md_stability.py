"""NN-MD stability bought with labels: classic MD-driven active learning vs the attack, on a periodic system.

    python benchmarks/md_stability.py [--system adatom|sodalite|NAME|module:factory] [--seeds 3] [--rounds 3] [--labels 10] [--epochs 600]
        [--members 4] [--features 32] [--stability-runs 8] [--stability-steps 500] [--neb-steps 300]
        [--energy-tolerance 0.2] [--md-sampler-steps 200]
        [--samplers md,adversarial] [--budget-unit labels|reference_calls] [--out DIR] [--threads N]
        [--workers N] [--reuse DIR] [--quick] [--json]

``--system`` takes any System: a registered name or ``module:factory`` (your own; each option given
here, e.g. ``--neb-steps``, must be a keyword of its factory, else it is refused naming it).
``--system sodalite`` runs the same on water in silica sodalite with periodic GFN1-xTB labels
(2 s per call: size it with --seeds/--rounds/--labels; its figures are the stable fraction,
time to failure and the force error with the water towards a six-ring window, no NEB).

The built-in ``adatom`` system (Au on Al(100), EMT, bottom layers fixed): every run starts
from the same initial data (EMT MD in one hollow) and is scored on the same metrics after
each round: the fraction of committee-MD runs at 450 K that stay physical and within
0.2 eV of EMT (:func:`advsample.metrics.md_stability`), their mean time to failure, and
the error of the committee's NEB hop barrier against EMT's 0.374 eV. Methods: ``md``
(committee Langevin MD at 450 K, frames ranked by σ: classic active learning) and
``adversarial`` (the batched attack, ranked by log σ² − Ē/kT), both with ``--labels`` new
EMT labels per round; ``--samplers`` takes any other sampler too, at the system's settings
(``md_attack``: half MD frames, half the attack seeded at them; ``udd``, ``biased_md``:
the biased MD at the system's MD settings; ``random``, ``random_scored``).

Reported per method (and plotted in DIR/md_stability.png): mean, min and max over seeds of each figure after each round, with
labels used and reference calls (``metrics["reference_calls"]`` of each round: every EMT
call paid for training labels, failed ones included); and the labels and reference calls
each method needs to reach classic MD-AL's final mean stable fraction and barrier error
(null where not reached; the ratio adversarial/md labels is null also when md's final
figure is no better than round 0's, reached with 0 labels); the last round's stable fraction per method
(runs of all seeds pooled) with its Wilson 95 % interval, the log-rank test between md and the attack
and the trajectories per arm their fractions would need (:mod:`advsample.stats`). Writes DIR/rows.json and DIR/summary.json; with ``--json`` the
last line is one JSON object. ``--reuse DIR`` takes the (method, seed) runs an earlier output DIR finished at the same
settings (system, rounds, budget and its unit, options; other settings are refused) and runs only the rest, e.g. one
more seed; the summary names the reused runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, machine, set_threads  # noqa: E402

import numpy as np  # noqa: E402

from advsample.loop import ActiveLearning  # noqa: E402
from advsample.samplers import SAMPLERS as ALL_SAMPLERS  # noqa: E402
from advsample.systems import get_system  # noqa: E402

SYSTEMS = ("adatom", "sodalite")


def figures(system) -> dict[str, bool]:
    """{figure: higher is better} of a system: its declared metrics, then the test force MAE."""
    return {**{m.name: not m.lower_is_better for m in system.metrics}, "force_mae": False}


SAMPLERS = tuple(name for name in ALL_SAMPLERS if name != "mixed")


def check_options(parser, name: str, options: dict) -> None:
    """Refuse (naming them) the system and the options its factory does not take."""
    import inspect

    from advsample.systems import resolve_factory

    try:
        factory = resolve_factory(name)
    except (ValueError, TypeError, ImportError, AttributeError) as error:
        parser.error(f"--system {name!r}: {error}")
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    flags = {"budget": "--labels", "n_members": "--members", "n_features": "--features",
             "energy_tolerance_eV": "--energy-tolerance"}
    refused = [key for key in options if key not in parameters]
    if refused:
        named = ", ".join(f"{flags.get(k, '--' + k.replace('_', '-'))} ({k}={options[k]!r})" for k in refused)
        parser.error(f"--system {name!r}: its factory takes no {named}"
                     + (" (no hop path: no NEB)" if "neb_steps" in refused else ""))


def run_one(system, method: str, seed: int, rounds: int, out_dir: str, log) -> list[dict]:
    """Rows (one per round) of one method and seed."""
    # the sampler by name, with the system's settings: md and the biased MD from system.md,
    # adversarial from system.attack, md_attack from both (advsample.samplers.make_method)
    run = ActiveLearning.from_system(system, os.path.join(out_dir, f"{method}_seed{seed}"), method, seed=seed,
                                     progress=False)
    rows = []
    for record in run.irun(rounds):
        m = record.metrics
        extra = m.get("extra", {})
        row = {
            "method": method, "seed": seed, "round": m["round"], "labels": m["labels_used"],
            "reference_calls": m["reference_calls"], "force_mae": m["test"]["force_mae"],
            **{k: extra[k] for k in figures(system) if k in extra},
            **{k: extra[k] for k in ("barrier_eV", "barrier_reference_eV", "time_to_failure_fs",
                                     "md_check_reference_calls") if k in extra},
            "train_s": m["training"]["train_s"],
        }
        rows.append(row)
        log(f"{method} seed {seed} round {row['round']}: labels {row['labels']}, calls {row['reference_calls']}, "
            + ", ".join(f"{k} {row[k]:.3g}" for k in figures(system)))
    return rows


def build_system(name: str, options: dict, md_sampler_steps: int | None, budget_unit: str | None = None):
    """The system at these options (``md_sampler_steps`` overrides the md sampler's trajectory length,
    ``budget_unit`` what a round's budget counts: ``labels`` or ``reference_calls``)."""
    system = get_system(name, **options)
    if md_sampler_steps is not None:
        system = replace(system, md=replace(system.md, n_steps=md_sampler_steps))
    if budget_unit is not None:
        system = replace(system, selection=replace(system.selection, budget_unit=budget_unit))
    return system


def run_job(name: str, options: dict, md_sampler_steps: int | None, budget_unit: str | None, method: str, seed: int,
            rounds: int, out_dir: str) -> list[dict]:
    """One (method, seed) run in a worker process: the system is rebuilt there from its options."""
    set_threads(1)
    return run_one(build_system(name, options, md_sampler_steps, budget_unit), method, seed, rounds, out_dir,
                   lambda s: print(s, flush=True))


def summarize(rows: list[dict], keys) -> dict:
    """{method: [per round: labels, reference_calls and mean/min/max over seeds of each figure]}."""
    summary = {}
    for method in sorted({r["method"] for r in rows}):
        lines = []
        for number in sorted({r["round"] for r in rows if r["method"] == method}):
            chosen = [r for r in rows if r["method"] == method and r["round"] == number]
            line = {"round": number, "labels": int(np.mean([r["labels"] for r in chosen])),
                    "reference_calls": float(np.mean([r["reference_calls"] for r in chosen])), "n_seeds": len(chosen)}
            for key in keys:
                values = np.array([r.get(key, np.nan) for r in chosen], dtype=float)
                finite = values[np.isfinite(values)]
                line[key] = {"mean": float(finite.mean()) if len(finite) else None,
                             "min": float(finite.min()) if len(finite) else None,
                             "max": float(finite.max()) if len(finite) else None,
                             "n_nan": int((~np.isfinite(values)).sum())}
            lines.append(line)
        summary[method] = lines
    return summary


def final_statistics(rows: list[dict]) -> dict:
    """The last round's stability runs of each method, pooled over seeds: the stable fraction with
    its Wilson 95 % interval, and between two methods the log-rank test of their times to failure
    and the trajectories per arm a two-proportion test would need to tell their fractions apart
    (α = 0.05, power 0.8). Stable runs are censored after every failure (the run's full length)."""
    from advsample import stats

    last = max(r["round"] for r in rows)
    pooled = {}
    for method in sorted({r["method"] for r in rows}):
        times = [t for r in rows if r["method"] == method and r["round"] == last for t in r.get("time_to_failure_fs", [])]
        if times:
            pooled[method] = times
    if not pooled:
        return {}
    horizon = 1.0 + max([t for times in pooled.values() for t in times if t is not None], default=0.0)
    out = {"round": last, "methods": {}}
    for method, times in pooled.items():
        stable = sum(t is None for t in times)
        out["methods"][method] = {"n_runs": len(times), "n_stable": stable,
                                  "interval": stats.wilson_interval(stable, len(times)),
                                  "summary": stats.summary(stable, len(times))}
    names = [m for m in ("md", "adversarial") if m in pooled] if {"md", "adversarial"} <= set(pooled) else list(pooled)[:2]
    if len(names) == 2:
        arms = [(np.array([horizon if t is None else t for t in pooled[m]]), np.array([t is not None for t in pooled[m]]))
                for m in names]
        test = stats.logrank(*arms[0], *arms[1])
        fractions = [out["methods"][m]["n_stable"] / out["methods"][m]["n_runs"] for m in names]
        out["comparison"] = {"arms": names, "logrank_chi2": test.statistic, "logrank_p": test.p_value,
                             "trajectories_needed_per_arm": (stats.trajectories_needed(*fractions)
                                                             if fractions[0] != fractions[1] else None)}
    return out


def figure(summary: dict, system):
    """Each figure vs the round's cost per method (labels, or reference calls at a call budget): mean
    over seeds (line) and min–max (band)."""
    from matplotlib.figure import Figure

    cost = "reference_calls" if system.selection.budget_unit == "reference_calls" else "labels"

    declared = {m.name: m for m in system.all_metrics()}
    keys = list(figures(system))
    fig = Figure(figsize=(4.2 * len(keys), 3.4), layout="constrained")
    for ax, key in zip(fig.subplots(1, len(keys), squeeze=False)[0], keys):
        for method, lines in summary.items():
            x = [line[cost] for line in lines]
            mean = [line[key]["mean"] if line[key]["mean"] is not None else np.nan for line in lines]
            low = [line[key]["min"] if line[key]["min"] is not None else np.nan for line in lines]
            high = [line[key]["max"] if line[key]["max"] is not None else np.nan for line in lines]
            (curve,) = ax.plot(x, mean, marker="o", ms=3, label=f"{method} (n={lines[0]['n_seeds']})")
            ax.fill_between(x, low, high, color=curve.get_color(), alpha=0.15, linewidth=0)
        if key in declared and declared[key].log_scale:
            ax.set_yscale("log")
        ax.set_xlabel("reference calls paid" if cost == "reference_calls" else "new reference labels")
        ax.set_ylabel(declared[key].axis_label(system.energy_unit) if key in declared else key)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=7)
    fig.suptitle(f"{system.name}: mean over seeds, band = min–max", fontsize=10)
    return fig


def cost_to_reach(summary: dict, key: str, target: float | None, higher_is_better: bool) -> dict:
    """{method: {labels, reference_calls} of the first round whose mean ``key`` reaches ``target``, or None}."""
    out = {}
    for method, lines in summary.items():
        out[method] = None
        if target is None:
            continue
        for line in lines:
            value = line[key]["mean"]
            if value is not None and (value >= target if higher_is_better else value <= target):
                out[method] = {"labels": line["labels"], "reference_calls": line["reference_calls"],
                               "round": line["round"]}
                break
    return out


def reused_rows(directory: str, settings: dict, jobs: list[tuple[str, int]], rounds: int) -> list[dict]:
    """Rows of the ``jobs`` (method, seed) that an earlier run at the same ``settings`` finished, read back from
    ``directory``'s rows.json and summary.json; a directory written at other settings is refused."""
    with open(os.path.join(directory, "summary.json")) as handle:
        earlier = json.load(handle)
    differ = {key: (earlier.get(key), value) for key, value in settings.items() if earlier.get(key) != value}
    if differ:
        raise SystemExit(f"--reuse {directory}: written at other settings (earlier, now): {differ}")
    with open(os.path.join(directory, "rows.json")) as handle:
        rows = json.load(handle)
    done = {job for job in jobs
            if {r["round"] for r in rows if (r["method"], r["seed"]) == job} == set(range(rounds + 1))}
    return [r for r in rows if (r["method"], r["seed"]) in done]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", default="adatom", help=f"{', '.join(SYSTEMS)}, any registered name or 'module:factory'")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--labels", type=int, default=10, help="new EMT labels per round")
    parser.add_argument("--epochs", type=int, default=None, help="max training epochs (system default 600)")
    parser.add_argument("--members", type=int, default=None, help="committee size (system default 4)")
    parser.add_argument("--features", type=int, default=None, help="SchNet feature width (system default 32)")
    parser.add_argument("--stability-runs", type=int, default=None, help="MD runs per evaluation (default 8)")
    parser.add_argument("--stability-steps", type=int, default=None, help="2 fs steps per MD run (default 500)")
    parser.add_argument("--neb-steps", type=int, default=None,
                        help="BFGS steps of the committee NEB (systems with a hop path: adatom default 300)")
    parser.add_argument("--energy-tolerance", type=float, default=None,
                        help="eV off the reference that fails an MD run (adatom 0.2, sodalite 0.5)")
    parser.add_argument("--md-sampler-steps", type=int, default=None,
                        help="steps per committee-MD trajectory of the md sampler (system default 200)")
    parser.add_argument("--samplers", default="md,adversarial")
    parser.add_argument("--budget-unit", choices=("labels", "reference_calls"), default=None,
                        help="what --labels counts per round (default: the system's, labels)")
    parser.add_argument("--out", default="benchmarks/results/md_stability")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workers", type=int, default=1, help="(method, seed) runs in parallel processes")
    parser.add_argument("--quick", action="store_true", help="the smoke system, 1 seed, 1 round (tests)")
    parser.add_argument("--reuse", default=None, metavar="DIR",
                        help="take the (method, seed) runs an earlier --out DIR finished at the same settings, run the rest")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    methods = [m for m in args.samplers.split(",") if m]
    for method in methods:
        if method not in SAMPLERS:
            parser.error(f"unknown sampler {method!r}: choose from {','.join(SAMPLERS)}")
    options = {key: value for key, value in {
        "budget": args.labels, "epochs": args.epochs, "n_members": args.members, "n_features": args.features,
        "stability_runs": args.stability_runs, "stability_steps": args.stability_steps, "neb_steps": args.neb_steps,
        "energy_tolerance_eV": args.energy_tolerance,
    }.items() if value is not None}
    check_options(parser, args.system, options)
    seeds, rounds = args.seeds, args.rounds
    if args.quick:
        seeds, rounds = 1, 1
        options = {"smoke": True, "budget": min(args.labels, 2)}
    md_sampler_steps = None if args.quick else args.md_sampler_steps
    system = build_system(args.system, options, md_sampler_steps, args.budget_unit)
    keys = figures(system)
    os.makedirs(args.out, exist_ok=True)
    unit = "reference calls" if system.selection.budget_unit == "reference_calls" else "labels"
    print(f"{system.name}: {methods} x {seeds} seeds x {rounds} rounds x {system.selection.budget} {unit}", flush=True)
    start = time.perf_counter()
    jobs = [(method, seed) for seed in range(seeds) for method in methods]
    settings = {"system": system.name, "rounds": rounds, "labels_per_round": system.selection.budget,
                "budget_unit": system.selection.budget_unit,
                "options": {**options, **({"md_sampler_steps": md_sampler_steps} if md_sampler_steps is not None else {})}}
    reused = reused_rows(args.reuse, settings, jobs, rounds) if args.reuse else []
    reused_jobs = sorted({(r["method"], r["seed"]) for r in reused})
    if reused_jobs:
        print(f"reused from {args.reuse}: {reused_jobs}", flush=True)
    jobs = [job for job in jobs if job not in reused_jobs]
    runs_dir = os.path.join(args.out, "runs")
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            futures = [pool.submit(run_job, args.system, options, md_sampler_steps, args.budget_unit, method, seed,
                                   rounds, runs_dir)
                       for method, seed in jobs]
            rows = reused + [row for future in futures for row in future.result()]
    else:
        rows = reused + [row for method, seed in jobs
                         for row in run_one(system, method, seed, rounds, runs_dir, lambda s: print(s, flush=True))]
    elapsed = time.perf_counter() - start
    summary = summarize(rows, keys)
    baseline = summary.get("md", [None])[-1]
    targets = {key: (baseline[key]["mean"] if baseline else None) for key in keys if key != "force_mae"}
    reach = {key: cost_to_reach(summary, key, target, keys[key]) for key, target in targets.items()}
    ratios = {}
    for key, costs in reach.items():  # None unless md improved on round 0 and the attack reached it too
        md_labels = costs["md"]["labels"] if costs.get("md") else 0
        ratios[key] = costs["adversarial"]["labels"] / md_labels if md_labels and costs.get("adversarial") else None
    output = {
        **settings,
        "methods": methods,
        "seeds": seeds,
        "barrier_reference_eV": rows[0].get("barrier_reference_eV"),
        "summary": summary,
        "targets_md_final": targets,
        "cost_to_reach_md_final": reach,
        "label_ratio_adversarial_over_md": ratios,
        "final_round_stability": final_statistics(rows),
        "reused": {"from": args.reuse, "jobs": reused_jobs} if reused_jobs else None,
        "workers": args.workers,
        "wall_s": elapsed,
        "quick": args.quick,
        "machine": machine(),
    }
    figure(summary, system).savefig(os.path.join(args.out, "md_stability.png"), dpi=110)
    output["plot"] = os.path.join(args.out, "md_stability.png")
    with open(os.path.join(args.out, "rows.json"), "w") as handle:
        json.dump(rows, handle, indent=1, default=float)
    with open(os.path.join(args.out, "summary.json"), "w") as handle:
        json.dump(output, handle, indent=1, default=float)
    for method, lines in summary.items():
        for line in lines:
            print(f"{method:12s} round {line['round']} labels {line['labels']:3d} calls {line['reference_calls']:5.0f}  "
                  + "  ".join(f"{k} {line[k]['mean']}" for k in keys))
    print(f"labels (adversarial / md) to reach md's final figures: {ratios}")
    final = output["final_round_stability"]
    for method, line in final.get("methods", {}).items():
        print(f"{method:12s} final round: stable {line['summary']} (Wilson 95 %, runs of all seeds pooled)")
    if "comparison" in final:
        c = final["comparison"]
        print(f"log-rank {c['arms'][0]} vs {c['arms'][1]}: chi2 {c['logrank_chi2']:.2f}, p {c['logrank_p']:.3g}; "
              f"trajectories per arm to tell these fractions apart (alpha 0.05, power 0.8): {c['trajectories_needed_per_arm']}")
    emit(output, args.json)
    return output


if __name__ == "__main__":
    main()
