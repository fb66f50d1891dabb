"""The report's records: a notebook's result, ``summary.json`` / ``summary.csv`` and ``index.html``.

:class:`NotebookResult` is what running one notebook gives (:func:`advsample.report.execute_notebook`);
:func:`write_summaries` and :func:`write_index` turn the results into the report folder's summary
files and its index page (relative links, embedded thumbnails: the folder can be moved or zipped).
"""

from __future__ import annotations

import csv
import datetime as _dt
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import quote

__all__ = ["ReportError", "NotebookResult", "write_summaries", "write_index"]


class ReportError(Exception):
    """A problem with the request (unknown notebook or parameter, bad params file)."""


@dataclass
class NotebookResult:
    """Outcome of one notebook. Paths in ``files`` are relative to the report folder."""

    stem: str
    source: str
    status: str = "pending"  # "ok" | "failed"
    duration_s: float = 0.0
    params: dict = field(default_factory=dict)
    error: str | None = None
    summary: dict | None = None
    files: dict = field(default_factory=dict)
    title: str | None = None
    thumbnail: str | None = None  # data: URI of the notebook's last image output
    note: str | None = None  # e.g. that it ran shortened and what the full run shows

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# --------------------------------------------------------------------------------------
# summaries and index
# --------------------------------------------------------------------------------------

def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            flat.update(_flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            flat[key] = json.dumps(v)
        else:
            flat[key] = v
    return flat


def write_summaries(results: Sequence[NotebookResult], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``summary.json`` (``{stem: {status, duration_s, error, params, note, summary, files}}``) and
    ``summary.csv`` (one row per notebook, the notebooks' summaries flattened with dotted keys;
    a summary key that clashes with a fixed column, e.g. ``notebook``, becomes ``summary.<key>``)."""
    out = Path(out_dir)
    combined = {
        r.stem: {"status": r.status, "duration_s": r.duration_s, "error": r.error, "params": r.params,
                 "note": r.note, "summary": r.summary, "files": r.files}
        for r in results
    }
    json_path = out / "summary.json"
    json_path.write_text(json.dumps(combined, indent=2, default=str) + "\n")
    rows, keys = [], []
    reserved = {"notebook", "status", "duration_s", "error"}
    for r in results:
        flat = {(f"summary.{k}" if k in reserved else k): v for k, v in _flatten(r.summary or {}).items()}
        for k in flat:
            if k not in keys:
                keys.append(k)
        rows.append({"notebook": r.stem, "status": r.status, "duration_s": r.duration_s,
                     "error": r.error or "", **flat})
    csv_path = out / "summary.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["notebook", "status", "duration_s", "error", *keys])
        writer.writeheader()
        writer.writerows(rows)
    return csv_path, json_path


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


_INDEX_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em} .meta{color:#666;margin-bottom:1.5em}
.nb{border:1px solid #ddd;border-radius:6px;padding:1em;margin:1em 0;display:flex;gap:1.2em}
.nb.failed{border-color:#d33;background:#fff6f6}
.nb .thumb{flex:0 0 240px} .nb .thumb img{max-width:240px;max-height:180px;border:1px solid #eee}
.nb .body{flex:1;min-width:0} .nb h2{font-size:1.15em;margin:0 0 .3em}
.badge{display:inline-block;padding:0 .5em;border-radius:3px;font-size:.85em;color:#fff}
.badge.ok{background:#2a7} .badge.failed{background:#d33}
.error{font-family:monospace;white-space:pre-wrap;color:#a00;margin:.5em 0}
table.kv{border-collapse:collapse;margin:.5em 0;font-size:.9em} table.kv td{padding:1px 10px 1px 0;border-bottom:1px solid #eee}
table.kv td.v{font-family:monospace} .links a{margin-right:1em}
.note{margin:.5em 0;padding:.3em .6em;background:#fffbe6;border-left:3px solid #e6b800;font-size:.9em}
"""


def write_index(results: Sequence[NotebookResult], out_dir: str | os.PathLike, *, title: str = "advsample report",
                max_keys: int = 12) -> Path:
    """Write ``index.html``: one card per notebook with status, key numbers, a thumbnail
    (embedded) and relative links, so the folder can be moved or zipped."""
    out = Path(out_dir)
    esc = html.escape
    n_failed = sum(not r.ok for r in results)
    cards = []
    for r in results:
        links = []
        for key, label in (("html", "report (HTML)"), ("notebook", "executed notebook"),
                           ("summary", "summary.json"), ("traceback", "traceback")):
            rel = r.files.get(key)
            if rel:
                links.append(f'<a href="{esc(quote(rel))}">{label}</a>')
        kv = ""
        if r.summary:
            items = list(_flatten(r.summary).items())
            rows = "".join(f'<tr><td>{esc(str(k))}</td><td class="v">{esc(_fmt(v))}</td></tr>'
                           for k, v in items[:max_keys])
            more = f'<tr><td colspan="2">… {len(items) - max_keys} more in summary.json</td></tr>' if len(items) > max_keys else ""
            kv = f'<table class="kv">{rows}{more}</table>'
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in r.params.items()) or "defaults"
        thumb = (f'<div class="thumb"><img src="{r.thumbnail}" alt="last figure of {esc(r.stem)}"></div>'
                 if r.thumbnail else "")
        err = f'<div class="error">{esc(r.error)}</div>' if r.error else ""
        err += f'<div class="note">{esc(r.note)}</div>' if r.note else ""
        heading = esc(r.stem) + (f" — {esc(r.title)}" if r.title else "")
        cards.append(
            f'<div class="nb {"ok" if r.ok else "failed"}" id="{esc(r.stem)}">{thumb}<div class="body">'
            f'<h2>{heading} <span class="badge {"ok" if r.ok else "failed"}">{esc(r.status)}</span></h2>'
            f'<div class="meta">{r.duration_s:.1f} s · parameters: {esc(params)}</div>'
            f'{err}{kv}<div class="links">{"".join(links)}</div></div></div>'
        )
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    doc = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_INDEX_CSS}</style></head><body>"
        f"<h1>{esc(title)}</h1>"
        f'<div class="meta">{len(results)} notebooks, {n_failed} failed · built {stamp} · '
        f'<a href="summary.csv">summary.csv</a> · <a href="summary.json">summary.json</a></div>'
        + "".join(cards)
        + "</body></html>\n"
    )
    path = out / "index.html"
    path.write_text(doc)
    return path
