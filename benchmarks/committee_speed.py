"""Training-step speed: one batched committee of M members vs a Python loop over M one-member committees.

    python benchmarks/committee_speed.py [--members 5] [--repeats 30] [--threads N] [--quick] [--json]

A training step = forward + force-loss backward (create_graph) + Adam step, exactly what
``train_committee`` does per full-batch epoch (``_Targets.member_losses``). Same inputs,
same architecture, one process, timed in alternation after a warm-up; median of
``--repeats``. Two systems:

* MLP: ``MLPCommittee`` (3 × 64, SiLU) on 128 points of the 2D double well (left well);
* SchNet: ``SchNetCommittee`` (defaults: 32 features, 2 interactions) on 118 NH3
  geometries with their packaged DFT labels (labels do not change the timing).

Goal: batched ≥ 1.5× faster than the loop. With ``--json`` the last line is one JSON object.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, interleaved_median_ms, machine, set_threads  # noqa: E402

import torch  # noqa: E402

from advsample.committee import Committee  # noqa: E402
from advsample.models import MLPCommittee, SchNetCommittee  # noqa: E402
from advsample.structures import labels_of  # noqa: E402
from advsample.train import TrainConfig, _Targets  # noqa: E402

LEFT_WELL = [(-1.5, 0.0), (-1.2, 1.2)]


def mlp_data(n: int = 128):
    from advsample.surfaces import double_well_2d

    return double_well_2d().sample(n, seed=0, max_energy=0.0, region=LEFT_WELL)


def ammonia_data(n: int = 118):
    from advsample.systems.ammonia import ammonia_dataset

    return ammonia_dataset()[:n]


def make_committee(kind: str, n_members: int, seed: int = 0, **options) -> Committee:
    if kind == "mlp":
        model = MLPCommittee(n_members, options.get("hidden", (64, 64, 64)), seed=seed)
    elif kind == "schnet":
        model = SchNetCommittee(n_members, seed=seed, **{k: v for k, v in options.items() if k != "hidden"})
    else:
        raise ValueError(f"unknown committee kind {kind!r}")
    from advsample.committee import default_device

    return Committee(model).to(default_device())


def training_step(committee: Committee, targets: _Targets, config: TrainConfig, optimizer):
    """One full-batch step as in train_committee: loss per member, summed, backward, Adam."""

    def step():
        losses = targets.member_losses(committee, config)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()

    return step


def compare_train_step(kind: str, data, n_members: int = 5, repeats: int = 20, warmup: int = 3, **options) -> dict:
    """Median ms of one training step: batched M-member committee vs a loop over M single members."""
    energies, _ = labels_of(data)
    n_atoms = [len(a) for a in data]
    config = TrainConfig(progress=False)
    batched = make_committee(kind, n_members, seed=0, **options)
    singles = [make_committee(kind, 1, seed=1000 + m, **options) for m in range(n_members)]
    for committee in [batched, *singles]:
        committee.fit_normalization(energies, n_atoms)
        committee.train()
    targets = _Targets(data, batched)  # same tensors for every committee (same device/dtype)
    batched_step = training_step(batched, targets, config, torch.optim.Adam(batched.model.parameters(), lr=1e-3))
    single_steps = [
        training_step(c, targets, config, torch.optim.Adam(c.model.parameters(), lr=1e-3)) for c in singles
    ]

    def loop_step():
        for step in single_steps:
            step()

    ms = interleaved_median_ms({"batched": batched_step, "loop": loop_step}, repeats, warmup)
    return {
        "ms_batched": ms["batched"],
        "ms_loop": ms["loop"],
        "speedup": ms["loop"] / ms["batched"],
        "n_structures": len(data),
        "n_members": n_members,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="tiny settings (tests)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    repeats = 3 if args.quick else args.repeats
    warmup = 1 if args.quick else 3
    n_points, n_molecules = (32, 16) if args.quick else (128, 118)

    mlp = compare_train_step("mlp", mlp_data(n_points), args.members, repeats, warmup)
    print(
        f"MLP 3x64, {n_points} 2D points, M={args.members}: batched {mlp['ms_batched']:.2f} ms, "
        f"loop {mlp['ms_loop']:.2f} ms, speed-up {mlp['speedup']:.2f}x"
    )
    schnet = compare_train_step("schnet", ammonia_data(n_molecules), args.members, repeats, warmup)
    print(
        f"SchNet, {n_molecules} NH3, M={args.members}: batched {schnet['ms_batched']:.2f} ms, "
        f"loop {schnet['ms_loop']:.2f} ms, speed-up {schnet['speedup']:.2f}x"
    )
    result = {
        "speedup_train_step": mlp["speedup"],
        "speedup_train_step_schnet": schnet["speedup"],
        "ms_batched": mlp["ms_batched"],
        "ms_loop": mlp["ms_loop"],
        "ms_batched_schnet": schnet["ms_batched"],
        "ms_loop_schnet": schnet["ms_loop"],
        "n_members": args.members,
        "repeats": repeats,
        "quick": args.quick,
        "machine": machine(),
    }
    print(f"threads: {result['machine']['torch_threads']}, device: {result['machine']['device']}")
    emit(result, args.json)
    return result


if __name__ == "__main__":
    main()
