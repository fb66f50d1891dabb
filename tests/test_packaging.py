"""The install story: environment.yml and pyproject.toml agree; the core imports without extras."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch", "tblite-python": "tblite"}
CONDA_ONLY = {"python", "pip", "cpuonly"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pip_names = {_name(r) for r in pyproject["project"]["dependencies"]}
    conda = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    conda_names = {CONDA_TO_PIP.get(_name(d), _name(d)) for d in conda if isinstance(d, str)} - CONDA_ONLY
    assert conda_names == pip_names, f"only in environment.yml: {conda_names - pip_names}; only in pyproject: {pip_names - conda_names}"


def test_readme_install_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"```bash\n(python3 -m venv[^\n]*)\n```", readme).group(1)
    assert "torch==2.13.0" in command.split("pip install -e")[0], "CPU torch must be installed before the package"
    assert command in (ROOT / ".ci" / "run").read_text()


def test_core_imports_without_notebook_stack_or_parsl():
    code = (
        "import sys, advsample.loop, advsample.attack, advsample.label, advsample.viz.plots; "
        "bad = [m for m in ('nglview', 'ipywidgets', 'parsl') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
