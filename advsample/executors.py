"""Executors for labeling (and other independent tasks): in-process, local processes, Parsl.

Everything here is a ``concurrent.futures.Executor`` used as a context manager, so the
rest of the package only ever calls ``submit`` and ``concurrent.futures.as_completed``.
One string selects it (the ``executor`` parameter of notebooks and the CLI)::

    "inline"            run in this process, one task after another (default)
    "processes"         concurrent.futures.ProcessPoolExecutor(max_workers)
    "parsl"             Parsl with two local workers (local_config)
    "parsl:CONFIG.py"   Parsl from a Python file that defines ``config`` (a parsl.config.Config)

Parsl is optional (``pip install advsample[parsl]``) and imported only inside the
functions that need it: ``import advsample.executors`` never imports parsl.
Retries after a lost worker or node come from the Parsl config (``Config(retries=...)``).
"""
from __future__ import annotations

import os
import runpy
import sys
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from pathlib import Path


class InlineExecutor(Executor):
    """Runs each task in this process at ``submit`` time; returns finished futures.

    ``advsample.label`` recognises it (and ``None``) and labels one structure after the
    other, writing each result to the cache before starting the next.
    """

    max_workers = 1

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # KeyboardInterrupt / SystemExit propagate
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        return None


def is_inline(executor) -> bool:
    """True for ``None`` and :class:`InlineExecutor`: work happens in this process."""
    return executor is None or isinstance(executor, InlineExecutor)


def executor_workers(executor) -> int:
    """Best guess of how many tasks ``executor`` runs at once (1 when unknown)."""
    if is_inline(executor):
        return 1
    for attr in ("max_workers", "_max_workers"):
        n = getattr(executor, attr, None)
        if isinstance(n, int) and n > 0:
            return n
    dfk = getattr(executor, "_dfk", None)  # ParslPoolExecutor
    if dfk is not None:
        total = 0
        chosen = getattr(executor, "executors", "all")
        for ex in dfk.config.executors:
            if chosen != "all" and ex.label not in chosen:
                continue
            n = getattr(ex, "max_workers_per_node", None) or 0
            blocks = getattr(getattr(ex, "provider", None), "max_blocks", 1) or 1
            nodes = getattr(getattr(ex, "provider", None), "nodes_per_block", 1) or 1
            total += int(n) * int(blocks) * int(nodes)
        if total > 0:
            return total
    return 1


def _put_venv_on_path() -> None:
    """Parsl starts ``interchange.py`` / ``process_worker_pool.py`` as console scripts.

    They live beside the running interpreter (the venv's ``bin/``), which is not on PATH
    when the venv is used without activating it ("No such file or directory: 'interchange.py'").
    """
    bindir = os.path.dirname(sys.executable)
    parts = os.environ.get("PATH", "").split(os.pathsep)
    if bindir not in parts:
        os.environ["PATH"] = os.pathsep.join([bindir, *[p for p in parts if p]])


def local_config(workers: int = 2, run_dir: str | os.PathLike = "runinfo", retries: int = 1,
                 worker_init: str = "", label: str = "local_htex"):
    """A Parsl ``Config`` running ``workers`` worker processes on this machine.

    One HighThroughputExecutor with a LocalProvider (one block, started at once);
    ``retries`` re-runs a task whose worker died (and any other task exception that reaches
    Parsl; labeling catches calculator errors itself). ``worker_init`` is shell run before
    the workers start (e.g. ``export PYTHONPATH=...`` or ``module load ...``).
    Workers take a few seconds to start.
    """
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    return Config(
        executors=[
            HighThroughputExecutor(
                label=label,
                address="127.0.0.1",
                max_workers_per_node=int(workers),
                cores_per_worker=1,
                encrypted=False,  # loopback only
                heartbeat_period=1,  # also how often a dead worker is noticed and restarted
                heartbeat_threshold=10,
                poll_period=10,
                provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, worker_init=worker_init),
            )
        ],
        retries=int(retries),
        run_dir=str(run_dir),
        strategy="none",
        usage_tracking=0,
    )


def load_parsl_config(path: str | os.PathLike):
    """The ``config`` object defined by the Python file at ``path``."""
    return _load_config_file(path)[0]


def _load_config_file(path: str | os.PathLike):
    """(config, executors) from a Python file: ``config`` required, ``executors`` optional
    (the labels of the Parsl executors to send work to, e.g. ``["label"]``; default all)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Parsl config file {path} does not exist")
    namespace = runpy.run_path(str(path))
    if "config" not in namespace:
        raise ValueError(f"{path} must define a variable named `config` (a parsl.config.Config)")
    return namespace["config"], namespace.get("executors", "all")


def parsl_executor(config=None, workers: int = 2, run_dir: str | os.PathLike = "runinfo", executors="all"):
    """A ``concurrent.futures`` executor backed by Parsl (``parsl.concurrent.ParslPoolExecutor``).

    ``config``: a ``parsl.config.Config``, a path to a Python file defining ``config``, or
    None for :func:`local_config` (``workers``, ``run_dir``). ``executors``: labels of the
    Parsl executors in the config that receive the tasks ("all", or e.g. ``["label"]``; a
    config file may set it with a variable ``executors``). Starts the workers now; use it as
    a context manager (or call ``shutdown()``) to stop them. Only one Parsl config can be
    loaded per process: for a second view on the same workers (e.g. training on the "train"
    executor) use ``ParslPoolExecutor(dfk=parsl.dfk(), executors=["train"])``.
    """
    try:
        from parsl.concurrent import ParslPoolExecutor
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("Parsl is not installed: pip install 'advsample[parsl]'") from exc
    if config is None:
        config = local_config(workers=workers, run_dir=run_dir)
    elif isinstance(config, (str, os.PathLike)):
        config, from_file = _load_config_file(config)
        if executors == "all":
            executors = from_file
    _put_venv_on_path()
    return ParslPoolExecutor(config=config, executors=executors)


def make_executor(name: str | None = "inline", max_workers: int = 2) -> Executor:
    """Executor from one string: ``inline`` | ``processes`` | ``parsl`` | ``parsl:CONFIG.py``.

    The result is a context manager that shuts its workers down on exit::

        with make_executor("processes", max_workers=2) as ex:
            result = label_structures(candidates, spec, executor=ex, cache=cache)
    """
    if name is None or name == "inline":
        return InlineExecutor()
    if name == "processes":
        return ProcessPoolExecutor(max_workers=int(max_workers))
    if name == "parsl":
        return parsl_executor(workers=max_workers)
    if name.startswith("parsl:"):
        return parsl_executor(config=name.split(":", 1)[1])
    raise ValueError(f"unknown executor {name!r}: use 'inline', 'processes', 'parsl' or 'parsl:CONFIG.py'")


def task_retries(future) -> int:
    """How many tries of the task behind ``future`` failed (Parsl futures; 0 otherwise)."""
    record = getattr(future, "task_record", None)
    if record is None:
        return 0
    try:
        return int(record["fail_count"])
    except (KeyError, TypeError):
        return 0
