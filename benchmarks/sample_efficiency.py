"""Sample efficiency: samplers compared at the same number of reference labels, over seeds.

    python benchmarks/sample_efficiency.py [--system double_well_2d|double_well_1d|ammonia|ethanol]
        [--seeds 3] [--rounds 4] [--labels 20] [--epochs 600]
        [--samplers adversarial,random,random_scored,md,mixed] [--kT-sweep 0.3,3]
        [--workers 2] [--out DIR] [--from-csv rows.csv] [--threads N] [--quick] [--json]

Every run starts from the same initial data and is tested on the same fixed test set
(``advsample.compare.make_problem``); methods differ only in how they propose and pick
the ``--labels`` new structures per round. Methods: adversarial (batched attack ranked by
log σ² − Ē/kT), random (Gaussian displacements of training points, picked at random),
random_scored (the same displacements ranked by the adversarial score), md (committee
Langevin MD, frames ranked by σ: classic active learning), mixed (half attack, half
random) and the attack at the temperatures of ``--kT-sweep``.

Per round and run: labels used, test force/energy MAE, calibration (Spearman ρ of σ vs
error, miscalibration area), energies of the selected structures (relative to the
training minimum) and, for ammonia, the rare-event figures (inversion-barrier error,
force/energy MAE along the relaxed inversion path) and the thermal one (fraction of
1500 K committee-MD runs that stay physical and within 0.5 kcal/mol of xTB); for ethanol (SchNet
committee, GFN2-xTB, initial data in the anti conformer only) the force MAE and the
energy-profile MAE along the relaxed H–O–C–C torsion scan, and the fraction of 1000 K
committee-MD runs that stay bonded and within 0.05 eV of xTB. The report refuses to
compare runs that used different numbers of labels (``UnequalLabelsError``).

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

from advsample import compare  # noqa: E402


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def report(rows, out_dir: str) -> dict:
    """Aggregate (raises on unequal labels), write summary + plots, return the JSON figures."""
    summary = compare.aggregate(rows)
    compare.save_summary(summary, os.path.join(out_dir, "summary.json"))
    samplers = [m for m in summary["methods"] if "_kT" not in m]
    sweep = [m for m in summary["methods"] if m.startswith("adversarial")]
    metrics = compare.report_metrics(summary["system"])
    energy_unit = compare.energy_unit(summary["system"])
    compare.comparison_figure(summary, metrics, samplers, energy_unit=energy_unit).savefig(
        os.path.join(out_dir, "comparison.png"), dpi=110)
    if len(sweep) > 1:
        compare.comparison_figure(summary, ["force_mae", "selected_energy_mean"], sweep, energy_unit=energy_unit).savefig(
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
    parser.add_argument("--system", default="double_well_2d", choices=compare.SYSTEMS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--labels", type=int, default=20, help="new reference labels per round")
    parser.add_argument("--epochs", type=int, default=None,
                        help="max training epochs (default 600; NH3 3000; ethanol 1000)")
    parser.add_argument("--samplers", default=",".join(compare.SAMPLERS))
    parser.add_argument("--kT-sweep", default=None,
                        help="extra attack temperatures (default 0.3,3; NH3 0.02,0.3; ethanol 0.05,0.2)")
    parser.add_argument("--workers", type=int, default=compare.default_workers())
    parser.add_argument("--out", default="benchmarks/results/sample_efficiency")
    parser.add_argument("--from-csv", default=None, help="only report from an earlier rows.csv")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny settings (tests)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    sweep = _floats(args.kT_sweep) if args.kT_sweep is not None else list(compare.DEFAULT_KT_SWEEP[args.system])
    options = {"budget": args.labels, "epochs": args.epochs or compare.DEFAULT_EPOCHS[args.system]}
    seeds, rounds, workers = args.seeds, args.rounds, args.workers
    if args.quick:
        seeds, rounds, workers, sweep = min(seeds, 2), 1, 1, sweep[:1]
        options = compare.smoke_options(args.system, args.labels)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    if args.from_csv:  # the CSV says what was run
        rows = compare.read_rows(args.from_csv)
        seeds, rounds = len({r["seed"] for r in rows}), max(r["round"] for r in rows)
        options = {"budget": rows[0]["budget"], "from_csv": args.from_csv}
    else:
        methods = [m for m in args.samplers.split(",") if m] + [compare.method_name("adversarial", kT) for kT in sweep]
        print(f"{args.system}: {len(methods)} methods x {seeds} seeds x {rounds} rounds x {options['budget']} labels, "
              f"{workers} worker(s)", flush=True)
        rows = compare.run_comparison(args.system, methods, list(range(seeds)), rounds, os.path.join(args.out, "runs"),
                                      options=options, workers=workers, log=lambda s: print(s, flush=True))
    compare.write_rows(rows, os.path.join(args.out, "rows.csv"))
    elapsed = time.perf_counter() - start
    result = report(rows, args.out)
    print(compare.markdown_table(result["table"]))
    for baseline, ratio in result["ratios"].items():
        r, low = ratio["ratio"], ratio["ratio_at_least"]
        text = f"{r:.2f}" if r is not None else (f"not reached (> {low:.2f})" if low is not None else "n/a")
        print(f"labels {baseline} needs / labels adversarial needs to reach force MAE {ratio['target']:.3g}: {text}")
    output = {
        "system": rows[0]["system"],
        "labels": result["summary"]["labels"],
        "seeds": seeds,
        "rounds": rounds,
        "labels_per_round": options["budget"],
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
