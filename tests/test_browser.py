"""The report opens anywhere: built once, moved to another folder, opened from file://
in headless Chromium with every network request blocked.

Screenshots go to test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from browser_support import CHROMIUM_ARGS, image_stats, open_offline, require_browser, save_artifact

pytestmark = pytest.mark.browser

DEMO = Path(__file__).parent / "fixtures" / "demo.ipynb"


@pytest.fixture(scope="module")
def moved_report(tmp_path_factory):
    """Build the report of the demo notebook, then move it: links must stay relative."""
    require_browser()
    from advsample.report import js_dir

    if not (js_dir() / "@jupyter-widgets" / "html-manager" / "dist" / "embed-amd.js").is_file():
        msg = "widget bundles missing: run `advsample fetch-js` (needs npm)"
        if os.environ.get("CI"):
            pytest.fail(f"CI: {msg}")
        pytest.skip(msg)
    built = tmp_path_factory.mktemp("built") / "report"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "advsample.cli", "report", "--notebooks", str(DEMO),
                           "-o", str(built), "--smoke", "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "not bundled" not in proc.stderr, proc.stderr
    moved = tmp_path_factory.mktemp("moved") / "copy-of-report"
    shutil.copytree(built, moved)
    shutil.rmtree(built)  # anything still pointing at the old place now breaks
    return moved


@pytest.fixture(scope="module")
def browser():
    sync_playwright, chromium = require_browser()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = ctx.new_page()
    yield pg
    ctx.close()


def _sizes(page, selector):
    return page.evaluate(
        """sel => Array.from(document.querySelectorAll(sel)).map(e => {
             const r = e.getBoundingClientRect();
             return {tag: e.tagName, id: e.id || '', w: r.width, h: r.height};
           })""", selector)


@pytest.mark.parametrize("rel", ["index.html", "demo/demo.html"])
def test_page_renders_offline(moved_report, page, rel):
    log = open_offline(page, (moved_report / rel).as_uri())
    save_artifact(f"{rel.replace('/', '_')}.png", page.screenshot(full_page=True))
    assert not log.problems(), "\n".join(log.problems())
    # every image, canvas and figure has a size
    visual = _sizes(page, "img, canvas, .jp-OutputArea-output svg")
    assert visual, "no image or canvas on the page"
    empty = [v for v in visual if v["w"] <= 0 or v["h"] <= 0]
    assert not empty, f"zero-size elements: {empty}"


def test_index_links_are_relative_and_resolve(moved_report, page):
    open_offline(page, (moved_report / "index.html").as_uri(), wait_ms=200)
    hrefs = page.evaluate("() => Array.from(document.querySelectorAll('a')).map(a => a.getAttribute('href'))")
    assert hrefs
    for href in hrefs:
        assert "://" not in href and not href.startswith("/"), href
        assert (moved_report / href).is_file(), href


def test_widgets_rendered(moved_report, page):
    log = open_offline(page, (moved_report / "demo" / "demo.html").as_uri())
    assert page.locator(".widget-slider").count() >= 1, "ipywidgets not rendered"
    assert page.locator(".jupyter-widgets canvas").count() == 1, "nglview canvas missing"
    assert not log.problems(), "\n".join(log.problems())


def test_frame_slider_switches_frames(moved_report, page):
    log = open_offline(page, (moved_report / "demo" / "demo.html").as_uri())
    root = page.locator(".advsample-frames").first
    root.scroll_into_view_if_needed()
    img = root.locator("img.advs-frame")
    assert root.locator(".advs-controls").is_visible(), "slider controls hidden: the inline script did not run"
    src0 = img.get_attribute("src")
    shot0 = root.screenshot()
    n = int(root.get_attribute("data-n-frames"))
    assert n >= 2
    root.locator("input.advs-range").fill(str(n - 1))
    assert root.get_attribute("data-frame") == str(n - 1)
    assert img.get_attribute("src") != src0
    assert root.locator(".advs-label").inner_text() == f"round {n - 1}"
    shot1 = root.screenshot()
    save_artifact("frame_slider_first.png", shot0)
    save_artifact("frame_slider_last.png", shot1)
    assert shot0 != shot1
    # play from the start: the frame advances by itself
    root.locator("input.advs-range").fill("0")
    root.locator("button.advs-play").click()
    page.wait_for_function("el => el.getAttribute('data-frame') !== '0'", arg=root.element_handle(), timeout=5000)
    root.locator("button.advs-play").click()
    assert not log.problems(), "\n".join(log.problems())


def test_jshtml_animation_steps(moved_report, page):
    log = open_offline(page, (moved_report / "demo" / "demo.html").as_uri())
    anim = page.locator(".animation").first
    anim.scroll_into_view_if_needed()
    img = anim.locator("img").first
    src0 = img.get_attribute("src")
    anim.locator("button[title='Next frame']").click()
    assert img.get_attribute("src") != src0
    box = img.bounding_box()
    assert box and box["width"] > 0 and box["height"] > 0
    assert not log.problems(), "\n".join(log.problems())


def test_jslinked_widgets_move_together(moved_report, page):
    log = open_offline(page, (moved_report / "demo" / "demo.html").as_uri())
    box = page.locator(".widget-vbox").first
    box.scroll_into_view_if_needed()
    bar = box.locator(".progress-bar")
    readout = box.locator(".widget-readout")
    assert readout.inner_text().strip() == "0"
    before = box.screenshot()
    handle = box.locator(".noUi-handle").first
    handle.focus()
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    page.wait_for_timeout(200)
    assert readout.inner_text().strip() == "3"
    # jslink(slider -> progress) in the browser, no kernel
    width = bar.evaluate("e => e.style.width")
    assert width == "30%", width
    after = box.screenshot()
    save_artifact("widgets_after.png", after)
    assert before != after
    # Play drives the slider
    box.locator(".widget-play button").first.click()
    page.wait_for_function("el => el.innerText.trim() !== '3'", arg=readout.element_handle(), timeout=5000)
    assert not log.problems(), "\n".join(log.problems())


def test_nglview_draws_molecule_and_switches_frames(moved_report, page):
    log = open_offline(page, (moved_report / "demo" / "demo.html").as_uri(), wait_ms=4000)
    canvas = page.locator(".jupyter-widgets canvas").first
    canvas.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    shot0 = canvas.screenshot()
    save_artifact("nglview_frame0.png", shot0)
    stats = image_stats(shot0)
    assert stats["fraction"] > 0.002 and stats["std"] > 5, f"blank nglview canvas: {stats}"
    # nglview's own player (shown on hover) switches to the second frame, kernel-less
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    handle = page.locator(".jupyter-widgets .ui-resizable .noUi-handle").first
    handle.wait_for(state="visible", timeout=5000)
    handle.focus()
    page.keyboard.press("End")
    page.mouse.move(0, 0)
    page.wait_for_timeout(1000)
    shot1 = canvas.screenshot()
    save_artifact("nglview_frame1.png", shot1)
    assert image_stats(shot1)["fraction"] > 0.002
    assert shot0 != shot1, "the nglview frame did not change"
    assert not log.problems(), "\n".join(log.problems())


@pytest.fixture(scope="module")
def comparison_report(tmp_path_factory):
    """Notebook 04 as the default report runs it: the measured 2D comparison loaded from its rows.csv."""
    require_browser()
    out = tmp_path_factory.mktemp("cmp") / "report"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "advsample.cli", "report", "--notebooks", "04_sampler_comparison",
                           "-o", str(out), "-p", "csv_path", "docs/results/sample_efficiency_2d/rows.csv", "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_comparison_page_shows_its_figures(comparison_report, page):
    """The sampler-comparison page shows the comparison and kT-sweep figures as images, never '<Figure ...>' text."""
    log = open_offline(page, (comparison_report / "04_sampler_comparison" / "04_sampler_comparison.html").as_uri())
    save_artifact("comparison_page.png", page.screenshot(full_page=True))
    assert "<Figure size" not in page.inner_text("body")
    images = page.evaluate("""() => Array.from(document.querySelectorAll('.jp-OutputArea-output img')).map(e => ({
        natural: e.naturalWidth, shown: e.getBoundingClientRect().width}))""")
    wide = [im for im in images if im["natural"] >= 600 and im["shown"] >= 600]
    assert len(wide) >= 2, f"comparison and kT-sweep figures missing: {images}"
    shot = page.locator(".jp-OutputArea-output img").first.screenshot()
    save_artifact("comparison_figure.png", shot)
    stats = image_stats(shot)
    assert stats["fraction"] > 0.01 and stats["std"] > 5, f"blank comparison figure: {stats}"
    assert not log.problems(), "\n".join(log.problems())
