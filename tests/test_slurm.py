"""Parsl on a real Slurm (the one-node cluster of tests/slurm/start.sh): labels and member
training go out as ``SlurmProvider`` jobs; a job cancelled mid-labeling loses no label and
pays none twice; the results equal in-process ones.

Skipped, naming why, where ``sinfo`` is missing or no node is idle (start Slurm with
``sudo tests/slurm/start.sh``; CI's ``.ci/run`` does).
"""
from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("parsl")

from slurm.availability import slurm_missing  # noqa: E402  (tests/ is on sys.path)

SLURM = Path(__file__).resolve().parent / "slurm"
CONFIG = SLURM / "slurm_config.py"  # docs/cluster.md's config, sized for one node


REASON = slurm_missing()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(REASON is not None, reason=str(REASON))]


def squeue() -> list[tuple[str, str, str]]:
    """(job id, name, state) of the jobs in the queue."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True, timeout=15).stdout
    return [tuple(line.split()) for line in out.splitlines() if line.strip()]


def job_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=15).stdout
    match = re.search(r"JobState=(\S+)", out)
    return match.group(1) if match else "unknown"


def jobs_named(prefix: str, after: int) -> dict[str, str]:
    """{job id: state} of the jobs whose name starts with ``prefix`` and id is above ``after``
    (finished jobs stay listed for MinJobAge, 300 s by default)."""
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, timeout=15).stdout
    jobs = {}
    for line in out.splitlines():
        ident, name = re.search(r"JobId=(\d+)", line), re.search(r"JobName=(\S+)", line)
        if ident and name and name.group(1).startswith(prefix) and int(ident.group(1)) > after:
            jobs[ident.group(1)] = re.search(r"JobState=(\S+)", line).group(1)
    return jobs


def last_job_id() -> int:
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, timeout=15).stdout
    return max([int(i) for i in re.findall(r"JobId=(\d+)", out)], default=0)


class CancelOneJob(threading.Thread):
    """Watches the reference's call log and ``squeue``; cancels (``scancel``) the first Slurm job
    that has finished a label and has another in flight."""

    def __init__(self, log: Path):
        super().__init__(daemon=True)
        self.log, self.stop = log, threading.Event()
        self.cancelled: str | None = None
        self.in_flight: str | None = None
        self.seen: dict[str, tuple[str, str]] = {}  # job id -> (name, state) from squeue

    def run(self) -> None:
        last_poll = 0.0
        while not self.stop.is_set():
            if time.time() - last_poll > 0.5:
                self.seen.update({job: (name, state) for job, name, state in squeue()})
                last_poll = time.time()
            if self.cancelled is None and self.log.exists():
                self._maybe_cancel(self.log.read_text().splitlines())
            time.sleep(0.02)

    def _maybe_cancel(self, lines: list[str]) -> None:
        started, ended = {}, Counter()
        for line in lines:
            what, job, where, _ = line.split()
            if what == "start":
                started[where] = job
            else:
                ended[job] += 1
                started.pop(where, None)
        for where, job in started.items():  # a label in flight on a job that has finished one
            if job != "local" and ended[job] >= 1:
                subprocess.run(["scancel", job], check=True, timeout=15)
                self.cancelled, self.in_flight = job, where
                return


def write_run_file(path: Path, run_dir: Path, executor: str, delay_s: float, log: Path | None) -> Path:
    path.write_text(yaml.safe_dump({
        "system": "slurm_systems:slow_double_well",
        "system_options": {"delay_s": delay_s, "log": str(log) if log else None},
        "n_rounds": 2, "seed": 3, "executor": executor, "run_dir": str(run_dir),
    }))
    return path


def train_set(record):
    return np.array([a.positions for a in record.train]), np.array([a.get_potential_energy() for a in record.train])


def test_labels_through_slurm_jobs_survive_a_cancelled_job(tmp_path, monkeypatch):
    """Two rounds labeled by Parsl SlurmProvider jobs (``advsample run``'s path, executor
    ``parsl:slurm_config.py``); one job is ``scancel``-ed with a label in flight. That label is
    retried on another job, none finished before is paid again, the cache holds every label once,
    ``reference_calls`` counts the finished calls, and the labels equal an in-process run's."""
    from advsample import runfile

    monkeypatch.syspath_prepend(str(SLURM))
    monkeypatch.setenv("ADVSAMPLE_PARSL_RUN_DIR", str(tmp_path / "runinfo"))
    monkeypatch.chdir(tmp_path)
    log = tmp_path / "calls.log"
    before = last_job_id()
    watcher = CancelOneJob(log)
    watcher.start()
    try:
        lines: list[str] = []
        on_slurm = runfile.run(write_run_file(tmp_path / "slurm.yaml", tmp_path / "slurm", f"parsl:{CONFIG}", 1.0, log),
                               progress=False, log=lines.append)
    finally:
        watcher.stop.set()
        watcher.join(timeout=10)
    assert watcher.cancelled is not None, f"no job was cancelled mid-labeling; calls: {log.read_text()}"
    label_jobs = {job for job, (name, _) in watcher.seen.items() if name.startswith("parsl.label.block")}
    assert watcher.cancelled in label_jobs and len(label_jobs) >= 2  # squeue showed the labeling jobs
    assert job_state(watcher.cancelled) == "CANCELLED"
    assert set(jobs_named("parsl.label.block", before)) >= label_jobs

    calls = [line.split()[:3] for line in log.read_text().splitlines()]
    finished = Counter(where for what, _, where in calls if what == "end")
    assert set(finished.values()) == {1}, f"a label was paid twice: {finished}"
    interrupted = [(job, where) for what, job, where in calls if what == "start" and job == watcher.cancelled
                   and where == watcher.in_flight]
    assert interrupted, "the cancelled job had no label in flight"
    assert {job for what, job, where in calls if what == "end" and where == watcher.in_flight} - {watcher.cancelled}
    cache = [json.loads(line) for line in (tmp_path / "slurm" / "labels.jsonl").read_text().splitlines()]
    assert len(cache) == len({c["key"] for c in cache}) == 8 and all(c["ok"] for c in cache)
    assert sum(c["retries"] for c in cache) >= 1  # the label lost with the job was retried
    assert on_slurm[-1].metrics["reference_calls"] == sum(finished.values()) == 8
    assert on_slurm[-1].metrics["reference_calls_failed"] == 0
    assert len(lines) == 3 and lines[2].startswith("round 2: 4 new labels (8 in all)")

    in_process = runfile.run(write_run_file(tmp_path / "here.yaml", tmp_path / "here", "inline", 0.0, None),
                             progress=False, log=lambda line: None)
    for remote, local in zip(on_slurm[1:], in_process[1:]):
        for a, b in zip(train_set(remote), train_set(local)):
            np.testing.assert_array_equal(a, b)


def test_member_training_as_slurm_jobs_gives_the_in_process_weights(tmp_path, monkeypatch):
    """One round's members trained as Slurm jobs (the config's ``train`` executor, a second view on
    the loaded config as docs/cluster.md says) equal the same tasks trained here: tolerance 1e-6
    on every weight (measured: bit-identical; both train on CPU with one torch thread)."""
    import parsl
    from parsl.concurrent import ParslPoolExecutor

    from advsample.executors import parsl_executor
    from advsample.parallel import train_members_parallel
    from advsample.systems import get_system
    from advsample.train import TrainConfig, split_validation

    monkeypatch.setenv("ADVSAMPLE_PARSL_RUN_DIR", str(tmp_path / "runinfo"))
    system = get_system("double_well_2d", smoke=True)
    train, validation = split_validation(system.initial, system.validation_fraction, 0)
    model = system.make_committee(0).model
    model_config = {**model.config(), "n_members": 2}
    config = TrainConfig(epochs=30, seed=0, progress=False)
    args = (type(model).__name__, model_config, train, validation, config)
    before = last_job_id()
    with parsl_executor(str(CONFIG)):
        on_slurm = train_members_parallel(*args, executor=ParslPoolExecutor(dfk=parsl.dfk(), executors=["train"]),
                                          run_dir=tmp_path / "members", threads_per_task=1)
        train_jobs = jobs_named("parsl.train.block", before)
    assert train_jobs, "no training job went through Slurm"
    assert not jobs_named("parsl.label.block", before)  # labeling blocks start only when labels are sent
    assert sorted(p.name for p in (tmp_path / "members").iterdir()) == ["members_task000.pt", "members_task001.pt"]
    here = train_members_parallel(*args, executor=None, threads_per_task=1)
    remote_state, local_state = on_slurm.state_dict(), here.state_dict()
    assert remote_state.keys() == local_state.keys()
    for name in local_state:
        torch.testing.assert_close(remote_state[name], local_state[name], rtol=0, atol=1e-6)
