"""Label geometries with a reference ASE calculator, in-process or on any executor.

* :class:`CalculatorSpec` describes the reference calculator by import path and keyword
  arguments (``CalculatorSpec("tblite.ase:TBLite", {"method": "GFN2-xTB", "verbosity": 0})``);
  it is what travels to workers, which build the calculator themselves (once per worker
  process) - a live calculator is never shipped. A live calculator is accepted for
  in-process labeling only.
* :class:`LabelCache` is an append-only JSON-lines file keyed by geometry; every result is
  appended and fsynced as soon as it arrives, so a killed run loses nothing already labeled
  and a cache hit never calls the reference. Use one cache per reference calculator.
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

import hashlib
import importlib
import inspect
import json
import os
import time
import warnings
from concurrent.futures import Executor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from ase import Atoms

from .executors import InlineExecutor, executor_workers, is_inline, make_executor, task_retries
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
]


# --------------------------------------------------------------------------- calculator spec
@dataclass(frozen=True)
class CalculatorSpec:
    """A picklable recipe for an ASE calculator: ``factory(**kwargs)``.

    ``factory`` is an import path ``"module:attr"`` (``"tblite.ase:TBLite"``,
    ``"ase.calculators.emt:EMT"``) or a module-level callable (class or function).
    """

    factory: str | Callable[..., Any]
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.factory, str):
            if ":" not in self.factory:
                raise ValueError(f"factory must look like 'module:attr', got {self.factory!r}")
        elif not callable(self.factory):
            raise TypeError(f"factory must be a 'module:attr' string or a callable, got {self.factory!r}")
        object.__setattr__(self, "kwargs", dict(self.kwargs or {}))

    @property
    def name(self) -> str:
        """``module:attr`` of the factory (used as ``label_source``)."""
        if isinstance(self.factory, str):
            return self.factory
        return f"{self.factory.__module__}:{getattr(self.factory, '__qualname__', repr(self.factory))}"

    @property
    def fingerprint(self) -> str:
        return self.name + json.dumps(self.kwargs, sort_keys=True, default=repr)

    def resolve(self) -> Callable[..., Any]:
        if not isinstance(self.factory, str):
            return self.factory
        module_name, attr = self.factory.split(":", 1)
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    def build(self):
        """A fresh calculator instance."""
        return self.resolve()(**self.kwargs)

    def check(self, build: bool = False) -> None:
        """Import the factory and bind ``kwargs`` to its signature; ``build``: also build it
        (in this process, kept for labeling here).

        ``ReferenceSpecError`` (a ValueError) naming the spec and what is wrong: a module
        that cannot be imported, a missing attribute, something not callable, a keyword
        the factory does not take, a build that fails. Runs (``ActiveLearning``) call it
        before anything is paid (building when they label in this process: a remote
        worker's environment may differ from this one's).
        """
        try:
            factory = self.resolve()
        except ImportError as exc:
            raise ReferenceSpecError(f"reference {self.name!r}: module cannot be imported ({type(exc).__name__}: {exc}); "
                                     "check the 'module:attr' path and that the package is installed") from exc
        except AttributeError as exc:
            raise ReferenceSpecError(f"reference {self.name!r}: {exc}; check the attribute after ':'") from exc
        if not callable(factory):
            raise ReferenceSpecError(f"reference {self.name!r} is a {type(factory).__name__}, not a class or function")
        try:
            signature = inspect.signature(factory)
        except (TypeError, ValueError):  # a builtin without a signature: nothing to check
            return
        try:
            signature.bind(**self.kwargs)
        except TypeError as exc:
            raise ReferenceSpecError(f"reference {self.name!r} does not take the keywords {sorted(self.kwargs)}: {exc}") from exc
        if build:
            try:
                _worker_calculator(self)
            except Exception as exc:
                raise ReferenceSpecError(f"could not build the reference {self.name!r} with {self.kwargs}: "
                                         f"{type(exc).__name__}: {exc}; no reference call was made") from exc


class ReferenceSpecError(ValueError):
    """A reference (``CalculatorSpec``) that cannot be imported or called as given."""


class BadReferenceResult(RuntimeError):
    """The reference's first result is unusable (shape, type or a non-finite value): nothing more is paid.

    ``reason``: what was wrong; ``formula``: the structure. Exactly one call was paid (and recorded as a failure).
    """

    def __init__(self, message: str, reason: str, formula: str):
        super().__init__(message)
        self.reason, self.formula = reason, formula


def _is_live_calculator(obj) -> bool:
    return hasattr(obj, "get_potential_energy") and hasattr(obj, "get_forces") and not isinstance(obj, type)


def as_spec(calculator) -> CalculatorSpec | None:
    """``CalculatorSpec`` for a spec, an import path or a factory; None for a live calculator."""
    if isinstance(calculator, CalculatorSpec):
        return calculator
    if _is_live_calculator(calculator):
        return None
    if isinstance(calculator, str) or callable(calculator):
        return CalculatorSpec(calculator)
    raise TypeError(f"expected a CalculatorSpec, 'module:attr', a factory or an ASE calculator, got {calculator!r}")


def _plain(value, depth: int):
    """JSON-able description of an attribute value, or None when it is state, not a setting."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        items = [_plain(v, depth) for v in value]
        return None if any(i is None and v is not None for i, v in zip(items, value)) else items
    if _is_live_calculator(value) and depth > 0:
        return reference_identity(value, depth - 1)
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}:{value.__qualname__}"
    return None


def reference_identity(calculator, depth: int = 2) -> dict:
    """What names a reference, as JSON data (stored in a run directory's settings).

    A :class:`CalculatorSpec` (or import path / factory): ``{"factory", "kwargs"}``. A live
    ASE calculator: its class, its ASE ``parameters`` and the attributes its own
    ``__init__`` set that are settings (numbers, strings, tuples, functions by name, nested
    calculators); lists, arrays and other objects are taken for state and left out.
    """
    spec = as_spec(calculator)
    if spec is not None:
        return {"factory": spec.name, "kwargs": json.loads(json.dumps(spec.kwargs, sort_keys=True, default=repr))}
    from ase.calculators.calculator import Calculator

    base = set(vars(Calculator()))
    attributes = {}
    for name, value in sorted(vars(calculator).items()):
        if name.startswith("_") or name in base:
            continue
        plain = _plain(value, depth)
        if plain is not None:
            attributes[name] = plain
    parameters = json.loads(json.dumps(dict(getattr(calculator, "parameters", {}) or {}), sort_keys=True, default=repr))
    return {"class": f"{type(calculator).__module__}:{type(calculator).__qualname__}",
            "parameters": parameters, "attributes": attributes}


def reference_name(calculator) -> str:
    """``module:attr`` of a spec's factory or ``module:Class`` of a live calculator."""
    spec = as_spec(calculator)
    return spec.name if spec is not None else f"{type(calculator).__module__}:{type(calculator).__qualname__}"


# Calculators built inside this process (worker or main), by spec fingerprint: built once,
# reused for every structure the process labels.
_BUILT: dict[str, Any] = {}


def _worker_calculator(spec: CalculatorSpec):
    key = spec.fingerprint
    calc = _BUILT.get(key)
    if calc is None:
        if len(_BUILT) >= 8:
            _BUILT.clear()
        calc = _BUILT[key] = spec.build()
    return calc


# --------------------------------------------------------------------------- one calculation
def _compute(atoms: Atoms, calc) -> dict:
    """Energy and forces of ``atoms`` with ``calc``; a failure dict instead of raising."""
    t0 = time.perf_counter()
    work = atoms.copy()
    try:
        if hasattr(calc, "reset"):
            calc.reset()  # no wavefunction reuse between structures: labels independent of order
        work.calc = calc
        energy = work.get_potential_energy()
        forces = np.array(work.get_forces(apply_constraint=False), dtype=float)
    except Exception as exc:  # KeyboardInterrupt / SystemExit propagate
        return {"ok": False, "reason": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - t0}
    finally:
        work.calc = None
    seconds = time.perf_counter() - t0
    invalid = {"ok": False, "invalid": True, "seconds": seconds}  # a result, but no label
    try:
        energy = float(np.asarray(energy).reshape(()))
    except (TypeError, ValueError):
        return {**invalid, "reason": f"energy is not a scalar: {energy!r}"}
    if forces.shape != (len(atoms), 3):
        return {**invalid, "reason": f"forces have shape {forces.shape}, expected ({len(atoms)}, 3)"}
    if not np.isfinite(energy):
        return {**invalid, "reason": f"non-finite energy ({energy})"}
    if not np.all(np.isfinite(forces)):
        bad = int(np.count_nonzero(~np.isfinite(forces)))
        return {**invalid, "reason": f"non-finite forces ({bad} components)"}
    return {"ok": True, "energy": energy, "forces": forces, "seconds": seconds}


def _label_task(atoms: Atoms, spec: CalculatorSpec) -> dict:
    """What a worker runs: build (or reuse) the calculator from ``spec``, label ``atoms``."""
    try:
        calc = _worker_calculator(spec)
    except Exception as exc:
        return {"ok": False, "reason": f"could not build {spec.name}: {type(exc).__name__}: {exc}",
                "cacheable": False, "build_failed": True, "seconds": 0.0}
    out = _compute(atoms, calc)
    out["pid"] = os.getpid()
    return out


# --------------------------------------------------------------------------- cache
def geometry_key(atoms: Atoms, decimals: int = 6) -> str:
    """Hash of atomic numbers, positions and cell (rounded to ``10**-decimals`` Å) and pbc."""
    scale = 10.0 ** decimals
    h = hashlib.sha256(b"advsample-geometry-v1")
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.rint(np.asarray(atoms.positions, dtype=float) * scale).astype(np.int64).tobytes())
    h.update(np.rint(np.asarray(atoms.cell.array, dtype=float) * scale).astype(np.int64).tobytes())
    h.update(np.asarray(atoms.pbc, dtype=np.uint8).tobytes())
    return h.hexdigest()[:40]


class LabelCache:
    """Persistent labels keyed by geometry: an append-only JSON-lines file.

    Each record is one line ``{"key", "ok", "energy", "forces", "source", ...}`` or
    ``{"key", "ok": false, "reason", ...}``, written with a single ``write`` and fsynced.
    A process killed mid-write leaves at most one truncated last line, which loading skips
    (``n_corrupt``). The last record of a key wins. Several processes may share the file:
    each appends whole lines with one ``O_APPEND`` write, and :meth:`refresh` reads what the
    others appended since (labeling re-reads before each wave and before each inline call,
    so a key already present is not paid again).
    ``n_calls`` / ``n_failed_calls``: records in the file (every calculation paid, a retried
    failure counted again), so they stay right across any number of interrupted runs.
    """

    def __init__(self, path: str | os.PathLike, decimals: int = 6):
        self.path = Path(path)
        self.decimals = int(decimals)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._records: dict[str, dict] = {}
        self.n_corrupt = 0
        self.n_calls = 0  # records in the file: one per reference calculation paid (retries included)
        self.n_failed_calls = 0  # of which failures
        self._needs_newline = False
        self._offset = 0  # bytes of the file read so far (whole lines)
        self._own: list[bytes] = []  # lines this process appended since the last read
        self.reload()

    def reload(self) -> None:
        """(Re)read the file."""
        self._records.clear()
        self.n_corrupt = self.n_calls = self.n_failed_calls = 0
        self._offset, self._own = 0, []
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        self._needs_newline = bool(data) and not data.endswith(b"\n")
        self._offset = len(data)
        self._parse(data.split(b"\n"))

    def _parse(self, lines) -> set[str]:
        keys = set()
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = record["key"]
            except (ValueError, KeyError, TypeError):
                self.n_corrupt += 1
                continue
            self._records[key] = record
            self._count(record)
            keys.add(key)
        return keys

    def refresh(self) -> set[str]:
        """Read the records other processes appended since the last read; returns their keys."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return set()
        end = data.rfind(b"\n") + 1  # whole lines only: a line being written is read next time
        if end == 0:
            return set()
        self._offset += end
        lines = data[:end].split(b"\n")
        own = list(self._own)
        self._own = []
        foreign = []
        for line in lines:
            if line in own:  # appended (and counted) by this process
                own.remove(line)
            else:
                foreign.append(line)
        self._own = own
        return self._parse(foreign)

    def _count(self, record: dict) -> None:
        self.n_calls += 1
        self.n_failed_calls += not record.get("ok")

    def key(self, atoms: Atoms) -> str:
        return geometry_key(atoms, self.decimals)

    def get(self, atoms_or_key: Atoms | str) -> dict | None:
        """The record for a geometry (``ok`` True with ``energy``/``forces``, or a failure)."""
        key = atoms_or_key if isinstance(atoms_or_key, str) else self.key(atoms_or_key)
        return self._records.get(key)

    def __contains__(self, atoms_or_key) -> bool:
        return self.get(atoms_or_key) is not None

    def __len__(self) -> int:
        return len(self._records)

    @property
    def n_labels(self) -> int:
        return sum(1 for r in self._records.values() if r.get("ok"))

    def _append(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
        data = (("\n" if self._needs_newline else "") + line).encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:  # a full disk, a lost mount: name the file (the result is lost, the call was paid)
            raise OSError(exc.errno, f"could not append to the label cache {self.path}: {exc.strerror or exc}; "
                          "free space or fix the file system and rerun: every earlier label is kept", str(self.path)
                          ) from exc
        self._needs_newline = False
        self._own.append(line.rstrip("\n").encode())
        self._records[record["key"]] = record
        self._count(record)

    def put_label(self, key: str, energy: float, forces: np.ndarray, **extra) -> None:
        forces = np.asarray(forces, dtype=float)
        self._append({"key": key, "ok": True, "energy": float(energy), "forces": forces.tolist(), **extra})

    def put_failure(self, key: str, reason: str, **extra) -> None:
        self._append({"key": key, "ok": False, "reason": str(reason), **extra})


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

    @property
    def n_failed(self) -> int:
        return len(self.failures)

    @property
    def n_labeled(self) -> int:
        return len(self.labeled)

    def __repr__(self) -> str:
        return (f"LabelResult(n_labeled={self.n_labeled}, n_failed={self.n_failed}, n_calls={self.n_calls}, "
                f"n_cached={self.n_cached}, n_retries={self.n_retries}, seconds={self.seconds:.2f})")


def _open_cache(cache) -> LabelCache | None:
    if cache is None or isinstance(cache, LabelCache):
        return cache
    return LabelCache(cache)


def _progress_bar(total: int, enabled: bool, desc: str = "labeling"):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, leave=False)


def _label_into(atoms_list: Sequence[Atoms], calculator, executor, cache: LabelCache | None,
                bar, retry_failed: bool, offset: int = 0, check_first: bool = False) -> LabelResult:
    """Core of label_structures; indices are shifted by ``offset``. ``check_first``: an
    unusable result (shape, non-finite) while the cache holds no label yet raises
    :class:`BadReferenceResult` at once (the call is recorded), so nothing more is paid."""
    t0 = time.perf_counter()
    spec = as_spec(calculator)
    inline = is_inline(executor)
    if spec is None and not inline:
        raise TypeError(
            "a live ASE calculator can only label in-process; for an executor pass a CalculatorSpec "
            "(e.g. CalculatorSpec('tblite.ase:TBLite', {'method': 'GFN2-xTB'})) so workers build their own"
        )
    source = reference_name(calculator)
    result = LabelResult()
    slots: dict[int, Atoms] = {}
    groups: dict[str, list[int]] = {}  # key -> input indices still to compute (identical geometries once)
    seen: dict[str, dict | None] = {}  # key -> its cache record when grouped (None, or a failure to retry)

    def fail(i: int, key: str, reason: str, retries: int = 0, cached: bool = False, kind: str = "calculation"):
        atoms = atoms_list[i]
        result.failures.append({
            "index": i + offset, "reason": reason, "formula": atoms.get_chemical_formula(),
            "n_atoms": len(atoms), "key": key, "info": dict(atoms.info), "retries": retries,
            "cached": cached, "kind": kind,
        })

    def accept(i: int, key: str, energy, forces, retries: int = 0):
        extra = {"label_retries": retries} if retries else {}
        slots[i] = labeled(atoms_list[i], energy, np.asarray(forces, dtype=float),
                           label_source=source, label_key=key, **extra)

    for i, atoms in enumerate(atoms_list):
        if not isinstance(atoms, Atoms):
            raise TypeError(f"structure {i + offset} is a {type(atoms).__name__}, expected ase.Atoms")
        key = geometry_key(atoms, cache.decimals if cache is not None else 6)
        record = cache.get(key) if cache is not None else None
        if record is not None and (record.get("ok") or not retry_failed):
            result.n_cached += 1
            if record.get("ok"):
                accept(i, key, record["energy"], record["forces"])
            else:
                fail(i, key, record.get("reason", "failed"), record.get("retries", 0), cached=True)
            bar.update(1)
        else:
            groups.setdefault(key, []).append(i)
            seen[key] = record

    def finish(key: str, out: dict, retries: int = 0, kind: str = "calculation"):
        result.n_calls += 1
        result.n_retries += retries
        result.compute_seconds += float(out.get("seconds", 0.0))
        indices = groups[key]
        if out.get("ok"):
            if cache is not None:
                cache.put_label(key, out["energy"], out["forces"], source=source,
                                formula=atoms_list[indices[0]].get_chemical_formula(),
                                seconds=round(float(out.get("seconds", 0.0)), 6), retries=retries)
            for i in indices:
                accept(i, key, out["energy"], out["forces"], retries)
        else:
            if cache is not None and kind == "calculation" and out.get("cacheable", True):
                cache.put_failure(key, out["reason"], source=source,
                                  formula=atoms_list[indices[0]].get_chemical_formula(), retries=retries)
            for i in indices:
                fail(i, key, out["reason"], retries, kind=kind)
            if check_first and out.get("invalid") and not slots and (cache is None or cache.n_labels == 0):
                formula = atoms_list[indices[0]].get_chemical_formula()
                raise BadReferenceResult(
                    f"the reference {source}'s first result is unusable: {out['reason']} (structure {formula}, "
                    f"{len(atoms_list[indices[0]])} atoms); nothing more was paid. Fix the reference (it must return "
                    "a finite scalar energy and finite forces of shape (n_atoms, 3)), then rerun with retry_failures=True",
                    out["reason"], formula,
                )
        bar.update(len(indices))

    def answered_since(key: str) -> bool:  # a record for ``key`` arrived after the grouping above
        record = cache.get(key)
        return record is not None and record is not seen.get(key)

    def finish_cached(key: str):
        record = cache.get(key)
        for i in groups[key]:
            result.n_cached += 1
            if record.get("ok"):
                accept(i, key, record["energy"], record["forces"])
            else:
                fail(i, key, record.get("reason", "failed"), record.get("retries", 0), cached=True)
        bar.update(len(groups[key]))

    if inline:
        calc = None
        for key, indices in groups.items():
            if cache is not None:
                cache.refresh()
                if answered_since(key):
                    finish_cached(key)  # another process paid for it meanwhile
                    continue
            if spec is None:
                out = _compute(atoms_list[indices[0]], calculator)
            else:
                if calc is None:
                    try:
                        calc = _worker_calculator(spec)
                    except Exception as exc:  # nothing was paid: no failure to count, stop now
                        raise ReferenceSpecError(
                            f"could not build the reference {spec.name}: {type(exc).__name__}: {exc}; "
                            "no reference call was made"
                        ) from exc
                out = _compute(atoms_list[indices[0]], calc)
            finish(key, out)
    elif groups:
        futures = {executor.submit(_label_task, atoms_list[indices[0]], spec): key for key, indices in groups.items()}
        try:
            for future in as_completed(futures):
                key = futures[future]
                retries = task_retries(future)
                try:
                    out = future.result()
                except Exception as exc:  # lost worker, broken pool, serialization ...
                    note = f" after {retries} retries" if retries else ""
                    finish(key, {"ok": False, "reason": f"executor: {type(exc).__name__}: {exc}{note}"},
                           retries, kind="executor")
                else:
                    if out.get("build_failed"):  # no calculation ran: nothing paid, nothing to count
                        raise ReferenceSpecError(f"{out['reason']} (on a worker, pid {out.get('pid', '?')}); no "
                                                 "reference call was made: fix the reference or the workers' environment")
                    finish(key, out, retries)
        finally:  # after an interrupt: drop what has not started (Parsl cannot cancel)
            for future in futures:
                if not future.done():
                    try:
                        future.cancel()
                    except NotImplementedError:
                        pass

    result.indices = sorted(slots)
    result.labeled = [slots[i] for i in result.indices]
    result.indices = [i + offset for i in result.indices]
    result.failures.sort(key=lambda f: f["index"])
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
    cache = _open_cache(cache)
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
                unit: str = "labels", check_first: bool = False) -> LabelResult:
    """Label ranked ``candidates`` (best first) until ``k`` labels succeed (``unit="labels"``)
    or until ``k`` reference calls have been paid (``unit="calls"``: every success of those
    calls is returned; answers from the cache cost nothing, also those right after the last
    call, so a replayed round gets the labels its interrupted attempt paid for).

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
    candidates = list(candidates)
    k = int(k)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if unit not in ("labels", "calls"):
        raise ValueError(f"unit must be 'labels' or 'calls', got {unit!r}")
    by_calls = unit == "calls"
    cache = _open_cache(cache)
    if min_wave is None:
        min_wave = executor_workers(executor)
    min_wave = max(1, int(min_wave))
    t0 = time.perf_counter()
    if max_consecutive_failures is not None and max_consecutive_failures < 1:
        raise ValueError(f"max_consecutive_failures must be >= 1 or None, got {max_consecutive_failures}")
    total = LabelResult()
    streak = int(consecutive_failures)
    successes: list[tuple[int, Atoms]] = []
    position = 0
    bar = _progress_bar(min(k, len(candidates)), progress, desc=f"{k} reference calls" if by_calls else f"labeling {k}")

    def missing() -> int:
        return k - (total.n_calls if by_calls else len(successes))

    def cached_next() -> bool:  # free: a call budget also takes the cache hits that follow its last call
        record = cache.get(candidates[position]) if cache is not None else None
        return record is not None and (bool(record.get("ok")) or not retry_failed)

    try:
        while position < len(candidates) and (missing() > 0 or (by_calls and cached_next())):
            size = max(missing(), 1) if by_calls else max(missing(), min_wave)  # a call budget is never overshot
            if max_consecutive_failures is not None:  # never run far past the give-up
                size = min(size, max(1, max_consecutive_failures - streak))
            wave = candidates[position:position + size]
            if cache is not None:
                cache.refresh()  # what other processes paid for since: answered from the cache
            r = _label_into(wave, calculator, executor, cache, _WaveBar(bar), retry_failed, offset=position,
                            check_first=check_first)
            successes.extend(zip(r.indices, r.labeled))
            total.failures.extend(r.failures)
            total.n_calls += r.n_calls
            total.n_cached += r.n_cached
            total.n_retries += r.n_retries
            total.compute_seconds += r.compute_seconds
            position += len(wave)
            bar.n = min(total.n_calls if by_calls else len(successes), bar.total)
            bar.refresh()
            events = sorted([(i, "ok") for i in r.indices]
                            + [(f["index"], "cached" if f["cached"] else "paid") for f in r.failures])
            for _, event in events:
                if event == "ok":
                    streak = 0
                elif event == "paid":  # a failure paid now
                    streak += 1
            if max_consecutive_failures is not None and streak >= max_consecutive_failures:
                raise ReferenceGaveUp(
                    f"gave up labeling after {streak} consecutive failed reference calls "
                    f"({reference_name(calculator)}); last reasons: {last_reasons(total.failures)}",
                    total.failures[-streak:],
                    "Fix the reference, then rerun: cached failures are tried again with retry_failed=True",
                )
    finally:
        bar.close()
    successes.sort(key=lambda pair: pair[0])
    successes = successes if by_calls else successes[:k]
    total.indices = [i for i, _ in successes]
    total.labeled = [a for _, a in successes]
    total.failures.sort(key=lambda f: f["index"])
    total.seconds = time.perf_counter() - t0
    total.consecutive_failures = streak
    if missing() > 0:
        done = f"{total.n_calls} of {k} reference calls paid" if by_calls else f"{len(successes)} of {k} labels succeeded"
        warnings.warn(f"label_until: only {done}; {len(candidates)} candidates, {total.n_failed} failed",
                      RuntimeWarning, stacklevel=2)
    return total


class _WaveBar:
    """Swallows per-structure updates; label_until counts successes itself."""

    def __init__(self, bar):
        self.bar = bar

    def update(self, n: int = 1) -> None:
        pass
