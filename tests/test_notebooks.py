"""Every notebook under papermill (smoke): each figure cell shows a picture, no figure turns into
``<Figure size ...>`` text, a second run on the same run directory resumes with the same
figures, bad parameters stop the notebook before any work, and code cells stay short.

A "figure cell" is a code cell tagged ``figure`` (cell metadata); it must have an ``image/png``
output or an interactive view (HTML with an embedded image: frame slider, ``to_jshtml``
animation; or a widget view).
"""
from __future__ import annotations

import json

import nbformat
import papermill
import pytest
from notebook_support import NOTEBOOKS, execute

STEMS = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
MAX_CELL_LINES = 12
SMOKE = {"smoke": True}
INT_PARAMETER = {"06_headline": "n_seeds"}  # an int parameter of notebooks without n_rounds (06 has no rounds)


def _is_view(output) -> bool:
    data = output.get("data", {})
    if "image/png" in data or "application/vnd.jupyter.widget-view+json" in data:
        return True
    html = data.get("text/html", "")
    html = "".join(html) if isinstance(html, list) else html
    return "data:image/png;base64" in html


def figure_problems(nb) -> list[str]:
    """What is wrong with the figures of an executed notebook (empty: nothing)."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        outputs = cell.get("outputs", [])
        for output in outputs:
            text = output.get("text", "") or output.get("data", {}).get("text/plain", "")
            text = "".join(text) if isinstance(text, list) else text
            if "<Figure size" in text and "image/png" not in output.get("data", {}):
                problems.append(f"cell {i}: a figure shown as text: {text.strip()[:60]!r}")
        if "figure" in cell.metadata.get("tags", []) and not any(_is_view(o) for o in outputs):
            problems.append(f"cell {i} (tagged figure) shows no image/png or interactive view: {cell.source[:60]!r}")
    return problems


def figure_signature(nb) -> list[tuple[int, tuple[str, ...]]]:
    """Per figure cell: the kinds of picture it shows (png, html view, widget), in order."""
    signature = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "figure" in cell.metadata.get("tags", []):
            kinds = tuple("png" if "image/png" in o.get("data", {}) else "view" for o in cell.outputs if _is_view(o))
            signature.append((i, kinds))
    return signature


def _rounded(value, digits: int = 4):
    """Floats to ``digits`` significant digits (a resumed run reads geometries back from extxyz)."""
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v, digits) for v in value]
    return float(f"{value:.{digits}g}") if isinstance(value, float) else value


def test_figure_problems_catch_a_figure_as_text():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("fig", metadata={"tags": ["figure"]})
    cell.outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "<Figure size 1260x340 with 3 Axes>"})]
    nb.cells = [cell]
    assert len(figure_problems(nb)) == 2  # text instead of a figure, and a figure cell without a picture
    cell.outputs = [nbformat.v4.new_output("display_data", {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure size 640x480>"})]
    assert figure_problems(nb) == []


@pytest.mark.parametrize("stem", STEMS)
def test_committed_notebook_is_clean_with_figure_cells(stem):
    nb = nbformat.read(NOTEBOOKS / f"{stem}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec == {"name": "python3", "display_name": "Python 3", "language": "python"}
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", []) and "smoke: bool = False" in code[0].source
    assert sum("figure" in c.metadata.get("tags", []) for c in code) >= 2
    assert sum("check_parameters(globals()" in c.source for c in code) == 1  # one library call checks them


@pytest.mark.parametrize("stem", STEMS)
def test_code_cells_are_short(stem):
    nb = nbformat.read(NOTEBOOKS / f"{stem}.ipynb", as_version=4)
    long = [(i, len(c.source.splitlines())) for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and len(c.source.splitlines()) > MAX_CELL_LINES]
    assert not long, f"code cells longer than {MAX_CELL_LINES} lines (cell, lines): {long}"


@pytest.mark.parametrize("stem", STEMS)
def test_smoke_run_twice_shows_every_figure(stem, smoke_run):
    """Run All (the session's shared first run, conftest.smoke_run), then Run All again on the same run directory
    (the second run resumes)."""
    first, summary, tmp_path = smoke_run(stem)
    assert figure_problems(first) == []
    second = execute(stem, tmp_path, **SMOKE)
    assert figure_problems(second) == []
    assert figure_signature(second) == figure_signature(first)
    again = json.loads((tmp_path / "summary.json").read_text())
    assert _rounded(again) == _rounded(summary)
    if stem.startswith(("01", "02")):
        loaded = [o for c in second.cells for o in c.get("outputs", []) if "(loaded)" in "".join(o.get("text", ""))]
        assert loaded, "the second run resumed the finished rounds"
        rounds, labels_per_round = 2, 10  # the notebooks' smoke settings
        assert summary["notebook"] == stem and summary["rounds"] == rounds
        assert 0 < summary["labels_used"] <= rounds * labels_per_round
        assert (tmp_path / "runs" / stem / "round_002" / "metrics.json").exists()
    if stem.startswith("02"):
        assert summary["test_force_mae_final"] < summary["test_force_mae_initial"]


@pytest.mark.parametrize("stem, value", [(s, v) for s in STEMS for v in (["abc"] if s[:2] in ("01", "03") else [1.5])])
def test_wrong_type_stops_before_any_work(stem, value, tmp_path):
    with pytest.raises(papermill.PapermillExecutionError) as error:
        execute(stem, tmp_path, smoke=True, **{INT_PARAMETER.get(stem, "n_rounds"): value})
    assert error.value.ename == "ParameterError"
    assert f"parameter '{INT_PARAMETER.get(stem, 'n_rounds')}': expected int, got {value!r}" in str(error.value)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "sampler_comparison").exists()


@pytest.mark.parametrize("parameters, words", [
    ({"n_rounds": -1}, ["'n_rounds' must be >= 0", "-1"]),
    ({"sampler": "nope"}, ["'sampler' must be one of", "'nope'"]),
    ({"kT": 0}, ["'kT' must be > 0"]),
])
def test_bad_values_stop_before_any_work(parameters, words, tmp_path):
    with pytest.raises(papermill.PapermillExecutionError) as error:
        execute("01_double_well_1d", tmp_path, smoke=True, **parameters)
    for word in words:
        assert word in str(error.value)
    assert not (tmp_path / "runs").exists()
