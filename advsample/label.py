"""Label geometries with a reference ASE calculator, in-process or on any executor.

* :class:`CalculatorSpec` (:mod:`advsample.reference`) describes the reference calculator by
  import path and keyword arguments (``CalculatorSpec("tblite.ase:TBLite", {"method": "GFN2-xTB",
  "verbosity": 0})``); it is what travels to workers, which build the calculator themselves
  (once per worker process) - a live calculator is never shipped. A live calculator is
  accepted for in-process labeling only.
* :class:`LabelCache` (:mod:`advsample.labelcache`) is an append-only JSON-lines file keyed by
  geometry; every result is appended and fsynced as soon as it arrives, so a killed run loses
  nothing already labeled and a cache hit never calls the reference. Use one cache per
  reference calculator.
* :func:`label_structures` labels a list in input order; :func:`label_until` labels ranked
  candidates until exactly ``k`` succeed.

A failed calculation - an exception (e.g. an SCF that does not converge), NaN or infinite
energy/forces, wrong force shape - is recorded with its reason and skipped, never turned into
a label; it is cached too, so it is not paid for again (``retry_failed=True`` re-runs it).
A task lost by the executor (dead worker after the executor's retries, broken pool) is
recorded but not cached: the next run tries it again. :func:`label_until` gives up
(:class:`ReferenceGaveUp`) after ``max_consecutive_failures`` failed calls in a row.
:func:`reference_identity` names a reference as JSON data (a run directory stores it).

Labels are the calculator's raw energy and forces (ASE constraints are not applied to the
forces), stored with :func:`advsample.structures.labeled`; ``atoms.info`` gets
``label_source`` (the calculator's name) and ``label_key`` (the geometry key).
"""
from __future__ import annotations

import os
import time
import warnings
from concurrent.futures import Executor, as_completed
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from ase import Atoms

from .executors import InlineExecutor, executor_workers, is_inline, make_executor, task_retries
from .labelcache import LabelCache, geometry_key, open_cache
from .reference import (BadReferenceResult, CalculatorSpec, ReferenceSpecError, _compute, _label_task,
                        _worker_calculator, as_spec, reference_identity, reference_name)
from .structures import labeled

__all__ = [
    "CalculatorSpec",
    "LabelCache",
    "LabelResult",
    "BadReferenceResult",
    "ReferenceSpecError",
    "ReferenceGaveUp",
    "geometry_key",
    "label_structures",
    "label_until",
    "make_executor",
    "InlineExecutor",
    "reference_identity",
    "reference_name",
    "as_spec",
]


# --------------------------------------------------------------------------- results
@dataclass
class LabelResult:
    """Outcome of a labeling call.

    labeled: successfully labeled copies, in input (rank) order; ``indices[j]`` is the input
    index of ``labeled[j]``. failures: one dict per failed input structure with ``index``,
    ``reason``, ``formula``, ``key``, ``info`` (the structure's atoms.info), ``retries``,
    ``cached`` (reported from the cache) and ``kind`` ("calculation" or "executor").
    n_calls: reference calculations run now (including failed ones); n_cached: structures
    answered from the cache (labels and remembered failures); n_failed: len(failures).
    seconds: wall time; compute_seconds: reference time summed over the calculations run now.
    consecutive_failures: failed calculations in a row at the end (:func:`label_until`).
    rejected / rejected_indices: successes :func:`label_until`'s ``accept`` refused (paid, not counted).
    """

    labeled: list[Atoms] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    n_calls: int = 0
    n_cached: int = 0
    n_retries: int = 0
    seconds: float = 0.0
    compute_seconds: float = 0.0
    consecutive_failures: int = 0
    rejected: list[Atoms] = field(default_factory=list)
    rejected_indices: list[int] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return len(self.failures)

    @property
    def n_labeled(self) -> int:
        return len(self.labeled)

    def __repr__(self) -> str:
        return (f"LabelResult(n_labeled={self.n_labeled}, n_failed={self.n_failed}, n_calls={self.n_calls}, "
                f"n_cached={self.n_cached}, n_retries={self.n_retries}, seconds={self.seconds:.2f})")


def _progress_bar(total: int, enabled: bool, desc: str = "labeling"):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, leave=False)


def _check_executor(calculator, executor):
    """(spec or None for a live calculator, inline?) — a live calculator only in this process."""
    spec = as_spec(calculator)
    inline = is_inline(executor)
    if spec is None and not inline:
        raise TypeError(
            "a live ASE calculator can only label in-process; for an executor pass a CalculatorSpec "
            "(e.g. CalculatorSpec('tblite.ase:TBLite', {'method': 'GFN2-xTB'})) so workers build their own"
        )
    return spec, inline


class _Labeling:
    """One :func:`_label_into` call: cache hits answered, identical geometries grouped (each
    computed once), results recorded in input order as they arrive."""

    def __init__(self, atoms_list, calculator, cache, bar, retry_failed: bool, offset: int, check_first: bool):
        self.atoms_list, self.calculator, self.cache, self.bar = atoms_list, calculator, cache, bar
        self.offset, self.check_first = offset, check_first
        self.source = reference_name(calculator)
        self.result = LabelResult()
        self.slots: dict[int, Atoms] = {}
        self.groups: dict[str, list[int]] = {}  # key -> input indices still to compute (identical geometries once)
        self.seen: dict[str, dict | None] = {}  # key -> its cache record when grouped (None, or a failure to retry)
        for i, atoms in enumerate(atoms_list):
            if not isinstance(atoms, Atoms):
                raise TypeError(f"structure {i + offset} is a {type(atoms).__name__}, expected ase.Atoms")
            key = geometry_key(atoms, cache.decimals if cache is not None else 6)
            record = cache.get(key) if cache is not None else None
            if record is not None and (record.get("ok") or not retry_failed):
                self._from_record(i, key, record)
                bar.update(1)
            else:
                self.groups.setdefault(key, []).append(i)
                self.seen[key] = record

    def _fail(self, i: int, key: str, reason: str, retries: int = 0, cached: bool = False, kind: str = "calculation"):
        atoms = self.atoms_list[i]
        self.result.failures.append({
            "index": i + self.offset, "reason": reason, "formula": atoms.get_chemical_formula(),
            "n_atoms": len(atoms), "key": key, "info": dict(atoms.info), "retries": retries,
            "cached": cached, "kind": kind,
        })

    def _accept(self, i: int, key: str, energy, forces, retries: int = 0):
        extra = {"label_retries": retries} if retries else {}
        self.slots[i] = labeled(self.atoms_list[i], energy, np.asarray(forces, dtype=float),
                                label_source=self.source, label_key=key, **extra)

    def _from_record(self, i: int, key: str, record: dict):
        self.result.n_cached += 1
        if record.get("ok"):
            self._accept(i, key, record["energy"], record["forces"])
        else:
            self._fail(i, key, record.get("reason", "failed"), record.get("retries", 0), cached=True)

    def finish(self, key: str, out: dict, retries: int = 0, kind: str = "calculation"):
        """Record one paid calculation's result ``out`` for every input of geometry ``key``."""
        result, cache, indices = self.result, self.cache, self.groups[key]
        result.n_calls += 1
        result.n_retries += retries
        result.compute_seconds += float(out.get("seconds", 0.0))
        formula = self.atoms_list[indices[0]].get_chemical_formula()
        if out.get("ok"):
            if cache is not None:
                cache.put_label(key, out["energy"], out["forces"], source=self.source, formula=formula,
                                seconds=round(float(out.get("seconds", 0.0)), 6), retries=retries)
            for i in indices:
                self._accept(i, key, out["energy"], out["forces"], retries)
        else:
            if cache is not None and kind == "calculation" and out.get("cacheable", True):
                cache.put_failure(key, out["reason"], source=self.source, formula=formula, retries=retries)
            for i in indices:
                self._fail(i, key, out["reason"], retries, kind=kind)
            if self.check_first and out.get("invalid") and not self.slots and (cache is None or cache.n_labels == 0):
                raise BadReferenceResult(
                    f"the reference {self.source}'s first result is unusable: {out['reason']} (structure {formula}, "
                    f"{len(self.atoms_list[indices[0]])} atoms); nothing more was paid. Fix the reference (it must "
                    "return a finite scalar energy and finite forces of shape (n_atoms, 3)), then rerun with "
                    "retry_failures=True", out["reason"], formula,
                )
        self.bar.update(len(indices))

    def answered_elsewhere(self, key: str) -> bool:
        """Another process paid for ``key`` since the grouping (its record is then used)."""
        if self.cache is None:
            return False
        self.cache.refresh()
        record = self.cache.get(key)
        if record is None or record is self.seen.get(key):
            return False
        for i in self.groups[key]:
            self._from_record(i, key, record)
        self.bar.update(len(self.groups[key]))
        return True

    def run_inline(self, spec: CalculatorSpec | None):
        calc = self.calculator if spec is None else None
        for key, indices in self.groups.items():
            if self.answered_elsewhere(key):
                continue
            if calc is None:
                try:
                    calc = _worker_calculator(spec)
                except Exception as exc:  # nothing was paid: no failure to count, stop now
                    raise ReferenceSpecError(f"could not build the reference {spec.name}: {type(exc).__name__}: "
                                             f"{exc}; no reference call was made") from exc
            self.finish(key, _compute(self.atoms_list[indices[0]], calc))

    def run_executor(self, spec: CalculatorSpec, executor):
        futures = {executor.submit(_label_task, self.atoms_list[indices[0]], spec): key
                   for key, indices in self.groups.items()}
        try:
            for future in as_completed(futures):
                key, retries = futures[future], task_retries(future)
                try:
                    out = future.result()
                except Exception as exc:  # lost worker, broken pool, serialization ...
                    note = f" after {retries} retries" if retries else ""
                    self.finish(key, {"ok": False, "reason": f"executor: {type(exc).__name__}: {exc}{note}"},
                                retries, kind="executor")
                    continue
                if out.get("build_failed"):  # no calculation ran: nothing paid, nothing to count
                    raise ReferenceSpecError(f"{out['reason']} (on a worker, pid {out.get('pid', '?')}); no "
                                             "reference call was made: fix the reference or the workers' environment")
                self.finish(key, out, retries)
        finally:  # after an interrupt: drop what has not started (Parsl cannot cancel)
            for future in futures:
                if not future.done():
                    try:
                        future.cancel()
                    except NotImplementedError:
                        pass

    def done(self) -> LabelResult:
        result = self.result
        order = sorted(self.slots)
        result.labeled = [self.slots[i] for i in order]
        result.indices = [i + self.offset for i in order]
        result.failures.sort(key=lambda f: f["index"])
        return result


def _label_into(atoms_list: Sequence[Atoms], calculator, executor, cache: LabelCache | None,
                bar, retry_failed: bool, offset: int = 0, check_first: bool = False) -> LabelResult:
    """Core of label_structures; indices are shifted by ``offset``. ``check_first``: an
    unusable result (shape, non-finite) while the cache holds no label yet raises
    :class:`BadReferenceResult` at once (the call is recorded), so nothing more is paid."""
    t0 = time.perf_counter()
    spec, inline = _check_executor(calculator, executor)
    labeling = _Labeling(atoms_list, calculator, cache, bar, retry_failed, offset, check_first)
    if inline:
        labeling.run_inline(spec)
    elif labeling.groups:
        labeling.run_executor(spec, executor)
    result = labeling.done()
    result.seconds = time.perf_counter() - t0
    return result


def label_structures(atoms_list: Sequence[Atoms] | Atoms, calculator, executor: Executor | None = None,
                     cache: LabelCache | str | os.PathLike | None = None, progress: bool = True,
                     retry_failed: bool = False) -> LabelResult:
    """Label every structure with the reference ``calculator``.

    calculator: a :class:`CalculatorSpec` (or ``"module:attr"`` / factory callable), or a live
    ASE calculator (in-process only). executor: None or ``InlineExecutor`` (this process, one
    at a time), or any ``concurrent.futures.Executor`` (ProcessPoolExecutor, Parsl's
    ParslPoolExecutor ...). cache: a :class:`LabelCache` or its path; hits are never
    recomputed and every new result is written as soon as it arrives. Identical geometries in
    ``atoms_list`` are computed once. Returns a :class:`LabelResult` in input order.
    """
    if isinstance(atoms_list, Atoms):
        atoms_list = [atoms_list]
    atoms_list = list(atoms_list)
    cache = open_cache(cache)
    bar = _progress_bar(len(atoms_list), progress)
    try:
        return _label_into(atoms_list, calculator, executor, cache, bar, retry_failed)
    finally:
        bar.close()


class ReferenceGaveUp(RuntimeError):
    """Labeling stopped after too many consecutive failed reference calls.

    ``summary``: what failed and the last reasons; ``failures``: the last failure records.
    """

    def __init__(self, summary: str, failures: Sequence[dict] = (), hint: str = ""):
        super().__init__(f"{summary}. {hint}" if hint else summary)
        self.summary = summary
        self.failures = list(failures)


def last_reasons(failures: Sequence[dict], n: int = 3) -> str:
    """The last ``n`` distinct ``reason`` strings of failure records, quoted, oldest first."""
    reasons = []
    for failure in reversed(failures):
        if failure["reason"] not in reasons:
            reasons.append(failure["reason"])
        if len(reasons) == n:
            break
    return "; ".join(repr(r) for r in reversed(reasons)) or "none"


def label_until(candidates: Sequence[Atoms], k: int, calculator, executor: Executor | None = None,
                cache: LabelCache | str | os.PathLike | None = None, progress: bool = True,
                retry_failed: bool = False, min_wave: int | None = None,
                max_consecutive_failures: int | None = None, consecutive_failures: int = 0,
                unit: str = "labels", check_first: bool = False,
                accept: Callable[[int, Atoms], bool] | None = None) -> LabelResult:
    """Label ranked ``candidates`` (best first) until ``k`` labels succeed (``unit="labels"``)
    or until ``k`` reference calls have been paid (``unit="calls"``: every success of those
    calls is returned; answers from the cache cost nothing, also those right after the last
    call, so a replayed round gets the labels its interrupted attempt paid for).

    ``accept(index, labeled_atoms) -> bool``: which successes count (e.g. a reference energy
    inside the run's energy window). A success it refuses is paid, cached and returned in
    ``result.rejected`` / ``result.rejected_indices`` (those ranked before the last returned
    label, or all of them when the candidates run out or under a call budget), never in
    ``labeled``, and does not count toward ``k``; it still ends a failure streak.

    Works in waves: each wave submits the next ``max(missing, min_wave)`` candidates in
    rank order, where ``missing`` is how many labels are still needed and ``min_wave``
    defaults to the executor's worker count (1 in-process, so nothing is computed beyond
    need). A parallel wave may overshoot: the first ``k`` successes by rank are returned and
    the extra labels stay in the cache; a call budget submits only the calls still unpaid.
    ``failures`` lists every failure met on the way.
    Warns and returns fewer than ``k`` labels when the candidates run out.

    Give-up: ``max_consecutive_failures`` failed calculations in a row (in rank order;
    failures answered from the cache cost nothing and do not count, a success resets the
    count) raise :class:`ReferenceGaveUp` quoting the last reasons. ``consecutive_failures``
    carries a count over from an earlier call; the count at the end is
    ``result.consecutive_failures``.

    Shared cache: before each wave the cache file is re-read for what other processes
    appended (:meth:`LabelCache.refresh`), so a key already present is never paid again.
    ``check_first``: the first result while the cache holds no label is checked (shape,
    finite values); an unusable one raises :class:`BadReferenceResult` after that one call.
    """
    k = int(k)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if unit not in ("labels", "calls"):
        raise ValueError(f"unit must be 'labels' or 'calls', got {unit!r}")
    if max_consecutive_failures is not None and max_consecutive_failures < 1:
        raise ValueError(f"max_consecutive_failures must be >= 1 or None, got {max_consecutive_failures}")
    cache = open_cache(cache)
    min_wave = max(1, int(executor_workers(executor) if min_wave is None else min_wave))
    t0 = time.perf_counter()
    waves = _Waves(list(candidates), k, unit == "calls", cache, retry_failed, accept, int(consecutive_failures))
    bar = _progress_bar(min(k, len(waves.candidates)), progress,
                        desc=f"{k} reference calls" if waves.by_calls else f"labeling {k}")
    try:
        while waves.more():
            size = waves.wave_size(min_wave, max_consecutive_failures)
            wave = waves.candidates[waves.position:waves.position + size]
            if cache is not None:
                cache.refresh()  # what other processes paid for since: answered from the cache
            waves.add(_label_into(wave, calculator, executor, cache, _WaveBar(bar), retry_failed,
                                  offset=waves.position, check_first=check_first), len(wave))
            bar.n = min(waves.spent(), bar.total)
            bar.refresh()
            if max_consecutive_failures is not None and waves.streak >= max_consecutive_failures:
                raise ReferenceGaveUp(
                    f"gave up labeling after {waves.streak} consecutive failed reference calls "
                    f"({reference_name(calculator)}); last reasons: {last_reasons(waves.total.failures)}",
                    waves.total.failures[-waves.streak:],
                    "Fix the reference, then rerun: cached failures are tried again with retry_failed=True",
                )
    finally:
        bar.close()
    total = waves.done(time.perf_counter() - t0)
    if waves.missing() > 0:
        done = (f"{total.n_calls} of {k} reference calls paid" if waves.by_calls
                else f"{total.n_labeled} of {k} labels succeeded")
        warnings.warn(f"label_until: only {done}; {len(waves.candidates)} candidates, {total.n_failed} failed",
                      RuntimeWarning, stacklevel=2)
    return total


class _Waves:
    """:func:`label_until`'s bookkeeping over its waves: successes (accepted or not), the
    failure streak in rank order, the position in the ranked candidates."""

    def __init__(self, candidates, k, by_calls, cache, retry_failed, accept, streak):
        self.candidates, self.k, self.by_calls, self.cache = candidates, k, by_calls, cache
        self.retry_failed, self.accept, self.streak = retry_failed, accept, streak
        self.total = LabelResult()
        self.successes: list[tuple[int, Atoms]] = []
        self.rejected: list[tuple[int, Atoms]] = []
        self.position = 0

    def spent(self) -> int:
        return self.total.n_calls if self.by_calls else len(self.successes)

    def missing(self) -> int:
        return self.k - self.spent()

    def _cached_next(self) -> bool:  # free: a call budget also takes the cache hits that follow its last call
        record = self.cache.get(self.candidates[self.position]) if self.cache is not None else None
        return record is not None and (bool(record.get("ok")) or not self.retry_failed)

    def more(self) -> bool:
        return self.position < len(self.candidates) and (
            self.missing() > 0 or (self.by_calls and self._cached_next()))

    def wave_size(self, min_wave: int, max_consecutive_failures: int | None) -> int:
        size = max(self.missing(), 1) if self.by_calls else max(self.missing(), min_wave)  # a call budget: never overshot
        if max_consecutive_failures is not None:  # never run far past the give-up
            size = min(size, max(1, max_consecutive_failures - self.streak))
        return size

    def add(self, r: LabelResult, n_submitted: int) -> None:
        for index, atoms in zip(r.indices, r.labeled):
            keep = self.accept is None or self.accept(index, atoms)
            (self.successes if keep else self.rejected).append((index, atoms))
        total = self.total
        total.failures.extend(r.failures)
        total.n_calls += r.n_calls
        total.n_cached += r.n_cached
        total.n_retries += r.n_retries
        total.compute_seconds += r.compute_seconds
        self.position += n_submitted
        events = sorted([(i, "ok") for i in r.indices]
                        + [(f["index"], "cached" if f["cached"] else "paid") for f in r.failures])
        for _, event in events:
            if event == "ok":
                self.streak = 0
            elif event == "paid":  # a failure paid now
                self.streak += 1

    def done(self, seconds: float) -> LabelResult:
        total = self.total
        successes = sorted(self.successes, key=lambda pair: pair[0])
        if not self.by_calls:
            successes = successes[:self.k]
        rejected = sorted(self.rejected, key=lambda pair: pair[0])
        if not self.by_calls and len(successes) == self.k and successes:
            rejected = [pair for pair in rejected if pair[0] < successes[-1][0]]
        total.indices, total.labeled = [i for i, _ in successes], [a for _, a in successes]
        total.rejected_indices, total.rejected = [i for i, _ in rejected], [a for _, a in rejected]
        total.failures.sort(key=lambda f: f["index"])
        total.seconds = seconds
        total.consecutive_failures = self.streak
        return total


class _WaveBar:
    """Swallows per-structure updates; label_until counts successes itself."""

    def __init__(self, bar):
        self.bar = bar

    def update(self, n: int = 1) -> None:
        pass
