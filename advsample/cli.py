"""``advsample`` command line.

    advsample report [-o DIR] [--notebooks NB ...] [-p NAME VALUE]... [--params FILE.yaml]
                     [--smoke | --full] [--executor NAME] [-k KERNEL] [--timeout S] [--no-progress]
    advsample fetch-js [--dest DIR] [--force]
    advsample audit COMMITTEE.pt [STRUCTURES.extxyz ...] [--system NAME] --kT KT [KT ...] --force-tolerance F [-o DIR]
    advsample run CONFIG.yaml [--dry-run] [--no-progress]

Exit codes of ``report``: 0 all notebooks ran, 1 at least one failed (the report is
still written), 2 a usage error (unknown notebook or parameter, bad params file).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="advsample", description="advsample notebooks and reports")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    rep = sub.add_parser(
        "report", help="run notebooks with papermill and write an HTML report folder",
        description="Run notebooks with papermill; write executed notebooks, self-contained HTML, "
                    "summary.csv/summary.json and index.html into the output folder.")
    rep.add_argument("-o", "--output", default="report", metavar="DIR", help="output folder (default: report/)")
    rep.add_argument("--notebooks", nargs="+", metavar="NB",
                     help="notebook paths or stems in notebooks/ (default: every notebooks/*.ipynb)")
    rep.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="set a parameter; VALUE is read as a YAML scalar (3, 0.5, true, null, text)")
    rep.add_argument("--params", metavar="FILE.yaml",
                     help="YAML mapping of parameters; a key that is a notebook stem holds that notebook's own")
    rep.add_argument("--smoke", action="store_true", help="shortcut for -p smoke true")
    rep.add_argument("--full", action="store_true",
                     help="every notebook at its own defaults (without it, advsample/report_defaults.yaml "
                          "shortens the long notebooks to minutes)")
    rep.add_argument("--executor", metavar="NAME",
                     help="passed as the 'executor' parameter to notebooks that declare one")
    rep.add_argument("-k", "--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    rep.add_argument("--timeout", type=float, default=None, metavar="S", help="per-cell timeout in seconds")
    rep.add_argument("--no-progress", action="store_true", help="no progress bar")

    _add_run(sub)
    _add_audit(sub)

    fetch = sub.add_parser("fetch-js", help="download the pinned JavaScript bundles the HTML reports inline (npm)")
    fetch.add_argument("--dest", default=None, help="folder (default: $ADVSAMPLE_JS_DIR or advsample/viz/static/npm)")
    fetch.add_argument("--force", action="store_true", help="download again even if present")
    return parser


def _add_audit(sub) -> None:
    audit = sub.add_parser(
        "audit", help="predict where MD with a committee will fail, before running it (docs/audit.md)",
        description="Attack a committee from the given structures at each kT; write audit.csv (geometries over "
                    "tolerance), audit_per_kT.csv, audit.json (predicted safe temperature, time, calls), "
                    "geometries.extxyz and audit.png into the output folder.")
    audit.add_argument("committee", help="committee checkpoint (Committee.save / a run's round_NNN/committee.pt)")
    audit.add_argument("structures", nargs="*", help="extxyz files of start structures (near minima)")
    audit.add_argument("--system", help="take the start structures from a system's initial data (get_system name)")
    audit.add_argument("--kT", type=float, nargs="+", required=True, help="kT values (the committee's energy unit)")
    audit.add_argument("--force-tolerance", type=float, required=True,
                       help="largest calibrated force error bar allowed (energy unit/Å)")
    for name, kind, default in (("n-replicas", int, 8), ("max-starts", int, 8), ("n-steps", int, 60),
                                ("learning-rate", float, 0.01), ("initial-displacement", float, 0.01),
                                ("min-distance", float, 0.5), ("seed", int, 0)):
        audit.add_argument(f"--{name}", type=kind, default=default, help=f"AuditConfig.{name.replace('-', '_')} "
                                                                         f"(default {default})")
    audit.add_argument("--uncertainty", choices=("forces", "energy"), default="forces", help="attacked variance")
    audit.add_argument("--energy-unit", default="eV", help="label of the energy unit in the table and figure")
    audit.add_argument("-o", "--output", default="audit", metavar="DIR", help="output folder (default: audit/)")
    audit.add_argument("--allow-pickle", action="store_true",
                       help="let the model unpickle the files its config names (a MACE committee from model files)")
    audit.add_argument("--no-progress", action="store_true", help="no progress bar")
    audit.add_argument("--bond-scan", action="store_true",
                       help="also pull every bond of the start structures apart (no labels, ~1 s): bonds.csv, weakest "
                            "first, with the barrier the committee keeps and (eV) the chance each bond holds")
    audit.add_argument("--md-time-fs", type=float, default=1000.0,
                       help="--bond-scan: the MD length the chance a bond holds refers to (default 1000 fs)")
    audit.add_argument("--reach", choices=("frame", "path"), default="frame",
                       help="thermal reach of a frame: its own energy above the minimum (frame, default) or the highest "
                            "its attack path climbed (path: a hole behind a barrier counts at the barrier's height)")
    audit.add_argument("--verify", type=int, default=0, metavar="N",
                       help="check N frames per kT with the reference (each attack seed's farthest frame within "
                            "reach): their true errors, verified.csv and a verified safe T; costs N reference calls "
                            "per kT + 1 (default 0: none)")
    audit.add_argument("--reference", default=None, metavar="MODULE:ATTR",
                       help="--verify: the reference calculator's import path (a class or factory, e.g. "
                            "ase.calculators.emt:EMT); default: the --system's own reference")
    audit.add_argument("--energy-tolerance", type=float, default=None,
                       help="--verify: a checked frame also fails when its energy above the start is off by more "
                            "than this (energy unit; default: forces only)")
    audit.add_argument("--md-check", type=int, default=0, metavar="N",
                       help="run a short NN-MD (Langevin at kT/k_B) from N frames per kT (each attack seed's farthest "
                            "within reach): does MD from there run away? md_checked.csv and an MD-checked safe T; no "
                            "labels (default 0: none)")
    audit.add_argument("--md-steps", type=int, default=200, help="--md-check: steps of each short run (default 200)")
    audit.add_argument("--md-timestep-fs", type=float, default=0.5, help="--md-check: time step (default 0.5 fs)")
    audit.add_argument("--md-start", choices=("frame", "minimum"), default="frame",
                       help="--md-check: start each short run from the attack's frame (default) or, as a control, "
                            "from its start structure")


RUN_EPILOG = """\
keys of CONFIG.yaml (type, default, what):
{keys}

A batch script that submits it (sbatch run.sh; run it again to resume):

  #!/bin/bash
  #SBATCH --job-name=advsample --time=24:00:00 --ntasks=1 --cpus-per-task=4
  source ~/venvs/advsample/bin/activate
  export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK
  advsample run --dry-run config.yaml && advsample run --no-progress config.yaml

Exit codes: 0 the run finished, 1 the run stopped (a run directory of other settings or busy,
the reference gave up), 2 the file was refused (the message names the key)."""


def _add_run(sub) -> None:
    from .runfile import describe_keys

    run = sub.add_parser(
        "run", help="run (or resume) active learning from a YAML file, headless",
        description="Run active learning from a YAML file: the system, sampler, rounds, budget, executor, run "
                    "directory and seed. Running the same command again resumes the run; a changed file is "
                    "refused as the resume of another run, naming the keys.",
        epilog=RUN_EPILOG.format(keys=describe_keys()), formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("config", metavar="CONFIG.yaml", help="the run file")
    run.add_argument("--dry-run", action="store_true",
                     help="check everything (keys, types, system, reference, sampler, executor config, run "
                          "directory) without labeling or writing anything")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (batch logs)")


def _run(args: argparse.Namespace) -> int:
    from . import runfile

    try:
        if args.dry_run:
            for line in runfile.dry_run(args.config):
                print(line)
            return 0
        records = runfile.run(args.config, progress=not args.no_progress)
    except runfile.RunConfigError as exc:
        print(f"advsample run: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, OSError) as exc:  # the run directory refused, busy, or the reference gave up
        print(f"advsample run: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"advsample run: {len(records) - 1} rounds done in {runfile.load_config(args.config)['run_dir']}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from . import report

    notebooks = report.resolve_notebooks(args.notebooks)
    known_stems = {nb.stem for nb in notebooks}
    try:
        known_stems |= {p.stem for p in report.default_notebooks_dir().glob("*.ipynb")}
    except Exception:
        pass
    global_params, sections, shortened = {}, {}, {}
    if not (args.full or args.smoke):  # the embedded defaults: minutes on 2 cores
        global_params, sections = report.load_params_file(report.EMBEDDED_DEFAULTS, known_stems)
        shortened = {stem: set(params) for stem, params in sections.items()}
    if args.params:
        file_globals, file_sections = report.load_params_file(args.params, known_stems)
        global_params.update(file_globals)
        for stem, params in file_sections.items():
            sections[stem] = {**sections.get(stem, {}), **params}
    selected = {nb.stem for nb in notebooks}
    sections = {k: v for k, v in sections.items() if k in selected}
    cli_params = {name: report.parse_value(value) for name, value in args.param}
    if args.smoke:
        cli_params["smoke"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        plan = report.plan_parameters(notebooks, global_params, sections, cli_params, executor=args.executor)
    notes = report.load_notes()  # the index says which notebooks ran shortened and what their full run shows
    notes = {nb.stem: report.shortened_note(nb, {k: v for k, v in plan[nb.stem].items() if k in shortened[nb.stem]},
                                            notes.get(nb.stem))
             for nb in notebooks if nb.stem in shortened}
    results = report.build_report(notebooks, args.output, plan, kernel=args.kernel, timeout=args.timeout,
                                  progress=not args.no_progress, notes=notes)
    failed = [r for r in results if not r.ok]
    print(f"report: {args.output}/index.html ({len(results)} notebooks, {len(failed)} failed)")
    for r in failed:
        print(f"  FAILED {r.stem}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .report import ReportError, fetch_js

    try:
        if args.command == "report":
            return _report(args)
        if args.command == "run":
            return _run(args)
        if args.command == "audit":
            from .audit import command_line

            return command_line(args)
        if args.command == "fetch-js":
            print(fetch_js(args.dest, force=args.force))
            return 0
    except ReportError as exc:
        print(f"advsample {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
