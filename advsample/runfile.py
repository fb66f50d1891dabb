"""A headless active-learning run from a YAML file: ``advsample run config.yaml``.

The keys are the notebooks' parameters (same names, types checked by
:func:`advsample.parameters.check_type`), plus the system's options and run directory::

    system: double_well_2d          # a built-in name or your own "module:factory"
    system_options: {}              # keyword arguments of the factory
    smoke: false                    # the system's seconds-long version (tests)
    sampler: adversarial            # adversarial | random | random_scored | md | mixed | udd | biased_md | md_attack
    sampler_options: {}             # replace the system's sampler settings (e.g. n_steps, learning_rate)
    n_rounds: 5                     # rounds after round 0 (the initial training)
    labels_per_round: 0             # the budget per round; 0: the system's
    budget_unit: labels             # labels | reference_calls
    kT: 0.0                         # objective temperature (system's energy unit); 0: the system's
    uncertainty: ""                 # forces | energy; "": the system's
    epochs: 0                       # maximum training epochs per round; 0: the system's
    selection: {}                   # other SelectionConfig fields (energy_ceiling, min_distance, ...)
    train: {}                       # other TrainConfig fields (learning_rate, patience, ...)
    executor: inline                # inline | processes | parsl | parsl:CONFIG.py (where labels run)
    workers: 2                      # processes / parsl: local workers
    run_dir: run                    # rounds, label cache and checkpoints (relative: to the current directory)
    seed: 0
    retry_failures: false           # recompute labels that failed before

Running the same command again resumes the run (the label cache and finished rounds are
on disk); ``n_rounds``, ``executor``, ``workers`` and ``retry_failures`` may change between
runs, any other key may not: the run directory keeps the checked configuration
(``run.yaml``) and a changed file is refused naming the keys. :func:`dry_run` checks
everything - keys and types, the system builds, the reference imports, the sampler and
the executor's config load, the run directory resumes - before anything is paid or written.

A system whose reference is a live ASE calculator (the toy surfaces) sends it to workers as
a recipe (:func:`system_reference`: the worker builds the system by name and takes its
reference), so every executor, and a resume on another one, labels with the same reference.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .parameters import ParameterError, check_type

__all__ = ["KEYS", "RunConfigError", "load_config", "prepare", "dry_run", "run", "system_reference"]

# key: (type, default, rule or None, what it is)
KEYS: dict[str, tuple[Any, Any, Any, str]] = {
    "system": (str, None, None, "built-in name or 'module:factory'"),
    "system_options": (dict, {}, None, "keyword arguments of the system factory"),
    "smoke": (bool, False, None, "the system's seconds-long version"),
    "sampler": (str, "adversarial", None, "sampling method"),
    "sampler_options": (dict, {}, None, "replace the system's sampler settings"),
    "n_rounds": (int, 5, ">= 1", "rounds after round 0"),
    "labels_per_round": (int, 0, ">= 0", "budget per round; 0: the system's"),
    "budget_unit": (str, "labels", ("labels", "reference_calls"), "what the budget counts"),
    "kT": (float, 0.0, ">= 0", "objective temperature; 0: the system's"),
    "uncertainty": (str, "", ("", "forces", "energy"), "attacked variance; '': the system's"),
    "epochs": (int, 0, ">= 0", "training epochs per round; 0: the system's"),
    "selection": (dict, {}, None, "other SelectionConfig fields"),
    "train": (dict, {}, None, "other TrainConfig fields"),
    "executor": (str, "inline", None, "inline | processes | parsl | parsl:CONFIG.py"),
    "workers": (int, 2, ">= 1", "local workers of processes / parsl"),
    "run_dir": (str, "run", None, "run directory"),
    "seed": (int, 0, ">= 0", "seed of the split, committee and sampler"),
    "retry_failures": (bool, False, None, "recompute failed labels"),
}
RESUMABLE = ("n_rounds", "executor", "workers", "retry_failures")  # may change when a run is resumed
RUN_FILE = "run.yaml"  # the checked configuration, kept in the run directory


class RunConfigError(ValueError):
    """A run file that cannot run: the message names the key (or file) and the problem."""


def _check_rule(name: str, value, rule) -> None:
    if rule is None:
        return
    if isinstance(rule, tuple):
        if value not in rule:
            raise RunConfigError(f"key {name!r} must be one of {', '.join(map(repr, rule))}; got {value!r}")
        return
    op, bound = rule.split()
    ok = {">=": value >= float(bound), ">": value > float(bound)}[op]
    if not ok:
        raise RunConfigError(f"key {name!r} must be {rule}, got {value!r}")


def check_config(raw: Any, source: str = "the run file") -> dict:
    """The configuration with defaults filled in; :class:`RunConfigError` for an unknown
    (misspelled) key, a wrong type, a value out of range or a missing ``system``."""
    if not isinstance(raw, dict):
        raise RunConfigError(f"{source} must hold a YAML mapping of keys (system: ..., n_rounds: ...), "
                             f"got {type(raw).__name__}")
    for key in raw:
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RunConfigError(f"{source}: unknown key {key!r}{hint}; known keys: {', '.join(KEYS)}")
    if raw.get("system") is None:
        raise RunConfigError(f"{source}: key 'system' is required (a built-in name such as 'double_well_2d' "
                             "or your own 'module:factory')")
    config = {}
    for name, (kind, default, rule, _) in KEYS.items():
        value = raw.get(name)
        if value is None:  # absent, or written without a value
            value = default
        try:
            value = check_type(name, value, kind)
        except ParameterError as error:
            raise RunConfigError(f"{source}: {str(error).replace('parameter', 'key', 1)}") from None
        _check_rule(name, value, rule)
        config[name] = value
    executor = config["executor"]
    if executor not in ("inline", "processes", "parsl") and not executor.startswith("parsl:"):
        raise RunConfigError(f"{source}: key 'executor' must be inline, processes, parsl or parsl:CONFIG.py; "
                             f"got {executor!r}")
    return config


def load_config(path: str | os.PathLike) -> dict:
    """Read and check a run file (:func:`check_config`)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RunConfigError(f"run file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise RunConfigError(f"{path} is not valid YAML: {error}") from None
    return check_config(raw, str(path))


# -- building the run ----------------------------------------------------------------------
def system_reference(system: str, options: dict | None = None):
    """The reference calculator of ``get_system(system, **options)`` (built where it is called:
    a worker). Used as ``CalculatorSpec("advsample.runfile:system_reference", {...})``."""
    from .label import as_spec
    from .systems import get_system

    reference = get_system(system, **(options or {})).reference
    spec = as_spec(reference)
    return reference if spec is None else spec.build()


def _reference(system):
    """The system's reference as a :class:`CalculatorSpec` (a live one: :func:`system_reference`)."""
    from .label import CalculatorSpec, as_spec

    spec = as_spec(system.reference)
    if spec is not None:
        return spec
    if system.spec is None:  # pragma: no cover - systems here are always built by name
        return system.reference
    name, options = system.spec
    return CalculatorSpec("advsample.runfile:system_reference", {"system": name, "options": options})


def _system(config: dict):
    from .systems import get_system

    options = dict(config["system_options"])
    if config["smoke"]:
        options["smoke"] = True
    try:
        return get_system(config["system"], **options)
    except Exception as error:  # the factory's own error, named
        raise RunConfigError(f"key 'system' ({config['system']!r}, options {options}): "
                             f"{type(error).__name__}: {error}") from error


def _sampler(config: dict, system):
    """The method name (``from_system`` builds it with the system's settings), or with
    ``sampler_options`` the sampler built from the system's settings with those replaced."""
    from .samplers import make_sampler, sampler_names, sampler_options

    name = config["sampler"]
    if name not in sampler_names():
        close = difflib.get_close_matches(name, sampler_names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RunConfigError(f"key 'sampler': unknown sampler {name!r}{hint}; choose one of {', '.join(sampler_names())}")
    own = config["sampler_options"]
    if not own:
        return name
    try:
        return make_sampler(name, **{**sampler_options(system, name), **own})
    except (TypeError, ValueError) as error:
        raise RunConfigError(f"key 'sampler_options' ({own}) for sampler {name!r}: {error}") from error


def _replaced(config: dict, key: str, base, extra: dict):
    known = {f.name for f in dataclasses.fields(base)}
    for field in config[key]:
        if field not in known:
            close = difflib.get_close_matches(field, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RunConfigError(f"key {key!r}: unknown field {field!r}{hint}; known: {', '.join(sorted(known))}")
    try:
        return dataclasses.replace(base, **{**config[key], **extra})
    except (TypeError, ValueError) as error:
        raise RunConfigError(f"key {key!r} ({config[key]}): {error}") from error


def _check_reference(reference) -> None:
    """The reference's factory imports here (the workers need the same installation)."""
    from .label import as_spec

    spec = as_spec(reference)
    if spec is None or not isinstance(spec.factory, str):
        return
    try:
        spec.resolve()
    except (ImportError, AttributeError) as error:
        raise RunConfigError(f"the system's reference {spec.name!r} cannot be imported: "
                             f"{type(error).__name__}: {error}") from error


def _check_executor(executor: str) -> str:
    """What the executor will be; a Parsl config file is loaded (nothing starts)."""
    if executor in ("inline", "processes"):
        return executor
    try:
        import parsl  # noqa: F401
    except ImportError as error:
        raise RunConfigError(f"key 'executor' ({executor!r}) needs Parsl: pip install 'advsample[parsl]'") from error
    if executor == "parsl":
        return "parsl (local workers)"
    from .executors import _load_config_file

    path = executor.split(":", 1)[1]
    try:
        config, executors = _load_config_file(path)
    except Exception as error:
        raise RunConfigError(f"key 'executor': the Parsl config {path} does not load: "
                             f"{type(error).__name__}: {error}") from error
    labels = [getattr(e, "label", "?") for e in getattr(config, "executors", [])]
    return f"parsl config {path} (executors {labels}, labels go to {executors})"


@dataclasses.dataclass
class Prepared:
    """Everything a run needs, built and checked; nothing written yet."""

    config: dict
    system: Any
    sampler: Any
    loop_options: dict
    executor: str
    run_dir: Path

    def loop(self, executor=None, progress: bool = False):
        from .loop import ActiveLearning

        return ActiveLearning.from_system(self.system, self.run_dir, self.sampler, seed=self.config["seed"],
                                          executor=executor, progress=progress, **self.loop_options)


def prepare(config: dict) -> Prepared:
    """Build the system, sampler, objective, selection and training of a checked config and
    check the reference and the executor; :class:`RunConfigError` names what is wrong."""
    system = _system(config)
    sampler = _sampler(config, system)
    selection = _replaced(config, "selection", system.selection, {
        **({"budget": config["labels_per_round"]} if config["labels_per_round"] else {}),
        "budget_unit": config["budget_unit"]})
    train = _replaced(config, "train", system.train, {"epochs": config["epochs"]} if config["epochs"] else {})
    reference = _reference(system)
    _check_reference(reference)
    executor = _check_executor(config["executor"])
    options = dict(reference=reference, selection=selection, train_config=train,
                   kT=config["kT"] or system.kT, uncertainty=config["uncertainty"] or system.uncertainty,
                   retry_failures=config["retry_failures"])
    prepared = Prepared(config, system, sampler, options, executor, Path(config["run_dir"]))
    try:
        prepared.loop()  # the loop's own checks (objective, data, reference); writes nothing
    except (TypeError, ValueError) as error:
        raise RunConfigError(f"the run cannot be built: {type(error).__name__}: {error}") from error
    return prepared


# -- resuming ------------------------------------------------------------------------------
def _stored_config(run_dir: Path) -> dict | None:
    import yaml

    path = run_dir / RUN_FILE
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def check_resume(config: dict, run_dir: Path, source: str = "the run file") -> str:
    """How the run directory stands: new, or resumable; :class:`RunConfigError` naming the keys
    when it holds a run from another configuration (keys other than :data:`RESUMABLE`)."""
    stored = _stored_config(run_dir)
    done = complete_rounds(run_dir)
    if stored is None:
        if (run_dir / "settings.json").exists():
            return f"{run_dir} holds a run not started by a run file; the run's settings decide on resume"
        return f"{run_dir}: a new run"
    changed = [k for k in KEYS if k not in RESUMABLE and k != "run_dir" and stored.get(k) != config.get(k)]
    if changed:
        detail = "; ".join(f"{k}: was {stored.get(k)!r}, now {config.get(k)!r}" for k in changed)
        raise RunConfigError(f"{source} is not the configuration of the run in {run_dir} ({', '.join(changed)} "
                             f"differ; {detail}); restore them to resume it, or use a new run_dir")
    return f"{run_dir}: resumes after round {done[-1]}" if done else f"{run_dir}: resumes (no round complete)"


def check_run_settings(prepared: "Prepared") -> None:
    """Read-only: :class:`RunConfigError` when the run directory holds paid work made with other
    run settings (``settings.json``: reference, data, model, sampler, ...) than this file's."""
    path = prepared.run_dir / "settings.json"
    labels = prepared.run_dir / "labels.jsonl"
    paid = complete_rounds(prepared.run_dir) or (labels.exists() and labels.stat().st_size > 0)
    if not (path.is_file() and paid):
        return
    stored = json.loads(path.read_text())
    now = json.loads(json.dumps(prepared.loop().settings(), default=repr))
    changed = sorted(k for k in stored.keys() | now.keys() if stored.get(k) != now.get(k))
    if changed:
        raise RunConfigError(f"{prepared.run_dir} holds a run made with other settings ({', '.join(changed)} "
                             "differ in its settings.json); use a new run_dir, or this run's settings to resume it")


def complete_rounds(run_dir: Path) -> list[int]:
    """Rounds whose ``metrics.json`` exists (written last: the round is complete)."""
    return sorted(int(p.parent.name.split("_")[1]) for p in Path(run_dir).glob("round_*/metrics.json"))


def _write_stored(config: dict, run_dir: Path) -> None:
    import yaml

    path = run_dir / RUN_FILE
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        os.replace(tmp, path)


# -- entry points --------------------------------------------------------------------------
def dry_run(path: str | os.PathLike) -> list[str]:
    """Check a run file without paying or writing anything; the lines say what was checked.
    :class:`RunConfigError` names the first problem."""
    config = load_config(path)
    prepared = prepare(config)
    state = check_resume(config, prepared.run_dir, str(path))
    check_run_settings(prepared)
    system, selection = prepared.system, prepared.loop_options["selection"]
    return [
        f"system {system.name}: {len(system.initial)} initial, {len(system.test)} test structures, "
        f"energies in {system.energy_unit}",
        f"reference {prepared.loop_options['reference']!r}: importable",
        f"sampler {prepared.loop().sampler!r}",
        f"{config['n_rounds']} rounds of {selection.budget} {selection.budget_unit}, "
        f"kT {prepared.loop_options['kT']:g}, uncertainty {prepared.loop_options['uncertainty']}, "
        f"seed {config['seed']}",
        f"executor {prepared.executor}",
        state,
        "dry run: nothing was labeled or written",
    ]


def _summary(record, seconds: float | None) -> str:
    metrics = record.metrics
    test = metrics.get("test", {})
    mae = test.get("force_mae")
    parts = [f"round {record.round}: {metrics.get('new_labels', 0)} new labels ({metrics.get('labels_used', 0)} in all)",
             f"reference calls {metrics.get('reference_calls', 0)} in all ({metrics.get('reference_calls_failed', 0)} failed)",
             f"train {metrics.get('n_train')}"]
    if mae is not None:
        parts.append(f"test force MAE {mae:.4g}")
    parts.append("loaded from disk" if seconds is None else f"{seconds:.1f} s")
    return ", ".join(parts)


def run(path: str | os.PathLike, progress: bool = True, log: Callable[[str], None] | None = None,
        executor=None) -> list:
    """Run (or resume) the run file at ``path``; returns every round's record.

    A progress bar over the rounds (``progress``) and one summary line per round (``log``,
    default: written under the bar). ``executor``: an executor already open (tests); by
    default the run file's ``executor`` is started here and shut down at the end.
    """
    from tqdm.auto import tqdm

    from .executors import make_executor

    config = load_config(path)
    prepared = prepare(config)
    check_resume(config, prepared.run_dir, str(path))
    done = set(complete_rounds(prepared.run_dir))
    bar = tqdm(total=config["n_rounds"] + 1, desc=f"advsample run {Path(path).name}", unit="round",
               disable=not progress, file=sys.stderr)
    say = log or (lambda line: tqdm.write(line, file=sys.stdout))
    own = executor is None
    executor = make_executor(config["executor"], max_workers=config["workers"]) if own else executor
    try:
        loop = prepared.loop(executor=executor)
        start = time.perf_counter()
        for record in loop.irun(config["n_rounds"]):
            _write_stored(config, prepared.run_dir)  # the loop's settings check has passed
            loaded = record.round in done
            say(_summary(record, None if loaded else time.perf_counter() - start))
            start = time.perf_counter()
            bar.update(1)
        return loop.records
    finally:
        bar.close()
        if own:
            executor.shutdown()


def describe_keys() -> str:
    """The keys, their types and defaults, for ``advsample run --help``."""
    lines = []
    for name, (kind, default, rule, text) in KEYS.items():
        shown = "required" if default is None else json.dumps(default)
        lines.append(f"  {name:<17} {kind.__name__:<5} {shown:<14} {text}")
    return "\n".join(lines)
