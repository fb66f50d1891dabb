"""Plots and widgets for toy surfaces: every figure has labeled axes; static fallbacks need no kernel."""
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.figure import Figure

from advsample.attack import AttackConfig, attack
from advsample.committee import Committee
from advsample.models import MLPCommittee
from advsample.surfaces import double_well_1d, double_well_2d
from advsample.train import TrainConfig, split_validation, train_committee
from advsample.viz import plots, widgets
from advsample.viz.embed import FrameSlider

LEFT = {1: [(-1.6, 0.0)], 2: [(-1.5, 0.0), (-1.2, 1.2)]}


@pytest.fixture(scope="module", params=[1, 2], ids=["1d", "2d"])
def toy(request):
    """A tiny committee trained briefly on the left well, a test set and a short attack."""
    n_dims = request.param
    surface = double_well_1d() if n_dims == 1 else double_well_2d()
    data = surface.sample(24, seed=0, max_energy=0.0, region=LEFT[n_dims])
    train, validation = split_validation(data, 0.2, seed=0)
    committee = Committee(MLPCommittee(2, (16,), input_axes=tuple(range(n_dims)), seed=0))
    train_committee(committee, train, validation, TrainConfig(epochs=30, progress=False))
    test = surface.sample(30, seed=5, max_energy=4.0)
    energies = [a.get_potential_energy() for a in train]
    result = attack(committee, train[:6], energies, AttackConfig(kT=1.0, n_steps=8, learning_rate=0.05), progress=False)
    maps = plots.surface_maps(surface, committee, n=40 if n_dims == 2 else 100)
    return SimpleNamespace(surface=surface, committee=committee, train=train, test=test, attack=result, maps=maps)


def assert_labeled(fig):
    assert isinstance(fig, Figure)
    assert fig.axes, "figure has no axes"
    for ax in fig.axes:
        if hasattr(ax, "_colorbar"):  # a colour bar: its one axis carries the label
            assert ax.get_ylabel() or ax.get_xlabel(), "colour bar without a label"
        else:
            assert ax.get_xlabel() and ax.get_ylabel(), f"unlabeled axes: {ax.get_title()!r}"
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()] + ([fig._suptitle.get_text()] if fig._suptitle else [])
    assert titles, "figure says nothing about what it shows"


def test_surface_maps_shapes(toy):
    m = toy.maps
    assert m.true.shape == m.mean.shape == m.sigma.shape == m.error.shape
    assert np.all(m.sigma >= 0) and np.all(np.isfinite(m.mean))
    assert m.x.shape[0] == m.true.shape[-1]


def test_landscape_marks_points(toy):
    fig = plots.landscape(toy.surface, toy.committee, train=toy.train, candidates=toy.attack.snapshots(2),
                          selected=toy.attack.final()[:2], maps=toy.maps, title="round 0")
    assert_labeled(fig)
    labels = {t.get_text() for legend in fig.legends for t in legend.get_texts()}
    assert {"training points", "candidates", "selected"} <= labels
    units = " ".join(ax.get_xlabel() + ax.get_ylabel() for ax in fig.axes)
    assert "x (Å)" in units and "arb. units" in units


def test_single_panel_figures(toy):
    assert_labeled(plots.surface_figure(toy.surface, train=toy.train, test=toy.test))
    assert_labeled(plots.sigma_map(toy.surface, toy.committee, maps=toy.maps))
    assert_labeled(plots.before_after(toy.surface, toy.committee, toy.committee, toy.train, toy.train))
    assert_labeled(plots.attack_figure(toy.surface, toy.committee, toy.attack, maps=toy.maps))


def test_parity_and_calibration(toy):
    fig = plots.parity(toy.committee, toy.test)
    assert_labeled(fig)
    assert "arb. units/Å" in fig.axes[1].get_xlabel()
    fig = plots.calibration(toy.committee, toy.test)
    assert_labeled(fig)
    assert "Spearman" in fig.axes[0].get_title()
    assert fig.axes[0].get_xscale() == fig.axes[0].get_yscale() == "log"


def test_learning_curve():
    metrics = [{"round": r, "labels_used": 20 * r, "test": {"force_mae": 4.0 / (r + 1), "energy_mae": 1.0 / (r + 1)}}
               for r in range(4)]
    fig = plots.learning_curve(metrics, label="adversarial")
    assert_labeled(fig)
    assert all(ax.get_yscale() == "log" for ax in fig.axes)
    assert any("labels" in ax.get_xlabel() for ax in fig.axes)


def test_attack_paths_from_result_and_from_saved_frames(toy):
    from_result = plots.attack_paths(toy.attack, toy.surface)
    frames = [a for b in range(len(toy.attack.seeds)) for a in toy.attack.trajectory(b)]
    from_frames = plots.attack_paths(frames, toy.surface)
    assert len(from_result) == len(from_frames) == len(toy.attack.seeds)
    for a, b in zip(from_result, from_frames):
        np.testing.assert_allclose(a, b)


def test_attack_animation_static_and_jshtml(toy):
    frames = plots.attack_frames(toy.surface, toy.committee, toy.attack, every=4, maps=toy.maps)
    assert len(frames) == 3 and all(f.startswith(b"\x89PNG") for f in frames)  # steps 0, 4, 8
    slider = widgets.attack_animation(toy.surface, toy.committee, toy.attack, every=4)
    assert isinstance(slider, FrameSlider) and len(slider) == 3
    assert 'type="range"' in slider._repr_html_()
    html = widgets.attack_animation(toy.surface, toy.committee, toy.attack, every=4, kind="jshtml")
    assert "<script" in html.data and "data:image/png;base64" in html.data


def test_round_stepper(toy):
    picks = toy.attack.final()[:2]
    records = [
        SimpleNamespace(round=r, committee=toy.committee, train=toy.train, selected=picks if r else [],
                        candidates=toy.attack.snapshots(2) if r else [],
                        metrics={"round": r, "n_train": len(toy.train), "labels_used": 2 * r,
                                 "test": {"force_mae": 1.0, "energy_mae": 0.5}})
        for r in range(2)
    ]
    slider = widgets.round_stepper(records, toy.surface)
    assert isinstance(slider, FrameSlider) and len(slider) == 2
    assert "round 1" in slider.labels[1]
    live = widgets.round_stepper(records, toy.surface, live=True)
    assert type(live).__name__ == "VBox"


def test_plots_import_without_ipywidgets():
    code = "import sys; sys.modules['ipywidgets'] = None; sys.modules['nglview'] = None; " \
           "import advsample.viz.plots, advsample.viz.widgets"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- one periodic structure coloured by the committee's per-atom force σ (advsample.viz.per_atom) --
@pytest.fixture(scope="module")
def guest_in_cell():
    """NH3 in a cavity of a periodic Al cell (23 atoms: a small host–guest stand-in), a 3-member SchNet
    and its σ per atom."""
    from ase.build import bulk, molecule

    from advsample.models.schnet import SchNetCommittee
    from advsample.viz.molecules import per_atom_sigma

    host = bulk("Al", "fcc", a=4.05, cubic=True).repeat((2, 2, 2))
    del host[[a.index for a in host if np.linalg.norm(a.position - 4.05) < 3.0]]  # a cavity: 13 atoms out
    guest = molecule("NH3")
    guest.translate(host.cell.sum(0) / 2)
    cell = host + guest
    committee = Committee(SchNetCommittee(n_members=3, species=(1, 7, 13), n_features=8, n_interactions=1,
                                          cutoff=4.0, seed=0))
    return cell, committee, per_atom_sigma([cell], committee)[0]


def test_per_atom_ngl_colours_every_atom_by_its_sigma(guest_in_cell):
    from advsample.viz.per_atom import per_atom_ngl

    pytest.importorskip("nglview")
    cell, _, sigma = guest_in_cell
    assert sigma.shape == (len(cell),) and sigma.std() > 0
    view = per_atom_ngl(cell, sigma, vmax=2 * sigma.max())
    pdb = next(m for m in view._ngl_msg_archive if m["methodName"] == "loadFile")["args"][0]["data"]
    atoms = [line for line in pdb.splitlines() if line.startswith(("ATOM", "HETATM"))]
    assert len(atoms) == len(cell)
    bfactor = np.array([float(line[60:66]) for line in atoms])
    assert np.allclose(bfactor, 100 * sigma / (2 * sigma.max()), atol=0.006)  # PDB: two decimals
    representations = view._ngl_repr_dict["0"]
    params = representations["0"]["params"]
    assert params["colorScheme"] == "bfactor" and params["colorDomain"] == [0, 100]
    assert any(r["type"] == "unitcell" for r in representations.values())  # periodic: the cell drawn
    with pytest.raises(ValueError, match="23 atoms, got 22 values"):
        per_atom_ngl(cell, sigma[:-1])


def test_per_atom_figure_and_legend_are_labelled(guest_in_cell):
    from advsample.viz.per_atom import per_atom_figure, value_legend

    cell, _, sigma = guest_in_cell
    fig = per_atom_figure(cell, sigma, title="NH3 in Al")
    assert_labeled(fig)
    structure, per_atom = fig.axes[:2]
    assert "Å" in structure.get_xlabel() and "eV/Å" in per_atom.get_ylabel()
    drawn = structure.collections[-1].get_array()
    assert len(drawn) == len(cell) and np.allclose(np.sort(drawn), np.sort(sigma))
    plotted = np.concatenate([line.get_ydata() for line in per_atom.lines])
    assert len(plotted) == len(cell) and np.allclose(np.sort(plotted), np.sort(sigma))
    assert {t.get_text() for t in per_atom.get_legend().get_texts()} == {"Al (19)", "N (1)", "H (3)"}
    legend = value_legend(0.5)
    assert "eV/Å" in legend.axes[0].get_xlabel() and legend.axes[0].get_xlim() == (0.0, 0.5)


def test_results_structure_reads_a_failure_with_its_committee(guest_in_cell, tmp_path):
    from ase.io import write

    from advsample.viz.per_atom import results_structure

    cell, committee, _ = guest_in_cell
    with pytest.raises(FileNotFoundError, match="holds no failures"):
        results_structure(str(tmp_path))
    (tmp_path / "committees").mkdir()
    (tmp_path / "picked").mkdir()
    committee.save(tmp_path / "committees" / "md_N__seed1.pt")
    write(tmp_path / "picked" / "md_N__seed1.extxyz", [cell, cell[:-4]])
    atoms, loaded, caption = results_structure(str(tmp_path))
    assert len(atoms) == len(cell) and "a labeled pick" in caption and "md_N__seed1" in caption
    (tmp_path / "failures").mkdir()
    committee.save(tmp_path / "committees" / "gen1__seed0.pt")
    moved = cell.copy()
    moved.positions[-1] += 0.3
    for arm in ("md_N__seed1", "gen1__seed0"):
        write(tmp_path / "failures" / f"{arm}.extxyz", [cell, moved])
    atoms, loaded, caption = results_structure(str(tmp_path), order=["gen1", "md_N"])
    assert caption.startswith("gen1__seed0: last frame") and np.allclose(atoms.positions, moved.positions)
    sigma = committee.predict([atoms])["forces_std_per_atom"]
    assert np.allclose(loaded.predict([atoms])["forces_std_per_atom"], sigma)
