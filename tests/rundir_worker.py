"""One process running an active-learning run on a toy system (tests/test_rundir.py starts several).

Usage: python rundir_worker.py RUN_DIR CALLS_LOG ROUNDS WAIT [SLEEP_S [BARRIER_DIR N]]

With BARRIER_DIR, the process (after its imports) writes BARRIER_DIR/<pid> and waits until
N such files exist, so N processes reach the run directory at the same moment. With the
environment variable RUNDIR_GATE set to a path, every reference call (after logging itself)
waits until that file exists: the test holds the run mid-round as long as it needs.

Every reference call appends one line (pid and x) to CALLS_LOG before it returns, so the
test counts the calls all processes paid. Exit status 0: finished; 3: refused (RunDirBusy,
message on stderr).
"""
from __future__ import annotations

import os
import sys
import time

from ase.calculators.calculator import Calculator, all_changes


class LoggedSurface(Calculator):
    """The 2D double well; each call appended to a log file (private: not part of its identity)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, surface, log, sleep_s=0.0):
        super().__init__()
        self.surface = surface
        self._log, self._sleep_s = log, sleep_s
        self._gate = os.environ.get("RUNDIR_GATE")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        time.sleep(self._sleep_s)
        self.surface.calculate(self.atoms, properties, system_changes)
        self.results = dict(self.surface.results)
        with open(self._log, "a") as f:
            f.write(f"{os.getpid()} {self.atoms.positions[0, 0]:.9f}\n")
        while self._gate and not os.path.exists(self._gate):
            time.sleep(0.02)


def main(run_dir, log, rounds, wait, sleep_s=0.0, barrier=None, n_barrier=0):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from advsample.loop import ActiveLearning
    from advsample.rundir import RunDirBusy
    from advsample.samplers import make_sampler
    from advsample.systems import get_system

    system = get_system("double_well_2d", smoke=True)
    run = ActiveLearning.from_system(
        system, run_dir, make_sampler("random", displacement=0.3), reference=LoggedSurface(system.reference, log, sleep_s),
        progress=False, wait=wait,
    )
    if barrier is not None:
        os.makedirs(barrier, exist_ok=True)
        open(os.path.join(barrier, str(os.getpid())), "w").close()
        while len(os.listdir(barrier)) < n_barrier:
            time.sleep(0.01)
    try:
        run.run(rounds)
    except RunDirBusy as exc:
        print(exc, file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(args[0], args[1], int(args[2]), args[3] == "wait", float(args[4]) if len(args) > 4 else 0.0,
                  args[5] if len(args) > 5 else None, int(args[6]) if len(args) > 6 else 0))
