"""Where the time goes: batched committee, batched attack, and one active-learning round.

    python benchmarks/speed.py [--seeds 64] [--attack-steps 30] [--repeats 20] [--threads N] [--quick] [--json]

1. Committee training step, batched M = 5 vs a loop over 5 one-member committees (MLP on
   the 2D double well, SchNet on NH3; see committee_speed.py). Goal ≥ 1.5×.
2. Adversarial attack of 64 NH3 seeds (SchNet committee, kT = 0.05 eV) all at once vs
   one seed at a time, in structures per second. Goal ≥ 10×.
3. Time per active-learning round split into train / sample / select / label, read from
   each round's ``metrics.json`` ("timings"): the 2D double well (MLPs, analytic labels)
   and NH3 (SchNet committee, GFN2-xTB labels through tblite). Training time is set by the
   epoch count, which is reported with it.
4. Committee MD of ``--md-replicas`` replicas × ``--md-steps`` steps (the ``md`` sampler's
   loop): all replicas in lockstep, one committee call per step
   (``samplers.langevin_frames``), vs one ASE ``Langevin`` run per seed with a
   ``CommitteeCalculator``; the 2D double well (5 MLPs, k_B T = 1) and NH3 (5 SchNet,
   1500 K, 0.5 fs). Frame counts are reported beside the times.

The device is ``advsample.committee.default_device()``. With ``--json`` the last line is
one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, machine, set_threads  # noqa: E402
from committee_speed import ammonia_data, compare_train_step, make_committee, mlp_data  # noqa: E402

from advsample.attack import AttackConfig, attack  # noqa: E402
from advsample.structures import labels_of  # noqa: E402


def attack_speed(n_seeds: int = 64, n_steps: int = 30, n_members: int = 5) -> dict:
    """Structures per second: one batched attack of n_seeds vs n_seeds attacks of one seed."""
    data = ammonia_data(138)
    seeds = [data[i % len(data)] for i in range(n_seeds)]
    energies, _ = labels_of(data)
    committee = make_committee("schnet", n_members, seed=0)
    committee.fit_normalization(energies, [len(a) for a in data])
    config = AttackConfig(kT=0.05, n_steps=n_steps, learning_rate=0.01)
    attack(committee, seeds[:2], energies, AttackConfig(kT=0.05, n_steps=2), progress=False)  # warm-up
    start = time.perf_counter()
    result = attack(committee, seeds, energies, config, progress=False)
    batched_s = time.perf_counter() - start
    start = time.perf_counter()
    for atoms in seeds:
        attack(committee, [atoms], energies, config, progress=False)
    loop_s = time.perf_counter() - start
    return {
        "n_seeds": n_seeds,
        "n_steps": n_steps,
        "batched_s": batched_s,
        "loop_s": loop_s,
        "structures_per_s_batched": n_seeds / batched_s,
        "structures_per_s_loop": n_seeds / loop_s,
        "speedup": loop_s / batched_s,
        "seeds_stopped_early": int((result.stop_step >= 0).sum()),
    }


def _round_timings(run_dir: str, rounds: int) -> dict:
    per_round = []
    for number in range(1, rounds + 1):
        metrics = json.loads(open(os.path.join(run_dir, f"round_{number:03d}", "metrics.json")).read())
        per_round.append({**metrics["timings"], "epochs": metrics["training"]["epochs"],
                          "new_labels": metrics["new_labels"], "reference_calls": metrics["reference_calls"]})
    keys = ("train_s", "sample_s", "select_s", "label_s")
    mean = {k: sum(r[k] for r in per_round) / len(per_round) for k in keys}
    mean["total_s"] = sum(mean.values())
    mean["epochs"] = sum(r["epochs"] for r in per_round) / len(per_round)
    mean["ms_per_epoch"] = 1000 * mean["train_s"] / max(mean["epochs"], 1)
    return {"mean": mean, "per_round": per_round}


def al_round_2d(rounds: int, epochs: int, budget: int, attack_steps: int, n_initial: int = 128) -> dict:
    from advsample.compare import run_one

    options = {"epochs": epochs, "budget": budget, "n_initial": n_initial, "n_test": 200, "attack_steps": attack_steps}
    with tempfile.TemporaryDirectory() as scratch:
        run_one(("double_well_2d", options), "adversarial", 0, rounds, scratch, threads=None)
        return {"system": "double_well_2d", "committee": "5 MLPs 3x64", "labels": "analytic",
                **_round_timings(scratch, rounds)}


def al_round_ammonia(rounds: int, epochs: int, budget: int, attack_steps: int, n_initial: int = 118) -> dict:
    from advsample.loop import ActiveLearning
    from advsample.molecules import relabel_xtb, xtb_calculator
    from advsample.systems.ammonia import ammonia_dataset
    from advsample.samplers import make_sampler
    from advsample.select import SelectionConfig
    from advsample.train import TrainConfig

    data = ammonia_dataset()
    reference = xtb_calculator()
    test = relabel_xtb(data[:20], reference)
    initial = relabel_xtb(data[20 : 20 + n_initial], reference)
    committee = make_committee("schnet", 5, seed=0)
    sampler = make_sampler("adversarial", n_steps=attack_steps, learning_rate=0.01, min_distance=0.6)
    with tempfile.TemporaryDirectory() as scratch:
        loop = ActiveLearning(
            scratch, committee, reference, initial, sampler, test=test,
            selection=SelectionConfig(budget=budget, energy_ceiling=1.0, min_distance=0.01),
            train_config=TrainConfig(epochs=epochs, progress=False), progress=False, kT=0.05,
        )
        loop.run(rounds)
        return {"system": "ammonia", "committee": "5 SchNet (32 features, 2 interactions)", "labels": "GFN2-xTB",
                **_round_timings(scratch, rounds)}


def md_replicas(n_replicas: int, n_steps: int) -> dict:
    """Seconds of committee Langevin MD: replicas batched vs one ASE run per seed, per system."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    from advsample.calculator import CommitteeCalculator
    from advsample.geometry import GeometryError
    from advsample.samplers import committee_forces, langevin_frames

    def ase_runs(committee, seeds, temperature_K, timestep_fs):
        frames = 0
        for index, atoms in enumerate(seeds):
            system = atoms.copy()
            system.calc = CommitteeCalculator(committee)
            rng = np.random.default_rng([0, index])
            thermalize_momenta(system, temperature_K, rng=rng)
            dynamics = Langevin(system, timestep=timestep_fs * units.fs, temperature_K=temperature_K,
                                friction=0.02, fixcm=False, rng=rng)
            try:
                for _ in dynamics.irun(steps=n_steps):
                    frames += dynamics.nsteps % 5 == 0 and dynamics.nsteps > 0
            except GeometryError:  # the model refuses the geometry: this run ends, as in langevin_frames
                pass
        return frames

    cases = {"double_well_2d": (make_committee("mlp", 5), mlp_data(n_replicas), 1.0 / units.kB, 1.0),
             "ammonia": (make_committee("schnet", 5), ammonia_data(n_replicas), 1500.0, 0.5)}
    out = {}
    for system, (committee, seeds, temperature_K, timestep_fs) in cases.items():
        start = time.perf_counter()
        batched = langevin_frames(seeds, committee_forces(committee), temperature_K, timestep_fs, n_steps, 5, 0.02)
        middle = time.perf_counter()
        sequential_frames = ase_runs(committee, seeds, temperature_K, timestep_fs)
        end = time.perf_counter()
        out[system] = {"s_batched": middle - start, "s_sequential": end - middle,
                       "speedup": (end - middle) / (middle - start), "frames_batched": sum(map(len, batched)),
                       "frames_sequential": int(sequential_frames), "n_replicas": n_replicas, "n_steps": n_steps}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=64, help="NH3 seeds in the attack")
    parser.add_argument("--attack-steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=20, help="repeats of the committee training step")
    parser.add_argument("--rounds", type=int, default=2, help="active-learning rounds timed per system")
    parser.add_argument("--epochs-2d", type=int, default=500)
    parser.add_argument("--epochs-ammonia", type=int, default=300)
    parser.add_argument("--md-replicas", type=int, default=8)
    parser.add_argument("--md-steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny settings (tests)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.quick:
        args.seeds, args.attack_steps, args.repeats, args.rounds = 4, 3, 2, 1
        args.epochs_2d, args.epochs_ammonia = 10, 3
        args.md_replicas, args.md_steps = 2, 10
    n_points, n_molecules = (32, 16) if args.quick else (128, 118)

    mlp = compare_train_step("mlp", mlp_data(n_points), 5, args.repeats, 1 if args.quick else 3)
    schnet = compare_train_step("schnet", ammonia_data(n_molecules), 5, args.repeats, 1 if args.quick else 3)
    print(f"committee step, MLP: batched {mlp['ms_batched']:.2f} ms vs loop {mlp['ms_loop']:.2f} ms "
          f"-> {mlp['speedup']:.2f}x")
    print(f"committee step, SchNet NH3: batched {schnet['ms_batched']:.2f} ms vs loop {schnet['ms_loop']:.2f} ms "
          f"-> {schnet['speedup']:.2f}x")
    attack_result = attack_speed(args.seeds, args.attack_steps)
    print(f"attack of {args.seeds} NH3 seeds x {args.attack_steps} steps: batched "
          f"{attack_result['structures_per_s_batched']:.1f} structures/s, one at a time "
          f"{attack_result['structures_per_s_loop']:.2f} structures/s -> {attack_result['speedup']:.1f}x")
    budget = 5 if args.quick else 20
    rounds_2d = al_round_2d(args.rounds, args.epochs_2d, budget, args.attack_steps if args.quick else 60,
                            n_initial=32 if args.quick else 128)
    rounds_nh3 = al_round_ammonia(args.rounds, args.epochs_ammonia, budget, args.attack_steps if args.quick else 60,
                                  n_initial=16 if args.quick else 118)
    for entry in (rounds_2d, rounds_nh3):
        m = entry["mean"]
        print(f"AL round, {entry['system']} ({entry['committee']}, {m['epochs']:.0f} epochs): "
              f"train {m['train_s']:.2f} s, sample {m['sample_s']:.2f} s, select {m['select_s']:.2f} s, "
              f"label {m['label_s']:.3f} s, total {m['total_s']:.2f} s")
    md = md_replicas(args.md_replicas, args.md_steps)
    for system, m in md.items():
        print(f"committee MD, {system}, {m['n_replicas']} replicas x {m['n_steps']} steps: batched "
              f"{m['s_batched']:.2f} s, one ASE run per seed {m['s_sequential']:.2f} s -> {m['speedup']:.1f}x "
              f"(frames {m['frames_batched']} vs {m['frames_sequential']})")
    result = {
        "speedup_train_step": mlp["speedup"],
        "speedup_train_step_schnet": schnet["speedup"],
        "committee_step": {"mlp": mlp, "schnet": schnet},
        "speedup_attack": attack_result["speedup"],
        "attack": attack_result,
        "al_round": {"double_well_2d": rounds_2d, "ammonia": rounds_nh3},
        "md_replicas": md,
        "speedup_md_replicas_ammonia": md["ammonia"]["speedup"],
        "goals": {"committee_step": 1.5, "attack": 10.0},
        "device": machine()["device"],
        "quick": args.quick,
        "machine": machine(),
    }
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
