"""nglview's widgets ask for the front-end version that is installed (nglview 4.0.1 asks for 4.0
while its JupyterLab extension registers 3.1.5: live Jupyter refused every view)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("nglview")

PROBE = """
from advsample.viz.embed import import_nglview, ngl_trajectory
import_nglview()
import nglview.color, nglview.widget
from ase.build import molecule
view = ngl_trajectory([molecule("NH3"), molecule("NH3")])
print(nglview.widget.NGLWidget._model_module_version.default_value, nglview.color.ColormakerRegistry._model_module_version,
      view._model_module_version, view._view_module_version)
"""


def probe(env_extra: dict) -> list[str]:
    env = dict(os.environ, **env_extra)
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_widgets_ask_for_the_installed_lab_extension(tmp_path):
    package = tmp_path / "labextensions" / "nglview-js-widgets" / "package.json"
    package.parent.mkdir(parents=True)
    package.write_text(json.dumps({"name": "nglview-js-widgets", "version": "9.8.7"}))
    # JUPYTER_PATH comes first in JupyterLab's search order, as here
    assert probe({"JUPYTER_PATH": str(tmp_path)}) == ["9.8.7"] * 4  # the colour registry made at import too


def test_this_environment_is_consistent():
    from advsample.viz.embed import _labextension_version

    installed = _labextension_version()
    if installed is None:
        pytest.skip("no nglview lab extension installed")
    assert probe({}) == [installed] * 4
