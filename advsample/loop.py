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

The run directory itself - its lock (one process at a time; ``wait=True`` waits), settings,
checksums, fixed sets and round files - is :class:`advsample.rundir.RunDir`.

Trust. ``settings.json`` holds everything that fixes the labels - model, sampler,
selection, training, seed, the reference (:func:`label.reference_identity`), fingerprints
of the initial, validation and test sets and the package version - and a run directory is
resumed only with the same, else refused naming what differs. ``files.json`` (run
directory and each round, written before ``metrics.json``) records each file's checksum
and frame count; a damaged or truncated file is named on resume, never silently read
short. The run directory must be writable before anything is computed. The reference
gives up after ``max_consecutive_failures`` failed calls in a row, and a round that cannot
fill its budget is not written as complete (both raise, quoting the last failure reasons);
``retry_failures=True`` tries cached failures again.
"""
from __future__ import annotations

import copy
import math
import time
import warnings
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ase import Atoms
from tqdm.auto import tqdm

from . import __version__
from .calibration import calibration_from_errors, held_out_errors
from .committee import Committee
from .executors import InlineExecutor
from .label import LabelCache, ReferenceGaveUp, label_until, last_reasons, reference_identity
from .metrics import test_errors
from .models import MODELS
from .objective import Objective
from .parameters import as_number
from .rundir import RunDir, check_run_inputs, committee_fingerprint, deduplicate, fingerprint
from .samplers import Proposal, Sampler
from .select import (SelectionConfig, check_energy_window, label_loss_weights, outside_window as outside_energy_window,
                     rms_force, select)
from .structures import labels_of
from .train import LOSS_WEIGHT_KEYS, TrainConfig, regression_check, split_validation, train_committee

ON_REGRESSION = ("keep", "continue", "accept")


def check_start(start, initial) -> tuple[Committee, list[Atoms], list[Atoms]] | None:
    """``start=(committee, train, validation)`` checked (clear errors before anything is written):
    (a copy of the committee, the training set, the validation set), or None without a start."""
    if start is None:
        return None
    if initial is not None and len(initial):
        raise ValueError("give initial or start, not both: start=(committee, train, validation) replaces initial "
                         f"(got {len(initial)} initial structures); pass initial=None")
    if not isinstance(start, (tuple, list)) or len(start) != 3:
        raise TypeError(f"start must be (committee, train, validation), got {type(start).__name__}")
    committee, train, validation = start
    if not isinstance(committee, Committee):
        raise TypeError(f"start's committee must be a Committee, got {type(committee).__name__}")
    labels_of(train)  # a clear error for an empty or unlabeled training set
    if validation:
        labels_of(validation)
    return copy.deepcopy(committee), list(train), list(validation or [])


class RoundRegressionWarning(UserWarning):
    """A round's committee came out worse than the last on the fixed validation set."""


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


class ActiveLearning:
    """Adversarial (or any sampler's) active learning, persisted and resumable.

    committee: an untrained committee that fixes the architecture. Round 0 trains a fresh copy
    with ``train_config``'s full schedule and fits the energy normalisation, once: later rounds
    keep it. ``warm_start=False`` (the default): each round >= 1 trains a fresh copy (seed + round)
    with the full schedule; True: rounds >= 1 continue from the previous round's members with the
    short schedule :meth:`TrainConfig.continued`, replaying the whole training set (cheaper, but
    it did not hold the errors on every system measured: docs/design.md).
    ``on_regression``: what a round does when its committee is worse than the last on the fixed
    validation set (beyond the members' spread and the set's sampling noise:
    :func:`~advsample.train.regression_check`; with fewer than 2 validation structures, on the last
    round's training set): ``"keep"`` (default) carries the last
    committee forward (its new labels stay in the training set, so the next round trains on them);
    ``"continue"`` trains the last committee on the new set instead (continued schedule; the start
    stays each member's best); ``"accept"`` takes the worse one. Always flagged in the round's
    ``metrics.json`` (``regression``) and the progress output.
    reference: the labeling calculator (ASE calculator or ``label.CalculatorSpec``).
    initial / test: labeled structures; ``validation_fraction`` of ``initial`` becomes the
    fixed validation set. ``oversample``: new points count this many times in training.
    ``kT`` (the reference's energy unit) and ``uncertainty`` (``"forces"`` | ``"energy"`` |
    ``"forces_max"``), with ``energy_scale`` (``"total"`` | ``"per_atom"``) and ``force_reduction``
    (``"mean"`` | ``"max"``), are the run's :class:`~advsample.objective.Objective`, given once:
    every sampler proposes with it and selection ranks by its score.
    ``extra_metrics(committee) -> dict`` adds problem-specific figures (e.g. a barrier).
    ``max_consecutive_failures``: failed reference calls in a row after which the run stops
    with :class:`label.ReferenceGaveUp` (None: never). ``retry_failures``: recompute
    structures whose failure is cached (after fixing the reference).
    :meth:`from_system` builds a run from a :class:`~advsample.systems.System`.
    ``start=(committee, train, validation)``: the run starts from a given (trained) committee and
    its labeled training and validation sets instead of training round 0 on ``initial`` (then
    None): round 0 is that committee as given (not trained; evaluated, calibrated), its sets are
    round 0's training set and the fixed validation set, and round 1 on proceeds as usual (fresh
    rounds keep its energy normalisation; ``warm_start`` continues its weights; the regression
    check compares round 1 against it). ``committee`` still fixes the architecture of fresh
    rounds. ``settings.json`` records the start's fingerprints: a resume needs the same start.
    ``wait``: when another process runs the same ``run_dir`` (its lock, see
    :mod:`advsample.rundir`), False refuses at once (:class:`~advsample.rundir.RunDirBusy`
    naming the directory and the holder's pid and host), True waits for it, then resumes.
    ``calibration_coverage``: each round's committee gets a calibration (:mod:`advsample.calibration`,
    conformal at this coverage) fitted on the fixed validation set, kept in its checkpoint; the
    round's ``metrics.json`` reports it (``calibration``) and the test set's ``force_coverage``. Not
    fitted (and said so in ``calibration``) with too few validation force components; None: off.
    ``stop_when(committee, round, train) -> str | None``: asked after each round (round 0 included)
    with its calibrated committee; a reason ends the run there, recorded as ``stop_reason`` in the
    round's ``metrics.json`` and printed (:func:`advsample.audit.audit_stop` builds one from the audit).
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
        energy_scale: str = "total",
        force_reduction: str = "mean",
        max_consecutive_failures: int | None = 20,
        retry_failures: bool = False,
        wait: bool = False,
        on_regression: str = "keep",
        calibration_coverage: float | None = 0.95,
        stop_when: Callable[[Committee, int, list[Atoms]], str | None] | None = None,
        start: tuple[Committee, Sequence[Atoms], Sequence[Atoms]] | None = None,
    ):
        kT, oversample, seed = as_number(kT, "kT"), as_number(oversample, "oversample", int), as_number(seed, "seed", int)
        validation_fraction = as_number(validation_fraction, "validation_fraction")
        if max_consecutive_failures is not None:
            max_consecutive_failures = as_number(max_consecutive_failures, "max_consecutive_failures", int)
        self.objective = Objective(kT, uncertainty, energy_scale, force_reduction)  # fails before anything is paid for
        self.start = check_start(start, initial)
        if self.start is not None:  # the start's sets replace initial (and its validation split)
            initial = self.start[1] + self.start[2]
        labels_of(initial)  # clear errors for an empty or unlabeled initial set
        if test:
            labels_of(test)
        initial = deduplicate(initial, "initial set")
        if oversample < 1:
            raise ValueError(f"oversample must be >= 1, got {oversample}")
        if on_regression not in ON_REGRESSION:
            raise ValueError(f"on_regression must be one of {ON_REGRESSION}, got {on_regression!r}")
        if calibration_coverage is not None and not 0 < as_number(calibration_coverage, "calibration_coverage") < 1:
            raise ValueError(f"calibration_coverage must be in (0, 1) or None, got {calibration_coverage!r}")
        if stop_when is not None and not callable(stop_when):
            raise TypeError(f"stop_when must be a callable(committee, round_index, train) -> str | None, "
                            f"got {type(stop_when).__name__}")
        if max_consecutive_failures is not None and max_consecutive_failures < 1:
            raise ValueError(f"max_consecutive_failures must be >= 1 or None, got {max_consecutive_failures}")
        reference_identity(reference)  # a clear TypeError for something that is no reference
        # a clear error for a bad fraction, a bad reference, cell or element - before anything is written or paid
        split = self.start[1:] if self.start else split_validation(initial, validation_fraction, seed)
        check_run_inputs(committee.model, reference, *split, test or [],
                         build=executor is None or isinstance(executor, InlineExecutor))
        self.run_dir = Path(run_dir)
        self.rundir = RunDir(self.run_dir)
        self.wait = bool(wait)
        self.template = committee
        self.reference = reference
        self.initial = list(initial)
        self.sampler = sampler
        self.test = list(test) if test else []
        self.selection = selection or SelectionConfig()
        self._check_energy_window()
        train_config = train_config or TrainConfig()
        self.train_config = replace(train_config, progress=progress and train_config.progress)
        self.validation_fraction = validation_fraction
        self.warm_start = bool(warm_start)
        self.on_regression = on_regression
        self.oversample = int(oversample)
        self.executor = executor
        self.seed = int(seed)
        self.extra_metrics = extra_metrics
        self.progress = progress
        self.max_consecutive_failures = max_consecutive_failures
        self.retry_failures = bool(retry_failures)
        self.calibration_coverage = None if calibration_coverage is None else float(calibration_coverage)
        self.stop_when = stop_when
        self.observers: list[tuple[Callable[[RoundRecord], None], int]] = []
        self.records: list[RoundRecord] = []
        self._start_fingerprints = None if self.start is None else {
            "committee": committee_fingerprint(self.start[0]), "train": fingerprint(self.start[1]),
            "validation": fingerprint(self.start[2])}

    @classmethod
    def from_system(cls, system, run_dir: str | Path, sampler: "str | Sampler" = "adversarial", seed: int = 0,
                    **overrides) -> "ActiveLearning":
        """A run on a :class:`~advsample.systems.System` (``get_system(name)`` builds one by name): its
        reference, data, committee (``make_committee(seed)``), objective, selection, training,
        validation fraction and metrics (``system.run_options``). ``sampler``: a method name
        (``"adversarial"``, ``"md"``, ``"adversarial_kT0.5"`` ...), built with the system's attack / MD
        settings, or a :class:`~advsample.samplers.Sampler` used as given; keyword ``overrides``
        replace any of this class's arguments."""
        if not callable(getattr(system, "run_options", None)):
            raise TypeError(f"from_system needs a System (advsample.systems.get_system({system!r}) builds one "
                            f"by name), got {type(system).__name__}")
        settings = system.run_options(seed, sampler)
        if overrides.get("start") is not None:
            settings["initial"] = None  # the start's sets replace the system's initial data
        settings.update(overrides)
        return cls(run_dir, **settings)

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
        self._check_writable()
        self.rundir.lock(wait=self.wait)  # one process per run directory, until this generator ends
        try:
            yield from self._rounds(n_rounds)
        except BaseException:
            self.rundir.discard_unpaid()  # a failed first start leaves nothing behind
            raise
        finally:
            self.rundir.unlock()

    def _rounds(self, n_rounds: int) -> Iterator[RoundRecord]:
        self._check_settings()
        initial_train, validation, test = self._fixed_sets()
        cache = LabelCache(self.run_dir / "labels.jsonl")
        self.records = []
        for number in range(n_rounds + 1):
            record = self._load_round(number)
            if record is None:
                if number == 0:
                    record = self._round_zero(initial_train, validation, test, cache)
                else:
                    record = self._round(number, self.records[-1], validation, test, cache)
                for observer, interval in self.observers:
                    if number % interval == 0:
                        observer(record)
            elif self.stop_when is not None and "stop_reason" not in record.metrics:
                self._check_stop(record)  # a round finished without the rule: asked now (not written to disk)
            self.records.append(record)
            yield record
            if self.stop_when is not None and record.metrics.get("stop_reason"):
                break

    # -- rounds ------------------------------------------------------------------------
    def _check_writable(self) -> None:
        """PermissionError (naming the path) unless the run directory can be created and written."""
        self.rundir.check_writable()

    def _check_energy_window(self) -> None:
        """Warn before anything is paid when a thermal sampler's frames would mostly sit above the energy window."""
        from ase import units

        parts = self.sampler.parts(self.selection.budget) if hasattr(self.sampler, "parts") else []
        for part, _ in parts:
            if hasattr(part, "temperature_K"):  # committee MD and the biased MD samplers
                kT = units.kB * part.temperature_K if part.temperature_K is not None else self.objective.kT
                check_energy_window(self.selection.energy_ceiling, self.initial[0], kT,
                                    f"the {getattr(part, 'name', 'thermal')} sampler", stacklevel=4)

    def settings(self) -> dict:
        """What fixes a run's labels and numbers: a resumed run must match them all (a started run: its
        start's committee, training and validation sets too, under ``start``)."""
        _, validation = self._split()
        start = {} if self.start is None else {"start": self._start_fingerprints}
        return {
            "advsample_version": __version__,
            "reference": reference_identity(self.reference),
            "initial_fingerprint": fingerprint(self.initial),
            "validation_fingerprint": fingerprint(validation),
            "test_fingerprint": fingerprint(self.test),
            "model": [type(self.template.model).__name__, self.template.model.config()],
            "objective": repr(self.objective),
            "sampler": repr(self.sampler),
            "selection": repr(self.selection),
            "train_config": repr(replace(self.train_config, progress=False)),
            "validation_fraction": self.validation_fraction,
            "warm_start": self.warm_start,
            "on_regression": self.on_regression,
            "oversample": self.oversample,
            "seed": self.seed,
            **start,
        }

    def _split(self) -> tuple[list[Atoms], list[Atoms]]:
        """Round 0's (training, validation) sets: the start's, or ``initial`` split by ``validation_fraction``."""
        if self.start is not None:
            return list(self.start[1]), list(self.start[2])
        return split_validation(self.initial, self.validation_fraction, self.seed)

    def _check_settings(self) -> None:
        """Store the settings on a first start; refuse a resume with other ones (see RunDir.check_settings)."""
        self.rundir.check_settings(self.settings())

    def _fixed_sets(self) -> tuple[list[Atoms], list[Atoms], list[Atoms]]:
        """(initial training set, validation, test); validation and test are stored on first use."""
        train, validation = self._split()
        validation, test = self.rundir.fixed_sets(validation, self.test)
        return train, validation, test

    def _new_committee(self, number: int, previous: Committee | None, warm: bool | None = None) -> Committee:
        """Round ``number``'s starting committee: a copy of ``previous`` (warm start) or fresh weights
        (seed + number) with ``previous``'s energy normalisation (fitted once, on round 0)."""
        warm = self.warm_start if warm is None else warm
        if warm and previous is not None:
            committee = Committee(MODELS[type(previous.model).__name__](**previous.model.config()))
            committee.load_state_dict(previous.state_dict())
            return committee.to(previous.device)
        config = {**self.template.model.config(), "seed": self.template.model.config()["seed"] + number}
        committee = Committee(MODELS[type(self.template.model).__name__](**config)).to(self.template.device)
        if previous is not None:  # a refit on a set holding adversarial picks blew the scale up 4x (docs/design.md)
            committee.energy_shift.copy_(previous.energy_shift)
            committee.energy_scale.copy_(previous.energy_scale)
        return committee

    def _train(self, committee: Committee, train: list[Atoms], validation: list[Atoms], number: int,
               warm: bool | None = None) -> dict:
        """Train in place: round 0 (or ``warm=False``) with the full schedule, a warm start with the
        continued one; every round replays the whole training set (new labels ``oversample`` times)."""
        warm = (self.warm_start if warm is None else warm) and number > 0
        fresh = [a for a in train if a.info.get("round_added") == number]
        weighted = train + fresh * (self.oversample - 1)
        config = replace(self.train_config.continued() if warm else self.train_config, seed=self.seed + number)
        start, cpu = time.perf_counter(), time.process_time()
        history = train_committee(committee, weighted, validation, config, fit_normalization=number == 0,
                                  warm_start=warm)
        return {
            "train_s": time.perf_counter() - start,
            "train_cpu_s": time.process_time() - cpu,
            "continued": warm,
            "epochs": len(history.epoch),
            "max_epochs": config.epochs,
            "learning_rate": config.learning_rate,
            "stopped_early": history.stopped_early,
            "best_validation_loss": history.best_validation_loss,
            "start_validation_loss": history.start_validation_loss,
            "best_epoch": history.best_epoch,
        }

    def _train_round(self, number: int, previous: RoundRecord, train: list[Atoms], validation: list[Atoms]):
        """(committee carried forward, training record): round ``number`` trained, checked against the
        last committee on the validation set (else the last training set), ``on_regression`` applied."""
        committee = self._new_committee(number, previous.committee)
        training = self._train(committee, train, validation, number)
        # one validation structure gives no standard error (regression_check): the last training set then
        checked = validation if len(validation) >= 2 else previous.train
        check = regression_check(previous.committee, committee, checked)
        check["checked_on"] = "validation" if checked is validation else "previous_train"
        check["action"] = "none"
        if check["flagged"]:
            worse = ", ".join(f"{k} {check['previous'][k]:.4g} -> {check['now'][k]:.4g}" for k in check["worse"])
            check["action"] = self.on_regression
            if self.on_regression == "continue":
                retrained = self._new_committee(number, previous.committee, warm=True)
                training["retrained"] = self._train(retrained, train, validation, number, warm=True)
                training["train_s"] += training["retrained"]["train_s"]
                training["train_cpu_s"] += training["retrained"]["train_cpu_s"]
                committee = retrained
                check["after_continue"] = regression_check(previous.committee, committee, checked)
            elif self.on_regression == "keep":
                committee = previous.committee
            message = (f"round {number}: the retrained committee is worse than round {number - 1}'s on the "
                       f"{check['checked_on'].replace('_', ' ')} set beyond the members' spread and the "
                       f"set's sampling noise ({worse}); "
                       f"on_regression={self.on_regression!r}: " + {
                           "keep": f"round {number - 1}'s committee is carried forward",
                           "continue": f"round {number - 1}'s committee was trained on instead",
                           "accept": "the worse committee is carried forward"}[self.on_regression])
            if self.progress:
                tqdm.write(message)
            else:
                warnings.warn(message, RoundRegressionWarning, stacklevel=4)
        return committee, training, check

    def _timed_evaluate(self, committee: Committee, test: list[Atoms], timings: dict) -> dict:
        start = time.perf_counter()
        metrics = self._evaluate(committee, test)
        timings["metrics_s"] = time.perf_counter() - start
        return metrics

    def _calibrate(self, committee: Committee, validation: list[Atoms], timings: dict) -> dict:
        """Fit the round's calibration on the fixed validation set and keep it on the committee (so in its
        checkpoint, and the test metrics report ``force_coverage``); the record says why when it is not fitted:
        opted out (``calibration_coverage=None``) or too few held-out force components for the conformal
        guarantee (fewer than coverage/(1 - coverage)). A committee carried forward is refitted on the same set."""
        if self.calibration_coverage is None:
            committee.calibration = None
            return {"fitted": False, "reason": "calibration_coverage=None (opted out)"}
        start = time.process_time()
        needed = math.ceil(self.calibration_coverage / (1 - self.calibration_coverage) - 1e-9)
        errors = held_out_errors(committee, validation) if validation else None  # one committee call
        n_force = 0 if errors is None else int(errors["force_error"].size)
        if n_force < needed:
            committee.calibration = None  # a carried-forward committee keeps no stale calibration either
            record = {"fitted": False, "reason": f"the validation set has {len(validation)} structures, "
                      f"{n_force} free force components; the conformal guarantee at coverage "
                      f"{self.calibration_coverage:g} needs at least {needed}"}
        else:
            fitted = calibration_from_errors(**errors, coverage=self.calibration_coverage)
            committee.calibration = fitted.as_dict()  # saved with the round's checkpoint
            record = {"fitted": True, "n_structures": len(validation), **fitted.as_dict(),
                      "energy_guarantee": fitted.n_energy >= needed}
        timings["calibrate_s"] = time.process_time() - start
        return record

    def _check_stop(self, record: RoundRecord) -> None:
        """Ask ``stop_when(committee, round, train)``; a reason (str) is recorded as ``stop_reason`` and printed."""
        if self.stop_when is None:
            return
        start = time.process_time()
        reason = self.stop_when(record.committee, record.round, record.train)
        if reason is not None and not isinstance(reason, str):
            raise TypeError(f"stop_when must return a reason (str) or None, got {type(reason).__name__}")
        record.metrics["stop_reason"] = reason or None
        record.metrics.setdefault("timings", {})["stop_s"] = time.process_time() - start
        if reason:
            tqdm.write(f"round {record.round}: stopping ({reason})")

    @staticmethod
    def _phase_time(timings: dict, phase: str, wall: float, cpu: float) -> tuple[float, float]:
        """Add the wall (``<phase>_s``) and this process's CPU (``<phase>_cpu_s``) seconds since
        (``wall``, ``cpu``) to ``timings``; returns (now wall, now CPU), the next phase's start."""
        now = time.perf_counter(), time.process_time()
        timings[f"{phase}_s"] = timings.get(f"{phase}_s", 0.0) + now[0] - wall
        timings[f"{phase}_cpu_s"] = timings.get(f"{phase}_cpu_s", 0.0) + now[1] - cpu
        return now

    @staticmethod
    def _round_time(timings: dict, wall: float, cpu: float) -> dict:
        """The phases plus the whole round's wall and CPU seconds (this process; labels on an
        executor's workers show in ``label_s``, not in ``cpu_s``)."""
        return {**timings, "round_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}

    def _evaluate(self, committee: Committee, test: list[Atoms]) -> dict:
        metrics = {"test": test_errors(committee, test) if test else {}}
        if self.extra_metrics is not None:
            metrics["extra"] = self.extra_metrics(committee)
        return metrics

    def _round_zero(self, train, validation, test, cache: LabelCache) -> RoundRecord:
        wall, cpu = time.perf_counter(), time.process_time()
        for atoms in train:
            atoms.info["round_added"] = 0
        if self.start is None:
            committee = self._new_committee(0, None)
            training = self._train(committee, train, validation, 0)
        else:  # the given committee as it is: round 0 trains nothing
            committee = copy.deepcopy(self.start[0])
            training = {"train_s": 0.0, "train_cpu_s": 0.0, "started_from": self._start_fingerprints}
        timings = {"train_s": training["train_s"], "train_cpu_s": training["train_cpu_s"]}
        calibration = self._calibrate(committee, validation, timings)
        evaluation = self._timed_evaluate(committee, test, timings)
        metrics = {
            "round": 0,
            "n_train": len(train),
            "labels_used": 0,
            "new_labels": 0,
            **self._call_counts(None, cache, 0),
            "timings": self._round_time(timings, wall, cpu),
            "training": training,
            "calibration": calibration,
            **evaluation,
        }
        record = RoundRecord(0, metrics, train, committee)
        self._check_stop(record)
        self._save(record)
        return record

    def _round(self, number, previous: RoundRecord, validation, test, cache: LabelCache) -> RoundRecord:
        timings = {f"{phase}{unit}": 0.0 for phase in ("sample", "select", "label") for unit in ("_s", "_cpu_s")}
        wall, cpu = time.perf_counter(), time.process_time()
        train_energies, _ = labels_of(previous.train)
        # the round's E_min and log Q, once (the training sizes: per-atom energies, if the objective reads them)
        objective = self.objective.bind(train_energies, n_atoms=[len(a) for a in previous.train])
        reference_energy = objective.energy_reference
        train_variance = objective.score(previous.committee, previous.train).variance
        accepted, proposals, candidates, committee_energies = [], [], [], []
        failures, outside_window, streak = [], [], 0
        # calls an interrupted attempt at this round already paid (in the cache, in no finished round):
        # the replay answers them from the cache, and a call budget counts them as spent
        prepaid = max(cache.n_calls - previous.metrics.get("reference_calls", 0), 0)
        for part, (sampler, budget) in enumerate(self.sampler.parts(self.selection.budget)):
            start = time.perf_counter(), time.process_time()
            proposal = sampler.propose(
                previous.committee, previous.train, train_energies, objective, seed=self._seed(number, part),
                progress=self.progress,
            )
            start = self._phase_time(timings, "sample", *start)
            # the window's σ_E comes with the sampler's scoring (proposal.candidates.energy_std): no second call
            config = replace(self.selection, ranking=sampler.ranking)
            ranked, report = select(
                proposal.candidates, previous.train + accepted, config, objective, reference_energy, train_variance,
                seed=self._seed(number, part),
            )
            start = self._phase_time(timings, "select", *start)
            part_prepaid = min(prepaid, budget) if self.selection.budget_unit == "reference_calls" else 0
            prepaid -= part_prepaid
            labeled, part_failures, part_outside, streak, spent, part_energies = self._label_budget(
                ranked, budget, cache, reference_energy, number, streak, part_prepaid
            )
            self._phase_time(timings, "label", *start)
            weights = label_loss_weights([a.get_potential_energy() - reference_energy for a in labeled], self.selection,
                                         [rms_force(a) for a in labeled])
            for atoms, (energy_weight, forces_weight) in zip(labeled, weights):
                # labels of the stored structures (train.extxyz): a resumed run reads each label's round from them
                atoms.info.update(round_added=number, sampler=getattr(sampler, "name", "sampler"))
                if (energy_weight, forces_weight) != (1.0, 1.0):  # a hole above the window (above_window_weights)
                    atoms.info.update(dict(zip(LOSS_WEIGHT_KEYS, (float(energy_weight), float(forces_weight)))))
            accepted += labeled
            committee_energies += part_energies
            failures += part_failures
            outside_window += part_outside
            if spent < budget:
                unit = "reference calls" if self.selection.budget_unit == "reference_calls" else "labels"
                raise RuntimeError(
                    f"round {number}: only {spent} of {budget} {unit} from {getattr(sampler, 'name', 'sampler')}'s "
                    f"{len(ranked)} selectable candidates ({len(part_failures)} failed, {len(part_outside)} outside the "
                    f"energy window); the round is not written. Last failure reasons: "
                    f"{last_reasons(part_failures)}. Propose more candidates, lower the budget or widen the energy "
                    "window; retry_failures=True tries cached failures again"
                )
            proposals.append(proposal)
            candidates += proposal.candidates.annotated()  # labels on the stored structures (candidates.extxyz)
        train = previous.train + accepted
        committee, training, regression = self._train_round(number, previous, train, validation)
        timings["train_s"], timings["train_cpu_s"] = training["train_s"], training["train_cpu_s"]
        calibration = self._calibrate(committee, validation, timings)
        evaluation = self._timed_evaluate(committee, test, timings)
        energies = [a.get_potential_energy() - reference_energy for a in accepted]
        metrics = {
            "round": number,
            "n_train": len(train),
            "labels_used": previous.metrics["labels_used"] + len(accepted),
            "new_labels": len(accepted),
            "budget": self.selection.budget,
            "budget_unit": self.selection.budget_unit,
            **self._call_counts(previous.metrics, cache, len(outside_window)),
            "n_candidates": len(candidates),
            "selection": report,
            "selected_reference_energies": energies,
            "selected_committee_energies": [energy - reference_energy for energy in committee_energies],
            "failures": failures,
            "outside_energy_window": outside_window,
            "timings": self._round_time(timings, wall, cpu),
            "training": training,
            "regression": regression,
            "calibration": calibration,
            **evaluation,
        }
        record = RoundRecord(number, metrics, train, committee, accepted, candidates, proposals)
        self._check_stop(record)
        self._save(record)
        return record

    def _label_budget(self, ranked, budget, cache, reference_energy, number: int, streak: int, prepaid: int = 0):
        """Label ranked candidates until ``budget`` labels inside the energy window succeed, or
        (``budget_unit="reference_calls"``) until ``budget`` reference calls are paid, ``prepaid``
        of them by an interrupted attempt (answered from the cache now); successes outside the
        window are recorded, paid for and not trained on either way.

        ``ranked``: the selected :class:`~advsample.candidates.Candidates` in order; each accepted label
        gets its candidate's values as ``info`` labels for the stored files (train/selected.extxyz),
        never read back during the round.

        Returns (accepted, failures, outside the window, consecutive failures at the end, budget spent,
        the accepted ones' committee energies Ē).
        """
        by_calls = self.selection.budget_unit == "reference_calls"

        def inside(index: int, atoms) -> bool:  # a label outside the energy window is paid, not trained on
            return not outside_energy_window(atoms.get_potential_energy() - reference_energy, self.selection,
                                             labels=True, force_rms=rms_force(atoms))

        try:
            result = label_until(
                ranked.structures, budget - prepaid if by_calls else budget, self.reference, self.executor, cache,
                progress=self.progress, retry_failed=self.retry_failures,
                max_consecutive_failures=self.max_consecutive_failures, consecutive_failures=streak,
                unit="calls" if by_calls else "labels", check_first=True, accept=inside,
            )
        except ReferenceGaveUp as exc:
            raise ReferenceGaveUp(
                f"round {number}: {exc.summary}", exc.failures,
                "The round is not written. Fix the reference and rerun with retry_failures=True (the failures "
                "are cached), or raise max_consecutive_failures",
            ) from exc
        failures = [{k: v for k, v in f.items() if k != "info"} for f in result.failures]
        outside = [{"reference_energy": atoms.get_potential_energy() - reference_energy,
                    "committee_energy": float(ranked.energy_mean[pick]) - reference_energy,
                    "reference_rms_force": rms_force(atoms)}
                   for pick, atoms in zip(result.rejected_indices, result.rejected)]
        accepted, energies = [], []
        for pick, atoms in zip(result.indices, result.labeled):
            atoms.info.update(ranked.labels(pick))  # labels of the stored structure, for the files
            accepted.append(atoms)
            energies.append(float(ranked.energy_mean[pick]))
        spent = prepaid + result.n_calls if by_calls else len(accepted)
        return accepted, failures, outside, result.consecutive_failures, spent, energies

    @staticmethod
    def _call_counts(previous: dict | None, cache: LabelCache, outside_window: int) -> dict:
        """Reference calls so far, counted from the label cache (right after any resume), and this round's."""
        before = previous or {}
        cache.refresh()  # calls paid by other processes on this cache count too (never the same key twice)
        total, failed = cache.n_calls, cache.n_failed_calls
        outside_total = before.get("reference_calls_outside_window", 0) + outside_window
        this_round = total - before.get("reference_calls", 0)
        failed_round = failed - before.get("reference_calls_failed", 0)
        return {
            "reference_calls": total,
            "reference_calls_failed": failed,
            "reference_calls_outside_window": outside_total,
            "round_reference_calls": {
                "total": this_round, "succeeded": this_round - failed_round, "failed": failed_round,
                "outside_window": outside_window,
            },
        }

    def _seed(self, number: int, part: int) -> int:
        return self.seed * 1000 + number * 10 + part

    # -- persistence -------------------------------------------------------------------
    def _save(self, record: RoundRecord) -> None:
        frames = {"train.extxyz": record.train}
        if record.round > 0:
            trajectories = []
            for proposal in record.proposals:
                if proposal.attack is not None:
                    trajectories += proposal.attack.all_frames()
                for trajectory in proposal.trajectories:
                    trajectories += trajectory
            frames.update({"selected.extxyz": record.selected, "candidates.extxyz": record.candidates,
                           "trajectories.extxyz": trajectories})
        # the next round starts from the disk state
        record.train = self.rundir.save_round(record.round, record.metrics, record.committee, frames)

    def _load_round(self, number: int) -> RoundRecord | None:
        allow_pickle = bool(self.template.model.config().get("allow_pickle", False))  # as the user built it
        parts = self.rundir.load_round(number, device=str(self.template.device), allow_pickle=allow_pickle)
        if parts is None:
            return None
        return RoundRecord(number, parts["metrics"], parts["train"], parts["committee"],
                           selected=parts["selected"], candidates=parts["candidates"], resumed=True)
