"""Notebook 03 live in JupyterLab (smoke): Run All twice, no traceback, no widget-loading error,
the nglview canvas draws NH3 and changes frame when its player moves.

JupyterLab runs on 127.0.0.1 from this environment; every request elsewhere is aborted.
Screenshots go to test-artifacts/.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from browser_support import CHROMIUM_ARGS, image_stats, require_browser, save_artifact

pytestmark = pytest.mark.browser
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "03_ammonia_inversion.ipynb"
TOKEN = "advsample-test"
WIDGET_ERRORS = ("is not registered", "Could not create", "Failed to load", "widget", "nglview")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    require_browser()
    pytest.importorskip("jupyterlab")
    pytest.importorskip("nglview")
    root = tmp_path_factory.mktemp("lab")
    nb = json.loads(NOTEBOOK.read_text())
    params = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    source = "".join(params["source"])
    assert "smoke: bool = False" in source
    params["source"] = source.replace("smoke: bool = False", "smoke: bool = True")
    (root / "03.ipynb").write_text(json.dumps(nb))
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", JUPYTER_CONFIG_DIR=str(root / ".config"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--allow-root"],
        stdout=(root / "lab.log").open("w"), stderr=subprocess.STDOUT, env=env, cwd=root)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("JupyterLab did not start:\n" + (root / "lab.log").read_text()[-2000:])
    yield f"http://127.0.0.1:{port}", root
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _run_all(page, root: Path, timeout_s: float = 300) -> None:
    (root / "summary.json").unlink(missing_ok=True)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    deadline = time.time() + timeout_s
    while not (root / "summary.json").exists():  # the last cell writes it
        errors = page.locator("[data-mime-type='application/vnd.jupyter.error']").all_inner_texts()
        if errors or time.time() > deadline:
            save_artifact("lab_run_all_failed.png", page.screenshot(full_page=False))
            pytest.fail(f"Run All did not finish: {errors}")
        page.wait_for_timeout(1000)
    page.wait_for_timeout(2000)


def _check_page(page, console: list[str], name: str) -> None:
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
    tracebacks = errors.all_inner_texts()
    assert not tracebacks, tracebacks
    widget_errors = [m for m in console if any(w in m for w in WIDGET_ERRORS)]
    assert not widget_errors, widget_errors
    canvas = page.locator(".jp-OutputArea-output canvas").first
    canvas.scroll_into_view_if_needed()
    page.wait_for_timeout(1500)
    shot0 = canvas.screenshot()
    save_artifact(f"lab_{name}_nglview0.png", shot0)
    stats = image_stats(shot0)
    assert stats["fraction"] > 0.002 and stats["std"] > 5, f"blank nglview canvas: {stats}"
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    handle = page.locator(".jp-OutputArea-output .ui-resizable .noUi-handle").first
    handle.wait_for(state="visible", timeout=10000)
    handle.focus()
    page.keyboard.press("End")
    page.mouse.move(0, 0)
    page.wait_for_timeout(2500)  # the kernel sends the last frame's coordinates
    shot1 = canvas.screenshot()
    save_artifact(f"lab_{name}_nglview1.png", shot1)
    assert shot0 != shot1, "the nglview frame did not change"


def test_notebook_03_runs_twice_live_and_nglview_animates(lab):
    url, root = lab
    sync_playwright, chromium = require_browser()
    console: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(url) else r.abort())
        page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
        page.goto(f"{url}/lab/tree/03.ipynb?token={TOKEN}")
        page.locator(".jp-Notebook").first.wait_for(timeout=60000)
        select = page.locator(".jp-Dialog button", has_text="Select")  # JupyterLab may ask which kernel
        try:
            select.wait_for(timeout=20000)
            select.click()
        except Exception:  # noqa: BLE001 - no dialog: the notebook's kernelspec was used
            pass
        page.get_by_text("Kernel status: Idle").first.wait_for(state="attached", timeout=90000)  # the kernel started
        _run_all(page, root)
        _check_page(page, console, "run1")
        _run_all(page, root)  # Run All again: the run directory resumes
        _check_page(page, console, "run2")
        save_artifact("lab_notebook03.png", page.screenshot(full_page=False))
        browser.close()
