"""Batched NN-MD speed: replica-steps per second, batched vs one replica at a time (ASE) vs the bare committee.

    python benchmarks/md_speed.py [--replicas 1,8,64,256] [--steps 40] [--threads N] [--quick] [--json]

For each system and each R in ``--replicas``, side by side in one process:

* ``batched``: :func:`advsample.dynamics.run_stability` (NVE velocity Verlet, 300 K,
  0.5 fs, ``--steps`` steps, failure checks every 10 steps, NVE drift) of R replicas,
  set-up included — replica-steps per second counted from the steps the replicas completed
  (an untrained committee may let some fail; ``live_fraction`` says how many ran to the end);
* ``bare``: one committee energy+forces evaluation (:class:`~advsample.committee.Committee`
  call, ``forces=True``) of the same R structures as one batch, median of ``--repeats``:
  the limit a batched integrator can reach;
* ``ase``: one replica at a time, ASE's ``VelocityVerlet`` with
  :class:`~advsample.calculator.CommitteeCalculator` and no failure checks (so the baseline
  is, if anything, flattered), ``--steps`` steps, measured once per system.

Systems: NH3 (4 × 32 SchNet, 2 interactions, 5 Å), the Au/Al(100) adatom slab (13 atoms,
8 fixed, pbc T T F; 4 × 32 SchNet, 2 interactions, 5 Å) and a host–guest cell (methylamine in
pure-silica sodalite, 43 atoms, from :mod:`advsample.systems.zeolites`; or water in sodalite)
with the 4 × 32 network and a small 4 × 16, 1 interaction, 4 Å one. Reported per R:
``speedup_vs_ase`` (batched rate / ASE rate; goal ≥ 10× at R = 64 on NH3 and the slab, ≥ 20×
stretch goal) and ``overhead_vs_bare`` (bare rate / batched rate; goal ≤ 1.2 at R = 64) and
the peak resident memory during the batched run (sampled from /proc every 2 ms; CUDA: the
peak allocated GPU memory). The committees are untrained (the cost of a step does not depend
on the weights). ``--device cuda`` (default when visible) runs all three on the GPU.
With ``--json`` the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, machine, median_ms, set_threads, synchronize  # noqa: E402

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
        self.peak, self.running = _rss_MiB(), True
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


def ase_rate(committee, start, n_steps: int, timestep_fs: float) -> float:
    """Replica-steps per second of one ASE VelocityVerlet run with the committee as its calculator."""
    from ase.md.velocitydistribution import thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    from advsample.calculator import CommitteeCalculator

    system = start.copy()
    thermalize_momenta(system, temperature_K=300.0, rng=np.random.default_rng(0))
    system.calc = CommitteeCalculator(committee)
    dynamics = VelocityVerlet(system, timestep=timestep_fs * units.fs)
    system.get_forces()
    begin = time.perf_counter()
    dynamics.run(n_steps)
    synchronize()
    return n_steps / (time.perf_counter() - begin)


def measure(name, start, make_committee, replicas, n_steps, repeats, device) -> dict:
    from advsample.dynamics import run_stability
    from advsample.structures import Batch

    committee = make_committee().to(device)
    ase = ase_rate(committee, start, max(n_steps // 2, 2), 0.5)
    rows = []
    for r in replicas:
        batch = Batch.from_atoms([start] * r)
        bare_ms = median_ms(lambda: committee(batch, forces=True), repeats=repeats, warmup=1)
        run_stability(committee, [start], n_replicas=r, n_steps=2, temperature_K=300.0)  # warm-up
        with PeakMemory() as memory:
            begin = time.perf_counter()
            result = run_stability(committee, [start], n_replicas=r, n_steps=n_steps, temperature_K=300.0,
                                   check_every=10)
            synchronize()
            wall = time.perf_counter() - begin
        replica_steps = sum(result["steps_completed"]) + r  # + the initial evaluation of every replica
        batched = replica_steps / wall
        bare = 1000.0 * r / bare_ms
        rows.append({
            "replicas": r, "batched_replica_steps_per_s": batched, "bare_replica_steps_per_s": bare,
            "ase_replica_steps_per_s": ase, "speedup_vs_ase": batched / ase, "overhead_vs_bare": bare / batched,
            "batched_ms_per_replica_step": 1000.0 / batched, "bare_ms_per_replica_step": bare_ms / r,
            "ase_ms_per_replica_step": 1000.0 / ase, "live_fraction": result["n_stable"] / r,
            "peak_memory_MiB": memory.peak, "cuda_peak_memory_MiB": memory.cuda_peak,
        })
        row = rows[-1]
        print(f"{name:45s} R={r:4d}  batched {row['batched_ms_per_replica_step']:.3f} ms  bare "
              f"{row['bare_ms_per_replica_step']:.3f} ms  ASE {row['ase_ms_per_replica_step']:.3f} ms per replica-step"
              f"  -> {row['speedup_vs_ase']:.1f}x ASE, {row['overhead_vs_bare']:.2f}x bare  "
              f"(live {row['live_fraction']:.2f}, peak {memory.peak:.0f} MiB)", flush=True)
    return {"n_atoms": len(start), "rows": rows}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,8,64,256", help="comma-separated R values")
    parser.add_argument("--steps", type=int, default=40, help="MD steps per batched run")
    parser.add_argument("--repeats", type=int, default=5, help="bare evaluations (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when visible)")
    parser.add_argument("--quick", action="store_true", help="tiny settings (tests)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    from advsample.committee import default_device

    device = args.device or default_device()
    replicas = [2, 4] if args.quick else [int(r) for r in args.replicas.split(",")]
    n_steps = 4 if args.quick else args.steps
    repeats = 2 if args.quick else args.repeats
    result = {"machine": machine(), "replicas": replicas, "steps": n_steps, "device": device, "systems": {}}
    for name, (start, make_committee) in systems(args.quick).items():
        result["systems"][name] = measure(name, start, make_committee, replicas, n_steps, repeats, device)
    result["machine"]["load_average_1min_end"] = os.getloadavg()[0]
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
