"""Self-contained HTML of an executed notebook, which opens with no network (``advsample report``).

Images are base64 already; when a notebook saved widget state the JavaScript that renders it
(require.js, ``@jupyter-widgets/html-manager``, and each third-party widget module such as nglview)
is inlined into the page. The html-manager and require.js bundles come from the npm registry
(:func:`fetch_js`, pinned versions and integrity hashes); third-party widget modules come from the
pip packages' ``share/jupyter/nbextensions/<module>/index.js``. See ``docs/reports.md``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path
from typing import Mapping

from .report_summary import ReportError

__all__ = ["export_html", "fetch_js", "js_dir", "NPM_PACKAGES"]


# --------------------------------------------------------------------------------------
# self-contained HTML
# --------------------------------------------------------------------------------------

# Pinned npm packages (version, npm's sha512 integrity, files kept from the tarball).
NPM_PACKAGES: dict[str, dict] = {
    "@jupyter-widgets/html-manager": {
        "version": "1.0.15",
        "integrity": "sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA==",
        "keep": [r"package/package\.json", r"package/LICENSE", r"package/dist/embed-amd\.js",
                 r"package/dist/[^/]+\.LICENSE\.txt", r"package/dist/[0-9a-f]+\.woff2"],
    },
    "requirejs": {
        "version": "2.3.7",
        "integrity": "sha512-DouTG8T1WanGok6Qjg2SXuCMzszOo0eHeH9hDZ5Y4x8Je+9JB38HdTLT4/VA8OaUhBa0JPVHJ0pyBkM1z+pDsw==",
        "keep": [r"package/package\.json", r"package/LICENSE", r"package/require\.js"],
    },
    "mathjax": {
        "version": "3.2.2",
        "integrity": "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
        "keep": [r"package/package\.json", r"package/LICENSE", r"package/es5/tex-svg-full\.js"],
    },
}

_BUILTIN_WIDGET_MODULES = {"@jupyter-widgets/base", "@jupyter-widgets/controls", "@jupyter-widgets/output"}


def js_dir() -> Path:
    """Where :func:`fetch_js` puts the npm bundles: ``$ADVSAMPLE_JS_DIR`` or
    ``advsample/viz/static/npm`` (git-ignored)."""
    env = os.environ.get("ADVSAMPLE_JS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent / "viz" / "static" / "npm"


def _npm_dir(name: str, root: Path | None = None) -> Path:
    return (root or js_dir()) / name


def fetch_js(dest: str | os.PathLike | None = None, *, npm: str = "npm", force: bool = False) -> Path:
    """Download the pinned npm tarballs (``npm pack``), check their sha512 against the
    pinned integrity and unpack the few files the reports inline into ``dest``."""
    root = Path(dest) if dest else js_dir()
    npm_exe = shutil.which(npm)
    for name, spec in NPM_PACKAGES.items():
        target = _npm_dir(name, root)
        stamp = target / ".integrity"
        if not force and stamp.exists() and stamp.read_text().strip() == spec["integrity"]:
            continue
        if npm_exe is None:
            raise ReportError(f"npm not found: install Node.js (npm) to fetch {name}@{spec['version']}")
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run([npm_exe, "pack", f"{name}@{spec['version']}", "--pack-destination", tmp,
                                   "--silent"], capture_output=True, text=True)
            if proc.returncode != 0:
                raise ReportError(f"npm pack {name}@{spec['version']} failed:\n{proc.stderr}")
            tgz = next(Path(tmp).glob("*.tgz"))
            digest = "sha512-" + base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
            if digest != spec["integrity"]:
                raise ReportError(f"{name}@{spec['version']}: integrity mismatch ({digest} != {spec['integrity']})")
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
            keep = [re.compile(p + r"\Z") for p in spec["keep"]]
            with tarfile.open(tgz) as tf:
                for member in tf.getmembers():
                    if not member.isfile() or not any(k.match(member.name) for k in keep):
                        continue
                    rel = Path(member.name).relative_to("package")
                    (target / rel).parent.mkdir(parents=True, exist_ok=True)
                    (target / rel).write_bytes(tf.extractfile(member).read())
            stamp.write_text(spec["integrity"] + "\n")
    _bundle.cache_clear()
    return root


def _script_safe(js: str) -> str:
    """Make JavaScript safe to inline in ``<script>``: no ``</script`` or ``<!--`` in it.

    Both only occur inside string and regex literals of the bundles, where ``<\\/`` and
    ``<\\!`` mean the same characters."""
    return js.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT").replace("<!--", "<\\!--")


_ASSET_RE = re.compile(r'\b[A-Za-z_$][\w$]*\.p\+"([0-9a-f]{16,}\.(png|woff2|woff|ttf|eot|svg))"')
_MIME = {"png": "image/png", "woff2": "font/woff2", "woff": "font/woff", "ttf": "font/ttf",
         "eot": "application/vnd.ms-fontobject", "svg": "image/svg+xml"}


def _inline_assets(js: str, asset_dir: Path) -> str:
    """Replace webpack asset URLs (``<x>.p+"<hash>.<ext>"``) by ``data:`` URIs.

    An asset that is not on disk (the html-manager's EOT/WOFF/TTF/SVG font fallbacks, which
    browsers that read WOFF2 never request) becomes an empty ``data:`` URI, so the page
    never asks for a file."""
    def sub(m: re.Match) -> str:
        f = asset_dir / m.group(1)
        if f.is_file():
            uri = f"data:{_MIME[m.group(2)]};base64," + base64.b64encode(f.read_bytes()).decode("ascii")
        else:
            uri = "data:,"
        return json.dumps(uri)

    js = _ASSET_RE.sub(sub, js)
    # webpack's "automatic publicPath" reads document.currentScript, which is null when
    # require.js runs the module factory later; every asset is inlined, so any base will do.
    js = re.sub(r'if\(!([\w$]+)\)throw new Error\("Automatic publicPath is not supported in this browser"\)',
                r'if(!\1)\1="./"', js)
    return re.sub(r"^//# sourceMappingURL=.*$", "", js, flags=re.M)


def _license_comment(pkg_dir: Path, label: str) -> str:
    text = ""
    meta = pkg_dir / "package.json"
    if meta.is_file():
        info = json.loads(meta.read_text())
        text = f"{info.get('name', label)} {info.get('version', '')} — license: {info.get('license', 'see package')}"
    lic = pkg_dir / "LICENSE"
    if lic.is_file():
        text += "\n\n" + lic.read_text(errors="replace")
    text = text or label
    return "/*!\n" + text.replace("*/", "* /") + "\n*/\n"


def _nbextension_index(module: str) -> Path | None:
    from jupyter_core.paths import jupyter_path

    candidates = [Path(sys.prefix) / "share" / "jupyter" / "nbextensions"]
    candidates += [Path(p) for p in jupyter_path("nbextensions")]
    for base in candidates:
        f = base / module / "index.js"
        if f.is_file():
            return f
    return None


@functools.lru_cache(maxsize=None)
def _bundle(kind: str, module: str = "") -> str | None:
    """Ready-to-inline JavaScript for one piece, or None if it is not available."""
    root = js_dir()
    if kind == "requirejs":
        f = _npm_dir("requirejs", root) / "require.js"
        return _script_safe(_license_comment(f.parent, "requirejs") + f.read_text()) if f.is_file() else None
    if kind == "html-manager":
        d = _npm_dir("@jupyter-widgets/html-manager", root)
        f = d / "dist" / "embed-amd.js"
        if not f.is_file():
            return None
        return _script_safe(_license_comment(d, "@jupyter-widgets/html-manager")
                            + _inline_assets(f.read_text(), f.parent))
    if kind == "mathjax":
        d = _npm_dir("mathjax", root)
        f = d / "es5" / "tex-svg-full.js"
        return _script_safe(_license_comment(d, "mathjax") + f.read_text()) if f.is_file() else None
    if kind == "widget-module":
        f = _nbextension_index(module)
        if f is None:
            return None
        js = _inline_assets(f.read_text(), f.parent)
        # The nbextension is an anonymous AMD module; name it so that require.js finds it
        # inline instead of fetching nbextensions/<module>/index.js.
        js, n = re.subn(r"^((?:\s|/\*(?:[^*]|\*(?!/))*\*/|//[^\n]*\n)*)define\(", lambda m: m.group(1) + f"define({json.dumps(module)},",
                        js, count=1, flags=re.S)
        if n != 1:
            return None
        lic = f.parent / "index.js.LICENSE.txt"
        header = f"/*! {module}: from {f} (pip package data)"
        if lic.is_file():
            header += "\n" + lic.read_text(errors="replace").replace("*/", "* /")
        return _script_safe(header + "\n*/\n" + js)
    raise ValueError(kind)


def _widget_modules(state: Mapping) -> set[str]:
    mods = set()
    for model in state.get("state", {}).values():
        st = model.get("state", {})
        for mod in (model.get("model_module"), st.get("_model_module"), st.get("_view_module")):
            if mod:
                mods.add(mod)
    return mods


_MATH_RE = re.compile(r"(\$[^$\n]+\$|\$\$|\\\(|\\\[|\\begin\{)")

# MathJax 3 configuration. The widget manager typesets widget labels through the
# MathJax 2 call ``MathJax.Hub.Queue(["Typeset", MathJax.Hub, element])``; ``Hub`` maps it
# onto MathJax 3 (before and after MathJax has started).
_MATHJAX_CONFIG = """(function () {
  var pending = [];
  function hub() {
    return {Queue: function (job) {
      var el = job && job[2];
      if (window.MathJax && window.MathJax.typesetPromise) {
        window.MathJax.typesetPromise(el ? [el] : undefined).catch(function () {});
      } else if (el) { pending.push(el); }
    }};
  }
  window.MathJax = {
    tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']], displayMath: [['$$', '$$'], ['\\\\[', '\\\\]']],
          processEscapes: true, processEnvironments: true, tags: 'ams'},
    svg: {fontCache: 'global'},
    options: {enableMenu: false},
    startup: {ready: function () {
      window.MathJax.startup.defaultReady();
      window.MathJax.Hub = hub();
      window.MathJax.startup.promise.then(function () {
        if (pending.length) { window.MathJax.typesetPromise(pending.splice(0)).catch(function () {}); }
      });
    }},
    Hub: hub()
  };
})();"""

_TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_js_mathjax -%}
{%- if resources.advsample_mathjax -%}
<script>{{ resources.advsample_mathjax_config }}</script>
<script>{{ resources.advsample_mathjax }}</script>
{%- endif -%}
{%- endblock html_head_js_mathjax -%}
{%- block footer_js -%}
{%- if resources.advsample_widget_note -%}
<div class="advsample-widget-note" style="display:none">{{ resources.advsample_widget_note }}</div>
{%- endif -%}
{%- for js in resources.advsample_scripts -%}
<script data-jupyter-widgets-cdn="./widget-js-not-bundled/">{{ js }}</script>
{%- endfor -%}
{%- endblock footer_js -%}
"""


def export_html(nb_file: str | os.PathLike, html_file: str | os.PathLike | None = None, *,
                title: str | None = None) -> Path:
    """Render a notebook to one self-contained HTML file (nbconvert ``lab`` template).

    * images: outputs are base64 already; markdown images are embedded (``embed_images``);
    * widgets: the notebook's saved widget state is rendered by ``@jupyter-widgets/html-manager``
      with require.js and every third-party widget module inlined (no CDN);
    * math: MathJax 3 (SVG output, no font files) is inlined when a markdown cell has math;
    * MathJax 2 / mermaid / require.js CDN links of the stock template are removed.

    Missing bundles (``advsample fetch-js`` not run) produce a warning and a page whose
    widgets do not render; it still makes no network request.
    """
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    nb_file = Path(nb_file)
    html_file = Path(html_file) if html_file else nb_file.with_suffix(".html")
    nb = nbformat.read(str(nb_file), as_version=4)
    if title:
        nb.metadata["title"] = title

    scripts: list[str] = []
    missing: list[str] = []
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json")
    has_views = any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                    for c in nb.cells for o in c.get("outputs", []))
    if state and has_views:
        for kind in ("requirejs", "html-manager"):
            js = _bundle(kind)
            if js is None:
                missing.append(kind)
            else:
                scripts.append(js)
        for mod in sorted(_widget_modules(state) - _BUILTIN_WIDGET_MODULES):
            js = _bundle("widget-module", mod)
            if js is None:
                missing.append(f"widget module {mod!r} (no nbextensions/{mod}/index.js found)")
            else:
                scripts.append(js)
        if {"requirejs", "html-manager"} & set(missing):
            scripts = []  # nothing would render; keep the page free of half a widget stack

    mathjax = None
    if any(c.cell_type == "markdown" and _MATH_RE.search(c.source) for c in nb.cells):
        mathjax = _bundle("mathjax")
        if mathjax is None:
            missing.append("mathjax")
    if missing:
        warnings.warn(f"{nb_file.name}: not bundled: {', '.join(missing)}; run `advsample fetch-js` "
                      "(needs npm) so that widgets/math render offline", stacklevel=2)

    exporter = HTMLExporter(template_name="lab", embed_images=True,
                            extra_loaders=[jinja2.DictLoader({"advsample_index.html.j2": _TEMPLATE})],
                            template_file="advsample_index.html.j2")
    resources = {
        "advsample_scripts": scripts,
        "advsample_mathjax": mathjax,
        "advsample_mathjax_config": _MATHJAX_CONFIG,
        "advsample_widget_note": ("widgets not rendered: " + ", ".join(missing)) if missing else "",
        "metadata": {"name": nb_file.stem, "path": str(nb_file.parent)},
    }
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    body, external = _offline_fixups(body)
    if external:
        warnings.warn(f"{nb_file.name}: the HTML still references {len(external)} external resource(s), "
                      f"e.g. {external[0]}; it will not render them offline", stacklevel=2)
    html_file.write_text(body, encoding="utf-8")
    return html_file


# matplotlib's to_jshtml() links Font Awesome 4 from a CDN for its button icons; the link is
# dropped and these glyphs (plain Unicode, no font file) take the icons' place.
_FA_LINK_RE = re.compile(r'<link[^>]+href="https?://[^"]*font-awesome[^"]*"[^>]*>\s*', re.I)
_ANIMATION_ICONS_CSS = """<style type="text/css">
.animation i.fa{font-style:normal;display:inline-block;min-width:1.2em;text-align:center;font-family:system-ui,sans-serif}
.animation i.fa-minus:before{content:"\\2212"} .animation i.fa-plus:before{content:"+"}
.animation i.fa-fast-backward:before{content:"\\25C0\\25C0"} .animation i.fa-fast-forward:before{content:"\\25B6\\25B6"}
.animation i.fa-step-backward:before{content:"\\2759\\25C0"} .animation i.fa-step-forward:before{content:"\\25B6\\2759"}
.animation i.fa-play:before{content:"\\25B6"} .animation i.fa-pause:before{content:"\\2759\\2759"}
.animation i.fa-flip-horizontal{transform:scaleX(-1)}
</style>"""
_EXTERNAL_RE = re.compile(r'<(?:script|link|img|iframe|source|video|audio|embed)\b[^>]*?\s(?:src|href)\s*=\s*["\']?((?:https?:)?//[^"\'\s>]+)',
                          re.I)


def _offline_fixups(body: str) -> tuple[str, list[str]]:
    """Drop the known CDN links (replaced by local CSS) and list any external resource left."""
    body, n = _FA_LINK_RE.subn("", body)
    if n:
        body = body.replace("</head>", _ANIMATION_ICONS_CSS + "\n</head>", 1)
    return body, _EXTERNAL_RE.findall(body)
