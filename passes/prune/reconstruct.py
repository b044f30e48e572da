"""Post-training recovery after channel removal, with the float model as teacher.

Each consumer that lost input channels is re-fitted by ridge regression so that its
pre-activation output on calibration data matches the original model's output, using the
*pruned* model's inputs, so upstream errors are compensated too.

- "block" (the default): "act", then block-wise gradient reconstruction
  (`passes.recon_block`): the convs of each residual / conv-ReLU-conv / inverted-residual
  block trained jointly with Adam so the block output (after its activation) matches the
  teacher's, kept per block when the held-out error goes down.
- "act": "stream", then per layer followed by a ReLU / ReLU6 one more pass
  whose targets are freed where the activation clamps both the teacher and the prediction
  (`passes.recon.censored_targets`), so the fit matches the activated output; kept when it
  lowers the held-out error.
- "stream": layers one at a time in graph order, on the normal equations of
  every output position of every calibration sample (`passes.recon_stream`); a layer that
  feeds a residual Add is fitted to the teacher's block output minus the student's
  shortcut; the ridge is chosen on held-out samples.
- "lsq" (the former default): sampled positions (`max_rows` per layer), the layer's own
  output as target, in up to `max_passes` chunks, each chunk seeing the already re-fitted
  layers before it.
- "bias": only the mean contribution of the removed channels, folded into the bias.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import numpy as np

from compiler.core.errors import ConfigError, GraphError
from compiler.core.ir import Model
from compiler.core.progress import track
from passes.prune.groups import Analysis
from passes.recon import (
    activation_bounds,
    collect_rows,
    refit_reason,
    residual_add,
    ridge_fit,
    set_layer_weights,
    weight_matrix,
)
from passes.recon_block import BlockOptions, reconstruct_blocks, teacher_tensors
from passes.recon_stream import act_refit, layer_stats, refit

log = logging.getLogger(__name__)

METHODS = ("block", "act", "stream", "lsq", "bias")
DEFAULT_RECON = "block"  # measured: docs/results.md, "Post-training recovery"
ACT_ITERS = 1  # "act": activation-aware passes per layer (more measured no better)


def affected_layers(analysis: Analysis, keep: Mapping[int, np.ndarray]) -> list[str]:
    """Consumers (in topological order) whose input channels lost members."""
    cut = {gid for gid, idx in keep.items() if len(idx) < analysis.groups[gid].channels}
    names = {c for gid in cut for c in analysis.groups[gid].consumers}
    return [n.name for n in analysis.order if n.name in names]


def reconstruct(pruned: Model, teacher: Model, layout, layers: list[str], feeds, *,
                method: str = DEFAULT_RECON, lam: float = 1e-3, max_rows: int = 4096,
                batch_size: int = 32, seed: int = 0, max_passes: int = 24) -> dict:
    """Re-fit `layers` of `pruned` (in place) against `teacher`.

    Args:
        pruned: The pruned model (modified in place).
        teacher: The original model.
        layout: The `ApplyTracer` of the pruning (maps new channel positions to old ones).
        layers: Node names to re-fit, topological order.
        feeds: Calibration inputs.
        method: "block" (block-wise gradient reconstruction after "act"), "act",
            "stream", "lsq" (ridge re-fits) or "bias" (fold removed channels'
            mean only).
        lam: Relative ridge strength.
        max_rows: Sampled output positions per layer ("lsq" and "bias").
        batch_size: Samples per onnxruntime run.
        seed: Position sampling seed.
        max_passes: Most student re-runs; layers are chunked to stay within it.

    Returns:
        Report: per layer, the relative error of its output before and after.
    """
    if method not in METHODS:
        raise ConfigError(f"reconstruction method {method!r}: choose from {', '.join(METHODS)}")
    if method in ("block", "act", "stream"):
        report = reconstruct_stream(pruned, teacher, layout, layers, feeds, lam=lam,
                                    act_iters=0 if method == "stream" else ACT_ITERS)
        if method == "block":
            report = _reconstruct_blocks(pruned, teacher, layout, feeds, report)
        return report
    start = time.perf_counter()
    kw = {"max_rows": max_rows, "batch_size": batch_size, "seed": seed}
    layers = [n for n in layers if refit_reason(_node(pruned, n)) is None]
    if not layers:
        return {"method": method, "layers": [], "time_s": 0.0}
    t_in = collect_rows(teacher, layers, feeds, outputs=False, **kw)
    t_out = collect_rows(teacher, layers, feeds, outputs=True, **kw)
    rows = []
    chunks = np.array_split(np.array(layers, dtype=object), min(len(layers), max_passes))
    for chunk in track(chunks, "reconstruct (layer groups)"):
        chunk = list(chunk)
        s_in = collect_rows(pruned, chunk, feeds, outputs=False, **kw)
        for name in chunk:
            rows.append(_refit(pruned, teacher, layout, name, t_in[name], t_out[name],
                               s_in[name], method, lam))
    return {"method": method, "lambda": lam, "layers": rows,
            "time_s": round(time.perf_counter() - start, 3)}


def _reconstruct_blocks(pruned: Model, teacher: Model, layout, feeds, report: dict,
                        options: BlockOptions | None = None) -> dict:
    """Block-wise reconstruction after the closed-form re-fit; `report` gains "blocks"."""
    start = time.perf_counter()

    def targets(tensor: str, limit: int | None) -> np.ndarray | None:
        try:
            value = teacher_tensors(teacher, [tensor], feeds, limit=limit)[tensor]
        except GraphError:
            return None
        pos = _positions(layout, tensor)
        return value if pos is None else np.take(value, pos, axis=1)

    blocks = reconstruct_blocks(pruned, targets, feeds, options=options)
    return {**report, "method": "block", "blocks": blocks["blocks"],
            "time_s": round(report["time_s"] + time.perf_counter() - start, 3)}


def _node(model: Model, name: str):
    return next(n for n in model.graph.nodes if n.name == name)


def _refit(pruned: Model, teacher: Model, layout, name: str, x_t: np.ndarray, y_t: np.ndarray,
           x_s: np.ndarray, method: str, lam: float) -> dict:
    node_s, node_t = _node(pruned, name), _node(teacher, name)
    out_pos = layout.old_positions(node_s.outputs[0].name)
    in_pos = layout.old_positions(node_s.inputs[0].name)
    w_s, b_s = weight_matrix(node_s), _bias(node_s)
    groups = w_s.shape[0]
    y = _take_outputs(y_t, out_pos, groups)
    before = _rel_err(x_s, w_s, b_s, y)
    if method == "lsq" and groups == 1:
        w, b = ridge_fit(x_s[0], y[0], lam=lam, fit_intercept=True)
        w, b = w[None], b
    else:
        w, b = w_s, b_s + _removed_mean(node_t, x_t, in_pos, out_pos, groups)
    after = _rel_err(x_s, w, b, y)
    if after <= before:
        set_layer_weights(pruned, name, w, b if _has_bias_slot(node_s) else None)
    else:
        after = before
    log.debug("reconstruct %s: rel err %.4f -> %.4f", name, before, after)
    return {"layer": name, "err_before": round(before, 5), "err_after": round(after, 5)}


def _has_bias_slot(node) -> bool:
    return node.op != "MatMul"


def _bias(node) -> np.ndarray:
    from compiler.core.ir import const_value

    m = weight_matrix(node)
    g, _, per = m.shape
    if node.op != "MatMul" and len(node.inputs) > 2 and node.inputs[2].name:
        return np.broadcast_to(const_value(node.inputs[2]).reshape(-1), (g * per,)).astype(
            np.float32)
    return np.zeros(g * per, np.float32)


def _take_outputs(y: np.ndarray, out_pos: np.ndarray, groups: int) -> np.ndarray:
    flat = y.transpose(1, 0, 2).reshape(y.shape[1], -1)[:, out_pos]
    return flat.reshape(y.shape[1], groups, -1).transpose(1, 0, 2)


def _rel_err(x: np.ndarray, w: np.ndarray, b: np.ndarray, y: np.ndarray) -> float:
    pred = np.einsum("gnk,gkm->gnm", x, w) + b.reshape(w.shape[0], 1, -1)
    return float(np.sum((pred - y) ** 2) / max(float(np.sum(y ** 2)), 1e-30))


def _removed_mean(node_t, x_t: np.ndarray, in_pos: np.ndarray, out_pos: np.ndarray,
                  groups: int) -> np.ndarray:
    # Expected contribution of the removed input channels: mean(x_removed) @ W_removed.
    w_t = weight_matrix(node_t)  # [G, k_old, m_old]
    g_old, k_old, m_old = w_t.shape
    c_old = _input_width(node_t)
    per_channel = k_old // (c_old // g_old)
    kept = np.zeros(c_old, bool)
    kept[in_pos] = True
    removed_cols = ~np.repeat(kept.reshape(g_old, -1), per_channel, axis=1)  # [G, k_old]
    mean = x_t.mean(axis=1)  # [G, k_old]
    contrib = np.einsum("gk,gkm->gm", mean * removed_cols, w_t).reshape(-1)
    return contrib[out_pos].astype(np.float32)


def _input_width(node) -> int:
    shape = node.inputs[0].shape
    return int(shape[-1] if node.op in ("Gemm", "MatMul") else shape[1])


def reconstruct_stream(pruned: Model, teacher: Model, layout, layers: list[str], feeds, *,
                       lam: float = 1e-3, residual: bool = True,
                       batch_size: int = 16, act_iters: int = 0) -> dict:
    """Sequential re-fit on streamed normal equations (`passes.recon_stream`), in place.

    Every layer of `layers` is re-fitted in graph order on all output positions of all
    calibration samples, with the student's inputs as they are after the earlier re-fits
    (one student and one teacher run per layer, each cut after the tensors it needs). A
    layer feeding a residual Add (with `residual`) is fitted to the teacher's Add output
    minus the student's shortcut, so the block output matches the float model. The ridge is
    chosen on held-out calibration samples; a layer keeps its weights when no re-fit lowers
    the held-out error. With `act_iters`, a layer followed by a ReLU / ReLU6 gets up to that
    many activation-aware passes (method "act").
    """
    start = time.perf_counter()
    rows = []
    for name in track(list(layers), "reconstruct (layers)"):
        node = _node(pruned, name)
        if refit_reason(node) is not None:
            continue
        rows.append(_refit_stream(pruned, teacher, layout, node, feeds, lam, residual,
                                  batch_size, act_iters))
    return {"method": "act" if act_iters else "stream", "lambda": lam, "layers": rows,
            "time_s": round(time.perf_counter() - start, 3)}


def _refit_stream(pruned: Model, teacher: Model, layout, node, feeds, lam: float,
                  residual: bool, batch_size: int, act_iters: int) -> dict:
    found = residual_add(node, pruned.graph) if residual else None
    target = (found[0] if found else node).outputs[0].name
    stats = layer_stats(pruned, teacher, node, feeds, target=target,
                        out_pos=_positions(layout, target),
                        shortcut=found[1].name if found else None, batch_size=batch_size)
    w_old = weight_matrix(node)
    g, _, m = w_old.shape
    has_bias = _has_bias_slot(node)
    b_old = _bias(node).reshape(g, m) if has_bias else None
    w, b, info = refit(stats, w_old, b_old, lam, intercept=has_bias)
    bounds = activation_bounds(node, pruned.graph) if act_iters else None
    if bounds is not None and bounds.tensor == target:
        for _ in range(act_iters):
            censored = layer_stats(pruned, teacher, node, feeds, target=target,
                                   out_pos=_positions(layout, target),
                                   shortcut=found[1].name if found else None,
                                   batch_size=batch_size, censor=(w, b, bounds))
            w, b, taken = act_refit(censored, w, b, info.get("ridge", lam), has_bias)
            info["activation_aware"] = info.get("activation_aware", 0) + int(taken)
            if not taken:
                break
    if w is not w_old:
        set_layer_weights(pruned, node.name, w, None if b is None else b.reshape(-1))
    log.debug("reconstruct %s: held-out rel err %s -> %s", node.name, info["error_before"],
              info["error_after"])
    return {"layer": node.name, "err_before": info["error_before"],
            "err_after": info["error_after"],
            "activation_aware": info.get("activation_aware", 0)}


def _positions(layout, tensor: str) -> np.ndarray | None:
    try:
        return layout.old_positions(tensor)
    except KeyError:
        return None
