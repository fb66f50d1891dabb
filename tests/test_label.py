"""Labeling: inline vs process pool, cache, failures, interrupted runs, label_until."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.lj import LennardJones

from advsample.executors import InlineExecutor, make_executor
from advsample.label import CalculatorSpec, LabelCache, ReferenceGaveUp, geometry_key, label_structures, label_until
from advsample.structures import labels_of

TESTS = Path(__file__).resolve().parent


class ToyCalc(LennardJones):
    """Lennard-Jones with logging and scripted misbehaviour, for tests.

    ``log``: file to which every finished call appends ``atoms.info["id"]`` (works across
    processes). ``atoms.info["behave"]`` picks a failure: "raise" (like a non-converged SCF),
    "nan", "interrupt" (KeyboardInterrupt), "exit" (os._exit: a killed worker/process),
    "always_exit"; "interrupt"/"exit" happen only while ``marker`` does not exist yet, and
    create it, so they strike once.
    """

    def __init__(self, log=None, marker=None, **kwargs):
        super().__init__(sigma=1.0, epsilon=1.0, rc=4.0, **kwargs)
        self.log = log
        self.marker = marker

    def calculate(self, atoms=None, properties=("energy",), system_changes=("positions",)):
        behave = atoms.info.get("behave")
        once = self.marker is not None and not os.path.exists(self.marker)
        if behave in ("interrupt", "exit") and once:
            Path(self.marker).write_text("struck")
            if behave == "interrupt":
                raise KeyboardInterrupt("interrupted by the test")
            die(3)
        if behave == "always_exit":
            die(4)
        if behave == "raise":
            self._log(atoms)
            raise RuntimeError("SCF did not converge in 250 iterations")
        super().calculate(atoms, properties, system_changes)
        if behave == "nan":
            self.results["energy"] = float("nan")
        self._log(atoms)

    def _log(self, atoms):
        if self.log is not None:
            with open(self.log, "a") as fh:
                fh.write(f"{atoms.info.get('id')}\n")


def die(code: int):
    """``os._exit(code)`` like a worker killed partway through a calculation.

    What this process already put on a ``multiprocessing`` queue is written first: Parsl's
    workers send a finished task's result through one, and ``os._exit`` at once would drop
    the feeder thread's buffer, so the *previous* task's result would be lost and its future
    would never finish (a worker killed during a real calculation sent it long before).
    """
    import gc
    import multiprocessing.queues

    for obj in gc.get_objects():
        if isinstance(obj, multiprocessing.queues.Queue):
            obj.close()
            obj.join_thread()
    os._exit(code)


def make_clusters(n: int, seed: int = 0, behave: dict | None = None) -> list[Atoms]:
    """``n`` 4-atom clusters near the LJ minimum, ``info["id"] = i``."""
    rng = np.random.default_rng(seed)
    base = np.array([[0, 0, 0], [1.12, 0, 0], [0.56, 0.97, 0], [0.56, 0.32, 0.91]])
    out = []
    for i in range(n):
        atoms = Atoms("Ar4", positions=base + rng.normal(scale=0.05, size=base.shape))
        atoms.info["id"] = i
        if behave and i in behave:
            atoms.info["behave"] = behave[i]
        out.append(atoms)
    return out


def spec(tmp_path, **kwargs) -> CalculatorSpec:
    return CalculatorSpec(f"{__name__}:ToyCalc", {"log": str(tmp_path / "calls.log"), **kwargs})


def calls(tmp_path) -> Counter:
    log = tmp_path / "calls.log"
    return Counter(log.read_text().split()) if log.exists() else Counter()


def test_spec_builds_and_pickles(tmp_path):
    import pickle

    s = spec(tmp_path)
    calc = pickle.loads(pickle.dumps(s)).build()
    assert isinstance(calc, ToyCalc)
    assert CalculatorSpec(ToyCalc).name.endswith(":ToyCalc")
    with pytest.raises(ValueError):
        CalculatorSpec("no_colon_here")


def test_inline_and_process_pool_give_identical_labels(tmp_path):
    atoms = make_clusters(6)
    inline = label_structures(atoms, spec(tmp_path), progress=False)
    with ProcessPoolExecutor(max_workers=2) as pool:
        pooled = label_structures(atoms, spec(tmp_path), executor=pool, progress=False)
    live = label_structures(atoms, ToyCalc(), executor=InlineExecutor(), progress=False)
    for result in (inline, pooled, live):
        assert result.n_labeled == 6 and result.n_failed == 0 and result.n_calls == 6
        assert result.indices == list(range(6))
        assert [a.info["id"] for a in result.labeled] == list(range(6))
    e1, f1 = labels_of(inline.labeled)
    e2, f2 = labels_of(pooled.labeled)
    e3, f3 = labels_of(live.labeled)
    np.testing.assert_array_equal(e1, e2)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(e1, e3)
    ref = atoms[0].copy()
    ref.calc = ToyCalc()
    assert e1[0] == pytest.approx(ref.get_potential_energy())
    assert inline.labeled[0].info["label_source"].endswith(":ToyCalc")
    assert inline.labeled[0].info["label_key"] == geometry_key(atoms[0])
    assert atoms[0].calc is None  # inputs untouched


def test_live_calculator_needs_a_spec_for_workers(tmp_path):
    with ProcessPoolExecutor(max_workers=1) as pool, pytest.raises(TypeError, match="CalculatorSpec"):
        label_structures(make_clusters(2), ToyCalc(), executor=pool, progress=False)


def test_cache_hits_never_call_the_reference(tmp_path):
    atoms = make_clusters(5)
    cache_path = tmp_path / "labels.jsonl"
    with ProcessPoolExecutor(max_workers=2) as pool:
        first = label_structures(atoms, spec(tmp_path), executor=pool, cache=cache_path, progress=False)
        assert first.n_calls == 5 and first.n_cached == 0
        assert sum(calls(tmp_path).values()) == 5
        second = label_structures(atoms, spec(tmp_path), executor=pool, cache=LabelCache(cache_path), progress=False)
    assert second.n_calls == 0 and second.n_cached == 5 and second.n_labeled == 5
    assert sum(calls(tmp_path).values()) == 5
    np.testing.assert_array_equal(labels_of(first.labeled)[0], labels_of(second.labeled)[0])
    np.testing.assert_array_equal(labels_of(first.labeled)[1], labels_of(second.labeled)[1])
    # a geometry within the rounding (1e-6 Å) is a hit; a real move is a miss
    moved = [a.copy() for a in atoms[:2]]
    moved[0].positions[0, 0] += 1e-9
    moved[1].positions[0, 0] += 1e-3
    third = label_structures(moved, spec(tmp_path), cache=cache_path, progress=False)
    assert third.n_cached == 1 and third.n_calls == 1


def test_identical_geometries_computed_once(tmp_path):
    atoms = make_clusters(2)
    result = label_structures([atoms[0], atoms[1], atoms[0].copy()], spec(tmp_path), progress=False)
    assert result.n_calls == 2 and result.n_labeled == 3 and result.indices == [0, 1, 2]


def test_failures_recorded_with_reasons_and_skipped(tmp_path):
    atoms = make_clusters(6, behave={1: "raise", 4: "nan"})
    cache = LabelCache(tmp_path / "labels.jsonl")
    with ProcessPoolExecutor(max_workers=2) as pool:
        result = label_structures(atoms, spec(tmp_path), executor=pool, cache=cache, progress=False)
    assert result.indices == [0, 2, 3, 5]
    assert result.n_failed == 2 and result.n_calls == 6
    reasons = {f["index"]: f["reason"] for f in result.failures}
    assert "SCF did not converge" in reasons[1] and "RuntimeError" in reasons[1]
    assert "non-finite energy" in reasons[4]
    assert result.failures[0]["info"]["id"] == 1 and result.failures[0]["kind"] == "calculation"
    labels_of(result.labeled)  # every label finite
    # failures are remembered: no second call unless asked for
    again = label_structures(atoms, spec(tmp_path), cache=cache, progress=False)
    assert again.n_calls == 0 and again.n_failed == 2 and all(f["cached"] for f in again.failures)
    retried = label_structures(atoms, spec(tmp_path), cache=cache, progress=False, retry_failed=True)
    assert retried.n_calls == 2 and retried.n_failed == 2
    # the cache counts every paid call, the retried failures again, also after reloading
    assert (cache.n_calls, cache.n_failed_calls) == (8, 4)
    assert (LabelCache(cache.path).n_calls, LabelCache(cache.path).n_failed_calls) == (8, 4)


def test_label_until_gives_up_after_consecutive_failures(tmp_path):
    atoms = make_clusters(12, behave={i: "raise" for i in (0, 1, 3, 4, 5, 6, 7, 8)})
    cache = LabelCache(tmp_path / "labels.jsonl")
    with pytest.raises(ReferenceGaveUp, match=r"after 3 consecutive failed reference calls.*SCF did not converge") as info:
        label_until(atoms, 3, spec(tmp_path), cache=cache, progress=False, max_consecutive_failures=3)
    # 0, 1 fail, 2 succeeds (resets), 3, 4, 5 fail: nothing computed after the third in a row
    assert calls(tmp_path) == Counter({str(i): 1 for i in range(6)})
    assert [f["index"] for f in info.value.failures] == [3, 4, 5]
    # cached failures cost nothing and do not count: the next run goes on from 6
    with pytest.raises(ReferenceGaveUp):
        label_until(atoms, 3, spec(tmp_path), cache=cache, progress=False, max_consecutive_failures=3)
    assert calls(tmp_path) == Counter({str(i): 1 for i in range(9)})
    result = label_until(atoms, 3, spec(tmp_path), cache=cache, progress=False, max_consecutive_failures=3)
    assert result.indices == [2, 9, 10] and result.consecutive_failures == 0


def test_interrupted_run_resumes_without_recomputing(tmp_path):
    atoms = make_clusters(6, behave={3: "interrupt"})
    s = spec(tmp_path, marker=str(tmp_path / "marker"))
    cache_path = tmp_path / "labels.jsonl"
    with pytest.raises(KeyboardInterrupt):
        label_structures(atoms, s, cache=cache_path, progress=False)
    assert LabelCache(cache_path).n_labels == 3
    result = label_structures(atoms, s, cache=cache_path, progress=False)
    assert result.n_labeled == 6 and result.n_cached == 3 and result.n_calls == 3
    assert calls(tmp_path) == Counter({str(i): 1 for i in range(6)})


def test_killed_process_resumes_and_survives_a_torn_line(tmp_path):
    cache_path = tmp_path / "labels.jsonl"
    script = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from test_label import make_clusters, ToyCalc
from advsample.label import CalculatorSpec, label_structures
spec = CalculatorSpec("test_label:ToyCalc", {{"log": {str(tmp_path / 'calls.log')!r}, "marker": {str(tmp_path / 'marker')!r}}})
label_structures(make_clusters(6, behave={{4: "exit"}}), spec, cache={str(cache_path)!r}, progress=False)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 3, proc.stderr
    assert LabelCache(cache_path).n_labels == 4
    with open(cache_path, "a") as fh:  # a write torn by a kill
        fh.write('{"key": "abc", "ok": tr')
    cache = LabelCache(cache_path)
    assert cache.n_corrupt == 1 and cache.n_labels == 4
    s = CalculatorSpec("test_label:ToyCalc", {"log": str(tmp_path / "calls.log"), "marker": str(tmp_path / "marker")})
    sys.path.insert(0, str(TESTS))
    try:
        result = label_structures(make_clusters(6, behave={4: "exit"}), s, cache=cache, progress=False)
    finally:
        sys.path.remove(str(TESTS))
    assert result.n_labeled == 6 and result.n_calls == 2 and result.n_cached == 4
    assert calls(tmp_path) == Counter({str(i): 1 for i in range(6)})
    lines = cache_path.read_text().splitlines()
    assert all(json.loads(line)["ok"] for line in lines if not line.startswith('{"key": "abc"'))
    assert LabelCache(cache_path).n_labels == 6


def test_label_until_fills_exactly_k_inline(tmp_path):
    atoms = make_clusters(10, behave={1: "raise", 3: "nan", 4: "raise"})
    cache = LabelCache(tmp_path / "labels.jsonl")
    result = label_until(atoms, 5, spec(tmp_path), cache=cache, progress=False)
    assert result.indices == [0, 2, 5, 6, 7]
    assert result.n_labeled == 5 and [a.info["id"] for a in result.labeled] == [0, 2, 5, 6, 7]
    assert [f["index"] for f in result.failures] == [1, 3, 4]
    assert result.n_calls == 8  # nothing beyond need in-process
    assert sum(calls(tmp_path).values()) == 8


def test_label_until_with_pool_keeps_first_k_by_rank(tmp_path):
    atoms = make_clusters(10, behave={1: "raise"})
    cache = LabelCache(tmp_path / "labels.jsonl")
    with make_executor("processes", max_workers=2) as pool:
        result = label_until(atoms, 4, spec(tmp_path), executor=pool, cache=cache, progress=False, min_wave=3)
        assert result.indices == [0, 2, 3, 4]
        assert result.n_calls == 7  # waves of 4 then 3: the overshoot (5, 6) stays in the cache
        assert cache.get(atoms[5])["ok"] and cache.get(atoms[6])["ok"]
        again = label_until(atoms, 5, spec(tmp_path), executor=pool, cache=cache, progress=False, min_wave=1)
    assert again.indices == [0, 2, 3, 4, 5] and again.n_calls == 0
    assert max(calls(tmp_path).values()) == 1


def test_label_until_a_call_budget_pays_exactly_k_calls(tmp_path):
    atoms = make_clusters(10, behave={1: "raise", 3: "nan", 4: "raise"})
    cache = LabelCache(tmp_path / "labels.jsonl")
    label_until(atoms[:1], 1, spec(tmp_path), cache=cache, progress=False)  # atom 0 is now a cached label
    result = label_until(atoms, 5, spec(tmp_path), cache=cache, progress=False, unit="calls")
    assert result.n_calls == 5 and result.n_cached == 1  # the cache hit costs nothing
    assert result.indices == [0, 2, 5] and [f["index"] for f in result.failures] == [1, 3, 4]
    with make_executor("processes", max_workers=2) as pool:  # a parallel wave never overshoots a call budget
        more = label_until(atoms, 2, spec(tmp_path), executor=pool, cache=cache, progress=False, unit="calls",
                           min_wave=4)
    assert more.n_calls == 2 and more.indices == [0, 2, 5, 6, 7]
    with pytest.warns(RuntimeWarning, match="only 1 of 3 reference calls"):  # only atom 8 is not cached
        label_until(atoms[:9], 3, spec(tmp_path), cache=cache, progress=False, unit="calls")
    with pytest.raises(ValueError, match="unit must be"):
        label_until(atoms, 1, spec(tmp_path), unit="euros")


def test_label_until_accept_pays_refused_successes_without_counting_them(tmp_path):
    """``accept`` (e.g. a reference energy inside the energy window): a refused success is paid,
    cached and reported in ``rejected``, not counted toward k; one wave loop, no outer loop."""
    atoms = make_clusters(12, behave={2: "raise"})
    refuse = {1, 4, 5}
    cache = LabelCache(tmp_path / "labels.jsonl")
    seen = []

    def accept(index, labeled_atoms):
        seen.append(index)
        assert labeled_atoms.info["id"] == index and np.isfinite(labeled_atoms.get_potential_energy())
        return index not in refuse

    result = label_until(atoms, 4, spec(tmp_path), cache=cache, progress=False, accept=accept)
    assert result.indices == [0, 3, 6, 7]  # 1, 4, 5 refused and 2 failed: replaced by the next in rank
    assert result.rejected_indices == [1, 4, 5] and [a.info["id"] for a in result.rejected] == [1, 4, 5]
    assert [f["index"] for f in result.failures] == [2]
    assert result.n_calls == 8 and sum(calls(tmp_path).values()) == 8  # nothing beyond need in-process
    assert seen == [0, 1, 3, 4, 5, 6, 7]
    assert cache.get(atoms[4])["ok"]  # a refused label is cached: never paid again
    again = label_until(atoms, 4, spec(tmp_path), cache=cache, progress=False, accept=accept)
    assert again.n_calls == 0 and again.indices == result.indices and again.rejected_indices == [1, 4, 5]
    budget = label_until(atoms, 3, spec(tmp_path), cache=cache, progress=False, unit="calls", accept=accept)
    assert budget.n_calls == 3 and budget.indices == [0, 3, 6, 7, 8, 9, 10]  # cache hits are free
    assert budget.rejected_indices == [1, 4, 5]
    with pytest.warns(RuntimeWarning, match="only 1 of 2 labels"):
        short = label_until(atoms[:3], 2, spec(tmp_path), cache=cache, progress=False, accept=accept)
    assert short.indices == [0] and short.rejected_indices == [1]


def test_label_until_warns_when_candidates_run_out(tmp_path):
    atoms = make_clusters(3, behave={0: "raise"})
    with pytest.warns(RuntimeWarning, match="only 2 of 3"):
        result = label_until(atoms, 3, spec(tmp_path), progress=False)
    assert result.indices == [1, 2]


def test_make_executor_names(tmp_path):
    with make_executor("inline") as ex:
        assert isinstance(ex, InlineExecutor)
        assert ex.submit(pow, 2, 3).result() == 8
    with make_executor("processes", max_workers=1) as ex:
        assert ex.submit(pow, 2, 5).result() == 32
    with pytest.raises(ValueError, match="unknown executor"):
        make_executor("dask")
    with pytest.raises(FileNotFoundError):
        make_executor(f"parsl:{tmp_path / 'missing.py'}")


def test_import_does_not_import_parsl():
    code = "import sys, advsample.label, advsample.executors; assert 'parsl' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


# -- issue 34: a shared cache, checks before paying ---------------------------------------------
def test_a_cache_shared_by_two_processes_never_pays_a_key_another_one_paid(tmp_path):
    """Two LabelCache objects on one file (as two processes hold them): what one appended is
    read by the other before it pays (refresh before each wave and each inline call), and
    each counts every call in the file exactly once."""
    path = tmp_path / "labels.jsonl"
    first, second = LabelCache(path), LabelCache(path)
    clusters = make_clusters(6)
    label_structures(clusters[:4], spec(tmp_path), cache=first, progress=False)
    result = label_until(clusters, 6, spec(tmp_path), cache=second, progress=False)
    assert result.n_labeled == 6 and result.n_cached == 4 and result.n_calls == 2
    assert set(calls(tmp_path).values()) == {1}  # every structure paid once
    second_only = label_structures(clusters[4:], spec(tmp_path), cache=first, progress=False)
    assert second_only.n_calls == 0 and second_only.n_cached == 2  # inline: re-read before each call
    first.refresh()
    assert first.n_calls == second.n_calls == 6 == len(path.read_text().splitlines())
    assert LabelCache(path).n_calls == 6


def test_refresh_reads_only_whole_lines_and_counts_its_own_appends_once(tmp_path):
    path = tmp_path / "labels.jsonl"
    cache = LabelCache(path)
    cache.put_failure("a", "boom")
    with open(path, "ab") as f:  # another process, halfway through its line
        f.write(b'{"key": "b", "ok": false, "rea')
    assert cache.refresh() == set() and cache.n_calls == 1
    with open(path, "ab") as f:
        f.write(b'son": "x"}\n')
    assert cache.refresh() == {"b"} and cache.n_calls == 2 and "b" in cache


def test_a_spec_is_checked_without_labeling_anything(tmp_path):
    from advsample.label import ReferenceSpecError

    spec(tmp_path).check(build=True)
    with pytest.raises(ReferenceSpecError, match=r"'nosuch_module:Calc': module cannot be imported"):
        CalculatorSpec("nosuch_module:Calc").check()
    with pytest.raises(ReferenceSpecError, match=r"does not take the keywords \['nonsense'\]"):
        CalculatorSpec(f"{__name__}:make_clusters", {"nonsense": 1}).check()
    assert calls(tmp_path) == Counter()


def test_an_unusable_first_result_stops_after_one_call_but_a_later_one_is_a_recorded_failure(tmp_path):
    from advsample.label import BadReferenceResult

    cache = LabelCache(tmp_path / "labels.jsonl")
    clusters = make_clusters(4, behave={0: "nan", 2: "nan"})
    with pytest.raises(BadReferenceResult, match=r"first result is unusable: non-finite energy \(nan\).*Ar4"):
        label_until(clusters, 3, spec(tmp_path), cache=cache, progress=False, check_first=True)
    assert sum(calls(tmp_path).values()) == 1 and cache.n_failed_calls == 1
    result = label_until(clusters[1:], 2, spec(tmp_path), cache=cache, progress=False, check_first=True)
    assert result.n_labeled == 2 and result.n_failed == 1  # after a label, a NaN is a recorded failure
    assert cache.n_labels == 2 and cache.n_failed_calls == 2


def test_a_cache_that_cannot_be_written_names_its_file(tmp_path, monkeypatch):
    import errno

    cache = LabelCache(tmp_path / "labels.jsonl")

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match=rf"could not append to the label cache {tmp_path / 'labels.jsonl'}: No space"):
        cache.put_failure("k", "reason")


def test_a_reference_that_cannot_be_built_on_a_worker_stops_without_counting_calls(tmp_path):
    from advsample.label import ReferenceSpecError

    cache = LabelCache(tmp_path / "labels.jsonl")
    broken = CalculatorSpec("advsample.surfaces:get_surface", {"name": "nosuch_surface"})
    with make_executor("processes", max_workers=1) as pool:
        with pytest.raises(ReferenceSpecError, match=r"could not build advsample\.surfaces:get_surface.*nosuch_surface"
                                                     r".*on a worker.*no reference call was made"):
            label_until(make_clusters(3), 2, broken, executor=pool, cache=cache, progress=False,
                        max_consecutive_failures=20)
    assert cache.n_calls == 0 and not (tmp_path / "labels.jsonl").exists()
