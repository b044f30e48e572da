"""Assemble the compile report: before → after summary, per-layer table, variants."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from compiler.core.cost import model_cost
from compiler.core.ir import const_value

if TYPE_CHECKING:
    from compiler.driver.context import Context

LAYER_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def summarize(ctx: Context) -> None:
    """Fill `ctx.report` with summary, layers, variants and the stage reports."""
    if ctx.original is None:
        return
    r, res = ctx.report, ctx.results
    r["summary"] = _summary(ctx)
    r["layers"] = layer_table(ctx)
    r["variants"] = _variants(ctx)
    for key in ("prune", "sparsify"):
        if key in res:
            r[key] = res[key]
    if "quant" in res:
        r["quantize"] = res["quant"].report
    if "verify" in res:
        r["verify"] = res["verify"].to_dict()
    if "perf" in res:
        r["perf"] = {k: v.to_dict() for k, v in res["perf"].items()}
    if "eval" in res:
        r["eval"] = res["eval"]
    r["files"] = {k: str(v) for k, v in ctx.files.items()}


def _summary(ctx: Context) -> dict[str, dict[str, Any]]:
    before, after = ctx.results["cost_before"], model_cost(ctx.model)
    summary = {"MACs": {"before": before.macs, "after": after.macs},
               "params": {"before": before.params, "after": after.params},
               "size (bytes)": {"before": 4 * before.params, "after": _binary_size(ctx)}}
    if "sparsify" in ctx.results:
        saved = ctx.results["sparsify"]["macs"] - ctx.results["sparsify"]["effective_macs"]
        summary["effective MACs (zero blocks skipped)"] = {"before": before.macs,
                                                          "after": after.macs - saved}
    summary.update(_accuracy_rows(ctx.results.get("eval")))
    perf, base = ctx.results.get("perf"), ctx.results.get("perf_baseline")
    if perf:
        summary["latency ms (1 core, 1 thread)"] = {
            "before": base["single"].latency_ms if base else None,
            "after": perf["single"].latency_ms}
        summary["FPS (2 cores, 8 threads)"] = {
            "before": base["multi"].fps if base else None, "after": perf["multi"].fps}
    if "verify" in ctx.results:
        v = ctx.results["verify"]
        summary["binary vs model.quant.onnx"] = {
            "before": None, "after": "bit-exact" if v.consistent else "MISMATCH"}
    return summary


def _binary_size(ctx: Context) -> int | None:
    path = ctx.files.get("binary")
    return path.stat().st_size if path and path.exists() else None


def _accuracy_rows(scores: dict | None) -> dict[str, dict[str, Any]]:
    if not scores or not scores.get("float"):
        return {}
    rows = {}
    for metric in scores["float"]:
        after = scores.get("int8", scores.get("compressed", {})).get(metric)
        rows[metric] = {"before": scores["float"][metric], "after": after}
    return rows


def layer_table(ctx: Context) -> list[dict[str, Any]]:
    """One row per Conv/Gemm of the original model."""
    final = {n.name: n for n in ctx.model.nodes}
    cos = _layer_cosines(ctx)
    cycles = _layer_cycles(ctx)
    units = {p["node"]: p["unit"] for p in getattr(ctx.results.get("build"), "placement", [])}
    rows = []
    for node in ctx.original.nodes:
        if node.op not in LAYER_OPS:
            continue
        after = final.get(node.name)
        rows.append({
            "layer": node.name, "op": node.op,
            "channels_before": _out_channels(node),
            "channels_after": _out_channels(after) if after is not None else None,
            "sparsity": _zero_fraction(after),
            "cosine": cos.get(node.name),
            "cycles": cycles.get(node.name),
            "unit": units.get(node.name),
        })
    return rows


def _out_channels(node: Any) -> int | None:
    w = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if w is None:
        return None
    if node.op == "Gemm":
        return int(w.shape[0] if node.attrs.get("transB", 0) else w.shape[1])
    if node.op == "MatMul":
        return int(w.shape[-1])
    if node.op == "ConvTranspose":
        return int(w.shape[1] * node.attrs.get("group", 1))
    return int(w.shape[0])


def _zero_fraction(node: Any) -> float | None:
    if node is None or len(node.inputs) < 2:
        return None
    w = const_value(node.inputs[1])
    return None if w is None or w.size == 0 else round(float(np.mean(w == 0)), 4)


def _layer_cosines(ctx: Context) -> dict[str, float]:
    rows = ctx.results.get("compare_layers", [])
    by_tensor = {row["name"]: row["cosine"] for row in rows}
    out = {}
    for node in ctx.model.nodes:
        for tensor in _fused_outputs(node):
            if tensor in by_tensor:
                out[node.name] = by_tensor[tensor]
                break
    return out


def _fused_outputs(node: Any) -> list[str]:
    # A conv's int8 output may carry the name of the activation fused after it.
    names, t = [node.outputs[0].name], node.outputs[0]
    while len(t.outputs) == 1 and t.outputs[0].op in ("Relu", "Clip", "LeakyRelu"):
        t = t.outputs[0].outputs[0]
        names.append(t.name)
    return names[::-1]


def _layer_cycles(ctx: Context) -> dict[str, int]:
    perf = ctx.results.get("perf")
    if not perf:
        return {}
    return {row.get("source", row.get("name")): row["cycles"] for row in perf["single"].layers}


def _variants(ctx: Context) -> list[dict[str, Any]]:
    scores = ctx.results.get("eval") or {}
    metric = next(iter(scores.get("float", {})), None)
    if metric is None:
        return []
    macs = {"float": ctx.results["cost_before"].macs, "compressed": model_cost(ctx.model).macs}
    macs["int8"] = macs["compressed"]
    return [{"name": name, "macs": macs[name], "accuracy": s.get(metric)}
            for name, s in scores.items()]
