"""Compile reports: `report.json` and a self-contained `report.html` with matplotlib plots.

The HTML embeds its plots as base64 PNGs and its style inline, so it opens offline and can be
mailed as one file. Both files are written from the same dict, so their figures agree.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compiler.core.io import write_atomic
from compiler.driver.budget import budget_html
from compiler.driver.report_plots import make_plots
from compiler.driver.report_tables import (
    fmt,
    latency_html,
    partition_map_html,
    steps_html,
    table_html,
)

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
.ok{color:#176b2c;font-weight:bold}.bad{color:#a01010;font-weight:bold}
td.cpu{color:#b0601a;font-weight:bold}
p.note{background:#fff4e0;border-left:4px solid #d9822b;padding:.5em 1em}
img{max-width:100%}
figure{display:inline-block;margin:0 1em 1em 0}figcaption{font-size:.85em;color:#555}
"""


def write_json(report: dict[str, Any], path: Path) -> None:
    """Write the report dict as JSON (atomically)."""
    write_atomic(path, json.dumps(report, indent=2, default=_plain).encode())


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)


def write_html(report: dict[str, Any], path: Path) -> None:
    """Write the self-contained HTML report (atomically)."""
    write_atomic(path, render_html(report).encode())


def render_html(report: dict[str, Any]) -> str:
    """The HTML document for a compile report."""
    latency = report.get("latency") or {}
    parts = [f"<h1>npuc compile report: {html.escape(str(report.get('model', '')))}</h1>",
             _stages_html(report.get("stages", [])),
             "<h2>Summary</h2>", _summary_html(report.get("summary", {})),
             "<h2 id='latency'>Where the latency goes</h2>", latency_html(report.get("latency")),
             "<h2 id='partition-map'>Partition map</h2>",
             partition_map_html(report.get("partition_map")),
             budget_html(report.get("budget"), (report.get("prune") or {}).get("budget")),
             "<h2>Plots</h2>", _plots_html(report),
             "<h2 id='per-step'>Per-step table (every step of the binary, 1 core, 1 thread)"
             "</h2>", steps_html(report.get("steps", []), latency.get("latency_ms")),
             "<h2 id='per-layer'>Per-layer compression table</h2>",
             _layers_html(report.get("layers", []))]
    body = "\n".join(parts)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>npuc report</title>"
            f"<style>{_STYLE}</style></head><body>{body}</body></html>")


def _stages_html(stages: Sequence[dict]) -> str:
    rows = [(s["name"], s["status"], f"{s.get('seconds', 0):.2f}", s.get("detail", ""))
            for s in stages]
    return "<h2>Stages</h2>" + table_html(["stage", "status", "seconds", "detail"], rows)


def _summary_html(summary: dict[str, dict]) -> str:
    rows = [(key, fmt(v.get("before")), fmt(v.get("after")), _change(v))
            for key, v in summary.items()]
    return table_html(["metric", "before", "after", "change"], rows)


def _change(value: dict) -> str:
    before, after = value.get("before"), value.get("after")
    if isinstance(before, (int, float)) and isinstance(after, (int, float)) and before:
        return f"{(after - before) / before * 100:+.1f}%"
    return ""


def _layers_html(layers: Sequence[dict]) -> str:
    if not layers:
        return "<p>No per-layer data.</p>"
    keys = list(layers[0])
    return table_html(keys, [[row.get(k) for k in keys] for row in layers])


def _plots_html(report: dict[str, Any]) -> str:
    figures = [(title, png) for title, png in make_plots(report) if png]
    if not figures:
        return "<p>No plots (no per-layer data).</p>"
    return "".join(f"<figure><img alt='{html.escape(t)}' src='data:image/png;base64,{p}'>"
                   f"<figcaption>{html.escape(t)}</figcaption></figure>" for t, p in figures)
