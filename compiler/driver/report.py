"""Compile reports: `report.json` and a self-contained `report.html` with matplotlib plots.

The HTML embeds its plots as base64 PNGs and its style inline, so it opens offline and can be
mailed as one file. Both files are written from the same dict, so their figures agree.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compiler.core.io import write_atomic

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
.ok{color:#176b2c;font-weight:bold}.bad{color:#a01010;font-weight:bold}
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
    parts = [f"<h1>npuc compile report: {html.escape(str(report.get('model', '')))}</h1>",
             _stages_html(report.get("stages", [])),
             "<h2>Summary</h2>", _summary_html(report.get("summary", {})),
             "<h2>Plots</h2>", _plots_html(report),
             "<h2>Per-layer table</h2>", _layers_html(report.get("layers", []))]
    body = "\n".join(parts)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>npuc report</title>"
            f"<style>{_STYLE}</style></head><body>{body}</body></html>")


def _stages_html(stages: Sequence[dict]) -> str:
    rows = [(s["name"], s["status"], f"{s.get('seconds', 0):.2f}", s.get("detail", ""))
            for s in stages]
    return "<h2>Stages</h2>" + table_html(["stage", "status", "seconds", "detail"], rows)


def _summary_html(summary: dict[str, dict]) -> str:
    rows = [(key, _fmt(v.get("before")), _fmt(v.get("after")), _change(v))
            for key, v in summary.items()]
    return table_html(["metric", "before", "after", "change"], rows)


def _change(value: dict) -> str:
    before, after = value.get("before"), value.get("after")
    if isinstance(before, (int, float)) and isinstance(after, (int, float)) and before:
        return f"{(after - before) / before * 100:+.1f}%"
    return ""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)


def _layers_html(layers: Sequence[dict]) -> str:
    if not layers:
        return "<p>No per-layer data.</p>"
    keys = list(layers[0])
    return table_html(keys, [[row.get(k) for k in keys] for row in layers])


def table_html(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; text columns left-aligned, numbers right-aligned."""
    head = "".join(f"<th class='l'>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_td(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _td(value: Any) -> str:
    text = html.escape(_fmt(value))
    if isinstance(value, (str, bool)) and value in ("ok", "bit-exact", True):
        return f"<td class='l ok'>{text}</td>"
    if isinstance(value, (str, bool)) and value in ("failed", "MISMATCH", False):
        return f"<td class='l bad'>{text}</td>"
    cls = "" if isinstance(value, (int, float)) else " class='l'"
    return f"<td{cls}>{text}</td>"


def _plots_html(report: dict[str, Any]) -> str:
    figures = [(title, png) for title, png in make_plots(report) if png]
    if not figures:
        return "<p>No plots (no per-layer data).</p>"
    return "".join(f"<figure><img alt='{html.escape(t)}' src='data:image/png;base64,{p}'>"
                   f"<figcaption>{html.escape(t)}</figcaption></figure>" for t, p in figures)


def make_plots(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, base64 PNG) for each plot the report's data supports."""
    layers = report.get("layers", [])
    plots = [
        ("Channels kept per layer", _bar(layers, "channels_before", "channels_after",
                                         "channels")),
        ("Per-layer cosine similarity vs float", _series(layers, "cosine", "cosine")),
        ("Per-layer cycles", _series(layers, "cycles", "cycles")),
        ("Accuracy vs MACs", _scatter(report.get("variants", []))),
    ]
    return plots


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=90)
    return plt, fig, ax


def _png(plt, fig) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _bar(layers: Sequence[dict], before: str, after: str, ylabel: str) -> str | None:
    rows = [r for r in layers if r.get(before) is not None]
    if not rows:
        return None
    plt, fig, ax = _figure()
    x = range(len(rows))
    ax.bar(x, [r[before] for r in rows], color="#cccccc", label="before")
    ax.bar(x, [r.get(after) or 0 for r in rows], color="#3b6ea8", label="after")
    ax.set_xlabel("layer index")
    ax.set_ylabel(ylabel)
    ax.legend()
    return _png(plt, fig)


def _series(layers: Sequence[dict], key: str, ylabel: str) -> str | None:
    rows = [(i, r[key]) for i, r in enumerate(layers) if r.get(key) is not None]
    if not rows:
        return None
    plt, fig, ax = _figure()
    ax.plot([i for i, _ in rows], [v for _, v in rows], marker="o", markersize=3)
    ax.set_xlabel("layer index")
    ax.set_ylabel(ylabel)
    return _png(plt, fig)


def _scatter(variants: Sequence[dict]) -> str | None:
    points = [v for v in variants if v.get("macs") and v.get("accuracy") is not None]
    if not points:
        return None
    plt, fig, ax = _figure()
    for v in points:
        ax.scatter(v["macs"] / 1e6, v["accuracy"] * 100)
        ax.annotate(v["name"], (v["macs"] / 1e6, v["accuracy"] * 100), fontsize=8)
    ax.set_xlabel("MMACs")
    ax.set_ylabel("top-1 (%)")
    return _png(plt, fig)
