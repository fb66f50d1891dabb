"""The toy-surface study of notebooks 01 (1D double well) and 02 (2D double well), written once.

``ToyStudy(surface_name, **parameters)`` holds what both notebooks share: the surface, the
initial data (the left well only, below the barrier), the test set (both wells), the MLP
committee, the sampler and the active-learning run in ``run_dir`` (resumed when it exists),
the round-1 attack (from memory, or read back from ``trajectories.extxyz`` on a resumed run)
and the notebook's ``summary.json``. Coordinates in Å, energies in the toy's arbitrary units.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .samplers import SAMPLERS
from .timings import run_timings

RULES = {  # advsample.parameters.check_parameters rules of the notebooks' parameters cells
    "n_rounds": ">= 0", "labels_per_round": ">= 1", "kT": "> 0", "n_members": ">= 2",
    "sampler": SAMPLERS, "epochs": ">= 1",
}
_SIZES = {  # (initial, test) points, normal / smoke
    "double_well_1d": dict(sizes=(32, 200), smoke_sizes=(24, 100)),
    "double_well_2d": dict(sizes=(128, 400), smoke_sizes=(64, 100)),
}


@dataclass
class ToyStudy:
    """Active learning on a toy surface with the notebooks' parameters (see their parameters cell).

    ``smoke`` shrinks the run to seconds: at most 2 rounds, 10 labels, 300 epochs, 3 members.
    """

    surface_name: str
    n_rounds: int = 5
    labels_per_round: int = 5
    kT: float = 1.0
    n_members: int = 5
    sampler: str = "adversarial"
    executor: str = "inline"
    epochs: int = 1500
    seed: int = 0
    smoke: bool = False
    retry_failures: bool = False  # recompute reference labels whose failure is cached (after fixing the reference)
    run_dir: Path = field(default=None)
    records: list = field(default_factory=list, repr=False)

    def __post_init__(self):
        from .systems import get_system

        if self.surface_name not in _SIZES:
            raise ValueError(f"unknown toy surface {self.surface_name!r}; choose one of {', '.join(_SIZES)}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.smoke:
            self.n_rounds, self.labels_per_round = min(self.n_rounds, 2), min(self.labels_per_round, 10)
            self.epochs, self.n_members = min(self.epochs, 300), min(self.n_members, 3)
        self.run_dir = Path(self.run_dir or Path("runs") / self.surface_name)
        n_initial, n_test = _SIZES[self.surface_name]["smoke_sizes" if self.smoke else "sizes"]
        # the system of the comparisons: left-well initial data (E < 0), test set over both wells (E < 4)
        self.system = get_system(self.surface_name, n_initial=n_initial, n_test=n_test, data_seed=self.seed,
                                 n_members=self.n_members, kT=self.kT, budget=self.labels_per_round, epochs=self.epochs)
        self.surface, self.initial, self.test = self.system.reference, self.system.initial, self.system.test

    @property
    def learning_rate(self) -> float:
        """Adam step of training; smoke: bigger steps for fewer epochs."""
        return 2e-2 if self.smoke else 5e-3

    def describe(self) -> str:
        return (f"{self.n_rounds} rounds x {self.labels_per_round} labels, kT={self.kT}, {self.n_members} members, "
                f"sampler={self.sampler}, epochs={self.epochs}; {len(self.initial)} initial (left well), "
                f"{len(self.test)} test points; run directory {self.run_dir}")

    def learner(self, executor):
        """The ``ActiveLearning`` run (labels through ``executor``); it refuses a run_dir made with other settings."""
        from dataclasses import replace

        from .label import CalculatorSpec
        from .loop import ActiveLearning

        reference = CalculatorSpec(f"advsample.surfaces:{self.surface_name}")  # worker processes build their own
        return ActiveLearning.from_system(
            # the sampler by name: built with the system's settings for it
            self.system, self.run_dir, self.sampler, seed=self.seed, reference=reference, executor=executor,
            train_config=replace(self.system.train, learning_rate=self.learning_rate), progress=False,
            retry_failures=self.retry_failures,
        )

    def run(self, verbose: bool = True) -> list:
        """Round 0 and ``n_rounds`` rounds (finished rounds are loaded from ``run_dir``); prints one line a round."""
        from .label import make_executor
        from .viz.plots import round_title

        self.records = []
        with make_executor(self.executor) as labeling:
            for record in self.learner(labeling).irun(self.n_rounds):
                self.records.append(record)
                if verbose:
                    print(round_title(record.metrics) + (" (loaded)" if record.resumed else ""))
        return self.records

    def first_attack(self):
        """Round 1's attack: its ``AttackResult`` when computed in this session, its frames
        (``ase.Atoms`` with ``attack_seed``/``attack_step``) read from ``round_001/trajectories.extxyz``
        on a resumed run, or None (no round 1, or a sampler without an attack)."""
        from .viz.plots import round_attack

        if len(self.records) < 2:
            return None
        return round_attack(self.records[1], self.run_dir)

    def summary(self, notebook: str, path: str | Path = "summary.json") -> dict:
        """Key numbers (test force MAE at round 0 and at the end, labels, the run's CPU seconds, every
        round's phase times: :func:`~advsample.timings.run_timings`) written to ``path``."""
        initial_mae = self.records[0].metrics["test"]["force_mae"]
        final_mae = self.records[-1].metrics["test"]["force_mae"]
        timings = run_timings([r.metrics.get("timings") for r in self.records], [r.round for r in self.records])
        result = {
            "notebook": notebook, "rounds": self.records[-1].round, "labels_used": self.records[-1].metrics["labels_used"],
            "test_force_mae_initial": initial_mae, "test_force_mae_final": final_mae,
            "improvement": initial_mae / final_mae, "smoke": self.smoke,
            "cpu_s": timings["cpu_s"], "timings": timings,
        }
        Path(path).write_text(json.dumps(result, indent=2))
        return result
