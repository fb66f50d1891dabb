"""A system whose reference takes a while and says where it ran, for tests/test_slurm.py.

``slow_double_well(delay_s, log)``: the 2D double well (smoke size) labeled by
:class:`SlowSurface` - the same energies and forces as the surface, after ``delay_s``
seconds; every call appends ``start|end <slurm job id> <geometry> <unix time>`` to ``log``, so a test
can cancel a job while a label is in flight and count the calls that finished.
"""
import dataclasses
import os
import time

from ase.calculators.calculator import Calculator, all_changes

from advsample.label import CalculatorSpec
from advsample.surfaces import get_surface
from advsample.systems import get_system


class SlowSurface(Calculator):
    implemented_properties = ["energy", "forces"]

    def __init__(self, delay_s: float = 1.0, log: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.delay_s, self.log = float(delay_s), log
        self.surface = get_surface("double_well_2d")

    def _note(self, what: str, atoms) -> None:
        if self.log:
            x, y = atoms.positions[0, :2]
            with open(self.log, "a") as fh:
                fh.write(f"{what} {os.environ.get('SLURM_JOB_ID', 'local')} {x:.12f},{y:.12f} {time.time():.3f}\n")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self._note("start", atoms)
        time.sleep(self.delay_s)
        work = atoms.copy()
        work.calc = self.surface
        self.results = {"energy": work.get_potential_energy(), "forces": work.get_forces(apply_constraint=False)}
        self._note("end", atoms)


def slow_double_well(delay_s: float = 1.0, log: str | None = None, smoke: bool = True):
    system = get_system("double_well_2d", smoke=smoke)
    return dataclasses.replace(system, spec=None, reference=CalculatorSpec("slurm_systems:SlowSurface",
                                                                                  {"delay_s": delay_s, "log": log}))
