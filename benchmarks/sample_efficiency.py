"""Sample efficiency: samplers compared at equal cost (reference labels, or reference calls), over seeds.

    python benchmarks/sample_efficiency.py [--system NAME | module:factory] [--seeds 3] [--rounds 4]
        [--labels N] [--budget-unit labels|reference_calls] [--epochs N] [--samplers adversarial,random,random_scored,md,mixed]
        [--kT-sweep 0.3,3] [--workers 2] [--out DIR] [--from-csv rows.csv] [--threads N] [--quick] [--json]

``--system``: a built-in system (double_well_2d, double_well_1d, ammonia, ethanol) or the
user's own ``"module:factory"`` returning an :class:`advsample.systems.System` (a module
importable from the current directory works, e.g. ``tests.user_systems:hydrogen_peroxide``).
Every run starts from the system's initial data and is tested on its fixed test set
(:func:`advsample.compare.run_comparison`); methods differ only in how they propose and pick
the new structures per round. Methods: adversarial (batched attack ranked by the run
objective log σ² − Ē/kT), random (Gaussian displacements of training points, plain random
picks), random_scored (the same displacements ranked by the objective), md (committee
Langevin MD, frames ranked by σ: classic active learning), mixed (half attack, half
random) and the attack at the temperatures of ``--kT-sweep`` (default: the system's).
``--labels`` / ``--epochs`` default to the system's own. ``--budget-unit reference_calls``
makes ``--labels`` a number of reference calls each round pays (failed and outside-window
calls included; every run then keeps the labels its calls gave): the comparison at the cost
a user pays, reported with each method's labels beside it.

Per round and run: labels used, reference calls paid, test force/energy MAE, calibration
(Spearman ρ of σ vs error, miscalibration area), energies of the selected structures
(relative to the training minimum) and every metric the system declares (NH3: inversion
barrier, inversion-path errors, 1500 K MD stability; ethanol: torsion-scan errors, barrier,
1000 K MD stability). The report refuses to compare runs that spent different numbers of
labels (or, at equal reference calls, of calls) at any round (``UnequalCostError``).

Writes DIR/rows.csv, DIR/summary.json, DIR/comparison.png (error vs labels, mean and
min–max band per method) and DIR/kT_sweep.png. With ``--json`` the last line is one JSON
object: final figures per method and ``label_ratio``: labels random needs / labels
adversarial needs to reach the same mean test force error (null where not reached).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, machine, set_threads  # noqa: E402

from advsample import compare, samplers  # noqa: E402


def report(rows, out_dir: str, system=None) -> dict:
    """Aggregate (raises on unequal labels), write summary + plots, return the JSON figures."""
    summary = compare.aggregate(rows, system)
    compare.save_summary(summary, os.path.join(out_dir, "summary.json"))
    samplers = [m for m in summary["methods"] if "_kT" not in m]
    sweep = [m for m in summary["methods"] if m.startswith("adversarial")]
    compare.comparison_figure(summary, methods=samplers).savefig(os.path.join(out_dir, "comparison.png"), dpi=110)
    if len(sweep) > 1:
        compare.comparison_figure(summary, ["force_mae", "selected_energy_mean"], sweep).savefig(
            os.path.join(out_dir, "kT_sweep.png"), dpi=110)
    table = compare.final_table(summary)
    ratios = {}
    if "adversarial" in summary["methods"]:
        for baseline in summary["methods"]:
            if baseline != "adversarial":
                ratios[baseline] = compare.label_ratio(summary, baseline, "adversarial")
    return {"summary": summary, "table": table, "ratios": ratios}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", default="double_well_2d",
                        help="built-in system name or 'module:factory' of your own System")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--labels", type=int, default=None, help="new reference labels per round (default: the system's)")
    parser.add_argument("--budget-unit", default=None, choices=("labels", "reference_calls"),
                        help="what --labels counts per round (default: the system's, labels)")
    parser.add_argument("--epochs", type=int, default=None, help="max training epochs (default: the system's)")
    parser.add_argument("--samplers", default=",".join(compare.DEFAULT_METHODS),
                        help=f"comma-separated, of {','.join(samplers.sampler_names())}")
    parser.add_argument("--kT-sweep", default=None, help="extra attack temperatures (default: the system's)")
    parser.add_argument("--workers", type=int, default=compare.default_workers())
    parser.add_argument("--out", default="benchmarks/results/sample_efficiency")
    parser.add_argument("--from-csv", default=None, help="only report from an earlier rows.csv")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny settings (tests)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    system = None
    if args.from_csv:  # the CSV says what was run
        rows = compare.read_rows(args.from_csv)
        seeds, rounds, budget = len({r["seed"] for r in rows}), max(r["round"] for r in rows), rows[0]["budget"]
        options = {"budget": budget, "from_csv": args.from_csv}
    else:
        plan = compare.plan(args.system, args.samplers, args.kT_sweep, args.seeds, args.rounds, args.labels,
                            args.epochs, args.workers, smoke=args.quick, budget_unit=args.budget_unit)
        system, seeds, rounds = plan.system, len(plan.seeds), plan.rounds
        options = {"budget": plan.budget, "budget_unit": plan.budget_unit, "epochs": plan.epochs}
        print(plan, flush=True)
        rows = plan.run(os.path.join(args.out, "runs"), log=lambda s: print(s, flush=True))
    compare.write_rows(rows, os.path.join(args.out, "rows.csv"))
    elapsed = time.perf_counter() - start
    result = report(rows, args.out, system)
    print(compare.markdown_table(result["table"]))
    for baseline, ratio in result["ratios"].items():
        r, low = ratio["ratio"], ratio["ratio_at_least"]
        text = f"{r:.2f}" if r is not None else (f"not reached (> {low:.2f})" if low is not None else "n/a")
        unit = "reference calls" if ratio["unit"] == "reference_calls" else "labels"
        print(f"{unit} {baseline} needs / {unit} adversarial needs to reach force MAE {ratio['target']:.3g}: {text}")
    output = {
        "system": rows[0]["system"],
        "budget_unit": result["summary"]["budget_unit"],
        "cost": result["summary"]["cost"],
        "labels": result["summary"]["labels"],
        "seeds": seeds,
        "rounds": rounds,
        "labels_per_round": options["budget"],
        "reference_calls": result["summary"]["reference_calls"],
        "final": {line["method"]: line for line in result["table"]},
        "label_ratio_random_over_adversarial": result["ratios"].get("random", {}).get("ratio"),
        "label_ratios": result["ratios"],
        "csv": os.path.join(args.out, "rows.csv"),
        "plot": os.path.join(args.out, "comparison.png"),
        "options": options,
        "wall_s": elapsed,
        "quick": args.quick,
        "machine": machine(),
    }
    emit(output, args.json)
    return output


if __name__ == "__main__":
    main()
