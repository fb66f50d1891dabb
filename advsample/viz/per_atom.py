"""One structure coloured by a per-atom value (the committee's force σ): nglview with a colour bar,
and a static matplotlib figure for saved notebooks and offline reports.

* :func:`per_atom_ngl` — an ``nglview`` view (ball and stick, the unit cell of a periodic
  structure) coloured by the values through the B-factor column: B = 100 × value / ``vmax``
  (clipped to 0–100), NGL's ``RdYlBu`` scale reversed on the fixed domain [0, 100], so the colours
  mean the same in every view with the same ``vmax``. nglview draws no colour bar: see
  :func:`value_legend`.
* :func:`value_legend` — the colour bar of that view (matplotlib ``RdYlBu_r``, 0 to ``vmax``).
* :func:`per_atom_figure` — the static figure: the structure seen along z (x, y in Å; atoms
  coloured by the value, drawn back to front; the cell's edges) and the value per atom against
  the atom index, marked by element.
* :func:`show_per_atom` — all three in a notebook (the live view only with ``live`` and nglview).
* :func:`results_structure` — the structure and committee a results folder of
  ``benchmarks/headline.py`` (``committees/*.pt``, ``failures/*.extxyz``, ``picked/*.extxyz``)
  holds: the last frame of its first failed test run, else its first labeled pick.

Values are per atom [N]; σ of the committee force is :func:`advsample.viz.molecules.per_atom_sigma`
(std over members, averaged over x, y, z; eV/Å). nglview and matplotlib are imported when needed.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from ase import Atoms

__all__ = ["per_atom_ngl", "value_legend", "per_atom_figure", "show_per_atom", "results_structure",
           "NGL_SCALE", "SIGMA_LABEL"]

NGL_SCALE = ("RdYlBu", "RdYlBu_r")
"""(NGL colour scale used reversed, the same scale in matplotlib): blue low, red high."""
SIGMA_LABEL = "per-atom force σ (eV/Å)"


def _checked(atoms: Atoms, values) -> np.ndarray:
    values = np.asarray(values, dtype=float).reshape(-1)
    if len(values) != len(atoms):
        raise ValueError(f"values must have one entry per atom: {len(atoms)} atoms, got {len(values)} values")
    if not np.isfinite(values).all():
        raise ValueError(f"values must be finite, got {values[~np.isfinite(values)][:3]} at atoms "
                         f"{np.flatnonzero(~np.isfinite(values))[:3].tolist()}")
    return values


def _vmax(values: np.ndarray, vmax: float | None) -> float:
    return float(vmax) if vmax is not None else max(float(values.max()), 1e-12)


def bfactors(values, vmax: float) -> np.ndarray:
    """[N] B-factors 100 × value / vmax, clipped to [0, 100] (the view's colour domain)."""
    return np.clip(100.0 * np.asarray(values, dtype=float) / vmax, 0.0, 100.0)


def per_atom_ngl(atoms: Atoms, values, vmax: float | None = None, height: str = "360px"):
    """An nglview view of ``atoms`` coloured by ``values`` [N] (0 to ``vmax``, default their maximum);
    a periodic structure with its unit cell. Needs ``nglview``; the view also shows from a saved
    notebook (structure and representation in the widget state)."""
    from .embed import ngl_trajectory

    values = _checked(atoms, values)
    vmax = _vmax(values, vmax)
    image = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    image.set_array("bfactor", bfactors(values, vmax))
    color = {"colorScheme": "bfactor", "colorScale": NGL_SCALE[0], "colorReverse": True, "colorDomain": [0, 100]}
    view = ngl_trajectory([image], representation="ball+stick", repr_params={**color, "radiusScale": 1.0},
                          height=height)
    periodic = bool(atoms.pbc.any()) and atoms.cell.rank == 3
    if periodic:  # the embedded view draws the stored representations: the cell's too
        view._ngl_repr_dict = {"0": {**view._ngl_repr_dict["0"], "1": {"type": "unitcell", "params": {"sele": "all"}}}}
    try:  # the live front end ignores the stored representation dict: ask it for the same
        view.clear_representations()
        view.add_representation("ball+stick", color_scheme="bfactor", colorScale=NGL_SCALE[0], colorReverse=True,
                                colorDomain=[0, 100])
        if periodic:
            view.add_unitcell()
    except Exception:  # noqa: BLE001 - a view without a front end keeps the stored representations
        pass
    return view


def value_legend(vmax: float, label: str = SIGMA_LABEL):
    """The colour bar of :func:`per_atom_ngl` (0 to ``vmax``) as a small matplotlib figure."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 0.9), layout="constrained")
    ax = fig.subplots()
    fig.colorbar(ScalarMappable(Normalize(0.0, vmax), colormaps[NGL_SCALE[1]]), cax=ax, orientation="horizontal",
                 label=label + " — colours of the 3D view")
    return fig


def _cell_edges(ax, cell: np.ndarray) -> None:
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float) @ cell
    for a in range(8):
        for b in range(a + 1, 8):
            if bin(a ^ b).count("1") == 1:  # corners that differ in one lattice vector
                ax.plot(corners[[a, b], 0], corners[[a, b], 1], color="0.6", lw=0.8, zorder=0)


def per_atom_figure(atoms: Atoms, values, vmax: float | None = None, label: str = SIGMA_LABEL,
                    title: str | None = None):
    """Static figure: left, the structure along z (atoms coloured by ``values``, back to front;
    the cell's edges when it has one); right, the value of each atom against its index, by element."""
    from ase.data import covalent_radii
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    values = _checked(atoms, values)
    norm, cmap = Normalize(0.0, _vmax(values, vmax)), colormaps[NGL_SCALE[1]]
    fig = Figure(figsize=(10.0, 4.2), layout="constrained")
    structure, per_atom = fig.subplots(1, 2, width_ratios=[1.0, 1.3])
    if atoms.cell.rank == 3:
        _cell_edges(structure, atoms.cell.array)
    order = np.argsort(atoms.positions[:, 2])  # back (low z) first
    sizes = (12.0 * covalent_radii[atoms.numbers[order]]) ** 2
    points = structure.scatter(atoms.positions[order, 0], atoms.positions[order, 1], s=sizes, c=values[order],
                               cmap=cmap, norm=norm, edgecolors="k", linewidths=0.5)
    fig.colorbar(points, ax=structure, label=label, shrink=0.85)
    structure.set(xlabel="x (Å)", ylabel="y (Å)", aspect="equal", title="seen along z (front atoms on top)")
    symbols = np.array(atoms.get_chemical_symbols())
    for symbol in dict.fromkeys(symbols):
        mine = np.flatnonzero(symbols == symbol)
        per_atom.plot(mine, values[mine], "o", ms=5, label=f"{symbol} ({len(mine)})")
    per_atom.set(xlabel="atom index", ylabel=label, ylim=(0.0, None), title="per atom")
    per_atom.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="element (atoms)",
                    title_fontsize=8)  # outside: never over a point
    per_atom.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def show_per_atom(atoms: Atoms, values, live: bool = True, vmax: float | None = None, label: str = SIGMA_LABEL,
                  title: str | None = None) -> np.ndarray:
    """Display ``atoms`` coloured by ``values``: the nglview view and its colour bar (``live`` and
    nglview importable), then the static figure (always: saved notebooks and reports show it
    offline). Returns the values [N]."""
    from IPython.display import display

    from . import show

    values = _checked(atoms, values)
    vmax = _vmax(values, vmax)
    if live:
        try:
            display(per_atom_ngl(atoms, values, vmax=vmax))
            show(value_legend(vmax, label))
        except ImportError:
            print("nglview not installed: the static view only")
    show(per_atom_figure(atoms, values, vmax=vmax, label=label, title=title))
    return values


def results_structure(folder: str, order: Sequence[str] = ()):
    """(atoms, committee, caption) from a results folder of ``benchmarks/headline.py``: the last
    frame of the first failed test run in ``failures/`` (arms in ``order`` first, then by name)
    with the committee of that arm and seed (``committees/<arm>__seed<k>.pt``); else the first
    labeled pick in ``picked/`` with its arm's committee. Raises FileNotFoundError naming the folder
    when it holds neither with a committee."""
    from ase.io import read

    from ..committee import Committee

    def rank(name: str):
        arm = name.split("__")[0]
        return (list(order).index(arm) if arm in order else len(order), name)

    for kind, index in (("failures", -1), ("picked", 0)):
        where = os.path.join(folder, kind)
        names = os.listdir(where) if os.path.isdir(where) else []
        names = sorted((f for f in names if f.endswith(".extxyz")), key=rank)
        for name in names:
            stem = name[: -len(".extxyz")]
            path = os.path.join(folder, "committees", stem + ".pt")
            if os.path.exists(path):
                atoms = read(os.path.join(where, name), index=index)
                what = "last frame of a failed test run" if kind == "failures" else "a labeled pick"
                caption = f"{stem}: {what} ({len(atoms)} atoms, {atoms.get_chemical_formula()})"
                return atoms, Committee.load(path), caption
    raise FileNotFoundError(f"{folder!r} holds no failures/*.extxyz or picked/*.extxyz with its committees/*.pt")
