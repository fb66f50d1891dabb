"""Active learning: train → propose → select → label → retrain, one persisted round at a time.

Run directory layout::

    run_dir/
      validation.extxyz  test.extxyz      fixed once, never re-split
      labels.jsonl                        label cache: no structure is paid for twice
      round_000/ train.extxyz committee.pt metrics.json
      round_001/ candidates.extxyz selected.extxyz trajectories.extxyz train.extxyz committee.pt metrics.json
      ...

``metrics.json`` is written last: a round without it is incomplete and is redone on the
next run (same seeds, so the same candidates, answered from the label cache).
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from ase import Atoms
from ase.io import read, write

from .committee import Committee
from .label import LabelCache, label_until
from .metrics import test_errors
from .models import MODELS
from .objective import Objective
from .samplers import Proposal, Sampler
from .select import SelectionConfig, select
from .structures import labels_of
from .train import TrainConfig, split_validation, train_committee


@dataclass
class RoundRecord:
    """One round: its metrics (as in metrics.json), training set, picks and the committee."""

    round: int
    metrics: dict
    train: list[Atoms]
    committee: Committee
    selected: list[Atoms] = field(default_factory=list)
    candidates: list[Atoms] = field(default_factory=list)
    proposals: list[Proposal] = field(default_factory=list)
    resumed: bool = False


def _write_atoms(path: Path, atoms_list: Sequence[Atoms]) -> None:
    if atoms_list:
        write(path, list(atoms_list), format="extxyz")
    else:
        path.write_text("")


def _read_atoms(path: Path) -> list[Atoms]:
    if not path.exists() or path.stat().st_size == 0:
        return []
    return read(path, index=":", format="extxyz")


def _write_json(path: Path, data: dict) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=2, default=float))
    os.replace(temporary, path)


class ActiveLearning:
    """Adversarial (or any sampler's) active learning, persisted and resumable.

    committee: an untrained committee that fixes the architecture; each round trains a
    fresh copy (seed + round) or, with ``warm_start``, continues from the previous weights.
    reference: the labeling calculator (ASE calculator or ``label.CalculatorSpec``).
    initial / test: labeled structures; ``validation_fraction`` of ``initial`` becomes the
    fixed validation set. ``oversample``: new points count this many times in training.
    ``kT`` (the reference's energy unit) and ``uncertainty`` (``"forces"`` | ``"energy"``) are
    the run's :class:`~advsample.objective.Objective`, given once: every sampler proposes
    with it and selection ranks by its score.
    ``extra_metrics(committee) -> dict`` adds problem-specific figures (e.g. a barrier).
    :meth:`from_system` builds a run from a :class:`~advsample.systems.System`.
    """

    def __init__(
        self,
        run_dir: str | Path,
        committee: Committee,
        reference,
        initial: Sequence[Atoms],
        sampler: Sampler,
        test: Sequence[Atoms] | None = None,
        selection: SelectionConfig | None = None,
        train_config: TrainConfig | None = None,
        validation_fraction: float = 0.1,
        warm_start: bool = False,
        oversample: int = 1,
        executor: Executor | None = None,
        seed: int = 0,
        extra_metrics: Callable[[Committee], dict] | None = None,
        progress: bool = True,
        kT: float = 1.0,
        uncertainty: str = "forces",
    ):
        self.objective = Objective(kT, uncertainty)  # fails before anything is paid for
        labels_of(initial)  # clear errors for an empty or unlabeled initial set
        if test:
            labels_of(test)
        if oversample < 1:
            raise ValueError(f"oversample must be >= 1, got {oversample}")
        self.run_dir = Path(run_dir)
        self.template = committee
        self.reference = reference
        self.initial = list(initial)
        self.sampler = sampler
        self.test = list(test) if test else []
        self.selection = selection or SelectionConfig()
        train_config = train_config or TrainConfig()
        self.train_config = replace(train_config, progress=progress and train_config.progress)
        self.validation_fraction = validation_fraction
        self.warm_start = warm_start
        self.oversample = int(oversample)
        self.executor = executor
        self.seed = int(seed)
        self.extra_metrics = extra_metrics
        self.progress = progress
        self.observers: list[tuple[Callable[[RoundRecord], None], int]] = []
        self.records: list[RoundRecord] = []

    @classmethod
    def from_system(cls, system, run_dir: str | Path, sampler: Sampler, seed: int = 0, **overrides) -> "ActiveLearning":
        """A run on a :class:`~advsample.systems.System` (or its name): its reference, data,
        committee (``make_committee(seed)``), objective, selection, training, validation fraction
        and metrics; keyword ``overrides`` replace any of this class's arguments."""
        from .systems import get_system

        system = get_system(system)
        settings = dict(
            committee=system.make_committee(seed), reference=system.reference, initial=system.initial,
            test=system.test, selection=system.selection, train_config=system.train,
            validation_fraction=system.validation_fraction, extra_metrics=system.evaluate,
            kT=system.kT, uncertainty=system.uncertainty, seed=seed,
        )
        settings.update(overrides)
        return cls(run_dir, sampler=sampler, **settings)

    # -- ASE-dynamics-like API ---------------------------------------------------------
    def attach(self, observer: Callable[[RoundRecord], None], interval: int = 1) -> None:
        """Call ``observer(record)`` after every ``interval``-th newly computed round."""
        self.observers.append((observer, interval))

    def run(self, n_rounds: int) -> list[RoundRecord]:
        """Run until ``n_rounds`` rounds after round 0 exist; returns every round's record."""
        for _ in self.irun(n_rounds):
            pass
        return self.records

    def irun(self, n_rounds: int) -> Iterator[RoundRecord]:
        """Yield round 0 (initial training) then rounds 1..n_rounds; finished rounds are loaded."""
        if n_rounds < 0:
            raise ValueError(f"n_rounds must be >= 0, got {n_rounds}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._check_settings()
        initial_train, validation, test = self._fixed_sets()
        cache = LabelCache(self.run_dir / "labels.jsonl")
        self.records = []
        for number in range(n_rounds + 1):
            record = self._load_round(number)
            if record is None:
                if number == 0:
                    record = self._round_zero(initial_train, validation, test)
                else:
                    record = self._round(number, self.records[-1], validation, test, cache)
                for observer, interval in self.observers:
                    if number % interval == 0:
                        observer(record)
            self.records.append(record)
            yield record

    # -- rounds ------------------------------------------------------------------------
    def settings(self) -> dict:
        """What fixes a run's numbers (besides its data): a resumed run must match them."""
        return {
            "model": [type(self.template.model).__name__, self.template.model.config()],
            "objective": repr(self.objective),
            "sampler": repr(self.sampler),
            "selection": repr(self.selection),
            "train_config": repr(replace(self.train_config, progress=False)),
            "validation_fraction": self.validation_fraction,
            "warm_start": self.warm_start,
            "oversample": self.oversample,
            "seed": self.seed,
        }

    def _check_settings(self) -> None:
        path = self.run_dir / "settings.json"
        settings = json.loads(json.dumps(self.settings()))
        if not path.exists():
            _write_json(path, settings)
            return
        stored = json.loads(path.read_text())
        changed = sorted(key for key in settings.keys() | stored.keys() if settings.get(key) != stored.get(key))
        if changed:
            raise ValueError(
                f"{self.run_dir} holds a run made with other settings ({', '.join(changed)} differ); "
                "use a new run_dir, or the same settings to resume it"
            )

    def _fixed_sets(self) -> tuple[list[Atoms], list[Atoms], list[Atoms]]:
        """(initial training set, validation, test); validation and test are stored on first use."""
        train, validation = split_validation(self.initial, self.validation_fraction, self.seed)
        validation_path, test_path = self.run_dir / "validation.extxyz", self.run_dir / "test.extxyz"
        if not validation_path.exists():
            _write_atoms(validation_path, validation)
        if not test_path.exists():
            _write_atoms(test_path, self.test)
        # always continue from what is on disk, so a resumed run sees exactly the same numbers
        return train, _read_atoms(validation_path), _read_atoms(test_path)

    def _new_committee(self, number: int, previous: Committee | None) -> Committee:
        if self.warm_start and previous is not None:
            committee = Committee(MODELS[type(previous.model).__name__](**previous.model.config()))
            committee.load_state_dict(previous.state_dict())
            return committee.to(previous.device)
        config = {**self.template.model.config(), "seed": self.template.model.config()["seed"] + number}
        return Committee(MODELS[type(self.template.model).__name__](**config)).to(self.template.device)

    def _train(self, committee: Committee, train: list[Atoms], validation: list[Atoms], number: int) -> dict:
        fresh = [a for a in train if a.info.get("round_added") == number]
        weighted = train + fresh * (self.oversample - 1)
        config = replace(self.train_config, seed=self.seed + number)
        start = time.perf_counter()
        history = train_committee(
            committee, weighted, validation, config, fit_normalization=not (self.warm_start and number > 0)
        )
        return {
            "train_s": time.perf_counter() - start,
            "epochs": len(history.epoch),
            "stopped_early": history.stopped_early,
            "best_validation_loss": history.best_validation_loss,
        }

    def _evaluate(self, committee: Committee, test: list[Atoms]) -> dict:
        metrics = {"test": test_errors(committee, test) if test else {}}
        if self.extra_metrics is not None:
            metrics["extra"] = self.extra_metrics(committee)
        return metrics

    def _round_zero(self, train, validation, test) -> RoundRecord:
        for atoms in train:
            atoms.info["round_added"] = 0
        committee = self._new_committee(0, None)
        training = self._train(committee, train, validation, 0)
        metrics = {
            "round": 0,
            "n_train": len(train),
            "labels_used": 0,
            "new_labels": 0,
            "reference_calls": 0,
            "training": training,
            **self._evaluate(committee, test),
        }
        record = RoundRecord(0, metrics, train, committee)
        self._save(record)
        return record

    def _round(self, number, previous: RoundRecord, validation, test, cache: LabelCache) -> RoundRecord:
        timings = {"sample_s": 0.0, "select_s": 0.0, "label_s": 0.0}
        train_energies, _ = labels_of(previous.train)
        reference_energy = float(np.min(train_energies))
        train_scored = self.objective.score(previous.committee, previous.train, train_energies)
        train_variance = np.array([a.info["committee_variance"] for a in train_scored])
        accepted, proposals, candidates = [], [], []
        failures, outside_window, reference_calls = [], [], 0
        for part, (sampler, budget) in enumerate(self.sampler.parts(self.selection.budget)):
            start = time.perf_counter()
            proposal = sampler.propose(
                previous.committee, previous.train, train_energies, self.objective, seed=self._seed(number, part),
                progress=self.progress,
            )
            timings["sample_s"] += time.perf_counter() - start
            start = time.perf_counter()
            config = replace(self.selection, ranking=sampler.ranking)
            ranked, report = select(
                proposal.candidates, previous.train + accepted, config, self.objective, reference_energy, train_variance,
                seed=self._seed(number, part),
            )
            timings["select_s"] += time.perf_counter() - start
            start = time.perf_counter()
            labeled, part_failures, part_outside, calls = self._label_budget(ranked, budget, cache, reference_energy)
            timings["label_s"] += time.perf_counter() - start
            for atoms in labeled:
                atoms.info.update(round_added=number, sampler=getattr(sampler, "name", "sampler"))
            accepted += labeled
            failures += part_failures
            outside_window += part_outside
            reference_calls += calls
            proposals.append(proposal)
            candidates += proposal.candidates
        train = previous.train + accepted
        committee = self._new_committee(number, previous.committee)
        training = self._train(committee, train, validation, number)
        energies = [a.get_potential_energy() - reference_energy for a in accepted]
        metrics = {
            "round": number,
            "n_train": len(train),
            "labels_used": previous.metrics["labels_used"] + len(accepted),
            "new_labels": len(accepted),
            "budget": self.selection.budget,
            "reference_calls": previous.metrics["reference_calls"] + reference_calls,
            "n_candidates": len(candidates),
            "selection": report,
            "selected_reference_energies": energies,
            "selected_committee_energies": [a.info["committee_energy"] - reference_energy for a in accepted],
            "failures": failures,
            "outside_energy_window": outside_window,
            "timings": {**timings, "train_s": training["train_s"]},
            "training": training,
            **self._evaluate(committee, test),
        }
        record = RoundRecord(number, metrics, train, committee, accepted, candidates, proposals)
        self._save(record)
        return record

    def _label_budget(self, ranked, budget, cache, reference_energy):
        """Label ranked candidates until ``budget`` labels inside the energy window succeed."""
        accepted, failures, outside = [], [], []
        calls, remaining = 0, list(ranked)
        ceiling = self.selection.energy_ceiling
        while len(accepted) < budget and remaining:
            result = label_until(
                remaining, budget - len(accepted), self.reference, self.executor, cache, progress=self.progress
            )
            calls += result.n_calls
            failures += [{k: v for k, v in f.items() if k != "info"} for f in result.failures]
            for atoms in result.labeled:
                energy = atoms.get_potential_energy() - reference_energy
                if ceiling is not None and energy > ceiling:
                    outside.append({"reference_energy": energy, "committee_energy": atoms.info["committee_energy"] - reference_energy})
                else:
                    accepted.append(atoms)
            consumed = [*result.indices, *(f["index"] for f in result.failures)]
            if not consumed:
                break
            remaining = remaining[max(consumed) + 1 :]
        return accepted, failures, outside, calls

    def _seed(self, number: int, part: int) -> int:
        return self.seed * 1000 + number * 10 + part

    # -- persistence -------------------------------------------------------------------
    def _round_dir(self, number: int) -> Path:
        return self.run_dir / f"round_{number:03d}"

    def _save(self, record: RoundRecord) -> None:
        directory = self._round_dir(record.round)
        directory.mkdir(parents=True, exist_ok=True)
        _write_atoms(directory / "train.extxyz", record.train)
        if record.round > 0:
            _write_atoms(directory / "selected.extxyz", record.selected)
            _write_atoms(directory / "candidates.extxyz", record.candidates)
            trajectories = []
            for proposal in record.proposals:
                if proposal.attack is not None:
                    trajectories += proposal.attack.all_frames()
                for trajectory in proposal.trajectories:
                    trajectories += trajectory
            _write_atoms(directory / "trajectories.extxyz", trajectories)
        record.committee.save(directory / "committee.pt")
        _write_json(directory / "metrics.json", record.metrics)
        record.train = _read_atoms(directory / "train.extxyz")  # the next round starts from the disk state

    def _load_round(self, number: int) -> RoundRecord | None:
        directory = self._round_dir(number)
        if not (directory / "metrics.json").exists():
            return None
        metrics = json.loads((directory / "metrics.json").read_text())
        committee = Committee.load(directory / "committee.pt", device=str(self.template.device))
        return RoundRecord(
            number,
            metrics,
            _read_atoms(directory / "train.extxyz"),
            committee,
            selected=_read_atoms(directory / "selected.extxyz"),
            candidates=_read_atoms(directory / "candidates.extxyz"),
            resumed=True,
        )

