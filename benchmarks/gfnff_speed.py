"""GFN-FF as the host–guest reference: topology set-up and energy+forces call time per cell.

For each cell (the built-in SOD:methylamine, CHA:dimethylamine, LEV:water; with
``--zeolites PATH`` also the smallest and largest accepted cell of the authors' file, whose
acceptance is reported: cells with <= --max-atoms atoms, CIFs that fail and why): the first
call of a fresh calculator (set-up + one call) and the median of ``--repeats`` calls on
rattled geometries with the topology kept; set-up = first − median call. Prints lines, then
(``--json``) one JSON object.

    python benchmarks/gfnff_speed.py --json
    python benchmarks/gfnff_speed.py --zeolites /path/to/zeolites.json --json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine  # noqa: E402

from advsample.molecules import gfnff_calculator  # noqa: E402
from advsample.systems.zeolites import builtin_cell, read_zeolites_json  # noqa: E402


def time_cell(atoms, repeats: int, seed: int = 0) -> dict:
    """{"n_atoms", "first_call_ms", "call_ms" (median), "setup_ms"} for one cell, wall time, and the same as
    process CPU time (``*_cpu_ms``: what a free core would take; wall time grows with a shared machine's load)."""
    rng = np.random.default_rng(seed)
    calculator = gfnff_calculator()
    start, cpu = time.perf_counter(), time.process_time()
    calculator.get_forces(atoms)
    first, first_cpu = time.perf_counter() - start, time.process_time() - cpu
    times, cpu_times = [], []
    for _ in range(repeats):
        moved = atoms.copy()
        moved.positions += rng.normal(scale=0.02, size=moved.positions.shape)
        start, cpu = time.perf_counter(), time.process_time()
        calculator.get_forces(moved)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu)
    call, call_cpu = statistics.median(times), statistics.median(cpu_times)
    return {"n_atoms": len(atoms), "first_call_ms": 1000 * first, "call_ms": 1000 * call,
            "setup_ms": 1000 * (first - call), "call_cpu_ms": 1000 * call_cpu,
            "setup_cpu_ms": 1000 * (first_cpu - call_cpu), "n_setups": calculator.n_setups}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--zeolites", default=None, help="path of the authors' zeolites.json (optional)")
    parser.add_argument("--max-atoms", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="one built-in cell, 3 repeats (tests)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    names = ["SOD:methylamine"] if args.quick else ["SOD:methylamine", "CHA:dimethylamine", "LEV:water"]
    repeats = 3 if args.quick else args.repeats
    cells = [builtin_cell(name) for name in names]
    result: dict = {"benchmark": "gfnff_speed", "machine": machine(), "cells": {}}
    if args.zeolites:
        report: dict = {}
        accepted = read_zeolites_json(args.zeolites, max_atoms=args.max_atoms, skip_bad=True, report=report)
        result["zeolites"] = {"entries": report["n_entries"], "selected": report["n_selected"],
                              "accepted": len(accepted), "failed": report["failed"], "max_atoms": args.max_atoms}
        print(f"{args.zeolites}: {report['n_entries']} cells, {report['n_selected']} with <= {args.max_atoms} atoms, "
              f"{len(accepted)} accepted, {len(report['failed'])} CIFs failed")
        for reason in report["failed"]:
            print(f"  id {reason['id']}: {reason['reason']}")
        by_size = sorted(accepted, key=len)
        cells += [by_size[0], by_size[-1]]
    for atoms in cells:
        timing = time_cell(atoms, repeats)
        result["cells"][atoms.info["cell_name"]] = timing
        print(f"{atoms.info['cell_name']:28s} {timing['n_atoms']:3d} atoms: energy+forces {timing['call_ms']:6.1f} ms "
              f"({timing['call_cpu_ms']:.1f} ms CPU), topology set-up {timing['setup_ms']:4.0f} ms "
              f"({timing['setup_cpu_ms']:.0f} ms CPU)")
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
