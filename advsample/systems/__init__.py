"""Systems: everything an active-learning run needs besides the sampler and the seed.

A :class:`System` holds the reference (an ASE calculator or a
:class:`~advsample.label.CalculatorSpec`), the labeled initial data, the labeled test set
(``info["subset"]`` names its parts), a committee factory, the energy unit, the run
defaults (kT, uncertainty, training, selection, attack, MD, random displacement,
validation fraction, kT sweep) and the metrics it reports beyond the test errors.

Systems are made by factories, found by name::

    system = get_system("ammonia")                          # built in
    system = get_system("mypackage.systems:water", n=50)    # the user's own factory
    register_system("water", water)                         # ... or registered once

A factory is a function ``factory(smoke=False, **options) -> System``; ``smoke=True``
asks for a version that runs in seconds (tests, ``smoke`` notebook runs) and is passed
only when the factory takes it. A system built by name carries ``spec = (name, options)``
so process-pool and Parsl workers rebuild it instead of unpickling it. Built-in systems:
``double_well_2d``, ``double_well_1d`` (:mod:`.toy`), ``ammonia`` (:mod:`.ammonia`),
``ethanol`` (:mod:`.ethanol`).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ase import Atoms

from ..committee import Committee
from ..objective import Objective
from ..samplers import AdversarialSampler, Sampler, UncertaintyMDSampler, attack_settings, make_method, md_settings
from ..select import SelectionConfig
from ..structures import labels_of
from ..train import TrainConfig


@dataclass(frozen=True)
class Metric:
    """A figure a system reports per round: its key in the metrics, unit, and which way is better.

    ``unit`` may contain ``{E}``, replaced by the system's energy unit. ``log_scale``: plot on
    a log axis. ``kind``: ``"test"`` (held-out errors), ``"rare-event"`` or ``"thermal"``.
    """

    name: str
    unit: str = ""
    lower_is_better: bool = True
    label: str = ""
    log_scale: bool = False
    kind: str = "rare-event"

    def axis_label(self, energy_unit: str = "eV") -> str:
        """``label (unit)`` with the energy unit filled in."""
        unit = self.unit.replace("{E}", energy_unit)
        text = self.label or self.name
        return f"{text} ({unit})" if unit else text


TEST_METRICS = (
    Metric("force_mae", "{E}/Å", label="test force MAE", log_scale=True, kind="test"),
    Metric("energy_mae", "{E}", label="test energy MAE", log_scale=True, kind="test"),
    Metric("force_rmse", "{E}/Å", label="test force RMSE", log_scale=True, kind="test"),
    Metric("force_spearman", "", lower_is_better=False, label="Spearman ρ (force σ vs error)", kind="test"),
    Metric("force_miscalibration_area", "", label="miscalibration area", kind="test"),
)


@dataclass
class System:
    """A system to learn: reference, data, committee factory, run defaults and metrics.

    ``initial`` / ``test``: labeled ``ase.Atoms`` (energies in ``energy_unit``, forces in
    ``energy_unit``/Å). ``make_committee(seed)`` -> an untrained :class:`Committee`.
    ``kT`` (``energy_unit``) and ``uncertainty`` define the run's :class:`~advsample.objective.Objective`.
    ``attack``: the adversarial sampler's settings, an :class:`~advsample.samplers.AdversarialSampler`
    (its :class:`~advsample.attack.AttackConfig`, ``n_seeds``, ``snapshot_every``); ``md``: the
    committee-MD settings every MD-based sampler shares, an :class:`~advsample.samplers.UncertaintyMDSampler`
    (a dict of either's options is converted and checked when the System is built: a bad key or
    value raises, naming it); ``displacement``: the random samplers' step (Å).
    ``evaluate(committee) -> dict`` computes
    the declared ``metrics`` (and may add notes); every declared metric becomes a column of
    comparison rows, tables and plots.
    """

    name: str
    reference: Any
    initial: list[Atoms]
    test: list[Atoms]
    make_committee: Callable[[int], Committee]
    energy_unit: str = "eV"
    kT: float = 0.1
    uncertainty: str = "forces"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(progress=False))
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    attack: AdversarialSampler = field(default_factory=AdversarialSampler)
    md: UncertaintyMDSampler = field(default_factory=UncertaintyMDSampler)
    displacement: float = 0.1
    validation_fraction: float = 0.1
    kT_sweep: tuple[float, ...] = ()
    metrics: list[Metric] = field(default_factory=list)
    evaluate: Callable[[Committee], dict] | None = None
    spec: tuple[str, dict] | None = None

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"a system needs a name, got {self.name!r}")
        labels_of(self.initial)  # clear errors for empty or unlabeled data
        if self.test:
            labels_of(self.test)
        if not callable(self.make_committee):
            raise TypeError(f"system {self.name!r}: make_committee must be callable, got {self.make_committee!r}")
        self.objective()  # kT > 0, a known uncertainty kind
        self.attack = attack_settings(self.attack, f"system {self.name!r} attack")
        self.md = md_settings(self.md, f"system {self.name!r} md")
        self.kT_sweep = tuple(float(v) for v in self.kT_sweep)
        names = [m.name for m in self.all_metrics()]
        if len(names) != len(set(names)):
            raise ValueError(f"system {self.name!r} declares a metric twice: {names}")
        if self.metrics and self.evaluate is None:
            raise ValueError(f"system {self.name!r} declares metrics {[m.name for m in self.metrics]} "
                             "but has no evaluate(committee) to compute them")

    def objective(self, kT: float | None = None) -> Objective:
        """The run objective at the system's kT (or ``kT``) and uncertainty kind."""
        return Objective(self.kT if kT is None else kT, self.uncertainty)

    def method(self, method: str) -> tuple[Sampler, Objective]:
        """(sampler, run objective) of a method: a sampler name (``"adversarial"``, ``"md"``, ...)
        with this system's settings, or ``<name>_kT<x>`` (the objective at kT = x);
        :func:`advsample.samplers.make_method`."""
        return make_method(self, method)

    def run_options(self, seed: int = 0, sampler: "str | Sampler" = "adversarial") -> dict:
        """Keyword arguments of :class:`~advsample.loop.ActiveLearning` for a run on this system:
        reference, data, committee (``make_committee(seed)``), objective (kT, uncertainty),
        selection, training, validation fraction, metrics and the sampler — a method name built
        with this system's settings (:meth:`method`; a ``_kT<x>`` sweep sets kT) or a
        :class:`~advsample.samplers.Sampler` used as given."""
        sampler, objective = self.method(sampler) if isinstance(sampler, str) else (sampler, self.objective())
        if not isinstance(sampler, Sampler):
            raise TypeError(f"sampler must be a method name or a Sampler, got {sampler!r}")
        return dict(
            committee=self.make_committee(seed), reference=self.reference, initial=self.initial, test=self.test,
            selection=self.selection, train_config=self.train, validation_fraction=self.validation_fraction,
            extra_metrics=self.evaluate, kT=objective.kT, uncertainty=objective.uncertainty, seed=seed,
            sampler=sampler,
        )

    def all_metrics(self) -> list[Metric]:
        """The test errors every system reports, then the system's own metrics."""
        return [*TEST_METRICS, *self.metrics]

    def metric(self, name: str) -> Metric:
        for metric in self.all_metrics():
            if metric.name == name:
                return metric
        raise KeyError(f"system {self.name!r} has no metric {name!r}; it has {[m.name for m in self.all_metrics()]}")

    def subset(self, name: str) -> list[Atoms]:
        """The test structures with ``info["subset"] == name``."""
        return [a for a in self.test if a.info.get("subset") == name]

    @property
    def subsets(self) -> dict[str, int]:
        """{subset name: number of test structures}."""
        counts: dict[str, int] = {}
        for atoms in self.test:
            key = str(atoms.info.get("subset", ""))
            counts[key] = counts.get(key, 0) + 1
        return counts


# -- registry -----------------------------------------------------------------------------
_REGISTRY: dict[str, Callable[..., System]] = {}
_BUILTIN = {
    "double_well_2d": "advsample.systems.toy:double_well_2d",
    "double_well_1d": "advsample.systems.toy:double_well_1d",
    "ammonia": "advsample.systems.ammonia:ammonia",
    "ethanol": "advsample.systems.ethanol:ethanol",
    "adatom": "advsample.systems.adatom:adatom",
    "sodalite": "advsample.systems.sodalite:sodalite",
    "host_guest": "advsample.systems.zeolites:host_guest",
}


def register_system(name: str, factory: Callable[..., System]) -> None:
    """Make ``get_system(name)`` call ``factory``."""
    if not callable(factory):
        raise TypeError(f"factory for system {name!r} must be callable, got {factory!r}")
    _REGISTRY[name] = factory


def system_names() -> list[str]:
    """Names ``get_system`` knows without an import path: built-in and registered."""
    return sorted({*_BUILTIN, *_REGISTRY})


def _import_module(module_name: str):
    """Import ``module_name``; else load ``<dir>/<module/as/path>.py`` from the current directory or a
    ``sys.path`` entry (a user's file such as ``tests/my_system.py``, also when an installed package
    shadows the top-level name ``tests``)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        relative = module_name.replace(".", os.sep) + ".py"
        found = [Path(d or os.getcwd()) / relative for d in (os.getcwd(), *sys.path)]
        found = [f for f in found if f.is_file()]
        if not found:
            raise ValueError(f"cannot import module {module_name!r} ({error}), and no {relative} in the current "
                             "directory or on sys.path") from error
        local = found[0]
    spec = importlib.util.spec_from_file_location(module_name, local)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _import(path: str) -> Callable[..., System]:
    module_name, _, attr = path.partition(":")
    try:
        obj = _import_module(module_name)
    except ValueError as error:
        raise ValueError(f"system {path!r}: {error}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"system {path!r}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"system {path!r}: {attr!r} is not a callable factory")
    return obj


def resolve_factory(name: str) -> Callable[..., System]:
    """The factory behind a registered name, a built-in name or a ``"module:factory"`` path."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a system name must be a non-empty string, got {name!r}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _BUILTIN:
        return _import(_BUILTIN[name])
    if ":" in name:
        return _import(name)
    raise ValueError(f"unknown system {name!r}; choose one of {system_names()} or give 'module:factory'")


def _accepts(factory: Callable, keyword: str) -> bool:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return True
    return keyword in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


@functools.lru_cache(maxsize=8)
def _cached(name: str, options_json: str) -> System:
    options = json.loads(options_json)
    factory = resolve_factory(name)
    if options.pop("smoke", False) and _accepts(factory, "smoke"):
        options["smoke"] = True
    system = factory(**options)
    if not isinstance(system, System):
        raise TypeError(f"system factory {name!r} returned {type(system).__name__}, not an advsample System")
    system.spec = (name, json.loads(options_json))
    return system


def get_system(name: "str | System", **options) -> System:
    """A system by name or ``"module:factory"`` path, built once per process and options.

    A :class:`System` is returned as it is (no options allowed then). ``smoke=True`` goes
    to factories that take it. Options must be JSON-serialisable (they name the system to
    worker processes).
    """
    if isinstance(name, System):
        if options:
            raise ValueError(f"options {sorted(options)} given for an already built system {name.name!r}")
        return name
    try:
        options_json = json.dumps(options, sort_keys=True)
    except TypeError as error:
        raise TypeError(f"system options must be JSON-serialisable (numbers, strings, lists): {error}") from error
    return _cached(name, options_json)


__all__ = ["Metric", "System", "TEST_METRICS", "get_system", "register_system", "resolve_factory", "system_names"]
