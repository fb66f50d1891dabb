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
