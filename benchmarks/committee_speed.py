"""Committee speed: batched vs member loop, training per round through the fixed geometry vs per-forward, MACE, the attack.

    python benchmarks/committee_speed.py [--members 5] [--repeats 30] [--threads N] [--quick] [--json]

* Training step (forward + force-loss backward with create_graph + Adam, as
  ``train_committee`` per full-batch epoch), one batched committee of M members vs a
  Python loop over M one-member committees, timed in alternation, median of
  ``--repeats``: MLP (3 × 64, SiLU) on 128 points of the 2D double well; SchNet (32
  features, 2 interactions) on 118 NH3 geometries with their packaged DFT labels.
  Goal: batched ≥ 1.5× the loop.
* Training per round: ``train_committee`` for ``--epochs`` epochs (no early stop) through
  the fixed geometry (the default: pairs, radial basis and its derivative computed once per
  training set, forces by the chain rule through them) and with neighbour lists and geometry
  rebuilt on every forward pass (``NeighbourCache(0)``, ``TrainConfig(reuse_geometry=False)``),
  same seed and settings, alternated ``--rounds`` times (median); on the periodic slab also
  per-forward with ASE's neighbour lists (the package's lists before vesin),
  on NH3 (118 structures), ethanol (100 GFN2-xTB MD frames) and a periodic Al(100) slab
  with an Au adatom (EMT labels, 30 rattled structures, bottom layer fixed). The final training losses of both paths
  are reported (identical lists give identical numbers). Goal: ≥ 2×.
* Neighbour lists: ms per periodic list (cutoff 5 Å) with ASE's ``neighbor_list('ijS')`` and with
  vesin (the package's), alternated, on the slab and on a 108-atom fcc Al cell, with a check
  that both give the same pairs. Every MD step and attack step on a periodic cell builds one.
* MACE committee (if the mace extra is installed): one training step, M = 3, on NH3.
* The attack (SchNet, 64 NH3 seeds): ms per step against one bare evaluation of the
  committee's σ²_F gradient with respect to the positions on the same batch.

With ``--json`` the last line is one JSON object (device included: CUDA when visible).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import emit, interleaved_median_ms, machine, set_threads, synchronize  # noqa: E402

import torch  # noqa: E402

from advsample.committee import Committee  # noqa: E402
from advsample.models import MLPCommittee, SchNetCommittee  # noqa: E402
from advsample.models.neighbours import NeighbourCache  # noqa: E402
from advsample.structures import labels_of  # noqa: E402
from advsample.train import TrainConfig, _Targets, train_committee, training_step  # noqa: E402

LEFT_WELL = [(-1.5, 0.0), (-1.2, 1.2)]


def mlp_data(n: int = 128):
    from advsample.surfaces import double_well_2d

    return double_well_2d().sample(n, seed=0, max_energy=0.0, region=LEFT_WELL)


def ammonia_data(n: int = 118):
    from advsample.systems.ammonia import ammonia_dataset

    return ammonia_dataset()[:n]


def ethanol_data(n: int = 100):
    from advsample.systems.ethanol import ethanol_dataset

    return ethanol_dataset(n, n_scan=0, n_test_thermal=0)[0]


def slab_data(n: int = 30, seed: int = 0):
    """Rattled Al(100) slabs (3 layers, 2 × 2) with an Au adatom, bottom layer fixed, EMT labels."""
    import numpy as np
    from ase.build import add_adsorbate, fcc100
    from ase.calculators.emt import EMT
    from ase.constraints import FixAtoms

    from advsample.structures import labeled

    base = fcc100("Al", (2, 2, 3), vacuum=6.0)
    add_adsorbate(base, "Au", 1.8, "hollow")
    base.set_constraint(FixAtoms(indices=[a.index for a in base if a.tag == 3]))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = base.copy()
        atoms.set_positions(atoms.positions + rng.normal(scale=0.08, size=atoms.positions.shape))
        atoms.calc = EMT()
        out.append(labeled(atoms, atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False)))
    return out


def ase_neighbour_list(positions, cell, pbc, cutoff):
    """The package's lists before vesin: ``ase.neighborlist.neighbor_list('ijS')`` (the same pairs)."""
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    i, j, shift = neighbor_list("ijS", Atoms(positions=positions, cell=cell, pbc=pbc), float(cutoff))
    return tuple(torch.as_tensor(a, dtype=torch.long) for a in (i, j, shift))


def train_round(data, species, epochs: int, rounds: int, n_members: int) -> dict:
    """Seconds of ``train_committee`` per round: the fixed geometry (pairs and radial features once per
    training set) vs neighbour lists and geometry rebuilt on every forward pass; for periodic data also
    the per-forward path with ASE's neighbour lists (the package's before vesin)."""
    from advsample.committee import default_device
    from advsample.models import neighbours

    periodic = any(atoms.pbc.any() for atoms in data)
    times = {"cached": [], "per_forward": [], **({"per_forward_ase": []} if periodic else {})}
    losses = {}
    vesin_list = neighbours.neighbour_list
    for _ in range(rounds):
        for path in times:
            committee = Committee(SchNetCommittee(n_members, species=species, seed=0)).to(default_device())
            if path != "cached":
                committee.model.neighbour_cache = NeighbourCache(0)
            config = TrainConfig(epochs=epochs, patience=10 * epochs, progress=False, seed=0,
                                 reuse_geometry=path == "cached")
            neighbours.neighbour_list = ase_neighbour_list if path == "per_forward_ase" else vesin_list
            try:
                start = time.perf_counter()
                history = train_committee(committee, data, None, config)
                synchronize()
                times[path].append(time.perf_counter() - start)
            finally:
                neighbours.neighbour_list = vesin_list
            losses[path] = history.train_loss[-1]
    seconds = {path: statistics.median(t) for path, t in times.items()}
    result = {
        "s_cached": seconds["cached"],
        "s_per_forward": seconds["per_forward"],
        "speedup": seconds["per_forward"] / seconds["cached"],
        "final_train_loss_cached": losses["cached"],
        "final_train_loss_per_forward": losses["per_forward"],
        "epochs": epochs,
        "n_structures": len(data),
    }
    if periodic:
        result.update({"s_per_forward_ase": seconds["per_forward_ase"],
                       "speedup_vs_ase_lists": seconds["per_forward_ase"] / seconds["cached"],
                       "final_train_loss_per_forward_ase": losses["per_forward_ase"]})
    return result


def neighbour_lists(repeats: int, warmup: int) -> dict:
    """ms per periodic neighbour list, ASE vs vesin (:func:`advsample.models.neighbours.neighbour_list`)."""
    from ase.build import bulk

    from advsample.models.neighbours import neighbour_list

    def pairs(lists):
        return sorted(zip(lists[0].tolist(), lists[1].tolist(), map(tuple, lists[2].tolist())))

    result = {}
    cells = {"slab": slab_data(1)[0], "fcc_Al_108": bulk("Al", cubic=True).repeat((3, 3, 3))}
    for name, atoms in cells.items():
        atoms.rattle(0.05, seed=1)
        arguments = (atoms.positions, atoms.cell.array, atoms.pbc, 5.0)
        ase_pairs = pairs(ase_neighbour_list(*arguments))
        ms = interleaved_median_ms({"ase": lambda: ase_neighbour_list(*arguments),
                                    "vesin": lambda: neighbour_list(*arguments)}, repeats, warmup)
        result[name] = {"n_atoms": len(atoms), "n_pairs": len(ase_pairs),
                        "same_pairs": ase_pairs == pairs(neighbour_list(*arguments)),
                        "ms_ase": ms["ase"], "ms_vesin": ms["vesin"], "speedup": ms["ase"] / ms["vesin"]}
    return result


def mace_step_ms(data, repeats: int, warmup: int) -> dict | None:
    """One MACE committee training step (M = 3, 16 channels, l ≤ 1 features, 2 interactions), or None."""
    try:
        from advsample.models.mace import MACECommittee
    except ImportError:
        return None
    from advsample.committee import default_device

    committee = Committee(MACECommittee(3, species=(1, 7), hidden_irreps="16x0e + 16x1o")).to(default_device())
    energies, _ = labels_of(data)
    committee.fit_normalization(energies, [len(a) for a in data])
    committee.train()
    targets = _Targets(data, committee)
    step = full_batch_step(committee, targets, TrainConfig(progress=False),
                         torch.optim.Adam(committee.model.parameters(), lr=1e-3))
    ms = interleaved_median_ms({"mace": step}, repeats, warmup)["mace"]
    return {"ms_train_step": ms, "n_members": 3, "n_structures": len(data)}


def attack_vs_gradient(n_seeds: int, n_steps: int, repeats: int, n_members: int) -> dict:
    """ms per attack step vs one bare σ²_F gradient evaluation on the same seeds (SchNet, NH3)."""
    from advsample.attack import AttackConfig, attack
    from advsample.committee import default_device
    from advsample.structures import Batch

    data = ammonia_data(n_seeds)
    committee = Committee(SchNetCommittee(n_members, seed=0)).to(default_device())
    energies, _ = labels_of(data)
    committee.fit_normalization(energies, [len(a) for a in data])
    config = AttackConfig(kT=0.5, n_steps=n_steps, learning_rate=0.01)
    batch = Batch.from_atoms(data).to(committee.device, committee.dtype)

    def gradient():
        positions = batch.positions.clone().requires_grad_(True)
        variance = committee(batch, forces=True, create_graph=True, positions=positions).force_variance.sum()
        torch.autograd.grad(variance, positions)

    def run_attack():
        attack(committee, data, energies, config, progress=False)

    ms = interleaved_median_ms({"attack": run_attack, "gradient": gradient}, repeats, 1)
    per_step = ms["attack"] / (n_steps + 1)  # n_steps updates, n_steps + 1 evaluations
    return {"ms_attack_step": per_step, "ms_bare_gradient": ms["gradient"],
            "overhead": per_step / ms["gradient"], "n_seeds": n_seeds, "n_steps": n_steps}


def make_committee(kind: str, n_members: int, seed: int = 0, **options) -> Committee:
    if kind == "mlp":
        model = MLPCommittee(n_members, options.get("hidden", (64, 64, 64)), seed=seed)
    elif kind == "schnet":
        model = SchNetCommittee(n_members, seed=seed, **{k: v for k, v in options.items() if k != "hidden"})
    else:
        raise ValueError(f"unknown committee kind {kind!r}")
    from advsample.committee import default_device

    return Committee(model).to(default_device())


def full_batch_step(committee: Committee, targets: _Targets, config: TrainConfig, optimizer):
    """One full-batch step of train_committee (:func:`advsample.train.training_step`)."""
    return lambda: training_step(committee, targets, config, optimizer)


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
    batched_step = full_batch_step(batched, targets, config, torch.optim.Adam(batched.model.parameters(), lr=1e-3))
    single_steps = [
        full_batch_step(c, targets, config, torch.optim.Adam(c.model.parameters(), lr=1e-3)) for c in singles
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
    parser.add_argument("--epochs", type=int, default=50, help="epochs per timed training round")
    parser.add_argument("--rounds", type=int, default=3, help="alternated training rounds per path (median)")
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
    epochs, rounds = (3, 1) if args.quick else (args.epochs, args.rounds)
    n_slabs = 4 if args.quick else 30
    training = {
        "ammonia": train_round(ammonia_data(n_molecules), (1, 7), epochs, rounds, args.members),
        "ethanol": train_round(ethanol_data(8 if args.quick else 100), (1, 6, 8), epochs, rounds, args.members),
        "slab": train_round(slab_data(n_slabs), (13, 79), epochs, rounds, args.members),
    }
    for system, t in training.items():
        print(
            f"training round, SchNet {system} ({t['n_structures']} structures, {epochs} epochs, M={args.members}): "
            f"fixed geometry {t['s_cached']:.2f} s, per-forward {t['s_per_forward']:.2f} s, "
            f"speed-up {t['speedup']:.2f}x (final loss {t['final_train_loss_cached']:.5g} vs "
            f"{t['final_train_loss_per_forward']:.5g})"
            + (f"; per-forward with ASE's lists {t['s_per_forward_ase']:.2f} s ({t['speedup_vs_ase_lists']:.2f}x)"
               if "s_per_forward_ase" in t else "")
        )
    lists = neighbour_lists(repeats, warmup)
    for name, t in lists.items():
        print(f"neighbour list, {name} ({t['n_atoms']} atoms, {t['n_pairs']} pairs): ASE {t['ms_ase']:.2f} ms, "
              f"vesin {t['ms_vesin']:.3f} ms ({t['speedup']:.0f}x), same pairs: {t['same_pairs']}")
    mace = mace_step_ms(ammonia_data(n_molecules), repeats, warmup)
    if mace is None:
        print("MACE: extra not installed (pip install -e '.[mace]'), skipped")
    else:
        print(f"MACE committee (M=3), {n_molecules} NH3: training step {mace['ms_train_step']:.1f} ms")
    n_seeds, n_steps = (8, 3) if args.quick else (64, 30)
    attack_timing = attack_vs_gradient(n_seeds, n_steps, 1 if args.quick else 3, args.members)
    print(
        f"attack, SchNet, {n_seeds} NH3 seeds: {attack_timing['ms_attack_step']:.2f} ms per step, bare σ² "
        f"gradient {attack_timing['ms_bare_gradient']:.2f} ms ({attack_timing['overhead']:.2f}x)"
    )
    result = {
        "speedup_train_step": mlp["speedup"],
        "speedup_train_step_schnet": schnet["speedup"],
        "ms_batched": mlp["ms_batched"],
        "ms_loop": mlp["ms_loop"],
        "ms_batched_schnet": schnet["ms_batched"],
        "ms_loop_schnet": schnet["ms_loop"],
        "training_round": training,
        "speedup_training_ammonia": training["ammonia"]["speedup"],
        "speedup_training_ethanol": training["ethanol"]["speedup"],
        "speedup_training_slab": training["slab"]["speedup"],
        "neighbour_lists": lists,
        "mace": mace,
        "attack": attack_timing,
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
