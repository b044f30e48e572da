"""Assemble the compile report: before → after summary, per-layer table, variants."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from compiler.core.cost import model_cost
from compiler.core.ir import const_value
from compiler.driver.latency import latency_report, partition_map, step_table

if TYPE_CHECKING:
    from compiler.driver.context import CompileState

LAYER_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def summarize(state: CompileState) -> None:
    """Fill `state.report` with summary, layers, variants and the stage reports."""
    if state.original is None:
        return
    r = state.report
    r["summary"] = _summary(state)
    r["layers"] = layer_table(state)
    r["steps"] = step_table(state)
    for key, value in (("latency", latency_report(state)),
                       ("partition_map", partition_map(state, r["steps"]))):
        if value is not None:
            r[key] = value
    r["variants"] = _variants(state)
    if state.build is not None:
        r["npu_mac_fraction"] = round(state.build.macs.fraction, 6)
    stage_reports = {
        "prune": state.prune, "sparsify": state.sparsify,
        "quantize": state.quant and state.quant.report, "budget": state.budget,
        "build": state.build and {**state.build.summary(),
                                  "macs_on_npu": state.build.macs.line()},
        "verify": state.verify and state.verify.to_dict(),
        "perf": state.perf and state.perf.to_dict(), "eval": state.eval}
    r.update({k: v for k, v in stage_reports.items() if v is not None})
    r["files"] = {k: str(state.final_path(v)) for k, v in state.files.items()}


def _summary(state: CompileState) -> dict[str, dict[str, Any]]:
    before, after = state.cost_before, model_cost(state.model)
    summary = {"MACs": {"before": before.macs, "after": after.macs},
               "params": {"before": before.params, "after": after.params},
               "size (bytes)": {"before": 4 * before.params, "after": _binary_size(state)}}
    if state.sparsify is not None:
        saved = state.sparsify["macs"] - state.sparsify["effective_macs"]
        summary["effective MACs (zero blocks skipped)"] = {"before": before.macs,
                                                          "after": after.macs - saved}
    summary.update(_accuracy_rows(state.eval))
    perf, base = state.perf, state.perf_baseline
    if perf:
        summary["latency ms (1 core, 1 thread)"] = {
            "before": base.single.latency_ms if base else None,
            "after": perf.single.latency_ms}
        summary["FPS (2 cores, 8 threads)"] = {
            "before": base.multi.fps if base else None, "after": perf.multi.fps}
    if state.build is not None:
        summary["MACs on NPU"] = {"before": None, "after": state.build.macs.percent}
    if state.verify is not None:
        summary["binary vs model.quant.onnx"] = {
            "before": None, "after": "bit-exact" if state.verify.consistent else "MISMATCH"}
    return summary


def _binary_size(state: CompileState) -> int | None:
    path = state.files.get("binary")
    return path.stat().st_size if path and path.exists() else None


FIDELITY = ("agreement", "cosine")


def _accuracy_rows(scores: dict | None) -> dict[str, dict[str, Any]]:
    if not scores or "float" not in scores:
        return {}
    rows = {}
    final = scores.get("int8", scores.get("compressed", {}))
    for metric in scores["float"]:
        rows[metric] = {"before": scores["float"][metric], "after": final.get(metric)}
    for metric in FIDELITY:  # against the float model's outputs: labels or not
        if metric in final:
            rows[f"{metric} with float"] = {"before": None, "after": final[metric]}
    return rows


def layer_table(state: CompileState) -> list[dict[str, Any]]:
    """One row per Conv/Gemm of the original model."""
    final = {n.name: n for n in state.model.nodes}
    cos = _layer_cosines(state)
    cycles = _layer_cycles(state)
    units = {p["node"]: p["unit"] for p in (state.build.placement if state.build else [])}
    rows = []
    for node in state.original.nodes:
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


def _layer_cosines(state: CompileState) -> dict[str, float]:
    by_tensor = {row["name"]: row["cosine"] for row in state.compare_layers}
    out = {}
    for node in state.model.nodes:
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


def _layer_cycles(state: CompileState) -> dict[str, int]:
    if not state.perf:
        return {}
    return {row.get("source", row.get("name")): row["cycles"]
            for row in state.perf.single.layers}


def _variants(state: CompileState) -> list[dict[str, Any]]:
    scores = state.eval or {}
    metric = next(iter(scores.get("float", {})), None)
    if metric is None:
        return []
    macs = {"float": state.cost_before.macs, "compressed": model_cost(state.model).macs}
    macs["int8"] = macs["compressed"]
    return [{"name": name, "macs": macs[name], "accuracy": s.get(metric)}
            for name, s in scores.items()]
