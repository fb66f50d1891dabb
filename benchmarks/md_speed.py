"""Batched NN-MD speed: replica-steps per second, batched vs one replica at a time (ASE) vs the bare committee.

    python benchmarks/md_speed.py [--replicas 1,8,64,256] [--steps 10] [--repeats 5] [--systems NH3,slab,4x16]
                                  [--host-guest SOD:methylamine [--stability-steps 200] [--epochs 200]] [--threads N] [--quick] [--json]
                                  [--max-atoms 1024,4096] [--compile]

For each system and each R in ``--replicas``, timed in alternation in one process (median of
``--repeats`` blocks of ``--steps`` steps, every block from the same start, so no replica
drifts off even with an untrained committee; each block starts with the model's neighbour-list
cache emptied, so every step pays its neighbour lists as in MD — before 2026-12-06 14:00 the
repeated blocks reused the lists cached by the block before, which flattered the batched path most):

* ``batched``: :mod:`advsample.dynamics` NVE velocity Verlet of R replicas (300 K, 0.5 fs) with
  the failure checks as :func:`~advsample.dynamics.run_stability` runs them (geometry and NVE
  drift every 10 steps: one check per 10-step block); its set-up (replicas, checks, first
  evaluation) is reported apart (``setup_s``, paid once per run of thousands of steps);
* ``bare``: the committee energy+forces evaluation of the same R structures as one batch, as
  the batched integrator calls it (:func:`~advsample.dynamics.committee_force_fn`: through the
  model's fixed geometry), each call at new positions (so the model's neighbour lists are
  rebuilt, as in MD): the limit a batched integrator can reach;
* ``ase``: one replica at a time, ASE's ``VelocityVerlet`` with
  :class:`~advsample.calculator.CommitteeCalculator` and no failure checks (so the baseline
  is, if anything, flattered); ``ase_same_path``: the same with the calculator's committee
  evaluated through the fixed geometry too (``speedup_vs_ase_same_path``: what batching alone gains).

Systems: NH3 (4 × 32 SchNet, 2 interactions, 5 Å), the Au/Al(100) adatom slab (13 atoms,
8 fixed, pbc T T F; 4 × 32 SchNet, 2 interactions, 5 Å) and a host–guest cell (methylamine in
pure-silica sodalite, 43 atoms, from :mod:`advsample.systems.zeolites`; or water in sodalite)
with the 4 × 32 network and a small 4 × 16, 1 interaction, 4 Å one. Reported per R:
``speedup_vs_ase`` (batched rate / ASE rate; goal ≥ 10× at R = 64 on NH3 and the slab, ≥ 20×
stretch goal) and ``overhead_vs_bare`` (bare rate / batched rate; goal ≤ 1.2 at R = 64) and
the peak resident memory during a short ``run_stability`` of R replicas (sampled from /proc every 2 ms; CUDA: the
peak allocated GPU memory). ``--host-guest CELL``: the network chosen by measurement (:func:`host_guest_study`): three
SchNet sizes trained on GFN-FF frames of the cell, test force error against cost, and the time
of a stability evaluation of 128 trajectories with the smallest (4000 steps extrapolated from
``--stability-steps``). ``--max-atoms K1,K2``: per R, batched NVE with the committee evaluated in
chunks of at most K atoms (:func:`advsample.dynamics.chunked`) beside one call, timed in alternation,
with the memory a short run adds (``chunked`` in each row). Elsewhere the committees are untrained (the cost of a step does not depend
on the weights). ``--device cuda`` (default when visible) runs all three on the GPU.
``--compile``: also ``batched_compiled`` and ``bare_compiled``, the same with the committee evaluated
through ``torch.compile(dynamic=True)`` (the option ``compile=True`` of
:func:`~advsample.dynamics.committee_force_fn` / ``run_stability``), timed in alternation with the
eager ones and ASE (``speedup_vs_ase_compiled``, ``overhead_vs_bare_compiled``); ASE stays eager (one
structure at a time is not compiled); the first compiled call's time is ``compile_s`` (tens of
seconds on a cold cache).
With ``--json`` the last line is one JSON object.

Glibc's malloc returns large freed blocks to the system and page-faults them in again at the next
allocation; the batched step allocates pair-sized tensors of several MB, so
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296``
(keep freed memory in the process) makes it cheaper (``docs/stability.md``); the JSON records the setting.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, interleaved_median_ms, machine, set_threads  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase import units  # noqa: E402


def _rss_MiB() -> float:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: the process's peak so far
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakMemory:
    """Peak resident memory (MiB) while the block runs, sampled every 2 ms; CUDA: peak allocated."""

    def __enter__(self):
        self.start = self.peak = _rss_MiB()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, _rss_MiB())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, _rss_MiB())
        self.cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def systems(quick: bool) -> dict:
    """name -> (start Atoms, committee factory)."""
    from ase.build import molecule

    from advsample.committee import Committee
    from advsample.models.schnet import SchNetCommittee
    from advsample.systems.adatom import adatom_slab

    try:
        from advsample.systems.zeolites import builtin_cell

        host_guest, host_name = builtin_cell("SOD:methylamine"), "SOD:methylamine"
    except ImportError:  # the zeolites module is optional here
        from advsample.systems.sodalite import water_in_sodalite

        host_guest, host_name = water_in_sodalite(), "SOD:water"

    def schnet(species, features, interactions, cutoff):
        return lambda: Committee(SchNetCommittee(n_members=4, species=species, n_features=features,
                                                 n_interactions=interactions, cutoff=cutoff, seed=0))

    out = {
        "NH3 (SchNet 4x32, 2 int., 5 A)": (molecule("NH3"), schnet((1, 7), 32, 2, 5.0)),
        "adatom slab (SchNet 4x32, 2 int., 5 A)": (adatom_slab(), schnet((13, 79), 32, 2, 5.0)),
        f"{host_name} (SchNet 4x16, 1 int., 4 A)": (host_guest, schnet((1, 6, 7, 8, 14), 16, 1, 4.0)),
    }
    if not quick:
        out[f"{host_name} (SchNet 4x32, 2 int., 5 A)"] = (host_guest, schnet((1, 6, 7, 8, 14), 32, 2, 5.0))
    return out


def fresh_neighbours(committee) -> None:
    """Empty the model's neighbour-list cache: each block replays the same steps, whose lists would
    otherwise be cached from the block before, while in MD every step is a new geometry (a miss)."""
    cache = getattr(getattr(committee, "model", None), "neighbour_cache", None)
    if cache is not None:
        cache.clear()


def ase_block(committee, start, n_steps: int, timestep_fs: float):
    """A closure: ``n_steps`` of one ASE VelocityVerlet run with the committee as its calculator,
    from the same start each time (positions and momenta reset)."""
    from ase.md.velocitydistribution import thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    from advsample.calculator import CommitteeCalculator

    system = start.copy()
    thermalize_momenta(system, temperature_K=300.0, rng=np.random.default_rng(0))
    positions, momenta = system.get_positions(), system.get_momenta()
    system.calc = CommitteeCalculator(committee)
    dynamics = VelocityVerlet(system, timestep=timestep_fs * units.fs)

    def run():
        fresh_neighbours(committee)
        system.set_positions(positions, apply_constraint=False)
        system.set_momenta(momenta, apply_constraint=False)
        dynamics.run(n_steps)

    return run


def batched_block(committee, start, r: int, n_steps: int, timestep_fs: float, max_atoms_per_call="default",
                  compile: bool = False):
    """A closure: ``n_steps`` batched NVE steps of R replicas with the failure checks (every 10
    steps, drift included) as :func:`~advsample.dynamics.run_stability` runs them, from the same
    initial state each time; and the set-up time (replicas, checks, first evaluation) in s.
    ``max_atoms_per_call``: the committee evaluated in chunks of at most that many atoms (None: one
    call; "default": the dynamics module's default); ``compile``: ``committee_force_fn(..., compile=True)``."""
    from dataclasses import replace

    from advsample.dynamics import MAX_ATOMS_PER_CALL, _Monitor, committee_force_fn, make_replicas, nve

    limit = MAX_ATOMS_PER_CALL if max_atoms_per_call == "default" else max_atoms_per_call
    begin = time.perf_counter()
    replicas = make_replicas([start], r, 300.0, seed=0, device=committee.device)
    init_fn, step_fn = nve(committee_force_fn(committee, limit, compile=compile), replicas, timestep_fs)
    monitor = _Monitor(replicas, [start], 10**9, 10, set(), (1.5, 1.2, 0.6), None, 0.5, 0.05, None)
    first = init_fn()
    monitor(first)
    setup_s = time.perf_counter() - begin

    def run():
        fresh_neighbours(committee)
        state = replace(first, live=first.live.copy(), steps=first.steps.copy(), reasons=list(first.reasons))
        for _ in range(n_steps):
            state = step_fn(state)
            monitor(state)
        run.live = state.live.mean()

    return run, setup_s


class FixedGeometryPath:
    """The committee called as ``committee(batch, forces=True)`` but evaluated through its fixed
    geometry, as :func:`~advsample.dynamics.committee_force_fn` evaluates it (for the ASE calculator)."""

    def __init__(self, committee):
        self.committee = committee

    def __getattr__(self, name):
        return getattr(self.committee, name)

    def __call__(self, batch, forces=True):
        return self.committee(batch, forces=forces, geometry=self.committee.fixed_geometry(batch))


def bare_block(committee, start, r: int, n_steps: int, compile: bool = False):
    """A closure: ``n_steps`` committee energy+forces evaluations on R structures as the batched
    integrator makes them (one call, :func:`~advsample.dynamics.committee_force_fn`), each at new
    positions (as in MD: the model's neighbour lists are not reused)."""
    from advsample.dynamics import committee_force_fn
    from advsample.structures import Batch

    force_fn = committee_force_fn(committee, None, compile=compile)

    batch = Batch.from_atoms([start] * r)
    rng = np.random.default_rng(0)
    batches = [batch.with_positions(batch.positions + torch.as_tensor(rng.normal(0, 0.01, batch.positions.shape)))
               for _ in range(n_steps)]

    def run():
        fresh_neighbours(committee)
        for moved in batches:
            force_fn(moved)

    return run


def _added_memory_child(name: str, quick: bool, r: int, n_steps: int, limit, device: str, threads) -> float:
    """In a fresh process: MiB a short run_stability of R replicas adds to the resident memory."""
    from advsample.dynamics import run_stability

    set_threads(threads)
    start, make_committee = systems(quick)[name]
    committee = make_committee().to(device)
    with PeakMemory() as memory:
        run_stability(committee, [start], n_replicas=r, n_steps=n_steps, temperature_K=300.0, check_every=10,
                      max_atoms_per_call=limit)
    return memory.cuda_peak if memory.cuda_peak is not None else memory.peak - memory.start


def added_memory_MiB(name: str, quick: bool, r: int, n_steps: int, limit, device: str, threads) -> float:
    """:func:`_added_memory_child` in a spawned process: freed memory this process keeps (the
    allocator's) would hide what a run needs. ``quick`` (tests): in this process, to save the start-up."""
    import multiprocessing

    if quick:
        return _added_memory_child(name, quick, r, n_steps, limit, device, threads)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_added_memory_child, (name, quick, r, n_steps, limit, device, threads))


def chunk_sweep(name, committee, start, r: int, n_steps: int, repeats: int, limits, memory_args) -> dict:
    """Batched NVE of R replicas with the committee evaluated in chunks of at most ``limit`` atoms,
    for each limit in ``limits`` (and None: one call), timed in alternation: ms per replica-step,
    its ratio to one call, and the memory a short run_stability adds (MiB above the resident memory
    of a fresh process before it; CUDA: peak allocated)."""
    n_atoms = r * len(start)
    limits = [k for k in limits if k is None or k < n_atoms]  # a limit >= the batch is one call
    if not any(k is not None for k in limits):
        return {}
    blocks = {str(k): batched_block(committee, start, r, n_steps, 0.5, k)[0] for k in limits}
    times = interleaved_median_ms(blocks, repeats=repeats, warmup=1)
    out = {}
    for k in limits:
        quick, device, threads = memory_args
        added = added_memory_MiB(name, quick, r, n_steps, k, device, threads)
        ms = times[str(k)] / n_steps / r
        out[str(k)] = {"ms_per_replica_step": ms, "vs_one_call": times[str(k)] / times["None"],
                       "added_memory_MiB": added}
        print(f"    max_atoms_per_call={str(k):>6s} (R={r}, {n_atoms} atoms): {ms:.3f} ms per replica-step, "
              f"{out[str(k)]['vs_one_call']:.2f}x one call, +{added:.0f} MiB", flush=True)
    return out


def measure(name, start, make_committee, replicas, n_steps, repeats, device, chunk_limits=(), memory_args=(),
            compile_network=False) -> dict:
    from advsample.dynamics import run_stability

    committee = make_committee().to(device)
    compile_s = None
    if compile_network:  # the first call compiles (forward and backward), once per model class and process
        begin = time.perf_counter()
        batched_block(committee, start, 2, 1, 0.5, compile=True)
        compile_s = time.perf_counter() - begin
    ase = ase_block(committee, start, n_steps, 0.5)
    ase_same_path = ase_block(FixedGeometryPath(committee), start, n_steps, 0.5)
    rows = []
    for r in replicas:
        batched, setup_s = batched_block(committee, start, r, n_steps, 0.5)
        blocks = {"batched": batched, "bare": bare_block(committee, start, r, n_steps), "ase": ase,
                  "ase_same_path": ase_same_path}
        if compile_network:
            blocks["batched_compiled"] = batched_block(committee, start, r, n_steps, 0.5, compile=True)[0]
            blocks["bare_compiled"] = bare_block(committee, start, r, n_steps, compile=True)
        times = interleaved_median_ms(blocks, repeats=repeats, warmup=1)
        with PeakMemory() as memory:
            run_stability(committee, [start], n_replicas=r, n_steps=n_steps, temperature_K=300.0, check_every=10)
        per = {key: value / n_steps for key, value in times.items()}  # ms per step
        rows.append({
            "replicas": r, "batched_replica_steps_per_s": 1000.0 * r / per["batched"],
            "bare_replica_steps_per_s": 1000.0 * r / per["bare"], "ase_replica_steps_per_s": 1000.0 / per["ase"],
            "speedup_vs_ase": per["ase"] * r / per["batched"], "overhead_vs_bare": per["batched"] / per["bare"],
            "batched_ms_per_replica_step": per["batched"] / r, "bare_ms_per_replica_step": per["bare"] / r,
            "ase_ms_per_replica_step": per["ase"], "ase_same_path_ms_per_replica_step": per["ase_same_path"],
            "speedup_vs_ase_same_path": per["ase_same_path"] * r / per["batched"],
            "setup_s": setup_s, "live_fraction": float(batched.live),
            "peak_memory_MiB": memory.peak, "cuda_peak_memory_MiB": memory.cuda_peak,
        })
        row = rows[-1]
        compiled = ""
        if compile_network:
            row.update({"batched_compiled_ms_per_replica_step": per["batched_compiled"] / r,
                        "bare_compiled_ms_per_replica_step": per["bare_compiled"] / r,
                        "speedup_vs_ase_compiled": per["ase"] * r / per["batched_compiled"],
                        "overhead_vs_bare_compiled": per["batched_compiled"] / per["bare_compiled"],
                        "compiled_vs_eager": per["batched"] / per["batched_compiled"]})
            compiled = (f"\n{'':42s}          compiled {row['batched_compiled_ms_per_replica_step']:.3f} ms  bare "
                        f"{row['bare_compiled_ms_per_replica_step']:.3f} ms  -> {row['speedup_vs_ase_compiled']:.1f}x "
                        f"ASE, {row['overhead_vs_bare_compiled']:.2f}x bare, {row['compiled_vs_eager']:.2f}x eager "
                        f"(compiled in {compile_s:.0f} s)")
        print(f"{name:42s} R={r:4d}  batched {row['batched_ms_per_replica_step']:.3f} ms  bare "
              f"{row['bare_ms_per_replica_step']:.3f} ms  ASE {row['ase_ms_per_replica_step']:.3f} ms per replica-step"
              f"  -> {row['speedup_vs_ase']:.1f}x ASE ({row['speedup_vs_ase_same_path']:.1f}x ASE on the same path), "
              f"{row['overhead_vs_bare']:.2f}x bare  "
              f"(set-up {setup_s:.2f} s, live {row['live_fraction']:.2f}, peak {memory.peak:.0f} MiB){compiled}",
              flush=True)
        if chunk_limits:
            row["chunked"] = chunk_sweep(name, committee, start, r, n_steps, repeats, [*chunk_limits, None],
                                         memory_args)
    return {"n_atoms": len(start), "rows": rows, "compile_s": compile_s}


NETWORKS = {"4x16, 1 int., 4 A": (16, 1, 4.0), "4x32, 1 int., 4.5 A": (32, 1, 4.5), "4x32, 2 int., 5 A": (32, 2, 5.0)}


def host_guest_study(cell: str, n_replicas: int, n_steps: int, epochs: int, repeats: int) -> dict:
    """The host–guest network chosen by measurement: for each size in :data:`NETWORKS`, a
    committee trained on GFN-FF MD frames of ``cell`` (advsample.systems.zeolites, cached), its
    test errors and its bare cost per replica-step at R = ``n_replicas``; then a stability
    evaluation of ``n_replicas`` trajectories × ``n_steps`` steps (1000 K, NVE, 0.5 fs) with the
    smallest, timed, and the time of 4000 steps extrapolated from it (every replica kept: an upper bound)."""
    from advsample.dynamics import run_stability
    from advsample.metrics import test_errors
    from advsample.systems import get_system
    from advsample.systems.zeolites import schnet_committee
    from advsample.train import TrainConfig, split_validation, train_committee

    system = get_system("host_guest", cells=[cell], n_initial=60, n_thermal=20, n_window=4, md_interval=10)
    train, validation = split_validation(system.initial, 0.15, seed=0)
    species = tuple(sorted({int(z) for a in system.initial for z in a.numbers}))
    start = system.initial[0]
    out = {"cell": cell, "n_atoms": len(start), "n_train": len(train), "n_test": len(system.test), "networks": {}}
    trained = {}
    for name, (features, interactions, cutoff) in NETWORKS.items():
        committee = schnet_committee(0, species, n_members=4, n_features=features, n_interactions=interactions,
                                     cutoff=cutoff)
        begin = time.perf_counter()
        train_committee(committee, train, validation, TrainConfig(epochs=epochs, batch_size=8, progress=False))
        train_s = time.perf_counter() - begin
        errors = test_errors(committee, system.test)
        bare = interleaved_median_ms({"bare": bare_block(committee, start, n_replicas, 1)}, repeats=repeats)["bare"]
        out["networks"][name] = {"force_mae_eV_A": errors["force_mae"], "energy_mae_eV": errors["energy_mae"],
                                 "bare_ms_per_replica_step": bare / n_replicas, "train_s": train_s}
        trained[name] = committee
        print(f"{cell} SchNet {name}: test force MAE {errors['force_mae']:.3f} eV/A, energy MAE "
              f"{errors['energy_mae']:.3f} eV, {bare / n_replicas:.2f} ms per replica-step at R={n_replicas} "
              f"(trained {train_s:.0f} s)", flush=True)
    small = next(iter(NETWORKS))
    begin = time.perf_counter()
    result = run_stability(trained[small], [start], n_replicas=n_replicas, n_steps=n_steps, temperature_K=1000.0,
                           timestep_fs=0.5, progress=True)
    wall = time.perf_counter() - begin
    replica_steps = sum(result["steps_completed"]) + n_replicas
    per = wall / replica_steps
    out["stability"] = {"network": small, "n_replicas": n_replicas, "n_steps": n_steps, "wall_s": wall,
                        "replica_steps": replica_steps, "ms_per_replica_step": 1000 * per,
                        "extrapolated_4000_steps_s": per * n_replicas * 4001,
                        "md_stable_fraction_summary": result["md_stable_fraction_summary"],
                        "load_average_1min": os.getloadavg()[0]}
    print(f"stability: {n_replicas} x {n_steps} steps in {wall:.0f} s ({1000 * per:.2f} ms per replica-step, "
          f"{result['md_stable_fraction_summary']} stable); {n_replicas} x 4000 steps: "
          f"{per * n_replicas * 4001 / 60:.1f} min if every replica lives (upper bound)", flush=True)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,8,64,256", help="comma-separated R values")
    parser.add_argument("--steps", type=int, default=10, help="MD steps per timed block (one failure check)")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per method, alternated (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when visible)")
    parser.add_argument("--systems", default=None,
                        help="comma-separated words; only systems whose name contains one (e.g. NH3,slab,4x16)")
    parser.add_argument("--host-guest", default=None, metavar="CELL",
                        help="also the host-guest study on this built-in cell (e.g. SOD:methylamine): accuracy vs "
                             "cost of the SchNet sizes, and the time of a 128-trajectory stability evaluation")
    parser.add_argument("--stability-replicas", type=int, default=128)
    parser.add_argument("--stability-steps", type=int, default=200, help="steps timed (4000 extrapolated)")
    parser.add_argument("--epochs", type=int, default=200, help="training epochs per network (host-guest study)")
    parser.add_argument("--max-atoms", default="", metavar="K1,K2",
                        help="also batched NVE with the committee evaluated in chunks of at most K atoms "
                             "(dynamics' max_atoms_per_call), beside one call: time and memory per R")
    parser.add_argument("--compile", action="store_true",
                        help="also batched and bare with compile=True (torch.compile(dynamic=True) of the "
                             "committee's evaluation), beside eager and ASE")
    parser.add_argument("--quick", action="store_true", help="tiny settings (tests)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    from advsample.committee import default_device

    device = args.device or default_device()
    replicas = [2] if args.quick else [int(r) for r in args.replicas.split(",")]
    n_steps = 3 if args.quick else args.steps
    repeats = 2 if args.quick else args.repeats
    chunk_limits = [int(k) for k in args.max_atoms.split(",") if k.strip()] or ([4] if args.quick else [])
    result = {"machine": machine(), "replicas": replicas, "steps": n_steps, "device": device, "systems": {},
              "max_atoms_per_call": chunk_limits, "compile": args.compile}
    for name, (start, make_committee) in systems(args.quick).items():
        if args.systems and not any(word.lower() in name.lower() for word in args.systems.split(",")):
            continue
        result["systems"][name] = measure(name, start, make_committee, replicas, n_steps, repeats, device,
                                          chunk_limits, (args.quick, device, args.threads), args.compile)
    if args.host_guest:
        result["host_guest"] = host_guest_study(args.host_guest, args.stability_replicas, args.stability_steps,
                                                args.epochs, repeats)
    result["machine"]["load_average_1min_end"] = os.getloadavg()[0]
    result["machine"]["glibc_tunables"] = os.environ.get("GLIBC_TUNABLES")  # malloc settings change the times
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
