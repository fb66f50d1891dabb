"""Matplotlib figures for toy surfaces and committees (no ipywidgets needed).

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so a
notebook shows it once (as image/png) and loops do not leak figures. Toy surfaces are
in arbitrary energy units with coordinates in Å; molecules use the reference's units
(pass ``energy_unit``/``length_unit``).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from ase import Atoms
from matplotlib.animation import FuncAnimation
from matplotlib.collections import LineCollection
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .. import uncertainty
from ..structures import Batch, labels_of

TOY_ENERGY = "arb. units"
TOY_LENGTH = "Å"
POINT_STYLES = {  # training points, candidates, selected points: one look everywhere
    "train": dict(marker="o", s=14, facecolor="white", edgecolor="black", linewidth=0.6, label="training points", zorder=4),
    "candidates": dict(marker=".", s=10, color="0.55", alpha=0.6, label="candidates", zorder=3),
    "selected": dict(marker="*", s=90, color="crimson", edgecolor="black", linewidth=0.5, label="selected", zorder=5),
}


# -- evaluation ------------------------------------------------------------------------
@dataclass
class SurfaceMaps:
    """Truth and committee on a grid. 1D: arrays [n]; 2D: arrays [n, n] indexed [iy, ix].

    x [n], y [n] or None; true, mean: energies; sigma: committee force σ per point;
    error: |mean − true|.
    """

    x: np.ndarray
    y: np.ndarray | None
    true: np.ndarray
    mean: np.ndarray | None = None
    sigma: np.ndarray | None = None

    @property
    def error(self) -> np.ndarray:
        return np.abs(self.mean - self.true)

    @property
    def n_dims(self) -> int:
        return 1 if self.y is None else 2


def surface_maps(surface, committee=None, n: int | None = None) -> SurfaceMaps:
    """Evaluate the surface (and the committee's mean energy and force σ) on its grid."""
    n = n or (400 if surface.n_dims == 1 else 80)
    grid = surface.grid(n)
    if surface.n_dims == 1:
        x, y, true = grid[0], None, grid[1]
        points = x[:, None]
    else:
        x, y, true = grid
        xx, yy = np.meshgrid(x, y)
        points = np.stack([xx.ravel(), yy.ravel()], axis=-1)
    maps = SurfaceMaps(x, y, true)
    if committee is not None:
        prediction = committee.predict([surface.particle(q) for q in points])
        maps.mean = prediction["energy_mean"].reshape(true.shape)
        maps.sigma = prediction["forces_std"].reshape(true.shape)
    return maps


def _coords(surface, atoms_list) -> np.ndarray:
    return surface.coordinates(atoms_list) if atoms_list is not None and len(atoms_list) else np.empty((0, surface.n_dims))


def _energy_limits(true: np.ndarray) -> tuple[float, float]:
    """Colour/axis range of the region of interest: the lower part of the true surface."""
    low = float(np.min(true))
    high = float(np.percentile(true, 75)) if true.ndim == 2 else float(np.max(true))
    return low, high


def _sigma_norm(*arrays: np.ndarray) -> LogNorm:
    values = np.concatenate([np.ravel(a) for a in arrays])
    values = values[np.isfinite(values) & (values > 0)]
    high = float(values.max()) if len(values) else 1.0
    low = max(float(values.min()) if len(values) else 1e-3, high * 1e-4)
    return LogNorm(low, high)


# -- landscapes --------------------------------------------------------------------------
def _mark_points(ax, surface, maps: SurfaceMaps, values, points: dict) -> None:
    """Scatter the point sets; in 1D a point sits on the panel's curve."""
    for kind, atoms_list in points.items():
        q = _coords(surface, atoms_list)
        if not len(q):
            continue
        if maps.n_dims == 1:
            ax.scatter(q[:, 0], np.interp(q[:, 0], maps.x, values), **POINT_STYLES[kind])
        else:
            ax.scatter(q[:, 0], q[:, 1], **POINT_STYLES[kind])


def _panel_2d(fig, ax, maps, values, norm, cmap, label, title):
    extent = (maps.x[0], maps.x[-1], maps.y[0], maps.y[-1])
    image = ax.imshow(values, origin="lower", extent=extent, norm=norm, cmap=cmap, interpolation="nearest")
    ax.contour(maps.x, maps.y, maps.true, levels=12, colors="white", linewidths=0.4, alpha=0.6)
    fig.colorbar(image, ax=ax, label=label, shrink=0.85)
    ax.set(xlabel=f"x ({TOY_LENGTH})", ylabel=f"y ({TOY_LENGTH})", title=title, aspect="equal")


def _panel_1d(ax, maps, values, label, title, log=False, limits=None):
    ax.plot(maps.x, values, color="C0")
    if log:
        ax.set_yscale("log")
    if limits is not None:
        ax.set_ylim(*limits)
    ax.set(xlabel=f"x ({TOY_LENGTH})", ylabel=label, title=title)


def surface_figure(surface, train=None, test=None, title: str | None = None) -> Figure:
    """The true energy alone (2D: a map, 1D: a curve), with training and test points if given."""
    maps = surface_maps(surface)
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    label = f"energy ({TOY_ENERGY})"
    title = title or f"true energy: {surface.surface_name}"
    if maps.n_dims == 2:
        _panel_2d(fig, ax, maps, maps.true, Normalize(*_energy_limits(maps.true), clip=True), "viridis", label, title)
    else:
        _panel_1d(ax, maps, maps.true, label, title)
    q = _coords(surface, test)
    if len(q):
        y = q[:, 1] if maps.n_dims == 2 else np.interp(q[:, 0], maps.x, maps.true)
        ax.scatter(q[:, 0], y, marker="x", s=10, color="0.3", lw=0.6, label=f"test points ({len(q)})", zorder=3)
    _mark_points(ax, surface, maps, maps.true, {"train": train})
    if train is not None or test is not None:
        ax.legend(loc="upper right", fontsize="small")
    return fig


def landscape(
    surface, committee, train=None, candidates=None, selected=None, title: str | None = None,
    maps: SurfaceMaps | None = None, sigma_norm=None,
) -> Figure:
    """Four panels: true energy, committee mean energy, committee force σ, |mean − true|.

    Training points, candidates and selected points (``ase.Atoms`` lists) are marked.
    ``sigma_norm`` fixes the σ colour scale (e.g. to compare rounds).
    """
    maps = maps or surface_maps(surface, committee)
    points = {"candidates": candidates, "train": train, "selected": selected}
    e_unit, f_unit = TOY_ENERGY, f"{TOY_ENERGY}/{TOY_LENGTH}"
    low, high = _energy_limits(maps.true)
    panels = [
        (maps.true, f"energy ({e_unit})", "true energy", False),
        (maps.mean, f"energy ({e_unit})", "committee mean energy", False),
        (maps.sigma, f"force σ ({f_unit})", "committee force σ", True),
        (maps.error, f"|mean − true| ({e_unit})", "energy error |mean − true|", True),
    ]
    fig = Figure(figsize=(16, 3.8) if maps.n_dims == 2 else (16, 3.4), layout="constrained")
    axes = fig.subplots(1, 4)
    for ax, (values, label, panel_title, log) in zip(axes, panels):
        if maps.n_dims == 2:
            norm = (sigma_norm or _sigma_norm(values)) if log and label.startswith("force") else (
                _sigma_norm(values) if log else Normalize(low, high, clip=True))
            _panel_2d(fig, ax, maps, values, norm, "magma" if log else "viridis", label, panel_title)
        else:
            limits = (low - 0.1 * (high - low), high) if not log else None
            _panel_1d(ax, maps, values, label, panel_title, log=log, limits=limits)
            if not log:
                ax.plot(maps.x, maps.true, color="0.6", lw=0.8, ls="--", label="true energy" if values is maps.mean else None)
        _mark_points(ax, surface, maps, values, points)
    handles, labels = axes[2].get_legend_handles_labels()
    if maps.n_dims == 1:
        more = axes[1].get_legend_handles_labels()
        handles, labels = handles + more[0][:1], labels + more[1][:1]
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=len(handles), frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def sigma_map(surface, committee, ax=None, maps: SurfaceMaps | None = None, norm=None, title: str | None = None):
    """Committee force σ over the surface (1D: a curve) on ``ax`` (a new figure when None)."""
    fig = ax.figure if ax is not None else Figure(figsize=(6, 4.5), layout="constrained")
    ax = ax if ax is not None else fig.subplots()
    maps = maps or surface_maps(surface, committee)
    label = f"force σ ({TOY_ENERGY}/{TOY_LENGTH})"
    title = title or "committee force σ"
    if maps.n_dims == 2:
        _panel_2d(fig, ax, maps, maps.sigma, norm or _sigma_norm(maps.sigma), "magma", label, title)
    else:
        _panel_1d(ax, maps, maps.sigma, label, title, log=True)
        if norm is not None:
            ax.set_ylim(norm.vmin, norm.vmax)
    return fig


def before_after(surface, before, after, train_before=None, train_after=None, labels=("round 0", "final")) -> Figure:
    """σ of two committees side by side on one colour scale, with their training points."""
    maps = [surface_maps(surface, c) for c in (before, after)]
    norm = _sigma_norm(maps[0].sigma, maps[1].sigma)
    fig = Figure(figsize=(12, 4.5) if surface.n_dims == 2 else (12, 3.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=surface.n_dims == 1)
    for ax, m, committee, train, name in zip(axes, maps, (before, after), (train_before, train_after), labels):
        n = f", {len(train)} training points" if train is not None else ""
        sigma_map(surface, committee, ax=ax, maps=m, norm=norm, title=f"{name}: committee force σ{n}")
        _mark_points(ax, surface, m, m.sigma, {"train": train})
    if train_before is not None:
        axes[0].legend(loc="upper right", fontsize="small")
    fig.suptitle("Uncertainty before and after active learning (same colour scale)")
    return fig


# -- attack trajectories -------------------------------------------------------------------
def attack_paths(attack_or_frames, surface) -> list[np.ndarray]:
    """Per-seed paths [T_b, n_dims] from an ``AttackResult`` or from trajectory frames
    (``ase.Atoms`` with ``attack_seed``/``attack_step`` in ``info``, as in trajectories.extxyz)."""
    if hasattr(attack_or_frames, "positions") and hasattr(attack_or_frames, "active"):
        result = attack_or_frames
        paths = []
        for b in range(len(result.seeds)):
            steps = np.flatnonzero(result.active[:, b])
            atom = np.flatnonzero(result.structure_index == b)[0]
            paths.append(result.positions[steps, atom, : surface.n_dims])
        return paths
    by_seed: dict[int, list[tuple[int, np.ndarray]]] = {}
    for atoms in attack_or_frames:
        if "attack_seed" in atoms.info:
            by_seed.setdefault(int(atoms.info["attack_seed"]), []).append(
                (int(atoms.info["attack_step"]), atoms.positions[0, : surface.n_dims])
            )
    if not by_seed:
        raise ValueError("no attack trajectories: frames need attack_seed and attack_step in atoms.info")
    return [np.array([p for _, p in sorted(by_seed[b], key=lambda t: t[0])]) for b in sorted(by_seed)]


def _path_value(surface, maps, q):
    """Where a 1D path point is drawn: on the σ curve."""
    return np.interp(q[:, 0], maps.x, maps.sigma)


def _draw_paths(ax, surface, maps, paths, upto: int | None = None):
    """All seeds' paths (up to step ``upto``) as one line collection and two scatters."""
    parts = [path if upto is None else path[: min(upto, len(path) - 1) + 1] for path in paths]
    if maps.n_dims == 2:
        xy = [part[:, :2] for part in parts]
    else:
        xy = [np.stack([part[:, 0], _path_value(surface, maps, part)], axis=-1) for part in parts]
    colour = "deepskyblue" if maps.n_dims == 2 else "tab:orange"
    lines = LineCollection(xy, colors=colour, linewidths=0.8 if maps.n_dims == 2 else 1.5, alpha=0.8, label="attack path")
    ax.add_collection(lines)
    starts, ends = np.array([p[0] for p in xy]), np.array([p[-1] for p in xy])
    return [
        lines,
        ax.scatter(starts[:, 0], starts[:, 1], s=10, color="white", edgecolor="black", lw=0.4, zorder=4, label="seed (start)"),
        ax.scatter(ends[:, 0], ends[:, 1], s=22, color="cyan", edgecolor="black", lw=0.4, zorder=5,
                   label="end point" if upto is None else "current point"),
    ]


def attack_figure(surface, committee, attack_or_frames, title: str | None = None, maps=None) -> Figure:
    """Attack trajectories (all seeds, all steps) drawn over the σ map of the committee that ran it."""
    maps = maps or surface_maps(surface, committee)
    paths = attack_paths(attack_or_frames, surface)
    fig = sigma_map(surface, committee, maps=maps,
                    title=title or f"adversarial attack: {len(paths)} seeds climbing σ")
    ax = fig.axes[0]
    _draw_paths(ax, surface, maps, paths)
    ax.legend(loc="upper right", fontsize="small")
    return fig


def _attack_drawer(surface, committee, attack_or_frames, every: int, maps, dpi: int):
    """(figure, draw(step), steps): the σ map and a function that draws the seeds at ``step``."""
    maps = maps or surface_maps(surface, committee)
    paths = attack_paths(attack_or_frames, surface)
    n_steps = max(len(p) for p in paths) - 1
    steps = list(range(0, n_steps + 1, every)) + ([n_steps] if n_steps % every else [])
    fig = sigma_map(surface, committee, maps=maps)
    fig.set_dpi(dpi)
    ax = fig.axes[0]
    drawn: list = []
    ax.set_title(f"adversarial attack on σ, step {n_steps}/{n_steps} ({len(paths)} seeds)")
    figure_png(fig, dpi=dpi)  # lay out once, then keep the positions: frames render ~2× faster
    fig.set_layout_engine("none")

    def draw(step):
        for artist in drawn:
            artist.remove()
        drawn[:] = _draw_paths(ax, surface, maps, paths, upto=step)
        ax.set_title(f"adversarial attack on σ, step {step}/{n_steps} ({len(paths)} seeds)")
        if step == steps[0]:
            ax.legend(loc="upper right", fontsize="small")
        return drawn

    return fig, draw, steps


def attack_animation(surface, committee, attack_or_frames, every: int = 3, maps=None, dpi: int = 72) -> FuncAnimation:
    """Seeds moving over the σ map step by step (``to_jshtml()`` gives self-contained HTML)."""
    fig, draw, steps = _attack_drawer(surface, committee, attack_or_frames, every, maps, dpi)
    return FuncAnimation(fig, draw, frames=steps, init_func=lambda: draw(steps[0]), interval=200, blit=False)


def attack_frames(surface, committee, attack_or_frames, every: int = 3, maps=None, dpi: int = 72) -> list[bytes]:
    """The attack animation pre-rendered as PNG frames (for a browser-side frame slider)."""
    fig, draw, steps = _attack_drawer(surface, committee, attack_or_frames, every, maps, dpi)
    frames = []
    for step in steps:
        draw(step)
        frames.append(figure_png(fig, dpi=dpi))
    return frames


def figure_png(fig: Figure, dpi: int = 80, tight: bool = False) -> bytes:
    """PNG bytes of a figure (``tight``: cropped to its content, as the inline backend does)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))
    return buffer.getvalue()


def round_attack(record, run_dir):
    """The attack of one round for plotting: its ``AttackResult`` when the round ran in this
    session, else (a resumed run: a loaded round has no proposals) the attack frames read back from
    ``run_dir/round_NNN/trajectories.extxyz`` (``ase.Atoms`` with ``attack_seed``/``attack_step``),
    or None when the round ran no attack (e.g. random or MD sampling)."""
    from pathlib import Path

    from ase.io import read

    attacks = [p.attack for p in record.proposals if getattr(p, "attack", None) is not None]
    if attacks:
        return attacks[0]
    path = Path(run_dir) / f"round_{record.round:03d}" / "trajectories.extxyz"
    frames = read(path, index=":") if path.exists() and path.stat().st_size else []
    frames = [atoms for atoms in frames if "attack_seed" in atoms.info]
    return frames or None


# -- committee quality ----------------------------------------------------------------------
def _test_predictions(committee, test: Sequence[Atoms]) -> dict:
    energies, forces = labels_of(test)
    prediction = committee.predict(test)
    free = ~Batch.from_atoms(test).fixed.numpy()
    index = np.concatenate([np.full(len(a), i) for i, a in enumerate(test)])
    per_atom = np.abs(prediction["forces_mean"] - forces).sum(-1) / np.maximum(free.sum(-1), 1)
    return {
        "energy": energies, "energy_pred": prediction["energy_mean"],
        "force": forces[free], "force_pred": prediction["forces_mean"][free],
        "sigma": prediction["forces_std"],
        "force_error": np.bincount(index, weights=per_atom) / np.bincount(index),
    }


def _parity_panel(ax, truth, predicted, quantity, unit):
    ax.scatter(truth, predicted, s=8, alpha=0.6)
    low, high = float(min(truth.min(), predicted.min())), float(max(truth.max(), predicted.max()))
    ax.plot([low, high], [low, high], color="0.4", lw=0.8, ls="--", label="y = x")
    mae = float(np.abs(predicted - truth).mean())
    ax.set(xlabel=f"reference {quantity} ({unit})", ylabel=f"committee {quantity} ({unit})",
           title=f"{quantity}: MAE {mae:.3g} {unit}", aspect="equal")
    ax.legend(loc="upper left", fontsize="small")


def parity(committee, test, energy_unit: str = TOY_ENERGY, length_unit: str = TOY_LENGTH, title=None) -> Figure:
    """Reference vs committee mean: energies and force components on a labeled test set."""
    p = _test_predictions(committee, test)
    fig = Figure(figsize=(10, 4.6), layout="constrained")
    ax_e, ax_f = fig.subplots(1, 2)
    _parity_panel(ax_e, p["energy"], p["energy_pred"], "energy", energy_unit)
    _parity_panel(ax_f, p["force"], p["force_pred"], "force", f"{energy_unit}/{length_unit}")
    fig.suptitle(title or f"Parity on {len(test)} test structures")
    return fig


def calibration(committee, test, energy_unit: str = TOY_ENERGY, length_unit: str = TOY_LENGTH, title=None) -> Figure:
    """Per-structure force σ vs force |error| (log-log), Spearman rank correlation in the title."""
    p = _test_predictions(committee, test)
    unit = f"{energy_unit}/{length_unit}"
    rho = uncertainty.spearman(p["sigma"], p["force_error"])
    fig = Figure(figsize=(5.2, 4.8), layout="constrained")
    ax = fig.subplots()
    sigma, error = np.clip(p["sigma"], 1e-8, None), np.clip(p["force_error"], 1e-8, None)
    ax.scatter(sigma, error, s=8, alpha=0.6)
    low, high = min(sigma.min(), error.min()), max(sigma.max(), error.max())
    ax.plot([low, high], [low, high], color="0.4", lw=0.8, ls="--", label="|error| = σ")
    ax.set(xscale="log", yscale="log", xlabel=f"committee force σ ({unit})", ylabel=f"force |error| ({unit})",
           title=title or f"Calibration: Spearman ρ = {rho:.2f}")
    ax.legend(loc="upper left", fontsize="small")
    return fig


def learning_curve(metrics: Sequence[dict], energy_unit: str = TOY_ENERGY, length_unit: str = TOY_LENGTH,
                   label: str | None = None) -> Figure:
    """Test force MAE (top) and energy MAE (bottom) vs round (left) and vs labels used (right), log y."""
    rounds = [m["round"] for m in metrics]
    labels_used = [m["labels_used"] for m in metrics]
    rows = [("force_mae", f"test force MAE ({energy_unit}/{length_unit})", "C0"),
            ("energy_mae", f"test energy MAE ({energy_unit})", "C1")]
    columns = [(rounds, "active-learning round"), (labels_used, "reference labels used")]
    fig = Figure(figsize=(10, 6), layout="constrained")
    axes = fig.subplots(2, 2)
    for row, (key, ylabel, colour) in enumerate(rows):
        values = [m["test"][key] for m in metrics]
        for col, (xs, xlabel) in enumerate(columns):
            ax = axes[row, col]
            ax.plot(xs, values, "o-", color=colour)
            ax.set(yscale="log", ylabel=ylabel, xlabel=xlabel)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].set_title("test error vs round")
    axes[0, 1].set_title("test error vs reference labels")
    fig.suptitle(f"Learning curve{': ' + label if label else ''}")
    return fig


def round_title(metrics: dict) -> str:
    """One line about a round: labels, training size and test errors."""
    test = metrics.get("test", {})
    text = f"round {metrics['round']}: {metrics['n_train']} training points, {metrics['labels_used']} labels used"
    if test:
        text += f" — test force MAE {test['force_mae']:.3g}, energy MAE {test['energy_mae']:.3g}"
    return text
