"""Labeling on Parsl: two local HighThroughputExecutor workers (one executor for the module)."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("parsl")

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
from test_label import make_clusters  # noqa: E402  (workers import it too: PYTHONPATH below)

from advsample.executors import executor_workers, make_executor  # noqa: E402
from advsample.label import CalculatorSpec, LabelCache, label_structures, label_until  # noqa: E402
from advsample.structures import labels_of  # noqa: E402


@pytest.fixture(scope="module")
def parsl_pool(tmp_path_factory):
    """Two local workers, built the way notebooks do it: ``make_executor("parsl:CONFIG.py")``."""
    run_dir = tmp_path_factory.mktemp("parsl")
    config_file = run_dir / "local_config.py"
    config_file.write_text(
        "from advsample.executors import local_config\n"
        f"config = local_config(workers=2, run_dir={str(run_dir / 'runinfo')!r}, retries=2,\n"
        f"    worker_init='export PYTHONPATH={TESTS}:$PYTHONPATH; export OMP_NUM_THREADS=1')\n"
    )
    with make_executor(f"parsl:{config_file}") as pool:
        yield pool


def toy(tmp_path, **kwargs) -> CalculatorSpec:
    return CalculatorSpec("test_label:ToyCalc", {"log": str(tmp_path / "calls.log"), **kwargs})


def calls(tmp_path) -> Counter:
    log = tmp_path / "calls.log"
    return Counter(log.read_text().split()) if log.exists() else Counter()


def test_two_parsl_workers_match_inline(parsl_pool, tmp_path):
    assert executor_workers(parsl_pool) == 2
    atoms = make_clusters(8, seed=1)
    inline = label_structures(atoms, toy(tmp_path), progress=False)
    remote = label_structures(atoms, toy(tmp_path), executor=parsl_pool, cache=tmp_path / "c.jsonl", progress=False)
    assert remote.n_labeled == 8 and remote.n_calls == 8 and remote.indices == list(range(8))
    for a, b in zip(labels_of(inline.labeled), labels_of(remote.labeled)):
        np.testing.assert_array_equal(a, b)
    again = label_structures(atoms, toy(tmp_path), executor=parsl_pool, cache=tmp_path / "c.jsonl", progress=False)
    assert again.n_calls == 0 and again.n_cached == 8
    assert calls(tmp_path) == Counter({str(i): 2 for i in range(8)})  # once inline, once on Parsl


def test_killed_worker_is_retried_and_nothing_labeled_twice(parsl_pool, tmp_path):
    atoms = make_clusters(6, seed=2, behave={2: "exit", 4: "raise"})
    cache = LabelCache(tmp_path / "c.jsonl")
    result = label_structures(atoms, toy(tmp_path, marker=str(tmp_path / "marker")), executor=parsl_pool,
                              cache=cache, progress=False)
    assert (tmp_path / "marker").exists()  # the worker did die once
    assert result.indices == [0, 1, 2, 3, 5]
    assert result.n_retries == 1
    assert result.labeled[2].info["label_retries"] == 1
    assert [f["index"] for f in result.failures] == [4] and "SCF" in result.failures[0]["reason"]
    assert calls(tmp_path) == Counter({str(i): 1 for i in range(6)})
    assert cache.get(atoms[2])["retries"] == 1


def test_task_failing_after_its_retries_is_a_recorded_failure(parsl_pool, tmp_path):
    atoms = make_clusters(4, seed=3, behave={1: "always_exit"})
    cache = LabelCache(tmp_path / "c.jsonl")
    result = label_until(atoms, 3, toy(tmp_path), executor=parsl_pool, cache=cache, progress=False)
    assert result.indices == [0, 2, 3]
    (failure,) = result.failures
    assert failure["index"] == 1 and failure["kind"] == "executor" and failure["retries"] == 3
    assert "after 3 retries" in failure["reason"]
    assert cache.get(atoms[1]) is None  # a lost worker is not the structure's fault: tried again next run


def test_config_files_in_docs_load(tmp_path):
    """The Slurm example of docs/cluster.md builds a Config (nothing is submitted)."""
    import re

    from advsample.executors import _load_config_file

    text = (TESTS.parent / "docs" / "cluster.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "SlurmProvider(" in b)
    path = tmp_path / "slurm_config.py"
    path.write_text(block.replace('address_by_interface("ib0")', '"127.0.0.1"'))
    config, executors = _load_config_file(path)
    assert [e.label for e in config.executors] == ["label", "train"] and config.retries == 2
    assert executors == ["label"]
    pbs = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "PBSProProvider(" in b)
    exec(compile("ENV = ''\n" + pbs, "pbs", "exec"), {})


def test_two_active_learning_rounds_on_parsl_match_in_process(parsl_pool, tmp_path):
    """Labels through two local Parsl workers give the same training set as in-process labels."""
    from test_loop import make_loop

    reference = CalculatorSpec("advsample.surfaces:double_well_1d")
    in_process = make_loop(tmp_path / "inline", reference, epochs=60).run(2)
    on_parsl = make_loop(tmp_path / "parsl", reference, epochs=60, executor=parsl_pool).run(2)
    assert on_parsl[-1].metrics["labels_used"] == in_process[-1].metrics["labels_used"] == 16
    np.testing.assert_array_equal(
        [a.positions for a in on_parsl[-1].train], [a.positions for a in in_process[-1].train]
    )
    np.testing.assert_array_equal(
        [a.get_potential_energy() for a in on_parsl[-1].train], [a.get_potential_energy() for a in in_process[-1].train]
    )
