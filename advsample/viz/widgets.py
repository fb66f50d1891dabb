"""Interactive views of a run: a round stepper and an attack animation.

Each view is rendered once to PNG frames. By default it is shown as a browser-side frame
slider (:func:`advsample.viz.embed.frame_slider`: one HTML output, inline JavaScript), so
an executed notebook or an HTML report shows it without a kernel. ``live=True`` returns
an ipywidgets version (Play + IntSlider) that needs a running kernel. ipywidgets is
imported only there.
"""
from __future__ import annotations

from typing import Sequence

from . import plots
from .embed import frame_slider


def round_frames(records: Sequence, surface, dpi: int = 72) -> tuple[list[bytes], list[str]]:
    """One landscape PNG per round (σ on one colour scale for all rounds) and its caption.

    records: ``RoundRecord`` s (``loop.ActiveLearning.irun``); round r shows committee r,
    its training points, and round r's candidates and selected points.
    """
    maps = [plots.surface_maps(surface, record.committee) for record in records]
    norm = plots._sigma_norm(*(m.sigma for m in maps))
    frames, captions = [], []
    for record, m in zip(records, maps):
        previous = [a for a in record.train if a.info.get("round_added", 0) != record.round or record.round == 0]
        fig = plots.landscape(surface, record.committee, train=previous, candidates=record.candidates,
                              selected=record.selected, maps=m, sigma_norm=norm,
                              title=plots.round_title(record.metrics))
        frames.append(plots.figure_png(fig, dpi=dpi))
        captions.append(plots.round_title(record.metrics))
    return frames, captions


def show_frames(frames: Sequence[bytes], captions: Sequence[str], title: str | None = None,
                live: bool = False, interval_ms: int = 600):
    """Frames with a slider and a play button: browser-only HTML (default) or ipywidgets (``live``)."""
    if not live:
        return frame_slider(list(frames), list(captions), title=title, interval_ms=interval_ms)
    import ipywidgets as widgets

    image = widgets.Image(value=frames[0], format="png")
    caption = widgets.HTML(value=captions[0])
    slider = widgets.IntSlider(value=0, min=0, max=len(frames) - 1, description="frame", continuous_update=True)
    play = widgets.Play(value=0, min=0, max=len(frames) - 1, interval=interval_ms)
    widgets.jslink((play, "value"), (slider, "value"))

    def update(change):
        image.value = frames[change["new"]]
        caption.value = captions[change["new"]]

    slider.observe(update, names="value")
    header = [widgets.HTML(f"<b>{title}</b>")] if title else []
    return widgets.VBox([*header, widgets.HBox([play, slider, caption]), image])


def round_stepper(records: Sequence, surface, live: bool = False, dpi: int = 72):
    """Step through the rounds of a run: landscape, new points and test errors of each round."""
    frames, captions = round_frames(records, surface, dpi=dpi)
    return show_frames(frames, captions, title="Active-learning rounds (slider or ▶)", live=live, interval_ms=1000)


def attack_animation(surface, committee, attack_or_frames, live: bool = False, every: int = 5,
                     dpi: int = 72, kind: str = "slider"):
    """Seeds of an adversarial attack moving over the σ map of the committee that ran it.

    kind="slider": pre-rendered frames in a browser-side slider (default);
    kind="jshtml": matplotlib's FuncAnimation as self-contained HTML (``to_jshtml``).
    ``live=True``: the same frames in an ipywidgets Play + IntSlider.
    """
    if kind == "jshtml" and not live:
        from IPython.display import HTML

        animation = plots.attack_animation(surface, committee, attack_or_frames, every=every, dpi=dpi)
        return HTML(animation.to_jshtml(default_mode="once"))
    if kind not in ("slider", "jshtml"):
        raise ValueError(f"unknown kind {kind!r}: use 'slider' or 'jshtml'")
    frames = plots.attack_frames(surface, committee, attack_or_frames, every=every, dpi=dpi)
    paths = plots.attack_paths(attack_or_frames, surface)
    n_steps = max(len(p) for p in paths) - 1
    steps = list(range(0, n_steps + 1, every)) + ([n_steps] if n_steps % every else [])
    captions = [f"step {s}/{n_steps}" for s in steps]
    return show_frames(frames, captions, title="Adversarial attack: seeds climbing the uncertainty", live=live,
                       interval_ms=200)
