"""Figures of the NH3 inversion study (notebook 03): umbrella heights (Å), barrier (kcal/mol), MD stability.

Every figure is a bare matplotlib ``Figure`` (no pyplot); show it with :func:`advsample.viz.show`.
Attacks come as an ``AttackResult`` or as its frames read back from disk
(:func:`advsample.viz.plots.round_attack`); both give the same per-seed trajectories.
What is drawn comes in as arguments: the heights as values, or the function that computes
them (``heights(structures) -> [B]`` in Å, e.g. ``advsample.systems.ammonia.umbrella_heights``);
viz imports no system.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from ase import Atoms
from matplotlib.figure import Figure

Heights = Callable[[Sequence[Atoms]], np.ndarray]  # structures -> [B] collective variable (Å)

PLANAR_A = 0.05  # |h| below this counts as near planar (Å)


def seed_trajectories(attack) -> list[list[Atoms]]:
    """Per seed, its active frames in step order, from an ``AttackResult`` or from frames with
    ``attack_seed``/``attack_step`` in ``info`` (``trajectories.extxyz``)."""
    if hasattr(attack, "trajectory") and hasattr(attack, "seeds"):
        return [attack.trajectory(b) for b in range(len(attack.seeds))]
    by_seed: dict[int, list[Atoms]] = {}
    for atoms in attack:
        by_seed.setdefault(int(atoms.info["attack_seed"]), []).append(atoms)
    return [sorted(by_seed[b], key=lambda a: int(a.info["attack_step"])) for b in sorted(by_seed)]


def attack_heights(attack, heights: Heights) -> tuple[list[list[Atoms]], np.ndarray]:
    """(per-seed trajectories, ``heights`` of every frame [T, B] (Å), NaN after a seed stopped)."""
    trajectories = seed_trajectories(attack)
    n_steps = max(int(frames[-1].info["attack_step"]) for frames in trajectories) + 1
    values = np.full((n_steps, len(trajectories)), np.nan)
    for b, frames in enumerate(trajectories):
        steps = [int(a.info["attack_step"]) for a in frames]
        values[steps, b] = heights(frames)
    return trajectories, values


def closest_seed(heights: np.ndarray) -> int:
    """The seed whose trajectory came closest to planar (smallest |h| at any step)."""
    return int(np.nanargmin(np.nanmin(np.abs(heights), axis=0)))


def height_histogram(train_heights: Sequence[float], path_heights: Sequence[float],
                     train_label: str = "train pool", path_label: str = "test: inversion path") -> Figure:
    """Umbrella heights h (Å) of the training pool (histogram) against those of the test set's
    inversion path (ticks on h's axis; h = 0: planar)."""
    h_train, h_path = np.asarray(train_heights, dtype=float), np.asarray(path_heights, dtype=float)
    fig = Figure(figsize=(7.5, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.hist(h_train, bins=30, label=f"{train_label} ({len(h_train)} structures)")
    ax.plot(h_path, np.zeros(len(h_path)), "k|", ms=20, label=f"{path_label} ({len(h_path)} points)")
    ax.set(xlabel="umbrella height h (Å)", ylabel="structures",
           title=f"{train_label}: min |h| = {np.abs(h_train).min():.3f} Å; planar (the transition state) at h = 0")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=8)
    return fig


def height_traces(heights: np.ndarray, seed: int, train_edge_A: float) -> Figure:
    """Umbrella height of every seed along the attack (grey), ``seed`` highlighted."""
    fig = Figure(figsize=(7.5, 3.6), layout="constrained")
    ax = fig.subplots()
    steps = np.arange(len(heights))
    ax.plot(steps, heights, color="0.7", lw=0.5)
    ax.plot(steps, heights[:, seed], color="C3", lw=2, label=f"seed {seed} (closest to planar)")
    ax.axhspan(-PLANAR_A, PLANAR_A, color="C2", alpha=0.2, label=f"|h| < {PLANAR_A} Å (near planar)")
    ax.axhline(train_edge_A, color="k", ls=":", lw=1)
    ax.axhline(-train_edge_A, color="k", ls=":", lw=1, label=f"train pool edge |h| = {train_edge_A:.3f} Å")
    ax.set(xlabel="attack step", ylabel="umbrella height h (Å)", title=f"round-1 attack: {heights.shape[1]} seeds")
    ax.legend(fontsize=8, loc="upper right")
    return fig


def candidate_heights(records: Sequence, heights: Heights, train_edge_A: float) -> Figure:
    """|h| (``heights``, Å) of each round's attack candidates (grey dots) and labeled picks (circles),
    against the training pool's smallest |h| ``train_edge_A``."""
    fig = Figure(figsize=(7.5, 3.6), layout="constrained")
    ax = fig.subplots()
    for record in records[1:]:
        h_cand = np.abs(heights(record.candidates)) if record.candidates else np.array([])
        h_sel = np.abs(heights(record.selected)) if record.selected else np.array([])
        jitter = np.random.default_rng(record.round).uniform(-0.15, 0.15, len(h_cand))
        first = record.round == 1
        ax.plot(record.round + jitter, h_cand, ".", color="0.6", ms=3, label="attack candidates" if first else None)
        ax.plot(np.full(len(h_sel), record.round), h_sel, "o", mfc="none", color="C0", label="labeled picks" if first else None)
    ax.axhline(train_edge_A, color="k", ls=":", label="train pool min |h|")
    ax.axhline(PLANAR_A, color="C2", ls="--", label=f"|h| = {PLANAR_A} Å")
    ax.set(xlabel="active-learning round", ylabel="|umbrella height| (Å)", xticks=range(1, max(len(records), 2)),
           title="how close to planar each round's attack gets")
    ax.legend(fontsize=8)
    return fig


def barrier_and_md(rows: Sequence[dict], reference_barrier_kcal_mol: float, md_temperature_K: float) -> Figure:
    """Committee inversion barrier (kcal/mol) against the reference, and the stable fraction of
    committee-MD runs, per number of labels added (``rows``: dicts with ``labels_used``,
    ``barrier_kcal_mol`` and ``md_stable_fraction``, e.g. ``advsample.systems.ammonia.round_row``)."""
    labels = [row["labels_used"] for row in rows]
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    ref = reference_barrier_kcal_mol
    left.plot(labels, [row["barrier_kcal_mol"] for row in rows], "o-", label="SchNet committee")
    left.axhline(ref, color="k", label=f"GFN2-xTB ({ref:.2f})")
    left.axhspan(ref - 0.5, ref + 0.5, color="k", alpha=0.1, label="±0.5 kcal/mol")
    left.set(xlabel="xTB labels added", ylabel="inversion barrier (kcal/mol)", title="relaxed inversion barrier")
    left.legend(fontsize=8)
    right.plot(labels, [row["md_stable_fraction"] for row in rows], "s-", color="C1")
    right.set(ylim=(-0.05, 1.05), xlabel="xTB labels added", ylabel="stable fraction",
              title=f"committee MD at {md_temperature_K:.0f} K that stays physical")
    return fig
