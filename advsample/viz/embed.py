"""Outputs that keep working without a kernel: in live Jupyter, in a saved notebook and
in the self-contained HTML written by ``advsample report``.

Two helpers for notebook authors:

``frame_slider(frames, labels)``
    A stack of pre-rendered images (PNG bytes or matplotlib figures) with a range slider
    and a play button. It is one HTML output with inline JavaScript and ``data:`` URIs,
    so it needs no widget manager and no kernel: the browser switches the frames. Where
    scripts do not run (an untrusted notebook in JupyterLab, GitHub's viewer) the first
    frame is still shown and the dead controls stay hidden.

``embed_ngl(view)``
    Makes an ``nglview.NGLWidget`` that was built in a kernel without a front end (papermill,
    CI) renderable from its saved widget state: every trajectory frame's coordinates, a
    representation and stage parameters are stored on the widget, which nglview's embed
    mode reads. Call it after the structures are added, as the cell's last step.

Only the standard library is imported at module level; IPython, matplotlib and nglview
are imported when a helper needs them.
"""

from __future__ import annotations

import base64
import html
import io
import json
import uuid
from typing import Any, Sequence

__all__ = ["FrameSlider", "frame_slider", "embed_ngl", "ngl_trajectory", "image_data_uri", "import_nglview"]

_MIME_BY_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"<svg", "image/svg+xml"),
    (b"<?xml", "image/svg+xml"),
)


def image_data_uri(frame: Any, *, dpi: int = 100, close_figure: bool = True) -> str:
    """Return a ``data:`` URI for one image.

    ``frame`` is PNG/JPEG/GIF/SVG bytes, a ``data:`` URI string, or a matplotlib ``Figure``
    (saved as PNG at ``dpi``; closed afterwards unless ``close_figure=False`` so that the
    inline backend does not show it a second time).
    """
    if isinstance(frame, str):
        if frame.startswith("data:"):
            return frame
        raise TypeError("a string frame must be a data: URI; pass image bytes or a Figure")
    if isinstance(frame, (bytes, bytearray, memoryview)):
        data = bytes(frame)
        for magic, mime in _MIME_BY_MAGIC:
            if data.lstrip()[: len(magic)] == magic:
                break
        else:
            raise ValueError("frame bytes are not PNG, JPEG, GIF or SVG")
        return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
    if hasattr(frame, "savefig"):
        buf = io.BytesIO()
        frame.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        if close_figure:
            import matplotlib.pyplot as plt

            plt.close(frame)
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    raise TypeError(f"cannot turn {type(frame).__name__} into an image")


# The script finds its own container through document.currentScript (JupyterLab runs
# output scripts before the output is attached to the page) and falls back to the id.
_SLIDER_JS = """
(function () {
  var id = %(id)s;
  function init(root) {
    if (!root || root.getAttribute("data-advs-ready")) { return; }
    root.setAttribute("data-advs-ready", "1");
    var data = JSON.parse(root.querySelector("script.advs-data").textContent);
    var n = data.frames.length;
    var img = root.querySelector("img.advs-frame");
    var range = root.querySelector("input.advs-range");
    var label = root.querySelector(".advs-label");
    var button = root.querySelector("button.advs-play");
    var timer = null;
    function show(i) {
      i = Math.max(0, Math.min(n - 1, parseInt(i, 10) || 0));
      img.src = data.frames[i];
      img.alt = data.labels[i];
      label.textContent = data.labels[i];
      range.value = String(i);
      root.setAttribute("data-frame", String(i));
    }
    function stop() {
      if (timer !== null) { clearInterval(timer); timer = null; }
      button.textContent = "\\u25B6";
      button.setAttribute("aria-label", "play");
    }
    function play() {
      if (parseInt(range.value, 10) >= n - 1) { show(0); }
      button.textContent = "\\u275A\\u275A";
      button.setAttribute("aria-label", "pause");
      timer = setInterval(function () {
        var i = parseInt(range.value, 10) + 1;
        if (i >= n) {
          if (data.loop) { i = 0; } else { stop(); return; }
        }
        show(i);
      }, data.interval);
    }
    range.addEventListener("input", function () { stop(); show(range.value); });
    range.addEventListener("change", function () { show(range.value); });
    button.addEventListener("click", function () { if (timer === null) { play(); } else { stop(); } });
    root.querySelector(".advs-controls").style.display = "flex";
    show(0);
  }
  var script = document.currentScript;
  var root = script && script.closest ? script.closest(".advsample-frames") : null;
  if (root) { init(root); } else { setTimeout(function () { init(document.getElementById(id)); }, 0); }
})();
"""


class FrameSlider:
    """Pre-rendered frames switched by a slider and a play button, entirely in the browser.

    Display it (last expression of a cell or ``IPython.display.display``); ``.html`` is
    the HTML fragment, ``.frames`` the ``data:`` URIs and ``.labels`` the frame labels.
    """

    def __init__(self, frames: Sequence[str], labels: Sequence[str], *, title: str | None = None,
                 interval_ms: int = 500, loop: bool = True, width: str | None = None):
        if len(frames) == 0:
            raise ValueError("frame_slider needs at least one frame")
        if len(labels) != len(frames):
            raise ValueError(f"{len(labels)} labels for {len(frames)} frames")
        self.frames = list(frames)
        self.labels = [str(x) for x in labels]
        self.title = title
        self.interval_ms = int(interval_ms)
        self.loop = bool(loop)
        self.width = width
        self.id = "advs-frames-" + uuid.uuid4().hex[:12]

    @property
    def html(self) -> str:
        payload = json.dumps({"frames": self.frames, "labels": self.labels,
                              "interval": self.interval_ms, "loop": self.loop})
        payload = payload.replace("</", "<\\/")
        img_style = f"width:{html.escape(self.width)};" if self.width else "max-width:100%;"
        title = (f'<div class="advs-title" style="font-weight:600;margin-bottom:4px">'
                 f"{html.escape(self.title)}</div>" if self.title else "")
        n = len(self.frames)
        return (
            f'<div class="advsample-frames" id="{self.id}" data-frame="0" data-n-frames="{n}">'
            f"{title}"
            f'<img class="advs-frame" src="{self.frames[0]}" alt="{html.escape(self.labels[0])}" '
            f'style="{img_style}display:block">'
            f'<div class="advs-controls" style="display:none;align-items:center;gap:8px;margin-top:4px">'
            f'<button type="button" class="advs-play" aria-label="play" style="min-width:2.5em">&#9654;</button>'
            f'<input type="range" class="advs-range" min="0" max="{n - 1}" step="1" value="0" '
            f'aria-label="frame" style="flex:1;max-width:400px">'
            f'<span class="advs-label">{html.escape(self.labels[0])}</span>'
            f"</div>"
            f'<script type="application/json" class="advs-data">{payload}</script>'
            f"<script>{_SLIDER_JS % {'id': json.dumps(self.id)}}</script>"
            f"</div>"
        )

    def _repr_html_(self) -> str:
        return self.html

    def __len__(self) -> int:
        return len(self.frames)

    def __repr__(self) -> str:
        return f"FrameSlider({len(self.frames)} frames: {self.labels[0]!r} … {self.labels[-1]!r})"


def frame_slider(frames: Sequence[Any], labels: Sequence[Any] | None = None, *,
                 title: str | None = None, interval_ms: int = 500, loop: bool = True,
                 dpi: int = 100, width: str | None = None, close_figures: bool = True) -> FrameSlider:
    """Show ``frames`` one at a time, chosen by a slider or played as an animation.

    Parameters
    ----------
    frames : list of PNG/JPEG/GIF/SVG bytes, ``data:`` URIs or matplotlib Figures
        Figures are rendered to PNG at ``dpi`` and closed (``close_figures``).
    labels : list, optional
        One label per frame, shown beside the slider (default ``"1/N" … "N/N"``).
    title : str, optional
        Heading above the image.
    interval_ms : int
        Delay between frames when playing.
    loop : bool
        Start again after the last frame when playing.
    width : str, optional
        CSS width of the image (e.g. ``"480px"``); default: natural size, at most the cell width.

    Returns
    -------
    FrameSlider
        Displays as one HTML output; works without a kernel and in ``advsample report`` HTML.
    """
    uris = [image_data_uri(f, dpi=dpi, close_figure=close_figures) for f in frames]
    if labels is None:
        labels = [f"{i + 1}/{len(uris)}" for i in range(len(uris))]
    return FrameSlider(uris, [str(x) for x in labels], title=title, interval_ms=interval_ms,
                       loop=loop, width=width)


NGL_MODULE = "nglview-js-widgets"


def _labextension_version(module: str = NGL_MODULE) -> str | None:
    """Version of the JupyterLab extension ``module`` as installed (its ``package.json``), or None."""
    import sys
    from pathlib import Path

    bases = [Path(sys.prefix) / "share" / "jupyter" / "labextensions"]
    try:
        from jupyter_core.paths import jupyter_path

        bases = [Path(p) for p in jupyter_path("labextensions")] + bases  # the order JupyterLab uses
    except ImportError:
        pass
    for base in bases:
        package = base / module / "package.json"
        if package.is_file():
            return json.loads(package.read_text()).get("version")
    return None


def import_nglview():
    """``nglview``, imported so that its widgets ask for the front end that is installed.

    nglview 4.0.1's Python side asks for front-end version "4.0" while its JupyterLab extension
    registers 3.1.5 (upstream nglviewer/nglview issue 1172): live JupyterLab and Notebook 7 then
    refuse every nglview widget ("Module nglview-js-widgets, version 4.0 is not registered").
    nglview reads the version from ``nglview._frontend`` when it is first imported (its colour
    registry widget is created at import), so, before that import, a ``nglview._frontend`` that
    holds the installed extension's version is put in ``sys.modules``. Nothing changes when the
    two agree or when no lab extension is installed (papermill, the HTML reports: those inline
    the package's own bundle). Import nglview through this function, before any ``import nglview``.
    """
    import importlib.util
    import re
    import sys
    import types
    from pathlib import Path

    if "nglview" not in sys.modules:
        spec = importlib.util.find_spec("nglview")
        if spec is None or spec.origin is None:
            raise ImportError("nglview is not installed (pip install nglview)")
        source = Path(spec.origin).with_name("_frontend.py")
        match = re.search(r"__frontend_version__\s*=\s*['\"]([^'\"]+)", source.read_text()) if source.is_file() else None
        installed = _labextension_version()
        if match and installed and installed != match.group(1):
            frontend = types.ModuleType("nglview._frontend")
            frontend.__frontend_version__ = installed
            frontend.requested_by_package = match.group(1)
            sys.modules["nglview._frontend"] = frontend
    import nglview

    return nglview


def embed_ngl(view: Any, *, representation: str = "ball+stick", repr_params: dict | None = None,
              frame_range: tuple[int, int] | None = None) -> Any:
    """Store what an embedded (kernel-less) nglview needs in the widget's own state.

    nglview's front end normally reports the stage parameters and representations back to
    the kernel, and streams trajectory frames on request. Without a front end (papermill)
    none of that happens and a saved view would show an empty stage. This fills in

    * ``_ngl_coordinate_resource``: every frame's coordinates (base64 float32), so the
      view's own Play/slider switch frames in the browser;
    * ``_ngl_repr_dict``: ``representation`` for every component unless the front end has
      already reported representations;
    * ``_ngl_full_stage_parameters``: the background colour, if empty.

    * an ``autoView`` call that the embedded view replays, so the structure is framed.

    The view stays a normal live widget in Jupyter (``_ngl_serialize`` is left False).
    Returns ``view`` so the call can be the cell's last expression.
    """
    import numpy as np

    import_nglview()
    import nglview.color
    from nglview.utils.py_utils import encode_base64

    trajs = list(getattr(view, "_trajlist", []))
    if trajs:
        start, stop = frame_range or (0, max(int(t.n_frames) for t in trajs))
        # a new dict (nglview's own _set_serialization mutates the old one in place, which
        # traitlets does not see, so nothing reaches the saved widget state)
        resource: dict[Any, Any] = {}
        for t_index, traj in enumerate(trajs):
            resource[t_index] = [encode_base64(traj.get_coordinates(f)) if f < traj.n_frames
                                 else encode_base64(np.empty(0, dtype="f4")) for f in range(start, stop)]
        resource["n_frames"] = stop - start
        view._ngl_coordinate_resource = resource
        view._ngl_color_dict = dict(nglview.color._USER_COLOR_DICT)
    n_components = max(int(getattr(view, "n_components", 0) or 0), len(trajs), 1)
    if not view._ngl_repr_dict:
        params = {"sele": "all"}
        params.update(repr_params or {})
        view._ngl_repr_dict = {str(c): {"0": {"type": representation, "params": params}}
                               for c in range(n_components)}
    if not view._ngl_full_stage_parameters:
        view._ngl_full_stage_parameters = {"backgroundColor": view.background or "white"}
    if not any(m.get("methodName") == "autoView" and m.get("fire_embed") for m in view._ngl_msg_archive):
        # replayed by the embedded view after loading: frame the structure
        # (written to the archive directly: nglview never archives autoView calls)
        # (a component's autoView: the Stage's one leaves the embedded view black)
        msg = view._get_remote_call_msg("autoView", target="compList", args=["*", 0],
                                        kwargs={"component_index": 0}, fire_embed=True)
        view._ngl_msg_archive = [*view._ngl_msg_archive, msg]
    return view


def ngl_trajectory(images: Sequence[Any], *, representation: str = "ball+stick",
                   repr_params: dict | None = None, height: str = "300px", **kwargs: Any) -> Any:
    """An ``nglview`` view of a list of ``ase.Atoms`` (one frame each), ready for reports.

    ``kwargs`` go to ``nglview.show_asetraj``. The returned view has its frames, a
    ``representation`` and stage parameters stored by :func:`embed_ngl`; its Play button and
    slider switch frames without a kernel.
    """
    nglview = import_nglview()
    view = nglview.show_asetraj(list(images), **kwargs)
    view._view_height = height
    return embed_ngl(view, representation=representation, repr_params=repr_params)
