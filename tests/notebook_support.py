"""Running the project's notebooks under papermill in the tests (shared by conftest.smoke_run and test_notebooks)."""
from __future__ import annotations

from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(stem: str, cwd: Path, **parameters) -> nbformat.NotebookNode:
    """Run All of ``notebooks/<stem>.ipynb`` with ``parameters`` in ``cwd``; the executed notebook."""
    import papermill

    out = Path(cwd) / f"{stem}.out.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / f"{stem}.ipynb"), str(out), parameters=parameters,
                               kernel_name="python3", cwd=str(cwd), progress_bar=False)
    return nbformat.read(out, as_version=4)
