"""One run directory, one owner: the lock, and what two processes on one run directory do.

The process tests start ``tests/rundir_worker.py`` (the smoke 2D double well, random
displacements, a reference that logs every call to a file) as separate processes.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from advsample.rundir import RunDir, RunDirBusy

WORKER = Path(__file__).with_name("rundir_worker.py")


def start(run_dir, log, rounds=1, wait=False, sleep_s=0.0, barrier=(), gate=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    if gate is not None:
        env["RUNDIR_GATE"] = str(gate)
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(run_dir), str(log), str(rounds), "wait" if wait else "nowait", str(sleep_s),
         *map(str, barrier)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def calls(log) -> list[str]:
    return Path(log).read_text().splitlines() if Path(log).exists() else []


def wait_for(predicate, process, timeout_s=240.0):
    """Until ``predicate()``; fails with the process's stderr if it ends first."""
    start_time = time.monotonic()
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"process ended ({process.returncode}) first: {process.communicate()[1][-3000:]}")
        if time.monotonic() - start_time > timeout_s:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def check_accounting(run_dir, log, rounds, lost=0):
    """Every key once in labels.jsonl; the last round's reference_calls = the calls all processes paid
    (less ``lost``: a call a killed process paid but could not record)."""
    keys = [json.loads(line)["key"] for line in (Path(run_dir) / "labels.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)), "a label was paid twice"
    metrics = json.loads((Path(run_dir) / f"round_{rounds:03d}" / "metrics.json").read_text())
    assert metrics["reference_calls"] == len(keys)
    assert 0 <= len(calls(log)) - len(keys) <= lost
    assert metrics["labels_used"] == 4 * rounds


# --------------------------------------------------------------------------- the lock in-process
def test_a_second_holder_is_refused_naming_the_directory_and_the_holder(tmp_path):
    first, second = RunDir(tmp_path / "run"), RunDir(tmp_path / "run")
    first.check_writable()
    first.lock()
    with pytest.raises(RunDirBusy) as info:
        second.lock()
    message = str(info.value)
    assert str(tmp_path / "run") in message and f"process {os.getpid()}" in message
    assert socket.gethostname() in message and info.value.holder["pid"] == os.getpid()
    assert "this very process: an unfinished irun()" in message
    with pytest.raises(RunDirBusy, match="after waiting"):
        second.lock(wait=True, timeout_s=0.3, poll_s=0.05)
    first.unlock()
    assert not (tmp_path / "run" / ".lock").exists()
    second.lock()  # free at once
    assert second.locked and second.holder()["pid"] == os.getpid()
    second.unlock()


def test_a_refused_first_start_leaves_no_directory_behind(tmp_path):
    run = RunDir(tmp_path / "new" / "run")
    run.check_writable()
    run.lock()
    run.unlock()
    assert not (tmp_path / "new" / "run").exists()


def test_write_errors_name_the_file_and_the_run_directory(tmp_path):
    run = RunDir(tmp_path / "run")
    run.check_writable()
    target = tmp_path / "run" / "missing_dir" / "x.json"
    with pytest.raises(OSError) as info:
        run.write_json(target, {"a": 1})
    assert str(target) in str(info.value) and f"run directory {tmp_path / 'run'}" in str(info.value)


# --------------------------------------------------------------------------- two processes
def test_two_processes_started_together_one_runs_the_other_is_refused(tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "calls.log"
    barrier = (tmp_path / "barrier", 2)  # both reach the run directory at the same moment
    a, b = start(run_dir, log, sleep_s=0.1, barrier=barrier), start(run_dir, log, sleep_s=0.1, barrier=barrier)
    outs = [p.communicate(timeout=300) for p in (a, b)]
    codes = sorted([a.returncode, b.returncode])
    assert codes == [0, 3], outs
    refused = outs[[a.returncode, b.returncode].index(3)][1]
    winner = (a, b)[[a.returncode, b.returncode].index(0)]
    assert str(run_dir) in refused and f"process {winner.pid} on host {socket.gethostname()}" in refused
    assert {line.split()[0] for line in calls(log)} == {str(winner.pid)}
    check_accounting(run_dir, log, rounds=1)


def test_a_process_started_mid_round_is_refused_or_waits_then_resumes_without_paying(tmp_path):
    run_dir, log, gate = tmp_path / "run", tmp_path / "calls.log", tmp_path / "gate"
    holder = start(run_dir, log, gate=gate)  # its first call of round 1 waits at the gate
    wait_for(lambda: len(calls(log)) >= 1, holder)
    refused = start(run_dir, log)
    waiting = start(run_dir, log, wait=True, barrier=(tmp_path / "ready", 1))
    _, refused_err = refused.communicate(timeout=300)
    assert refused.returncode == 3 and f"process {holder.pid} on host" in refused_err and str(run_dir) in refused_err
    wait_for(lambda: (tmp_path / "ready").exists() and any((tmp_path / "ready").iterdir()), waiting)
    time.sleep(1.0)  # the waiter is at the lock now
    gate.touch()
    for p in (holder, waiting):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert "waiting for it" in err
    assert {line.split()[0] for line in calls(log)} == {str(holder.pid)}  # the waiter resumed, paying nothing
    check_accounting(run_dir, log, rounds=1)


def test_a_killed_holder_leaves_a_directory_the_next_process_takes_at_once(tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "calls.log"
    holder = start(run_dir, log, gate=tmp_path / "gate")  # never opened: it stops mid-round
    wait_for(lambda: len(calls(log)) >= 1, holder)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    paid_by_holder = len(calls(log))
    assert (run_dir / ".lock").exists()  # left behind, but no longer locked
    successor = start(run_dir, log)  # wait=False: refused if the lock were stale
    out, err = successor.communicate(timeout=300)
    assert successor.returncode == 0, err
    assert len(calls(log)) > paid_by_holder  # it went on (and answered the holder's calls from the cache)
    check_accounting(run_dir, log, rounds=1, lost=1)  # at most the call in flight at the kill


def test_an_unfinished_irun_holds_the_directory_until_it_is_closed(tmp_path):
    from test_bad_inputs import make_loop

    rounds = make_loop(tmp_path / "run").irun(1)
    next(rounds)  # round 0 done; the generator (a notebook cell that stopped early) holds the lock
    with pytest.raises(RunDirBusy, match=r"this very process: an unfinished irun\(\)"):
        make_loop(tmp_path / "run").run(1)
    rounds.close()  # releases it
    records = make_loop(tmp_path / "run").run(1)
    assert records[0].resumed and not records[1].resumed and not (tmp_path / "run" / ".lock").exists()


def test_a_weights_only_fingerprint_sees_the_weights_and_nothing_else():
    """committee_fingerprint(weights_only=True): a copy of the weights with another calibration is
    the same committee (the audit's test for copies), while the full fingerprint (the run
    directory's) tells them apart; one changed weight changes both."""
    import torch

    from advsample.committee import Committee
    from advsample.models import MLPCommittee
    from advsample.rundir import committee_fingerprint

    committee, copy = (Committee(MLPCommittee(2, (8,), seed=0)) for _ in range(2))
    copy.calibration = {"method": "scale", "force_scale": 2.0}
    assert committee_fingerprint(committee, weights_only=True) == committee_fingerprint(copy, weights_only=True)
    assert committee_fingerprint(committee) != committee_fingerprint(copy)
    with torch.no_grad():
        next(copy.model.parameters()).view(-1)[0] += 1e-6
    assert committee_fingerprint(committee, weights_only=True) != committee_fingerprint(copy, weights_only=True)
    copy.calibration = None
    assert committee_fingerprint(committee) != committee_fingerprint(copy)
