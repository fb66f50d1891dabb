"""Execute the toy-surface notebooks with papermill (smoke settings) and check what they produce."""
import json
from pathlib import Path

import nbformat
import papermill
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TOY = ["01_double_well_1d", "02_double_well_2d"]


def execute(stem, tmp_path, **parameters):
    out = tmp_path / f"{stem}.out.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / f"{stem}.ipynb"), str(out), parameters=parameters,
                               kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    return nbformat.read(out, as_version=4)


def outputs(nb, mime):
    return [o["data"][mime] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if mime in o.get("data", {})]


@pytest.mark.parametrize("stem", TOY)
def test_committed_notebook_is_clean(stem):
    nb = nbformat.read(NOTEBOOKS / f"{stem}.ipynb", as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec == {"name": "python3", "display_name": "Python 3", "language": "python"}
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", [])
    assert "smoke: bool = False" in code[0].source


@pytest.mark.parametrize("stem", TOY)
def test_smoke_run(stem, tmp_path):
    nb = execute(stem, tmp_path, smoke=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["notebook"] == stem and summary["smoke"] is True
    rounds, labels_per_round = 2, 10  # the notebook's smoke settings
    assert summary["rounds"] == rounds
    assert 0 < summary["labels_used"] <= rounds * labels_per_round
    if stem == "02_double_well_2d":
        assert summary["test_force_mae_final"] < summary["test_force_mae_initial"]
        assert summary["improvement"] == pytest.approx(summary["test_force_mae_initial"] / summary["test_force_mae_final"])
    assert (tmp_path / "runs" / stem / "round_002" / "metrics.json").exists()
    assert len(outputs(nb, "image/png")) >= 8  # surface, data, round 0, attack, curve, parity, calibration, before/after
    html = "\n".join(outputs(nb, "text/html"))
    assert 'class="advsample-frames"' in html and 'type="range"' in html  # round stepper: browser-side slider
    assert html.count("data:image/png;base64") >= 3
    if stem == "01_double_well_1d":
        assert "<script" in html and "anim" in html  # matplotlib to_jshtml animation of the attack


@pytest.mark.parametrize("stem", TOY)
@pytest.mark.parametrize("parameters, words", [
    ({"n_rounds": -1}, ["n_rounds", "-1"]),
    ({"sampler": "nope"}, ["unknown sampler", "nope"]),
    ({"kT": 0}, ["kT must be positive"]),
])
def test_bad_parameters_fail_clearly(stem, parameters, words, tmp_path):
    with pytest.raises(papermill.PapermillExecutionError) as error:
        execute(stem, tmp_path, smoke=True, **parameters)
    assert error.value.ename == "ValueError"
    for word in words:
        assert word in str(error.value)
    assert not (tmp_path / "runs").exists()  # failed before any work
