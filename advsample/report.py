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

One module per concept: this one holds the notebooks' parameters and their execution;
:mod:`advsample.report_summary` the results, summaries and index page;
:mod:`advsample.report_html` the self-contained HTML (every name stays importable from here).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .parameters import ParameterError, check_declared_type
from .report_html import NPM_PACKAGES, _offline_fixups, export_html, fetch_js, js_dir  # noqa: F401  (this module's API)
from .report_summary import NotebookResult, ReportError, _fmt, write_index, write_summaries

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
