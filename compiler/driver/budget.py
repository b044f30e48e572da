"""The accuracy budget in the driver: its data, how its labels are scored, what it costs.

The loop itself is `passes.quantize.budget`; here the driver loads the data the budget is
measured on (with the run's preprocessing), picks the scorer for its labels (top-1 for
classes, CTC exact match for OCR text lines) and prices the outcome on the target: the
all-int8 binary against the chosen one (latency at 1 core / 1 thread, binary size).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compiler.core.feeds import Feeds, Preprocess
from compiler.core.ir import Model
from passes.quantize.fidelity import Correct
from passes.quantize.options import QuantizeOptions


def budget_feeds(options: QuantizeOptions, model: Model,
                 preprocess: Preprocess | None = None) -> Feeds | None:
    """`--budget-data` as feeds for `model` (None: the budget uses the calibration data)."""
    from compiler.driver.data import load_data

    if options.budget_data is None:
        return None
    return load_data(options.budget_data, model, limit=options.budget_limit,
                     preprocess=preprocess)


def correct_for(feeds: Feeds | None) -> Correct | None:
    """The scorer of the feeds' labels: OCR exact match for text labels, else top-1."""
    if feeds is None or feeds.labels is None:
        return None
    labels = np.asarray(feeds.labels)
    if labels.dtype.kind in "iu":
        return None  # integer classes: the default top-1
    from compiler.driver.evaluate import ocr_matches

    return ocr_matches


def budget_costs(baseline: Any, result: Any, arch: str = "default",
                 frames: int = 1000) -> dict[str, Any]:
    """Predicted latency and binary size: all-int8 vs the chosen model.

    Latency at 1 core, 1 thread, the first frame's weight load averaged over `frames`.
    """
    from targets.npusim import build_binary, estimate_perf

    costs: dict[str, dict[str, float]] = {"latency_ms": {}, "binary_bytes": {}}
    for label, quant in (("before", baseline), ("after", result)):
        built = build_binary(quant.quant_model, arch)
        costs["latency_ms"][label] = estimate_perf(built.data, arch,
                                                       frames=frames).latency_ms
        costs["binary_bytes"][label] = len(built.data)
        if result is baseline:  # nothing raised: one model
            costs["latency_ms"]["after"] = costs["latency_ms"]["before"]
            costs["binary_bytes"]["after"] = costs["binary_bytes"]["before"]
            break
    return costs


def budget_lines(report: dict[str, Any]) -> list[str]:
    """The budget's outcome for the terminal: constraint, before/after, layers moved, cost."""
    stated = ", ".join(f"{k.replace('_', '-')} {v:g}" for k, v in report["budget"].items())
    lines = [f"accuracy budget ({stated}) on {report['samples']} samples: "
             f"{'met' if report['met'] else 'NOT met: ' + report['reason']}",
             f"  all int8: {_metrics(report['before'], report['float_accuracy'])}"]
    raised = report["raised"]
    rounding = report.get("rounding", {})
    for name in rounding.get("tried", []):
        lines.append(f"  weights with {name}: "
                     f"{_metrics(rounding['results'][name], report['float_accuracy'])}"
                     f"{' (adopted)' if rounding['adopted'] == name else ''}")
    if not raised:
        how = f" with {rounding['adopted']}" if rounding.get("adopted") else ""
        lines.append(f"  nothing raised: all-int8{how} is within the budget")
    else:
        names = ", ".join(r["name"] + (f" [{', '.join(r['flags'])}]" if r.get("flags") else "")
                          for r in raised[:8]) + (" ..." if len(raised) > 8 else "")
        w16 = sum(r.get("weights") == "int16" for r in raised)
        to = raised[0]["to"] + (f" ({w16} with int16 weights: A16W16)" if w16 else "")
        lines += [f"  chosen:   {_metrics(report['after'], report['float_accuracy'])}",
                  f"  raised to {to}: {len(raised)} of {report['layers']} layers "
                  f"({report['macs_raised_share']:.1%} of the MACs): {names}"]
        if "macs_16bit_share" in report and raised[0]["to"] == "int16":
            lines.append(f"  MACs run with a 16-bit operand: {report['macs_16bit_share']:.1%}")
    wide = report.get("int16", {})
    for plan in wide.get("plans", []):
        lines.append(f"  int16 plan {plan['precision']}: {plan['layers']} layers "
                     f"({plan['macs_share']:.1%} of the MACs, {plan['extra_passes']:,} MACs "
                     f"added){' (chosen)' if plan['precision'] == wide.get('precision') else ''}")
    if wide.get("tried") and not wide.get("met"):
        lines.append(f"  int16 not enough: with every int16-capable layer in int16 "
                     f"{_metrics(wide['ceiling'], report['float_accuracy'])}")
        if "ceiling_w16" in wide:
            lines.append(f"  and with int16 weights too (A16W16) "
                         f"{_metrics(wide['ceiling_w16'], report['float_accuracy'])}")
    costs = report.get("costs")
    if costs and raised:
        lat, size = costs["latency_ms"], costs["binary_bytes"]
        lines.append(f"  cost: latency {lat['before']:.3f} -> {lat['after']:.3f} ms (1 core, "
                     f"1 thread), binary {size['before'] / 1e6:.2f} -> "
                     f"{size['after'] / 1e6:.2f} MB")
    ev = report["evaluations"]
    lines.append(f"  loop: {ev['total']} evaluations ({ev['ranking']} ranking), "
                 f"{report['sample_runs']:,} sample runs (a full per-layer sweep: "
                 f"{report['full_sweep_sample_runs']:,}), {report['time_s']:.1f} s")
    return lines


def prune_budget_lines(report: dict[str, Any]) -> list[str]:
    """The pruning rate the budget chose, and every MAC fraction tried."""
    stated = ", ".join(f"{k.replace('_', '-')} {v:g}" for k, v in report["budget"].items())
    lines = [f"pruning budget ({stated}; floor {report['floor']:.0%} of the MACs) on "
             f"{report['samples']} samples: {report['chosen']:.0%} of the MACs chosen"
             f"{'' if report['met'] else ' (budget NOT met even there)'}"]
    for t in report["tries"]:
        acc = "" if t.get("accuracy") is None else f", accuracy {t['accuracy']:.4f}"
        lines.append(f"  {t['fraction']:.0%} (MACs {t['macs']:.1%}): "
                     f"{'meets' if t['met'] else 'misses'} — cosine {t['cosine']:.6f}, "
                     f"agreement {t['agreement']:.4f}{acc}")
    lines.append(f"  search: {len(report['tries'])} pruned+int8 models, "
                 f"{report['time_s']:.1f} s")
    return lines


def _metrics(m: dict[str, Any], float_accuracy: float | None) -> str:
    acc = "" if m.get("accuracy") is None else \
        f", accuracy {m['accuracy']:.4f} (float {float_accuracy:.4f})"
    return f"cosine {m['cosine']:.6f}, agreement {m['agreement']:.4f}{acc}"


def budget_html(report: dict[str, Any] | None, prune: dict[str, Any] | None = None) -> str:
    """The report's "Accuracy budget" section: pruning rate chosen, layers raised, ranking."""
    import html

    from compiler.driver.report_plots import sensitivity_plot
    from compiler.driver.report_tables import table_html

    if not report and not prune:
        return ""
    parts = ["<h2 id='budget'>Accuracy budget</h2>"]
    if prune:
        parts.append(f"<pre>{html.escape(chr(10).join(prune_budget_lines(prune)))}</pre>")
    if not report:
        return "\n".join(parts)
    parts.append(f"<pre>{html.escape(chr(10).join(budget_lines(report)))}</pre>")
    if report["raised"]:
        parts.append(table_html(
            ["raised layer", "op", "MACs", "to", "cosine alone", "agreement alone"],
            [(r["name"], r["op"], r["macs"], r["to"], r["alone"]["cosine"],
              r["alone"]["agreement"]) for r in report["raised"]]))
    ranking = report.get("ranking", {}).get("layers")
    png = ranking and sensitivity_plot({"layers": ranking, "baseline": report["before"]})
    if png:
        parts.append(f"<figure><img alt='ranking' src='data:image/png;base64,{png}'>"
                     "<figcaption>Each layer int8 alone, everything else float, on the "
                     f"first {report['ranking']['samples']} samples: the loop's ranking"
                     "</figcaption></figure>")
    return "\n".join(parts)
