"""The reference calculator: how it is named, built and called once.

* :class:`CalculatorSpec` describes the reference calculator by import path and keyword
  arguments (``CalculatorSpec("tblite.ase:TBLite", {"method": "GFN2-xTB", "verbosity": 0})``);
  it is what travels to workers, which build the calculator themselves (once per worker
  process) - a live calculator is never shipped. A live calculator is accepted for
  in-process labeling only.
* :func:`reference_identity` names a reference as JSON data (a run directory stores it),
  :func:`reference_name` as ``module:attr``.
* ``_compute`` runs one calculation and turns any failure (an exception, NaN or infinite
  energy/forces, a wrong force shape) into a failure record instead of a label;
  ``_label_task`` is what a worker runs.

Every name here is importable from :mod:`advsample.label` too.
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from ase import Atoms

__all__ = ["CalculatorSpec", "ReferenceSpecError", "BadReferenceResult", "as_spec", "reference_identity",
           "reference_name"]


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
