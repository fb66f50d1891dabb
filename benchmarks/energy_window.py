"""Out-of-window labels: a sampler with the energy window on Ē, or on an upper confidence bound Ē + κ·σ_E.

    python benchmarks/energy_window.py [--system ammonia] [--sampler adversarial] [--sigmas 0,1,2] [--seeds 3] [--rounds 2]
        [--calls 10] [--epochs N] [--energy-ceiling E] [--workers 2] [--out DIR] [--threads N] [--quick] [--json]

Selection drops candidates whose committee energy lies above the system's energy window
(``SelectionConfig.energy_ceiling``); a candidate that the reference then puts above the
window is paid for, recorded and not trained on. With ``window_sigmas`` κ > 0 the window is
applied to Ē + κ·σ_E instead (σ_E: the committee's energy spread), so fewer paid labels
land outside it. Every run is one sampler (``--sampler``, default the attack ``adversarial``;
``udd`` and ``biased_md`` propose MD frames that the bound filters alike) at an equal number of
reference calls per round (``budget_unit="reference_calls"``, ``--calls`` per round), from
the same initial data; runs differ in κ and the seed. Reported per κ: labels gained,
calls outside the window, failed calls, test force MAE and every metric the system
declares (mean ± std over seeds). Writes DIR/rows.csv and DIR/summary.json; with
``--json`` the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, machine, set_threads  # noqa: E402

from advsample import compare, samplers  # noqa: E402
from advsample.systems import get_system  # noqa: E402


def method_name(sampler: str, kappa: float) -> str:
    return f"{sampler}_ucb{kappa:g}"


def run(spec, sampler: str, kappa: float, seed: int, rounds: int, out_dir: str, calls: int, epochs: int | None,
        ceiling: float | None) -> list[dict]:
    """Rows of one (κ, seed) run of ``sampler`` at ``calls`` reference calls per round."""
    selection = {"budget_unit": "reference_calls", "window_sigmas": kappa,
                 **({"energy_ceiling": ceiling} if ceiling is not None else {})}
    rows = compare.run_one(spec, sampler, seed, rounds, os.path.join(out_dir, f"{method_name(sampler, kappa)}_seed{seed}"),
                           budget=calls, epochs=epochs, selection=selection)
    for row in rows:
        row["method"] = method_name(sampler, kappa)
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", default="ammonia", help="built-in name or 'module:factory'")
    parser.add_argument("--sampler", default="adversarial", choices=samplers.sampler_names(),
                        help="the sampler whose candidates the bound filters (default adversarial)")
    parser.add_argument("--sigmas", default="0,1,2", help="comma-separated κ of the bound Ē + κ·σ_E")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--calls", type=int, default=10, help="reference calls per round")
    parser.add_argument("--epochs", type=int, default=None, help="max training epochs (default: the system's)")
    parser.add_argument("--energy-ceiling", type=float, default=None,
                        help="the selection window above the training minimum (default: the system's)")
    parser.add_argument("--workers", type=int, default=compare.default_workers())
    parser.add_argument("--out", default="benchmarks/results/energy_window")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="the smoke system, 1 seed, 1 round (tests)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    sigmas = [float(v) for v in args.sigmas.split(",") if v.strip()]
    if not sigmas or min(sigmas) < 0:
        parser.error(f"--sigmas must list values >= 0, got {args.sigmas!r}")
    seeds, rounds, calls, epochs = args.seeds, args.rounds, args.calls, args.epochs
    options = {"smoke": True} if args.quick else {}
    if args.quick:
        seeds, rounds, calls, epochs = 1, 1, min(calls, compare.SMOKE_RUN["budget"]), compare.SMOKE_RUN["epochs"]
    system = get_system(args.system, **options)
    ceiling = args.energy_ceiling if args.energy_ceiling is not None else system.selection.energy_ceiling
    if ceiling is None:
        parser.error(f"system {system.name!r} has no energy window (SelectionConfig.energy_ceiling): nothing to bound")
    os.makedirs(args.out, exist_ok=True)
    print(f"{system.name}: {args.sampler} with window_sigmas {sigmas} x {seeds} seeds x {rounds} rounds x {calls} calls",
          flush=True)
    start = time.perf_counter()
    jobs = [(kappa, seed) for kappa in sigmas for seed in range(seeds)]
    runs_dir = os.path.join(args.out, "runs")
    spec = (args.system, options)
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            futures = [pool.submit(run, spec, args.sampler, kappa, seed, rounds, runs_dir, calls, epochs, args.energy_ceiling) for kappa, seed in jobs]
            rows = [row for future in futures for row in future.result()]
    else:
        rows = [row for kappa, seed in jobs
                for row in run(spec, args.sampler, kappa, seed, rounds, runs_dir, calls, epochs, args.energy_ceiling)]
    compare.write_rows(rows, os.path.join(args.out, "rows.csv"))
    summary = compare.aggregate(rows, system)  # refuses runs that paid different numbers of calls
    compare.save_summary(summary, os.path.join(args.out, "summary.json"))
    table = compare.final_table(summary)
    print(compare.markdown_table(table))
    output = {
        "system": system.name,
        "sampler": args.sampler,
        "sigmas": sigmas,
        "seeds": seeds,
        "rounds": rounds,
        "calls_per_round": calls,
        "energy_ceiling": ceiling,
        "final": {line["method"]: line for line in table},
        "labels": {m: e["labels"]["mean"] for m, e in summary["methods"].items()},
        "calls_outside_window": {m: e["reference_calls_outside_window"]["mean"] for m, e in summary["methods"].items()},
        "csv": os.path.join(args.out, "rows.csv"),
        "wall_s": time.perf_counter() - start,
        "quick": args.quick,
        "machine": machine(),
    }
    emit(output, args.json)
    return output


if __name__ == "__main__":
    main()
