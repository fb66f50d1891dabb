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

SAMPLERS = ("adversarial", "random", "random_scored", "md", "mixed")
RULES = {  # advsample.parameters.check_parameters rules of the notebooks' parameters cells
    "n_rounds": ">= 0", "labels_per_round": ">= 1", "kT": "> 0", "n_members": ">= 2",
    "sampler": SAMPLERS, "epochs": ">= 1",
}
_SURFACES = {  # region of the initial data (the left well), committee inputs, (initial, test) sizes normal/smoke
    "double_well_1d": dict(region=[(-1.6, 0.0)], input_axes=(0,), sizes=(32, 200), smoke_sizes=(24, 100)),
    "double_well_2d": dict(region=[(-1.5, 0.0), (-1.2, 1.2)], input_axes=(0, 1), sizes=(128, 400),
                           smoke_sizes=(64, 100)),
}
ATTACK_OPTIONS = {"learning_rate": 0.02, "n_steps": 60}  # attack step (Å) and steps per round


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
    run_dir: Path = field(default=None)
    records: list = field(default_factory=list, repr=False)

    def __post_init__(self):
        from . import surfaces

        if self.surface_name not in _SURFACES:
            raise ValueError(f"unknown toy surface {self.surface_name!r}; choose one of {', '.join(_SURFACES)}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.smoke:
            self.n_rounds, self.labels_per_round = min(self.n_rounds, 2), min(self.labels_per_round, 10)
            self.epochs, self.n_members = min(self.epochs, 300), min(self.n_members, 3)
        self.run_dir = Path(self.run_dir or Path("runs") / self.surface_name)
        spec = _SURFACES[self.surface_name]
        n_initial, n_test = spec["smoke_sizes" if self.smoke else "sizes"]
        self.surface = getattr(surfaces, self.surface_name)()
        self.initial = self.surface.sample(n_initial, seed=self.seed, max_energy=0.0, region=spec["region"])
        self.test = self.surface.sample(n_test, seed=self.seed + 5, max_energy=4.0)  # both wells, E < 4

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
        from .committee import Committee
        from .label import CalculatorSpec
        from .loop import ActiveLearning
        from .models import MLPCommittee
        from .samplers import make_sampler
        from .select import SelectionConfig
        from .train import TrainConfig

        committee = Committee(MLPCommittee(self.n_members, (64, 64, 64), input_axes=_SURFACES[self.surface_name]["input_axes"],
                                           seed=self.seed))
        options = ATTACK_OPTIONS if self.sampler == "adversarial" else {}
        reference = CalculatorSpec(f"advsample.surfaces:{self.surface_name}")  # worker processes build their own
        return ActiveLearning(
            self.run_dir, committee, reference, self.initial, make_sampler(self.sampler, kT=self.kT, **options),
            test=self.test, selection=SelectionConfig(budget=self.labels_per_round, kT=self.kT, min_distance=0.02),
            train_config=TrainConfig(epochs=self.epochs, learning_rate=self.learning_rate), executor=executor,
            seed=self.seed, progress=False,
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
        """Key numbers (test force MAE at round 0 and at the end, labels) written to ``path``."""
        initial_mae = self.records[0].metrics["test"]["force_mae"]
        final_mae = self.records[-1].metrics["test"]["force_mae"]
        result = {
            "notebook": notebook, "rounds": self.records[-1].round, "labels_used": self.records[-1].metrics["labels_used"],
            "test_force_mae_initial": initial_mae, "test_force_mae_final": final_mae,
            "improvement": initial_mae / final_mae, "smoke": self.smoke,
        }
        Path(path).write_text(json.dumps(result, indent=2))
        return result
