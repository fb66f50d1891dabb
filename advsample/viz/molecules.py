"""Molecules in notebooks: attack trajectories coloured by the committee's per-atom force σ.

* :func:`attack_trajectories` — frames (``ase.Atoms``) of an :class:`~advsample.attack.AttackResult`
  or of given trajectories.
* :func:`per_atom_sigma` — σ_F per atom and frame (eV/Å) from a committee, or from the frames.
* :func:`attack_ngl` — an ``nglview`` animation (live in Jupyter; its frames stored in the
  widget state through :func:`advsample.viz.embed.ngl_trajectory`, so a saved notebook replays
  it too). nglview streams coordinates only, so the colour (B-factor colour scheme) is each
  atom's largest σ over the trajectory.
* :func:`attack_strip` (PNG: a matplotlib figure of a few frames) and :func:`attack_slider`
  (every frame, pre-rendered, switched in the browser) — the static fallbacks, coloured per frame.
  Frames are captioned with the attack step; ``caption`` (e.g. :func:`cv_caption` of a
  collective variable the caller gives) says more.

Side views: each frame is centred and projected on the first and last principal axes of the
first frame (for NH3: in-plane and umbrella axis), so a pyramid that flips is seen flipping.
nglview and matplotlib are imported only when a function needs them.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from ase import Atoms

__all__ = ["attack_trajectories", "per_atom_sigma", "attack_ngl", "attack_strip", "attack_slider", "show_attack",
           "cv_caption"]


def attack_trajectories(source, seeds: Sequence[int] | int | None = None, every: int = 1) -> list[list[Atoms]]:
    """Trajectories as lists of ``Atoms``: from an ``AttackResult`` (``seeds``: which; default all),
    one trajectory (a list of ``Atoms``) or several (a list of lists). Every ``every``-th frame
    is kept, and the last one always."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if hasattr(source, "trajectory") and hasattr(source, "seeds"):
        if seeds is None:
            seeds = range(len(source.seeds))
        elif isinstance(seeds, (int, np.integer)):
            seeds = [int(seeds)]
        trajectories = [source.trajectory(int(b)) for b in seeds]
    elif len(source) and isinstance(source[0], Atoms):
        trajectories = [list(source)]
    else:
        trajectories = [list(t) for t in source]
    out = []
    for frames in trajectories:
        if not frames:
            continue
        keep = sorted(set(range(0, len(frames), every)) | {len(frames) - 1})
        out.append([frames[i] for i in keep])
    if not out:
        raise ValueError("no frames to show")
    return out


def per_atom_sigma(frames: Sequence[Atoms], committee=None) -> np.ndarray:
    """[T, N] per-atom force σ (eV/Å, std over members averaged over x, y, z).

    With a committee it is computed; otherwise taken from ``atoms.arrays["forces_std"]``,
    else the structure's ``info["committee_variance"]`` (√, the same for every atom), else zeros.
    """
    if committee is not None:
        prediction = committee.predict(list(frames))
        return prediction["forces_std_per_atom"].reshape(len(frames), -1)
    out = []
    for atoms in frames:
        if "forces_std" in atoms.arrays:
            out.append(np.asarray(atoms.arrays["forces_std"], dtype=float))
        elif "committee_variance" in atoms.info:
            out.append(np.full(len(atoms), np.sqrt(max(float(atoms.info["committee_variance"]), 0.0))))
        else:
            out.append(np.zeros(len(atoms)))
    return np.stack(out)


def attack_ngl(frames: Sequence[Atoms], sigma: np.ndarray | None = None, height: str = "300px",
               color_scale: str = "RdYlBu"):
    """An nglview animation of one trajectory, atoms coloured by σ (B-factor = 100 × max σ_F in eV/Å).

    Needs ``nglview``; the view also replays from a saved notebook (frames in the widget state).
    """
    from .embed import ngl_trajectory

    images = [Atoms(a.numbers, positions=a.positions, cell=a.cell, pbc=a.pbc) for a in frames]
    sigma = np.zeros((len(images), len(images[0]))) if sigma is None else np.asarray(sigma)
    images[0].set_array("bfactor", np.clip(100.0 * sigma.max(axis=0), 0.0, 999.0))
    params = {"colorScheme": "bfactor", "colorScale": color_scale, "colorReverse": True, "radiusScale": 1.0}
    view = ngl_trajectory(images, representation="ball+stick", repr_params=params, height=height)
    try:  # the live front end ignores the stored representation dict: ask it for the same
        view.clear_representations()
        view.add_representation("ball+stick", color_scheme="bfactor", colorScale=color_scale, colorReverse=True)
    except Exception:  # noqa: BLE001 - a view without a front end keeps the stored representation
        pass
    return view


# -- static fallback -------------------------------------------------------------------------
def _projection_axes(atoms: Atoms) -> np.ndarray:
    """[2, 3]: first (horizontal) and last (vertical) principal axes of a centred geometry."""
    x = atoms.positions - atoms.positions.mean(0)
    if len(atoms) < 3:
        return np.eye(3)[[0, 2]]
    _, _, vt = np.linalg.svd(x, full_matrices=True)
    axes = vt[[0, 2]]
    # orient the vertical axis so that the heaviest atom starts above the centre (N up for NH3)
    heaviest = int(np.argmax(atoms.numbers))
    if x[heaviest] @ axes[1] < 0:
        axes[1] *= -1
    return axes


def _draw(ax, atoms: Atoms, sigma: np.ndarray, axes: np.ndarray, norm, cmap, extent: float, title: str):
    from ase.data import covalent_radii

    xy = (atoms.positions - atoms.positions.mean(0)) @ axes.T
    radii = covalent_radii[atoms.numbers]
    i, j = np.triu_indices(len(atoms), k=1)
    d = np.linalg.norm(atoms.positions[i] - atoms.positions[j], axis=-1)
    for a, b in zip(i[d < 1.2 * (radii[i] + radii[j])], j[d < 1.2 * (radii[i] + radii[j])]):
        ax.plot(xy[[a, b], 0], xy[[a, b], 1], color="0.5", lw=2, zorder=1)
    # markers in data units (0.45 covalent radii), so a bigger panel shows a bigger molecule
    fig = ax.figure
    points_per_A = ax.get_position().width * fig.get_figwidth() * 72 / (2 * extent)
    sizes = (2 * 0.45 * radii * points_per_A) ** 2
    scatter = ax.scatter(xy[:, 0], xy[:, 1], s=sizes, c=sigma, cmap=cmap, norm=norm, edgecolors="k", zorder=2)
    for k, z in enumerate(atoms.get_chemical_symbols()):
        ax.annotate(z, xy[k], ha="center", va="center", fontsize=9, zorder=3)
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    return scatter


def _caption(atoms: Atoms) -> str:
    return f"step {atoms.info['attack_step']}" if "attack_step" in atoms.info else ""


def cv_caption(collective_variable: Callable[[Atoms], float], name: str = "h", unit: str = "Å",
               fmt: str = "+.2f") -> Callable[[Atoms], str]:
    """A frame caption: the attack step and ``name = value unit`` of ``collective_variable(atoms)``,
    e.g. ``cv_caption(umbrella_height)`` -> "step 4, h = +0.21 Å"."""
    def caption(atoms: Atoms) -> str:
        value = f"{name} = {format(float(collective_variable(atoms)), fmt)}{' ' + unit if unit else ''}"
        return ", ".join(part for part in (_caption(atoms), value) if part)

    return caption


def _frame_setup(frames, sigma):
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    sigma = np.asarray(sigma, dtype=float)
    axes = _projection_axes(frames[0])
    extent = max(float(np.abs((a.positions - a.positions.mean(0)) @ axes.T).max()) for a in frames) + 0.5
    norm = Normalize(0.0, max(float(sigma.max()), 1e-6))
    return sigma, axes, extent, norm, colormaps["plasma"]


def attack_strip(frames: Sequence[Atoms], sigma: np.ndarray, n_panels: int = 5,
                 caption: Callable[[Atoms], str] | None = None, title: str | None = None):
    """A matplotlib figure: ``n_panels`` frames of one trajectory side by side, atoms coloured by σ_F."""
    import matplotlib.pyplot as plt

    frames = list(frames)
    sigma, axes, extent, norm, cmap = _frame_setup(frames, sigma)
    picks = np.unique(np.linspace(0, len(frames) - 1, min(n_panels, len(frames))).round().astype(int))
    fig, panels = plt.subplots(1, len(picks), figsize=(3.0 * len(picks) + 1.0, 3.4), squeeze=False)
    caption = caption or _caption
    for ax, t in zip(panels[0], picks):
        scatter = _draw(ax, frames[t], sigma[t], axes, norm, cmap, extent, caption(frames[t]))
    fig.colorbar(scatter, ax=list(panels[0]), label="per-atom force σ (eV/Å)", shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def attack_slider(frames: Sequence[Atoms], sigma: np.ndarray, caption: Callable[[Atoms], str] | None = None,
                  title: str | None = None, dpi: int = 100, interval_ms: int = 150):
    """Every frame pre-rendered (PNG, about 420 px wide at the default ``dpi``) behind a browser-side
    slider (:func:`advsample.viz.embed.frame_slider`)."""
    from matplotlib.figure import Figure

    from .embed import frame_slider

    frames = list(frames)
    sigma, axes, extent, norm, cmap = _frame_setup(frames, sigma)
    caption = caption or _caption
    images, labels = [], []
    for t, atoms in enumerate(frames):
        fig = Figure(figsize=(5.0, 4.4))  # ~420 px wide at dpi 100; not pyplot: dozens of frames would all stay open
        ax = fig.subplots()
        scatter = _draw(ax, atoms, sigma[t], axes, norm, cmap, extent, caption(atoms))
        fig.colorbar(scatter, ax=ax, label="per-atom force σ (eV/Å)", shrink=0.8)
        images.append(fig)
        labels.append(caption(atoms) or f"frame {t}")
    return frame_slider(images, labels, title=title, dpi=dpi, interval_ms=interval_ms)


def show_attack(source, committee=None, seed: int = 0, every: int = 2, live: bool = True,
                n_panels: int = 5, title: str | None = None, caption: Callable[[Atoms], str] | None = None):
    """Display one attack trajectory: nglview animation (``live`` and nglview importable),
    a browser-side frame slider and a PNG strip (the fallbacks for saved notebooks and reports),
    frames captioned by ``caption(atoms)`` (default: the attack step).

    Returns (frames, sigma [T, N] eV/Å).
    """
    from IPython.display import display

    frames = attack_trajectories(source, seeds=seed, every=every)[0]
    sigma = per_atom_sigma(frames, committee)
    if live:
        try:
            display(attack_ngl(frames, sigma))
        except ImportError:
            pass
    display(attack_slider(frames, sigma, caption=caption, title=title))
    from . import show

    show(attack_strip(frames, sigma, n_panels=n_panels, caption=caption, title=title))  # closed after: shown once
    return frames, sigma
