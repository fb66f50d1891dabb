"""Headless Chromium for the report tests: launch it, open pages offline, collect errors.

Chromium comes from the system (Debian package ``chromium``: /usr/bin/chromium) or
``$CHROMIUM``; Playwright's python package drives it (no ``playwright install`` download).
Without them the browser tests skip, except in CI (``$CI`` set), where they fail.
"""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

# WebGL in headless Chromium without a GPU: ANGLE on SwiftShader (software Vulkan).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
    "--disable-gpu-sandbox",
]

# Console messages that are not errors of the page: a deprecation notice from three.js
# (bundled by nglview) is a "warning"; nothing is filtered at the "error" level.
IGNORED_CONSOLE_ERRORS: tuple[str, ...] = ()


def find_chromium() -> str | None:
    for cand in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def require_browser() -> tuple[object, str]:
    """``(playwright.sync_api.sync_playwright, chromium_path)``, or skip (fail in CI)."""
    in_ci = bool(os.environ.get("CI"))
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        msg = "the playwright python package is not installed (pip install playwright)"
        if in_ci:
            pytest.fail(f"CI: {msg}")
        pytest.skip(msg)
    chromium = find_chromium()
    if chromium is None:
        msg = "chromium not found (apt-get install -y chromium, or set $CHROMIUM)"
        if in_ci:
            pytest.fail(f"CI: {msg}")
        pytest.skip(msg)
    return sync_playwright, chromium


@dataclass
class PageLog:
    """Everything a page did that an offline report must not do."""

    blocked: list[str] = field(default_factory=list)   # non-file:// requests (aborted)
    failed: list[str] = field(default_factory=list)    # requests that failed (incl. file://)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return ([f"network request: {u}" for u in self.blocked]
                + [f"failed request: {u}" for u in self.failed]
                + [f"console error: {m}" for m in self.console_errors]
                + [f"page error: {m}" for m in self.page_errors])


def open_offline(page, url: str, wait_ms: int = 2500) -> PageLog:
    """Open ``url`` with every non-``file://`` request aborted, and record what went wrong."""
    log = PageLog()

    def route(r):
        u = r.request.url
        if u.startswith("file://"):
            r.continue_()
        else:
            log.blocked.append(u)
            r.abort()

    page.route("**/*", route)
    page.on("requestfailed", lambda req: log.failed.append(req.url))
    page.on("console", lambda m: log.console_errors.append(m.text)
            if m.type == "error" and not any(s in m.text for s in IGNORED_CONSOLE_ERRORS) else None)
    page.on("pageerror", lambda exc: log.page_errors.append(str(exc)))
    page.goto(url, wait_until="load")
    page.wait_for_timeout(wait_ms)
    return log


def image_stats(png: bytes) -> dict:
    """Pixel statistics of a screenshot: std over all channels, fraction of non-background pixels."""
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(float)
    background = np.median(a.reshape(-1, 3), axis=0)
    differs = np.abs(a - background).sum(axis=2) > 30
    return {"std": float(a.std()), "fraction": float(differs.mean()), "shape": a.shape}


def save_artifact(name: str, data: bytes) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    path.write_bytes(data)
    return path
