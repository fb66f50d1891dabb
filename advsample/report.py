"""Run the notebooks with papermill and write a report folder that opens anywhere.

``build_report`` executes each notebook in its own folder ``OUT/<stem>/`` (the kernel's
working directory, so the notebook's ``summary.json`` lands there), then writes

* ``OUT/<stem>/<stem>.ipynb``   the executed notebook (partial, with the traceback, if a cell failed)
* ``OUT/<stem>/<stem>.html``    a self-contained HTML rendering (see :func:`export_html`)
* ``OUT/<stem>/summary.json``   written by the notebook itself
* ``OUT/summary.csv``, ``OUT/summary.json``  one row per notebook (status, time, its summary)
* ``OUT/index.html``            links (relative), status, key numbers and a thumbnail per notebook

The HTML needs no network: images are base64 already, and when a notebook saved widget
state the JavaScript that renders it (require.js, ``@jupyter-widgets/html-manager``, and
each third-party widget module such as nglview) is inlined into the page. The
html-manager and require.js bundles come from the npm registry (:func:`fetch_js`, pinned
versions and integrity hashes); third-party widget modules come from the pip packages'
``share/jupyter/nbextensions/<module>/index.js``. See ``docs/reports.md``.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import datetime as _dt
import functools
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote

from .parameters import ParameterError, check_declared_type

__all__ = [
    "ReportError",
    "NotebookResult",
    "default_notebooks_dir",
    "resolve_notebooks",
    "parse_value",
    "load_params_file",
    "load_notes",
    "shortened_note",
    "plan_parameters",
    "execute_notebook",
    "export_html",
    "build_report",
    "write_summaries",
    "write_index",
    "fetch_js",
    "js_dir",
]


class ReportError(Exception):
    """A problem with the request (unknown notebook or parameter, bad params file)."""


# --------------------------------------------------------------------------------------
# notebooks and parameters
# --------------------------------------------------------------------------------------

EMBEDDED_DEFAULTS = Path(__file__).with_name("report_defaults.yaml")


def default_notebooks_dir() -> Path:
    """``notebooks/`` next to the package (a source checkout or an editable install)."""
    import advsample

    pkg = Path(advsample.__file__).resolve().parent
    for candidate in (pkg.parent / "notebooks", pkg / "notebooks"):
        if candidate.is_dir():
            return candidate
    return pkg.parent / "notebooks"


def resolve_notebooks(names: Sequence[str] | None = None, notebooks_dir: Path | None = None) -> list[Path]:
    """Paths of the notebooks to run.

    ``names`` are paths to ``.ipynb`` files or stems / file names in ``notebooks_dir``
    (default :func:`default_notebooks_dir`); ``None`` or empty means every ``*.ipynb`` there.
    """
    nb_dir = Path(notebooks_dir) if notebooks_dir else default_notebooks_dir()
    if not names:
        found = sorted(p for p in nb_dir.glob("*.ipynb") if not p.name.startswith("."))
        if not found:
            raise ReportError(f"no notebooks found in {nb_dir}")
        return [p.resolve() for p in found]
    out = []
    for name in names:
        p = Path(name)
        candidates = [p, nb_dir / name, nb_dir / f"{name}.ipynb"]
        hit = next((c for c in candidates if c.is_file() and c.suffix == ".ipynb"), None)
        if hit is None:
            available = ", ".join(sorted(q.stem for q in nb_dir.glob("*.ipynb"))) or "none"
            raise ReportError(f"notebook {name!r} not found (not a file, not in {nb_dir}; available: {available})")
        out.append(hit.resolve())
    stems = [p.stem for p in out]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise ReportError(f"two notebooks share the name {dupes[0]!r}; their output folders would collide")
    return out


def parse_value(text: str) -> Any:
    """A ``-p`` value as a YAML scalar: ``3`` -> int, ``0.5`` / ``1e-3`` -> float, ``true`` -> bool,
    ``null`` -> None, ``[1, 2]`` -> list, anything else -> the string itself."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _NUMBER_RE.match(text.strip()):
        return float(text)  # YAML 1.1 reads 1e-3 as a string; a parameter means the number
    return value


_NUMBER_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def load_params_file(path: str | os.PathLike, stems: Iterable[str] = ()) -> tuple[dict, dict[str, dict]]:
    """Read a YAML parameters file: ``(global_params, {stem: params})``.

    The file is a mapping. A key that is a notebook stem (one of ``stems``) and maps to a
    mapping is that notebook's section; every other key is a parameter for all notebooks.
    """
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ReportError(f"parameters file {path} not found") from None
    except yaml.YAMLError as exc:
        raise ReportError(f"parameters file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ReportError(f"parameters file {path} must be a mapping of name: value, got {type(data).__name__}")
    stems = set(stems)
    global_params, sections = {}, {}
    for key, value in data.items():
        if path == EMBEDDED_DEFAULTS and key == "notes":
            continue  # notes for the index (load_notes), not parameters
        key = str(key)
        if key in stems:
            if not isinstance(value, dict):
                raise ReportError(f"{path}: section {key!r} (a notebook) must be a mapping of name: value")
            sections[key] = dict(value)
        else:
            global_params[key] = value
    return global_params, sections


def load_notes(path: str | os.PathLike = EMBEDDED_DEFAULTS) -> dict[str, str]:
    """``{stem: note}`` of the embedded defaults' ``notes`` key: what a shortened notebook's full run shows."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    return {str(k): str(v) for k, v in (data.get("notes") or {}).items()}


def shortened_note(nb_path: Path, params: Mapping[str, Any], note: str | None = None) -> str | None:
    """"ran shortened: NAME=VALUE (own default: D), ..." plus ``note``, or None when ``params``
    change none of the notebook's own defaults."""
    declared = _declared(nb_path)
    changed = [f"{k}={_fmt(v)} (own default {declared[k]['default']})" for k, v in params.items()
               if k in declared and str(declared[k].get("default")).strip("'\"") != str(v)]
    if not changed:
        return None
    return "ran shortened for the default report: " + ", ".join(changed) + "." + (f" {note}" if note else "")


def _declared(nb_path: Path) -> dict[str, dict]:
    import papermill

    return papermill.inspect_notebook(str(nb_path))


def plan_parameters(notebooks: Sequence[Path], global_params: Mapping[str, Any] | None = None,
                    sections: Mapping[str, Mapping[str, Any]] | None = None,
                    cli_params: Mapping[str, Any] | None = None,
                    executor: str | None = None) -> dict[str, dict]:
    """The parameters each notebook gets, checked against its ``parameters`` cell.

    Precedence: ``global_params`` (params file) < ``sections[stem]`` (params file) <
    ``cli_params`` (``-p``, ``--smoke``). A global or command-line parameter goes to the
    notebooks that declare it and must be declared by at least one of them; a section's
    parameter must be declared by its notebook. ``executor`` goes only to notebooks that
    declare an ``executor`` parameter. Each value must have the type its parameters cell
    annotates (:func:`advsample.parameters.check_declared_type`). Raises :class:`ReportError`
    listing every problem.
    """
    global_params = dict(global_params or {})
    sections = {k: dict(v) for k, v in (sections or {}).items()}
    cli_params = dict(cli_params or {})
    declared = {nb.stem: _declared(nb) for nb in notebooks}
    problems = []
    unknown_sections = sorted(set(sections) - set(declared))
    for stem in unknown_sections:
        problems.append(f"parameters given for notebook {stem!r}, which is not being run")
    for origin, params in (("params file", global_params), ("command line", cli_params)):
        for name in params:
            if not any(name in d for d in declared.values()):
                problems.append(_unknown(name, origin, declared))
    for stem, params in sections.items():
        if stem not in declared:
            continue
        for name in params:
            if name not in declared[stem]:
                problems.append(_unknown(name, f"section {stem!r} of the params file", {stem: declared[stem]}))
    if problems:
        raise ReportError("\n".join(problems))
    plan = {}
    for nb in notebooks:
        d = declared[nb.stem]
        merged: dict[str, Any] = {}
        for layer in (global_params, sections.get(nb.stem, {}), cli_params):
            merged.update({k: v for k, v in layer.items() if k in d})
        if executor is not None and "executor" in d:
            merged["executor"] = executor
        for name, value in merged.items():  # the types of the parameters cell, before any notebook runs
            try:
                check_declared_type(name, value, d[name].get("inferred_type_name"))
            except ParameterError as exc:
                problems.append(f"{exc} for {nb.stem}")
        problems += _never_ignored(nb.stem, merged, {k: v for k, v in cli_params.items() if k in d})
        plan[nb.stem] = merged
    if problems:
        raise ReportError("\n".join(problems))
    if executor is not None and not any("executor" in d for d in declared.values()):
        warnings.warn("--executor given but no selected notebook declares an 'executor' parameter; ignored",
                      stacklevel=2)
    return plan


# A parameter that, when set, makes its notebook load results instead of computing them: the
# notebook then ignores every other parameter it declares.
LOADS_INSTEAD = ("csv_path",)


def _never_ignored(stem: str, merged: dict, cli: Mapping[str, Any]) -> list[str]:
    """Problems with parameters a notebook would ignore; ``merged`` is changed in place.

    A command-line parameter beside a ``LOADS_INSTEAD`` parameter from the defaults or a params
    file is honoured: the loading parameter is dropped (with a warning). Both on the command line
    is refused. A ``system`` that cannot be resolved (``module:factory`` not importable, an
    unknown name) is refused before any kernel starts.
    """
    problems = []
    for loader in LOADS_INSTEAD:
        others = sorted(k for k in cli if k not in (loader, "executor"))
        if not merged.get(loader) or not others:
            continue
        if loader in cli:
            problems.append(f"{stem}: -p {loader} loads results, so -p {', '.join(others)} would be ignored; "
                            f"give one or the other")
        else:
            warnings.warn(f"{stem}: {loader}={merged[loader]!r} from the defaults dropped, so that -p "
                          f"{', '.join(others)} is honoured (the notebook computes instead of loading)", stacklevel=3)
            merged[loader] = ""
    system = merged.get("system")
    if isinstance(system, str) and system:
        from .systems import resolve_factory

        try:
            resolve_factory(system)  # imports it (also a module:factory in the current directory), builds nothing
        except (ValueError, TypeError, ImportError) as exc:
            problems.append(f"{stem}: parameter 'system' = {system!r} cannot be used: {exc}")
    return problems


def _unknown(name: str, origin: str, declared: Mapping[str, Mapping]) -> str:
    lines = [f"unknown parameter {name!r} ({origin}): not declared in the parameters cell of "
             + ", ".join(declared)]
    for stem, d in declared.items():
        lines.append(f"  {stem} declares: {', '.join(d) or '(no parameters cell)'}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# execution
# --------------------------------------------------------------------------------------

@dataclass
class NotebookResult:
    """Outcome of one notebook. Paths in ``files`` are relative to the report folder."""

    stem: str
    source: str
    status: str = "pending"  # "ok" | "failed"
    duration_s: float = 0.0
    params: dict = field(default_factory=dict)
    error: str | None = None
    summary: dict | None = None
    files: dict = field(default_factory=dict)
    title: str | None = None
    thumbnail: str | None = None  # data: URI of the notebook's last image output
    note: str | None = None  # e.g. that it ran shortened and what the full run shows

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@contextlib.contextmanager
def _kernel_path(directory: str):
    """Kernels started inside see ``directory`` on their ``sys.path`` (``PYTHONPATH``), e.g. for
    ``-p system mymodule:factory`` with ``mymodule.py`` where ``advsample report`` was started."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (directory, before) if p)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def execute_notebook(nb_path: str | os.PathLike, out_dir: str | os.PathLike, params: Mapping[str, Any] | None = None,
                     *, kernel: str = "python3", timeout: float | None = None, html: bool = True) -> NotebookResult:
    """Run one notebook in ``out_dir/<stem>/`` (its cwd) and render its HTML.

    Never raises for a failing notebook: the error is recorded in the result and the
    partial executed notebook is kept (and rendered).
    """
    import papermill

    nb_path = Path(nb_path).resolve()
    out_dir = Path(out_dir).resolve()
    sub = out_dir / nb_path.stem
    sub.mkdir(parents=True, exist_ok=True)
    out_nb = sub / f"{nb_path.stem}.ipynb"
    summary_file = sub / "summary.json"
    if summary_file.exists():
        summary_file.unlink()  # never report a stale summary from an earlier run
    res = NotebookResult(stem=nb_path.stem, source=str(nb_path), params=dict(params or {}))
    t0 = time.perf_counter()
    try:
        with _kernel_path(os.getcwd()):  # a user's "module:factory" beside where the report was started
            papermill.execute_notebook(
                str(nb_path), str(out_nb), parameters=dict(params or {}), kernel_name=kernel,
                cwd=str(sub), progress_bar=False, log_output=False, execution_timeout=timeout,
            )
        res.status = "ok"
    except papermill.PapermillExecutionError as exc:
        res.status = "failed"
        res.error = f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}"
    except Exception as exc:  # kernel died, missing kernel, bad notebook …
        res.status = "failed"
        res.error = f"{type(exc).__name__}: {exc}"
        (sub / "error.txt").write_text(traceback.format_exc())
        res.files["traceback"] = f"{nb_path.stem}/error.txt"
    res.duration_s = round(time.perf_counter() - t0, 2)
    if out_nb.exists():
        res.files["notebook"] = f"{nb_path.stem}/{out_nb.name}"
        res.title, res.thumbnail = _title_and_thumbnail(out_nb)
        if html:
            try:
                export_html(out_nb, sub / f"{nb_path.stem}.html")
                res.files["html"] = f"{nb_path.stem}/{nb_path.stem}.html"
            except Exception as exc:  # a broken HTML must not hide the run's result
                msg = f"HTML export failed: {type(exc).__name__}: {exc}"
                res.error = f"{res.error}; {msg}" if res.error else msg
                res.status = "failed"
    if summary_file.exists():
        res.files["summary"] = f"{nb_path.stem}/summary.json"
        try:
            data = json.loads(summary_file.read_text())
            res.summary = data if isinstance(data, dict) else {"value": data}
        except json.JSONDecodeError as exc:
            res.summary = None
            msg = f"summary.json is not valid JSON: {exc}"
            res.error = f"{res.error}; {msg}" if res.error else msg
            res.status = "failed"
    elif res.ok:
        res.error = "the notebook ran but wrote no summary.json"
    return res


def _title_and_thumbnail(nb_file: Path) -> tuple[str | None, str | None]:
    import nbformat

    nb = nbformat.read(str(nb_file), as_version=4)
    title = None
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^#{1,2}\s+(.+)$", cell.source, flags=re.M)
            if m:
                title = m.group(1).strip()
                break
    thumb = None
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            png = out.get("data", {}).get("image/png") if hasattr(out, "get") else None
            if png:
                thumb = "data:image/png;base64," + "".join(png if isinstance(png, list) else [png]).replace("\n", "")
    return title, thumb


def build_report(notebooks: Sequence[str | os.PathLike], out_dir: str | os.PathLike = "report",
                 plan: Mapping[str, Mapping[str, Any]] | None = None, *, kernel: str = "python3",
                 timeout: float | None = None, progress: bool = True, title: str = "advsample report",
                 notes: Mapping[str, str | None] | None = None) -> list[NotebookResult]:
    """Execute ``notebooks`` (with ``plan[stem]`` as parameters), then write summaries and index
    (``notes[stem]``: a line for the notebook's card, e.g. that it ran shortened)."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = plan or {}
    results = []
    bar = tqdm([Path(n) for n in notebooks], desc="notebooks", unit="nb", disable=not progress)
    for nb in bar:
        bar.set_postfix_str(nb.stem)
        res = execute_notebook(nb, out, plan.get(nb.stem, {}), kernel=kernel, timeout=timeout)
        res.note = (notes or {}).get(nb.stem)
        results.append(res)
        if not res.ok:
            bar.write(f"FAILED {nb.stem}: {res.error}")
        write_summaries(results, out)  # keep the folder consistent after every notebook
        write_index(results, out, title=title)
    bar.close()
    return results


# --------------------------------------------------------------------------------------
# summaries and index
# --------------------------------------------------------------------------------------

def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            flat.update(_flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            flat[key] = json.dumps(v)
        else:
            flat[key] = v
    return flat


def write_summaries(results: Sequence[NotebookResult], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``summary.json`` (``{stem: {status, duration_s, error, params, note, summary, files}}``) and
    ``summary.csv`` (one row per notebook, the notebooks' summaries flattened with dotted keys;
    a summary key that clashes with a fixed column, e.g. ``notebook``, becomes ``summary.<key>``)."""
    out = Path(out_dir)
    combined = {
        r.stem: {"status": r.status, "duration_s": r.duration_s, "error": r.error, "params": r.params,
                 "note": r.note, "summary": r.summary, "files": r.files}
        for r in results
    }
    json_path = out / "summary.json"
    json_path.write_text(json.dumps(combined, indent=2, default=str) + "\n")
    rows, keys = [], []
    reserved = {"notebook", "status", "duration_s", "error"}
    for r in results:
        flat = {(f"summary.{k}" if k in reserved else k): v for k, v in _flatten(r.summary or {}).items()}
        for k in flat:
            if k not in keys:
                keys.append(k)
        rows.append({"notebook": r.stem, "status": r.status, "duration_s": r.duration_s,
                     "error": r.error or "", **flat})
    csv_path = out / "summary.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["notebook", "status", "duration_s", "error", *keys])
        writer.writeheader()
        writer.writerows(rows)
    return csv_path, json_path


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


_INDEX_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em} .meta{color:#666;margin-bottom:1.5em}
.nb{border:1px solid #ddd;border-radius:6px;padding:1em;margin:1em 0;display:flex;gap:1.2em}
.nb.failed{border-color:#d33;background:#fff6f6}
.nb .thumb{flex:0 0 240px} .nb .thumb img{max-width:240px;max-height:180px;border:1px solid #eee}
.nb .body{flex:1;min-width:0} .nb h2{font-size:1.15em;margin:0 0 .3em}
.badge{display:inline-block;padding:0 .5em;border-radius:3px;font-size:.85em;color:#fff}
.badge.ok{background:#2a7} .badge.failed{background:#d33}
.error{font-family:monospace;white-space:pre-wrap;color:#a00;margin:.5em 0}
table.kv{border-collapse:collapse;margin:.5em 0;font-size:.9em} table.kv td{padding:1px 10px 1px 0;border-bottom:1px solid #eee}
table.kv td.v{font-family:monospace} .links a{margin-right:1em}
.note{margin:.5em 0;padding:.3em .6em;background:#fffbe6;border-left:3px solid #e6b800;font-size:.9em}
"""


def write_index(results: Sequence[NotebookResult], out_dir: str | os.PathLike, *, title: str = "advsample report",
                max_keys: int = 12) -> Path:
    """Write ``index.html``: one card per notebook with status, key numbers, a thumbnail
    (embedded) and relative links, so the folder can be moved or zipped."""
    out = Path(out_dir)
    esc = html.escape
    n_failed = sum(not r.ok for r in results)
    cards = []
    for r in results:
        links = []
        for key, label in (("html", "report (HTML)"), ("notebook", "executed notebook"),
                           ("summary", "summary.json"), ("traceback", "traceback")):
            rel = r.files.get(key)
            if rel:
                links.append(f'<a href="{esc(quote(rel))}">{label}</a>')
        kv = ""
        if r.summary:
            items = list(_flatten(r.summary).items())
            rows = "".join(f'<tr><td>{esc(str(k))}</td><td class="v">{esc(_fmt(v))}</td></tr>'
                           for k, v in items[:max_keys])
            more = f'<tr><td colspan="2">… {len(items) - max_keys} more in summary.json</td></tr>' if len(items) > max_keys else ""
            kv = f'<table class="kv">{rows}{more}</table>'
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in r.params.items()) or "defaults"
        thumb = (f'<div class="thumb"><img src="{r.thumbnail}" alt="last figure of {esc(r.stem)}"></div>'
                 if r.thumbnail else "")
        err = f'<div class="error">{esc(r.error)}</div>' if r.error else ""
        err += f'<div class="note">{esc(r.note)}</div>' if r.note else ""
        heading = esc(r.stem) + (f" — {esc(r.title)}" if r.title else "")
        cards.append(
            f'<div class="nb {"ok" if r.ok else "failed"}" id="{esc(r.stem)}">{thumb}<div class="body">'
            f'<h2>{heading} <span class="badge {"ok" if r.ok else "failed"}">{esc(r.status)}</span></h2>'
            f'<div class="meta">{r.duration_s:.1f} s · parameters: {esc(params)}</div>'
            f'{err}{kv}<div class="links">{"".join(links)}</div></div></div>'
        )
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    doc = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_INDEX_CSS}</style></head><body>"
        f"<h1>{esc(title)}</h1>"
        f'<div class="meta">{len(results)} notebooks, {n_failed} failed · built {stamp} · '
        f'<a href="summary.csv">summary.csv</a> · <a href="summary.json">summary.json</a></div>'
        + "".join(cards)
        + "</body></html>\n"
    )
    path = out / "index.html"
    path.write_text(doc)
    return path


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
