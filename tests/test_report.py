"""advsample report: parameters, errors, summaries, index (fast: two tiny notebooks)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import nbformat
import pytest

from advsample import cli, report
from advsample.report import ReportError, load_params_file, parse_value, plan_parameters


def _notebook(path: Path, params: str, body: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem} title"),
                nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]})]
    nb.cells += [nbformat.v4.new_code_cell(src) for src in body]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


SUMMARY = "import json, os\njson.dump({'notebook': 'ok', 'n': n, 'smoke': smoke, 'scale': scale, 'cwd': os.path.basename(os.getcwd())}, open('summary.json', 'w'))"


@pytest.fixture(scope="module")
def notebooks(tmp_path_factory):
    d = tmp_path_factory.mktemp("nbs")
    ok = _notebook(d / "ok.ipynb", "smoke: bool = False  # quick\nn: int = 2\nscale: float = 1.0\nexecutor: str = 'inline'",
                   ["x = n * scale", SUMMARY])
    bad = _notebook(d / "bad.ipynb", "smoke: bool = False\nn: int = 2",
                    ["partial = 'kept'\nprint(partial)", "raise ValueError(f'boom {n}')", "print('never')"])
    return ok, bad


# -- parameters ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [("3", 3), ("0.5", 0.5), ("true", True), ("False", False),
                                         ("null", None), ("abc", "abc"), ("[1, 2]", [1, 2]), ("1e-3", 1e-3),
                                         ("'7'", "7")])
def test_parse_value_yaml_scalars(text, value):
    assert parse_value(text) == value


def test_params_file_global_and_sections(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("n: 4\nsmoke: true\nok:\n  scale: 2.5\n")
    glob, sections = load_params_file(f, stems={"ok", "bad"})
    assert glob == {"n": 4, "smoke": True}
    assert sections == {"ok": {"scale": 2.5}}
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ReportError, match="mapping"):
        load_params_file(f)
    f.write_text("ok: 3\n")
    with pytest.raises(ReportError, match="section 'ok'"):
        load_params_file(f, stems={"ok"})


def test_plan_precedence_and_routing(notebooks):
    ok, bad = notebooks
    plan = plan_parameters([ok, bad], global_params={"n": 1, "scale": 3.0}, sections={"ok": {"n": 7}},
                           cli_params={"smoke": True}, executor="process")
    # scale only goes where it is declared; the section beats the file's global value
    assert plan["ok"] == {"n": 7, "scale": 3.0, "smoke": True, "executor": "process"}
    assert plan["bad"] == {"n": 1, "smoke": True}
    # the command line beats the section
    plan = plan_parameters([ok], sections={"ok": {"n": 7}}, cli_params={"n": 9})
    assert plan["ok"] == {"n": 9}


def test_unknown_parameter_is_a_clear_error(notebooks):
    ok, bad = notebooks
    with pytest.raises(ReportError) as exc:
        plan_parameters([ok, bad], cli_params={"n_roundz": 3})
    msg = str(exc.value)
    assert "unknown parameter 'n_roundz'" in msg and "command line" in msg
    assert "ok declares: smoke, n, scale, executor" in msg and "bad declares: smoke, n" in msg
    with pytest.raises(ReportError, match="unknown parameter 'scale'.*section 'bad'"):
        plan_parameters([ok, bad], sections={"bad": {"scale": 2.0}})


def test_executor_ignored_where_not_declared(notebooks):
    _, bad = notebooks
    with pytest.warns(UserWarning, match="executor"):
        plan = plan_parameters([bad], executor="parsl")
    assert plan["bad"] == {}


def test_resolve_notebooks(notebooks, tmp_path):
    ok, bad = notebooks
    assert report.resolve_notebooks(["ok", "bad.ipynb"], notebooks_dir=ok.parent) == [ok, bad]
    assert report.resolve_notebooks(None, notebooks_dir=ok.parent) == [bad, ok]
    with pytest.raises(ReportError, match="not found.*available: bad, ok"):
        report.resolve_notebooks(["nope"], notebooks_dir=ok.parent)


def test_cli_unknown_parameter_exit_2(notebooks, tmp_path, capsys):
    ok, _ = notebooks
    rc = cli.main(["report", "--notebooks", str(ok), "-o", str(tmp_path / "r"), "-p", "nn", "3", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown parameter 'nn'" in err and "ok declares" in err
    assert not (tmp_path / "r").exists()  # checked before anything runs


@pytest.mark.parametrize("value, shown", [("abc", "'abc' (str)"), ("1.5", "1.5 (float)"), ("true", "True (bool)")])
def test_cli_wrong_type_exit_2_before_anything_runs(notebooks, tmp_path, capsys, value, shown):
    ok, bad = notebooks
    rc = cli.main(["report", "--notebooks", str(ok), str(bad), "-o", str(tmp_path / "r"), "-p", "n", value, "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"parameter 'n': expected int, got {shown} for ok" in err  # both notebooks declare n: int
    assert f"parameter 'n': expected int, got {shown} for bad" in err
    assert not (tmp_path / "r").exists()


def test_plan_checks_types_from_the_parameters_cell(notebooks):
    ok, _ = notebooks
    assert plan_parameters([ok], cli_params={"scale": 2, "n": 3})["ok"] == {"scale": 2, "n": 3}  # an int is a fine float
    with pytest.raises(ReportError, match=r"parameter 'scale': expected float, got 'big' \(str\) for ok"):
        plan_parameters([ok], {"scale": "big"})
    with pytest.raises(ReportError, match=r"parameter 'smoke': expected bool, got 'yes please'"):
        plan_parameters([ok], sections={"ok": {"smoke": "yes please"}})


# -- a real run: one notebook passes, one fails -------------------------------------------

@pytest.fixture(scope="module")
def run(notebooks, tmp_path_factory):
    ok, bad = notebooks
    out = tmp_path_factory.mktemp("report") / "rep"
    params = tmp_path_factory.mktemp("params") / "params.yaml"
    params.write_text("scale: 0.5\nok:\n  n: 4\n")
    rc = cli.main(["report", "--notebooks", str(ok), str(bad), "-o", str(out), "--params", str(params),
                   "-p", "smoke", "true", "--executor", "process", "--no-progress"])
    return rc, out


def test_failing_notebook_recorded_and_exit_nonzero(run):
    rc, out = run
    assert rc == 1
    combined = json.loads((out / "summary.json").read_text())
    assert combined["bad"]["status"] == "failed"
    assert "ValueError: boom 2" in combined["bad"]["error"]
    assert combined["ok"]["status"] == "ok" and combined["ok"]["error"] is None
    # the partial executed notebook is kept, with the output of the cells that ran and the traceback
    nb = nbformat.read(str(out / "bad" / "bad.ipynb"), as_version=4)
    text = json.dumps(nb)
    assert "kept" in text and "ValueError" in text and "never" not in "".join(
        o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert (out / "bad" / "bad.html").is_file()
    index = (out / "index.html").read_text()
    assert "boom 2" in index and "failed" in index


def test_notebook_ran_in_its_folder_with_parameters(run):
    _, out = run
    s = json.loads((out / "ok" / "summary.json").read_text())
    assert s == {"notebook": "ok", "n": 4, "smoke": True, "scale": 0.5, "cwd": "ok"}
    combined = json.loads((out / "summary.json").read_text())
    assert combined["ok"]["params"] == {"scale": 0.5, "n": 4, "smoke": True, "executor": "process"}
    assert combined["bad"]["params"] == {"smoke": True}  # bad declares neither scale nor executor
    for f in ("ok/ok.ipynb", "ok/ok.html", "ok/summary.json", "index.html", "summary.csv"):
        assert (out / f).is_file(), f


def test_summary_csv(run):
    _, out = run
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["notebook"] for r in rows] == ["ok", "bad"]
    assert rows[0]["status"] == "ok" and rows[0]["n"] == "4" and rows[0]["scale"] == "0.5"
    assert rows[0]["summary.notebook"] == "ok"  # a clashing summary key gets a prefix
    assert rows[1]["status"] == "failed" and "boom" in rows[1]["error"] and rows[1]["n"] == ""


def test_index_links_relative(run):
    _, out = run
    index = (out / "index.html").read_text()
    hrefs = re.findall(r'href="([^"]+)"', index)
    assert "ok/ok.html" in hrefs and "ok/ok.ipynb" in hrefs and "bad/bad.ipynb" in hrefs
    for h in hrefs:
        assert "://" not in h and not h.startswith("/"), h
        assert (out / h).is_file(), h
    assert "ok title" in index  # the notebook's first heading


def test_html_has_no_network_references(run):
    _, out = run
    html = (out / "ok" / "ok.html").read_text()
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="(https?:)?//', html)
    assert "cdnjs" not in html and "unpkg" not in html


def test_offline_fixups_replace_matplotlib_font_awesome():
    page = ('<html><head></head><body><link rel="stylesheet"\n'
            'href="https://maxcdn.bootstrapcdn.com/font-awesome/4.4.0/css/font-awesome.min.css">'
            '<div class="animation"><i class="fa fa-play"></i></div><img src="https://example.org/x.png"></body></html>')
    fixed, external = report._offline_fixups(page)
    assert "maxcdn" not in fixed and "fa-play:before" in fixed
    assert external == ["https://example.org/x.png"]


def test_frame_slider_html():
    from advsample.viz.embed import frame_slider

    png = bytes.fromhex("89504e470d0a1a0a") + b"fake"
    fs = frame_slider([png, png + b"2"], labels=["a", "b</script>"], title="t")
    html = fs._repr_html_()
    assert html.count("<img") == 1 and "data:image/png;base64," in html
    assert "b<\\/script>" in html  # labels cannot close the script tag
    assert 'max="1"' in html and len(fs) == 2
    with pytest.raises(ValueError):
        frame_slider([png], labels=["a", "b"])


def test_embedded_defaults_fit_the_real_notebooks():
    """The report's embedded defaults name only parameters the notebooks declare."""
    notebooks = report.resolve_notebooks(None)
    stems = {nb.stem for nb in notebooks}
    global_params, sections = load_params_file(report.EMBEDDED_DEFAULTS, stems)
    assert set(sections) <= stems and sections, "the defaults shorten some notebook"
    plan = plan_parameters(notebooks, global_params, sections)
    assert plan["03_ammonia_inversion"]["n_rounds"] < 5
    notes = report.load_notes()
    assert set(notes) == set(sections), "every shortened notebook says what its full run shows"
    for nb in notebooks:
        note = report.shortened_note(nb, plan[nb.stem], notes[nb.stem])
        assert note.startswith("ran shortened") and "docs/results.md" in note
        assert f"n_rounds={plan[nb.stem].get('n_rounds')} (own default" in note or "csv_path=" in note
    assert report.shortened_note(notebooks[0], {}, "x") is None  # own defaults: not shortened


def test_index_and_summary_carry_the_note(notebooks, tmp_path):
    ok, _ = notebooks
    results = report.build_report([ok], tmp_path / "r", {"ok": {"n": 3}}, progress=False,
                                  notes={"ok": report.shortened_note(ok, {"n": 3}, "full run: see docs/results.md")})
    assert results[0].note == "ran shortened for the default report: n=3 (own default 2). full run: see docs/results.md"
    assert results[0].note in (tmp_path / "r" / "index.html").read_text()
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["ok"]["note"] == results[0].note
