"""Notebook views: ``plots`` (matplotlib), ``widgets`` (round stepper, attack animation),
``molecules`` and ``ammonia`` (molecular trajectories), ``per_atom`` (one structure coloured by
per-atom force σ: nglview and a static figure), ``embed`` (kernel-free sliders).

:func:`show` displays a matplotlib figure as ``image/png`` wherever it is called.
"""
from __future__ import annotations


def show(fig, dpi: int = 100) -> None:
    """Display ``fig`` (a matplotlib ``Figure``) as one ``image/png`` output, then close it if pyplot holds it.

    The figures of ``advsample.viz`` are built without pyplot; as a cell's last expression they
    only render as PNG when the inline backend has registered its formatter (``%matplotlib
    inline``), otherwise a notebook shows ``<Figure size ...>`` text. ``show`` does not depend on it.
    """
    from IPython.display import Image, display

    from .plots import figure_png

    display(Image(data=figure_png(fig, dpi=dpi, tight=True), format="png"))
    if getattr(fig.canvas, "manager", None) is not None:  # a pyplot figure: the inline backend would show it again
        import matplotlib.pyplot as plt

        plt.close(fig)
