"""Figures of the periodic adatom study (notebook 05): the slab and its cell, σ along the hop path,
NEB profiles per round (eV), survival curves of committee MD. Bare ``Figure``s: show with
:func:`advsample.viz.show`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms
from matplotlib.figure import Figure

from ..metrics import survival_curve


def slab_views(hop_path: Sequence[Atoms]) -> Figure:
    """Top view of the first image repeated 2×2 (the periodic cell) and side view of the middle (bridge) image."""
    from ase.visualize.plot import plot_atoms

    fig = Figure(figsize=(8, 3.5), layout="constrained")
    top, side = fig.subplots(1, 2)
    plot_atoms(hop_path[0].repeat((2, 2, 1)), top, radii=0.8, show_unit_cell=2)
    plot_atoms(hop_path[len(hop_path) // 2], side, radii=0.8, rotation="-90x", show_unit_cell=2)
    top.set_title("top view, 2×2 cells", fontsize=10)
    side.set_title("side view, EMT bridge", fontsize=10)
    for ax in (top, side):
        ax.set_axis_off()
    return fig


def sigma_along_path(records, hop_path: Sequence[Atoms]) -> Figure:
    """Per-atom force σ (eV/Å) of the adatom (last atom) and the largest over the slab, per NEB image,
    for the first and the last round's committee."""
    fig = Figure(figsize=(6, 3), layout="constrained")
    ax = fig.subplots()
    for record in (records[0], records[-1]):
        sigma = record.committee.predict(hop_path)["forces_std_per_atom"].reshape(len(hop_path), -1)
        ax.plot(sigma[:, -1], "o-", label=f"Au, round {record.round}")
        ax.plot(sigma[:, :-1].max(1), "s--", label=f"max over Al, round {record.round}")
    ax.set(xlabel="NEB image (EMT hop path)", ylabel="force σ (eV/Å)")
    ax.legend(fontsize=8)
    return fig


def neb_profiles(records) -> Figure:
    """The committee's NEB energy profile (eV above its first image) per round against EMT's."""
    fig = Figure(figsize=(6, 3.2), layout="constrained")
    ax = fig.subplots()
    extra = records[0].metrics["extra"]
    ax.plot(extra["neb_reference_hop_fraction"], extra["neb_reference_profile_eV"], "k-o", label="EMT")
    for record in records:
        e = record.metrics["extra"]
        if "neb_profile_eV" in e:
            ax.plot(e["neb_hop_fraction"], e["neb_profile_eV"], "--.", label=f"committee, round {record.round}")
    ax.set(xlabel="adatom progress along the hop", ylabel="energy − first image (eV)")
    ax.legend(fontsize=8)
    return fig


def survival_curves(records, temperature_K: float) -> Figure:
    """Fraction of committee-MD runs still stable against time (fs), first and last round."""
    fig = Figure(figsize=(6, 3), layout="constrained")
    ax = fig.subplots()
    for record in (records[0], records[-1]):
        times, fraction = survival_curve(record.metrics["extra"]["stability"])
        ax.step(times, fraction, where="post", label=f"round {record.round} ({record.metrics['labels_used']} labels)")
    ax.set(xlabel="time (fs)", ylabel="runs still stable", ylim=(-0.05, 1.05),
           title=f"committee MD at {temperature_K:g} K")
    ax.legend(fontsize=8)
    return fig


def adatom_moves(attack) -> np.ndarray:
    """[B] lateral distance (Å) the adatom (last atom) moved from its seed to its last attack frame."""
    return np.array([np.linalg.norm(attack.trajectory(b)[-1].positions[-1, :2] - attack.trajectory(b)[0].positions[-1, :2])
                     for b in range(len(attack.seeds))])
