"""HTML tables of the compile report: generic cells, per-step timing, latency, partition map."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

MAX_NODES_SHOWN = 6  # per partition-map segment; the rest are counted


def table_html(headers: Sequence[str], rows: Sequence[Sequence[Any]],
               cls: str = "") -> str:
    """An HTML table; text columns left-aligned, numbers right-aligned."""
    head = "".join(f"<th class='l'>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_td(v) for v in row) + "</tr>" for row in rows)
    attr = f" class='{cls}'" if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def fmt(value: Any) -> str:
    """A cell's text: thousands separators, 4 significant digits for small floats."""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)


def _td(value: Any) -> str:
    text = html.escape(fmt(value))
    if isinstance(value, (str, bool)) and value in ("ok", "bit-exact", True):
        return f"<td class='l ok'>{text}</td>"
    if isinstance(value, (str, bool)) and value in ("failed", "MISMATCH", False):
        return f"<td class='l bad'>{text}</td>"
    if isinstance(value, str) and value == "CPU":
        return f"<td class='l cpu'>{text}</td>"
    cls = "" if isinstance(value, (int, float)) else " class='l'"
    return f"<td{cls}>{text}</td>"


def _pct(share: float | None) -> str:
    return "" if share is None else f"{share:.1%}"


def steps_html(steps: Sequence[dict], latency_ms: float | None) -> str:
    """Every executed step of the binary: unit, MACs, cycles, µs, share, utilisation, bound."""
    if not steps:
        return "<p>No per-step data (the binary was not built).</p>"
    before = any("us_before" in r for r in steps)
    switches = any(r.get("switch_us") for r in steps)
    headers = ["#", "step", "op", "unit", "MACs", "cycles", "µs"] + \
        (["+ switch µs"] if switches else []) + ["share of latency", "utilisation", "bound"]
    if before:
        headers += ["µs before", "MACs before", "change"]
    total_us = (latency_ms or 0.0) * 1e3
    rows = [_step_cells(i, r, total_us, before, switches) for i, r in enumerate(steps)]
    return table_html(headers, rows, "steps")


def _step_cells(i: int, r: dict, total_us: float, before: bool,
                switches: bool) -> list[Any]:
    op = "CPU partition: " + ", ".join(r["nodes"]) if r["op"] == "cpu_call" else r["op"]
    util = _pct(r["utilisation"]) if r["unit"] == "NPU" and r["utilisation"] else ""
    switch = r.get("switch_us") or 0.0
    cells = [i, r["step"], op, r["unit"], r["macs"], r["cycles"] if r["unit"] == "NPU" else "",
             r["us"]] + ([switch or ""] if switches else []) + \
        [_pct((r["us"] + switch) / total_us) if total_us else "", util, r["bound"]]
    if before:
        old = r.get("us_before")
        change = f"{(r['us'] - old) / old:+.1%}" if old else ("new" if old is None else "")
        cells += [old, r.get("macs_before"), change]
    return cells


def latency_html(latency: dict | None) -> str:
    """Latency split into NPU, host, switches, driver and weight load; the host note."""
    if not latency:
        return "<p>No latency figures (the binary was not built).</p>"
    before = {p["part"]: p for p in (latency.get("before") or {}).get("parts", [])}
    headers = ["part", "µs", "share"] + (["µs before", "share before"] if before else [])
    rows = []
    for p in latency["parts"]:
        row = [p["part"], round(p["ms"] * 1e3, 3), _pct(p["share"])]
        if before:
            old = before.get(p["part"], {})
            row += [round(old.get("ms", 0.0) * 1e3, 3), _pct(old.get("share"))]
        rows.append(row)
    total = ["total latency", round(latency["latency_ms"] * 1e3, 3), "100.0%"]
    if before:
        total += [round(latency["before"]["latency_ms"] * 1e3, 3), "100.0%"]
    rows.append(total)
    fps = latency.get("fps") or {}
    lines = [f"<p>Host share of the latency: <b>{_pct(latency['host_share'])}</b>. "
             f"FPS ({fps.get('cores')} cores, {fps.get('threads')} threads) is limited by "
             f"<b>{html.escape(_LIMITS.get(fps.get('limit'), str(fps.get('limit'))))}</b>.</p>"]
    if latency.get("note"):
        lines.append(f"<p class='note'>{html.escape(latency['note'])}</p>")
    return table_html(headers, rows, "latency") + "".join(lines)


_LIMITS = {"threads": "the threads (each waits for its frame)",
           "npu": "the NPU cores", "host": "the host CPU"}


def partition_map_html(pmap: dict | None) -> str:
    """Runs of NPU and CPU steps in program order, then every CPU node with its reason."""
    if not pmap:
        return "<p>No partition map (the binary was not built).</p>"
    rows = [(i, s["unit"], _nodes_text(s["nodes"]), ", ".join(s["ops"]), s["us"],
             s["switch_us"] or "", _pct(s["share"]), "; ".join(s["reasons"]))
            for i, s in enumerate(pmap["segments"])]
    parts = [table_html(["#", "unit", "nodes", "ops", "µs", "of which switch µs",
                         "share of latency", "why on the CPU"], rows, "partition-map")]
    cpu = [(p["node"], p["op"], p["reason"]) for p in pmap["nodes"] if p["unit"] == "CPU"]
    npu = sum(p["unit"] == "NPU" for p in pmap["nodes"])
    parts.append(f"<p>{npu} node(s) on the NPU, {len(cpu)} on the CPU.</p>")
    if cpu:
        parts.append(table_html(["node on the CPU", "op", "reason"], cpu, "cpu-nodes"))
    return "".join(parts)


def _nodes_text(nodes: Sequence[str]) -> str:
    if len(nodes) <= MAX_NODES_SHOWN:
        return ", ".join(nodes)
    return (f"{len(nodes)} nodes: {', '.join(nodes[:3])} … "
            f"{', '.join(nodes[-2:])}")
