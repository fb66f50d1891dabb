"""Committee members trained as independent tasks on an executor, gathered into one committee.

In-process batched training (:func:`advsample.train.train_committee` on the whole
committee) stays the default: one forward/backward per step for all members is the
fastest on one machine. :func:`train_members_parallel` is for when members should run
on different cores, GPUs or nodes: the M members are split into tasks of
``members_per_task``, each task builds its own committee, trains it with
``train_committee`` and sends back its checkpoint; the parent joins them with
:meth:`Committee.gather`.

Seeds. Task ``k`` (members ``k * members_per_task`` onwards) uses

    model seed    = model_config["seed"] + k * SEED_STRIDE
    training seed = config.seed          + k * SEED_STRIDE

so every task initialises (and, with ``bootstrap``, resamples) independently, and task 0
is exactly what a committee built from ``model_config`` with ``members_per_task``
members would be. ``SEED_STRIDE`` is a large prime, so runs whose base seeds differ by a
small number never share a task seed. Results depend only on the seeds, never on the
executor: inline, a process pool and Parsl give the same weights.

Note that a committee trained this way is *not* the same as the batched one with the
same ``model_config`` (its members are initialised from different generators, and
batched members share the learning-rate schedule and early stopping, which depend on the
summed validation loss). With ``members_per_task=1`` every member is exactly a
one-member committee trained alone with its task's seeds.
"""
from __future__ import annotations

import dataclasses
import io
import math
from concurrent.futures import Executor, as_completed
from pathlib import Path
from typing import Sequence

import torch
from ase import Atoms

from .committee import Committee, default_device
from .models import MODELS
from .train import TrainConfig, train_committee

SEED_STRIDE = 1_000_003  # task k's seeds are base seed + k * SEED_STRIDE


def task_seeds(model_seed: int, train_seed: int, task: int) -> tuple[int, int]:
    """(model seed, training seed) of task ``task``: each base seed + ``task * SEED_STRIDE``."""
    return int(model_seed) + task * SEED_STRIDE, int(train_seed) + task * SEED_STRIDE


def split_members(n_members: int, members_per_task: int) -> list[int]:
    """Members per task: ``members_per_task`` each, the last task takes the remainder."""
    if n_members < 1:
        raise ValueError(f"n_members must be >= 1, got {n_members}")
    if members_per_task < 1:
        raise ValueError(f"members_per_task must be >= 1, got {members_per_task}")
    n_tasks = math.ceil(n_members / members_per_task)
    return [min(members_per_task, n_members - k * members_per_task) for k in range(n_tasks)]


def task_checkpoint_path(run_dir: str | Path, task: int) -> Path:
    """Where task ``task`` writes its checkpoint when a ``run_dir`` is given."""
    return Path(run_dir) / f"members_task{task:03d}.pt"


def train_member_task(
    task: int,
    model_class_name: str,
    model_config: dict,
    train: Sequence[Atoms],
    validation: Sequence[Atoms] | None,
    config: TrainConfig,
    run_dir: str | None = None,
    device: str | None = None,
    threads: int | None = None,
) -> dict:
    """One task: build, train and checkpoint a committee (top level, so workers can import it).

    ``model_config`` and ``config`` already carry this task's member count and seeds.
    Returns ``{"task", "path"}`` when ``run_dir`` is given (the checkpoint file, loadable
    with :meth:`Committee.load`), otherwise ``{"task", "checkpoint"}`` (the checkpoint as
    ``torch.save`` bytes); both also carry ``"history"`` (:meth:`TrainHistory.to_dict`).
    ``device``: None = :func:`default_device` of the worker. ``threads``: torch threads
    for this task (restored afterwards), None = leave as is.
    """
    if model_class_name not in MODELS:
        raise ValueError(f"unknown model class {model_class_name}; register it with models.register_model")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        committee = Committee(MODELS[model_class_name](**model_config)).to(device or default_device())
        history = train_committee(committee, list(train), list(validation) if validation else None, config)
        result = {"task": task, "history": history.to_dict()}
        if run_dir is not None:
            result["path"] = str(committee.save(task_checkpoint_path(run_dir, task)))
        else:
            buffer = io.BytesIO()
            torch.save(committee.checkpoint(), buffer)
            result["checkpoint"] = buffer.getvalue()
        return result
    finally:
        if threads is not None:
            torch.set_num_threads(previous_threads)


def _committee_from_result(result: dict, allow_pickle: bool) -> Committee:
    source = result["path"] if "path" in result else io.BytesIO(result["checkpoint"])
    return Committee.load(source, device="cpu", allow_pickle=allow_pickle)


def train_members_parallel(
    model_class_name: str,
    model_config: dict,
    train: Sequence[Atoms],
    validation: Sequence[Atoms] | None,
    config: TrainConfig | None = None,
    executor: Executor | str | None = None,
    members_per_task: int = 1,
    run_dir: str | Path | None = None,
    device: str | None = None,
    threads_per_task: int | None = None,
) -> Committee:
    """Train the ``model_config["n_members"]`` members as independent tasks; gather them.

    ``executor``: a ``concurrent.futures.Executor`` (``ProcessPoolExecutor``, a Parsl
    pool from :func:`advsample.executors.parsl_executor`, ...), None / ``"inline"`` to run
    the tasks here one after another, or any :func:`advsample.executors.make_executor`
    string (then created and shut down here). ``run_dir``: each task writes its checkpoint
    to ``run_dir/members_taskKKK.pt`` (a shared file system on a cluster) and sends back
    the path; without it the checkpoint bytes travel back with the result. ``device``:
    where the tasks train (None = each worker's :func:`default_device`); the returned
    committee is on this process's :func:`default_device`. ``threads_per_task``: torch
    threads inside each task (e.g. 1 for a process pool with one worker per core).

    The training data travel to every task (lists of ``ase.Atoms`` pickle). Each task
    fits the energy shift/scale from the same ``train``, so they must agree; a mismatch
    or a failed task raises ``RuntimeError`` naming the task. Progress bars are off in
    the tasks. Seeds: see the module docstring (:data:`SEED_STRIDE`).
    (Over 80 lines with this docstring: the body submits the tasks and checks their results, in that order.)
    """
    config = config or TrainConfig()
    if model_class_name not in MODELS:
        raise ValueError(f"unknown model class {model_class_name}; register it with models.register_model")
    if len(train) == 0:
        raise ValueError("empty training set: give at least one labeled structure")
    model_config = dict(model_config)
    n_members = int(model_config.get("n_members", 5))
    sizes = split_members(n_members, members_per_task)
    base_seed = int(model_config.get("seed", 0))
    train, validation = list(train), list(validation) if validation else None
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        run_dir = str(run_dir)

    own_executor = isinstance(executor, str)
    if own_executor:
        from .executors import make_executor

        executor = make_executor(executor)
    if executor is None:
        from .executors import InlineExecutor

        executor = InlineExecutor()
    try:
        futures = {}
        for k, size in enumerate(sizes):
            model_seed, train_seed = task_seeds(base_seed, config.seed, k)
            task_model = {**model_config, "n_members": size, "seed": model_seed}
            task_config = dataclasses.replace(config, seed=train_seed, progress=False)
            future = executor.submit(
                train_member_task, k, model_class_name, task_model, train, validation, task_config,
                run_dir, device, threads_per_task,
            )
            futures[future] = k
        results: dict[int, dict] = {}
        for future in as_completed(futures):
            k = futures[future]
            try:
                results[k] = future.result()
            except Exception:
                for other in futures:
                    try:
                        other.cancel()
                    except Exception:  # some executors' futures cannot be cancelled
                        pass
                failed = sorted(
                    futures[f] for f in futures if f.done() and not f.cancelled() and f.exception() is not None
                )
                k = failed[0]  # the lowest-numbered failure among those finished, for a stable message
                exc = next(f for f in futures if futures[f] == k).exception()
                first = k * members_per_task
                also = f"; task(s) {', '.join(map(str, failed[1:]))} failed too" if len(failed) > 1 else ""
                raise RuntimeError(
                    f"member training task {k} of {len(sizes)} (members {first}..{first + sizes[k] - 1}, "
                    f"model seed {task_seeds(base_seed, config.seed, k)[0]}) failed: "
                    f"{type(exc).__name__}: {exc}{also}"
                ) from exc
    finally:
        if own_executor:
            executor.shutdown()

    allow_pickle = bool(model_config.get("allow_pickle", False))  # the caller's model files, as it built them
    committees = [_committee_from_result(results[k], allow_pickle) for k in range(len(sizes))]
    reference = committees[0]
    for k, committee in enumerate(committees[1:], start=1):
        if not (
            torch.equal(committee.energy_shift, reference.energy_shift)
            and torch.equal(committee.energy_scale, reference.energy_scale)
        ):
            raise RuntimeError(
                f"member training task {k} fitted a different energy normalisation "
                f"(shift {float(committee.energy_shift)}, scale {float(committee.energy_scale)}) than task 0 "
                f"(shift {float(reference.energy_shift)}, scale {float(reference.energy_scale)}); "
                "all tasks must see the same training set"
            )
    return Committee.gather(committees).to(default_device())
