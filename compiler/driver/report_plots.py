"""The report's matplotlib plots, as base64 PNGs.

Layer axes are integer (or the layer names when few enough to read), the cosine axis starts
at a fixed floor rather than zooming into 0.999..1, and every figure is laid out tight so
labels do not overlap.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

NPU_COLOR, CPU_COLOR, BEFORE_COLOR, SWITCH_COLOR = "#3b6ea8", "#d9822b", "#cccccc", "#a01010"
MAX_NAMED_TICKS = 32  # above this many layers the axis shows indices, not names
MAX_LABEL_CHARS = 40  # longer names are cut in the middle (tables keep them whole)
COSINE_FLOOR = 0.9  # the cosine axis starts here unless the data goes lower
PART_COLORS = (NPU_COLOR, CPU_COLOR, SWITCH_COLOR, "#888888", "#bbbbbb")


def make_plots(report: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(title, base64 PNG or None) for each plot; None where the report lacks the data."""
    layers, steps = report.get("layers", []), report.get("steps", [])
    return [
        ("Channels kept per layer", channels_plot(layers)),
        ("Per-layer cosine similarity vs float", cosine_plot(layers)),
        ("Time per step (1 core, 1 thread)", steps_plot(steps)),
        ("Where the latency goes", breakdown_plot(report.get("latency"))),
        ("Accuracy vs MACs", scatter_plot(report.get("variants", []))),
    ]


def _figure(width: float = 6.4, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=90)
    return plt, fig, ax


def _png(plt, fig) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", bbox_inches="tight")  # nothing cut off
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _width(n: int) -> float:
    """Wider figures for long layer axes, so bars and names stay readable."""
    return min(12.0, max(6.4, 0.16 * n))


def short(name: str, limit: int = MAX_LABEL_CHARS) -> str:
    """`name` cut in the middle to `limit` characters; exporters' scoped names keep both ends.

    matplotlib lays out every character of a tick label: 20,000-character node names took
    45 s per report.
    """
    if len(name) <= limit:
        return name
    head = (limit - 1) // 2
    return f"{name[:head]}…{name[len(name) - (limit - 1 - head):]}"


def _layer_axis(ax, names: Sequence[str], label: str) -> None:
    """Names as ticks when they fit, else integer indices (never fractional ticks)."""
    from matplotlib.ticker import MaxNLocator

    if len(names) <= MAX_NAMED_TICKS:
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([short(n) for n in names], rotation=90, fontsize=7)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"{label} index")
    ax.set_xlim(-0.7, len(names) - 0.3)


def channels_plot(layers: Sequence[dict]) -> str | None:
    """Output channels before (grey) and after pruning (blue) per Conv/Gemm layer."""
    rows = [r for r in layers if r.get("channels_before") is not None]
    if not rows:
        return None
    plt, fig, ax = _figure(_width(len(rows)), 3.6)
    x = range(len(rows))
    ax.bar(x, [r["channels_before"] for r in rows], color=BEFORE_COLOR, label="before")
    ax.bar(x, [r.get("channels_after") or 0 for r in rows], color=NPU_COLOR, label="after")
    _layer_axis(ax, [r["layer"] for r in rows], "layer")
    ax.set_ylabel("output channels")
    ax.legend(fontsize=8)
    return _png(plt, fig)


def cosine_floor(values: Sequence[float]) -> float:
    """Bottom of the cosine axis: COSINE_FLOOR, or lower (to a 0.1 step) for worse data."""
    return min(COSINE_FLOOR, math.floor(min(values) * 10) / 10)


def cosine_plot(layers: Sequence[dict]) -> str | None:
    """Per-layer cosine of the int8 model against float, on an axis from a fixed floor to 1."""
    rows = [(i, r["cosine"]) for i, r in enumerate(layers) if r.get("cosine") is not None]
    if not rows:
        return None
    plt, fig, ax = _figure(_width(len(layers)), 3.6)
    values = [v for _, v in rows]
    ax.plot([i for i, _ in rows], values, marker="o", markersize=3, clip_on=False)
    ax.set_ylim(cosine_floor(values), 1.0)
    ax.axhline(1.0, color="#999999", linewidth=0.5)
    _layer_axis(ax, [r["layer"] for r in layers], "layer")
    ax.set_ylabel("cosine vs float")
    return _png(plt, fig)


def steps_plot(steps: Sequence[dict]) -> str | None:
    """µs per executed step: NPU blue, host orange, a partition's switch cost red on top."""
    if not steps:
        return None
    from matplotlib.patches import Patch

    plt, fig, ax = _figure(_width(len(steps)), 3.6)
    x = range(len(steps))
    legend = [Patch(color=NPU_COLOR, label="NPU")]
    if any(r.get("us_before") is not None for r in steps):
        ax.bar(x, [r.get("us_before") or 0 for r in steps], width=0.9, color=BEFORE_COLOR)
        legend.insert(0, Patch(color=BEFORE_COLOR, label="before compression"))
    ax.bar(x, [r["us"] for r in steps], width=0.6,
           color=[NPU_COLOR if r["unit"] == "NPU" else CPU_COLOR for r in steps])
    if any(r["unit"] == "CPU" for r in steps):
        legend.append(Patch(color=CPU_COLOR, label="host (CPU)"))
    cpu = [i for i, r in enumerate(steps) if r.get("switch_us")]
    if cpu:
        ax.bar(cpu, [steps[i]["switch_us"] for i in cpu], width=0.6, color=SWITCH_COLOR,
               bottom=[steps[i]["us"] for i in cpu])
        legend.append(Patch(color=SWITCH_COLOR, label="partition switch"))
    _layer_axis(ax, [r["step"] for r in steps], "step")
    ax.set_ylabel("µs")
    ax.legend(handles=legend, fontsize=8)
    return _png(plt, fig)


def breakdown_plot(latency: dict | None) -> str | None:
    """Stacked bars of the latency: NPU, host compute, switches, driver, weight load."""
    if not latency:
        return None
    bars = [("after", latency)]
    if latency.get("before"):
        bars.insert(0, ("before", latency["before"]))
    plt, fig, ax = _figure(6.4, 1.2 + 0.5 * len(bars))
    for row, (_, lat) in enumerate(bars):
        left = 0.0
        for part, color in zip(lat["parts"], PART_COLORS, strict=False):
            us = part["ms"] * 1e3
            ax.barh(row, us, left=left, color=color, label=part["part"] if row == 0 else None)
            left += us
    ax.invert_yaxis()  # "before" on top
    ax.set_yticks(range(len(bars)))
    ax.set_yticklabels([short(name) for name, _ in bars])
    ax.set_xlabel("µs per frame (1 core, 1 thread)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(plt, fig)


def scatter_plot(variants: Sequence[dict]) -> str | None:
    """Accuracy against MACs per variant; labels offset so equal points stay readable."""
    points = [v for v in variants if v.get("macs") and v.get("accuracy") is not None]
    if not points:
        return None
    plt, fig, ax = _figure()
    for i, v in enumerate(points):
        xy = (v["macs"] / 1e6, v["accuracy"] * 100)
        ax.scatter(*xy)
        ax.annotate(short(v["name"]), xy, xytext=(6, 10 * i - 10), textcoords="offset points",
                    fontsize=8)
    ax.margins(x=0.2, y=0.2)
    ax.set_xlabel("MMACs")
    ax.set_ylabel("top-1 (%)")
    return _png(plt, fig)


def sensitivity_plot(doc: dict[str, Any]) -> str | None:
    """1 − output cosine per layer (or group) in network order, log axis, worst named.

    A log axis of the error rather than a cosine axis zoomed into 0.999..1: single layers
    differ by orders of magnitude. Flagged layers are orange; the dashed line is the fully
    int8 (or fully pruned) model.
    """
    rows = sorted(doc.get("layers", []), key=lambda r: r["index"])
    if not rows:
        return None
    floor = 1e-9  # identical outputs (error 0) sit on the floor, not at -inf
    err = [max(1.0 - r["cosine"], floor) for r in rows]
    plt, fig, ax = _figure(_width(len(rows)), 3.6)
    colors = [CPU_COLOR if r.get("flags") else NPU_COLOR for r in rows]
    from matplotlib.patches import Patch

    ax.bar(range(len(rows)), err, color=colors)
    ax.set_yscale("log")
    base = doc.get("baseline") or {}
    top = max(err)
    handles = [Patch(color=CPU_COLOR, label="flagged")] if CPU_COLOR in colors else []
    if base.get("cosine") is not None:
        level = max(1.0 - base["cosine"], floor)
        top = max(top, level)
        handles.append(ax.axhline(
            level, color=SWITCH_COLOR, linestyle="--", linewidth=0.8,
            label="all groups" if doc.get("method") == "prune" else "all layers"))
    if handles:
        ax.legend(handles=handles, fontsize=8)
    ax.set_ylim(min(err) / 3, top * 3)
    _layer_axis(ax, [r["name"] for r in rows], "layer")
    if len(rows) > MAX_NAMED_TICKS:  # index axis: name the five worst
        for i in sorted(range(len(rows)), key=lambda i: -err[i])[:5]:
            ax.annotate(short(rows[i]["name"]), (i, err[i]), xytext=(0, 3),
                        textcoords="offset points", fontsize=6, ha="left", rotation=45)
    ax.set_ylabel("1 − output cosine (log)")
    return _png(plt, fig)
