"""Hessian-aware weight rounding (`--rounding gptq`): small layer *output* error, not weight error.

Each int8 weight's rounding (up or down) is chosen so the layer's output on calibration data
stays close to the float layer's, instead of each weight being closest to its float value.

Rounding every weight to its nearest int8 level minimises ||W_q - W|| but not the error that
matters, ||X·W_q - X·W|| over the layer's real inputs X. When inputs are strongly correlated
the two differ a lot: e.g. EfficientNet-Lite0's first depthwise conv has 3x3 edge filters
with taps up to ±17 that sum to ~0, so on a flat (saturated) image region the nearest-rounded
taps no longer cancel and the output shifts by half a unit; rounding to nearest there alone
drops top-1 agreement with the float model to 85 %.

The algorithm is the one of OBQ / GPTQ (Frantar et al. 2022): with H = XᵀX/n (+ damping),
quantize the input dimensions one at a time (largest diag(H) first) and spread each one's
rounding error onto the not-yet-quantized dimensions through the Cholesky factor of H⁻¹, in
blocks so the updates are matrix products. Scales stay those of round-to-nearest
(docs/fixed-point.md §1): the largest-magnitude weight of every output channel is kept as
is, other weights are clipped to ±127 levels, so the rounded weights are a fixed point of
`fixedpoint.quantize_weights` and the integer model uses exactly the integers chosen here.

Inputs X are patches of the float model's layer inputs on calibration data, `rows` output
positions per layer (passes.recon). It lowers the output error on those rows, not
necessarily on other data, so the report lists both errors per layer and
docs/quantization.md measures the effect on held-out data.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.blas import blas_single_thread
from compiler.core.errors import GraphError
from compiler.core.feeds import Feeds
from compiler.core.fixedpoint import weight_scales
from compiler.core.ir import Model, const_value
from compiler.core.progress import track
from passes.recon import collect_rows, split_layers, weight_matrix

log = logging.getLogger(__name__)

WEIGHT_MAX = 127
BLOCK = 64  # input dimensions quantized between two matrix-product updates
ROWS_BUDGET = 256 << 20  # bytes of sampled input rows held at once


@dataclass(frozen=True)
class RoundingResult:
    """Rounded weights (node layout) and per-layer output errors (mean squared, on the rows)."""

    weights: dict[str, np.ndarray]
    error_nearest: dict[str, float]
    error_rounded: dict[str, float]
    skipped: dict[str, str]

    def report(self) -> dict[str, dict]:
        """Entries for the quantization report: per-layer errors and skipped layers."""
        errors = {name: {"nearest_mse": self.error_nearest[name],
                         "gptq_mse": self.error_rounded[name]} for name in self.weights}
        return {"weight_rounding": errors, "weight_rounding_skipped": self.skipped}


def rounding_reason(node: gs.Node) -> str | None:
    """Why a layer keeps round-to-nearest weights, or None when it can be rounded here."""
    if node.op not in ("Conv", "Gemm", "MatMul"):
        return f"{node.op} has no weights to round"
    if not isinstance(node.inputs[1], gs.Constant):
        return "weights are not constant"
    if node.op == "Gemm" and (node.attrs.get("transA", 0)
                              or float(node.attrs.get("alpha", 1.0)) != 1.0):
        return "Gemm with transA or alpha != 1"
    if np.asarray(node.inputs[1].values).ndim not in (2, 4):
        return "only 2-D Gemm/MatMul and 2-D Conv weights"
    if node.op == "MatMul" and not isinstance(node.inputs[0], gs.Variable):
        return "MatMul whose left operand is constant"
    return None


def channel_scales(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Round-to-nearest scales (float64) and peaks of weight matrices [G, k, m], per channel."""
    peak = np.abs(w).max(axis=1)  # [G, m], in the weight's own dtype as quantize_weights sees it
    scale = weight_scales(peak.reshape(-1)).reshape(peak.shape)
    return scale.astype(np.float64), peak


def gptq_round(w: np.ndarray, x: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """Error-compensating int8 rounding of weight matrices.

    Args:
        w: Float weights [G, k, m] (G groups, k inputs, m output channels per group).
        x: Layer inputs [G, n, k] (n sampled rows).
        damp: Ridge added to H as a fraction of its mean diagonal (keeps H invertible).

    Returns:
        float32 [G, k, m] on the per-channel int8 grid of round-to-nearest: the peak weight
        of each channel unchanged, every other weight q·scale with |q| <= 127.
    """
    return gptq_from_hessian(w, hessians(x), damp)


def hessians(x: np.ndarray) -> np.ndarray:
    """H = XᵀX / n per group, float64 [G, k, k], from rows [G, n, k]."""
    xd = x.astype(np.float64)
    return np.matmul(xd.transpose(0, 2, 1), xd) / max(x.shape[1], 1)


def gptq_from_hessian(w: np.ndarray, h: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """`gptq_round` with H given; all groups at once (depthwise convs have thousands)."""
    scale, peak = channel_scales(w)
    h = _damped(h, damp)
    order = np.argsort(-np.diagonal(h, axis1=1, axis2=2), axis=1, kind="stable")  # [G, k]
    g = np.arange(len(w))[:, None]
    wp = np.take_along_axis(w.astype(np.float64), order[:, :, None], axis=1)
    u = np.linalg.cholesky(np.linalg.inv(h[g[:, :, None], order[:, :, None],
                                           order[:, None, :]])).transpose(0, 2, 1)
    q = np.take_along_axis(_levels(wp, u, scale), np.argsort(order, axis=1)[:, :, None], axis=1)
    return _on_grid(q, scale, w, peak)


def _damped(h: np.ndarray, damp: float) -> np.ndarray:
    h = h.copy()
    diag = np.diagonal(h, axis1=1, axis2=2).copy()  # [G, k]
    diag = np.where(diag > 0, diag, 1.0)  # an input that is always zero: any rounding is exact
    diag += damp * diag.mean(axis=1, keepdims=True)
    idx = np.arange(h.shape[1])
    h[:, idx, idx] = diag
    return h


def _levels(w: np.ndarray, u: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Integer levels [G, k, m] of act-ordered weights `w` (float64, consumed) given U."""
    pinned = np.abs(w).argmax(axis=1)  # [G, m]: row of each channel's peak, never moved
    pin_value = np.take_along_axis(w, pinned[:, None, :], axis=1)[:, 0]
    q = np.empty_like(w)
    k = w.shape[1]
    for start in range(0, k, BLOCK):
        stop = min(start + BLOCK, k)
        err = np.empty((len(w), stop - start, w.shape[2]))
        for i in range(start, stop):
            row = np.where(pinned == i, pin_value, w[:, i])
            q[:, i] = np.clip(np.floor(row / scale + 0.5), -WEIGHT_MAX, WEIGHT_MAX)
            err[:, i - start] = (row - q[:, i] * scale) / u[:, i, i, None]
            w[:, i + 1:stop] -= u[:, i, i + 1:stop, None] * err[:, i - start, None, :]
        w[:, stop:] -= np.matmul(u[:, start:stop, stop:].transpose(0, 2, 1), err)
    return q


def _on_grid(q: np.ndarray, scale: np.ndarray, w: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """q·scale in float32 [G, k, m], original peak weights restored, nothing above the peak.

    Keeping each channel's peak weight bit-for-bit keeps its scale bit-for-bit; capping
    the others at the peak stops a float32 rounding of 127·scale from raising it.
    """
    v = (q * scale[:, None, :]).astype(np.float32)
    cap = peak.astype(np.float32)[:, None, :]
    v = np.clip(v, -cap, cap)
    rows = np.abs(w).argmax(axis=1)[:, None, :]
    np.put_along_axis(v, rows, np.take_along_axis(w, rows, axis=1), axis=1)
    return v


def quadratic_error(h: np.ndarray, w: np.ndarray, wq: np.ndarray) -> float:
    """Mean squared output error of `wq` vs `w` from H = XᵀX/n [G, k, k] (no rows needed)."""
    d = wq.astype(np.float64) - w.astype(np.float64)
    return float(np.sum(d * np.matmul(h, d)) / (d.shape[0] * d.shape[2]))


def nearest_round(w: np.ndarray) -> np.ndarray:
    """Round-to-nearest on the same grid (the default rounding), [G, k, m]."""
    scale, _ = channel_scales(w)
    q = np.clip(np.floor(w.astype(np.float64) / scale[:, None, :] + 0.5), -WEIGHT_MAX, WEIGHT_MAX)
    return (q * scale[:, None, :]).astype(np.float32)


def output_error(x: np.ndarray, w: np.ndarray, wq: np.ndarray) -> float:
    """Mean squared output error of weights `wq` vs `w` on rows `x` (all groups)."""
    diff = wq.astype(np.float64) - w.astype(np.float64)
    return float(np.mean(np.matmul(x.astype(np.float64), diff) ** 2))


def round_weights(model: Model, feeds: Feeds | dict, *, rows: int = 4096,
                  batch_size: int = 8, damp: float = 0.01,
                  only: Collection[str] | None = None) -> RoundingResult:
    """GPTQ-rounded weights of every eligible Conv/Gemm/MatMul of `model` (not modified).

    Args:
        model: Canonicalized float model (BatchNorm folded).
        feeds: Calibration data.
        rows: Sampled output positions per layer.
        batch_size: Samples per onnxruntime run (symbolic batch).
        damp: Relative ridge on H.
        only: Round only these layers (the ones that will run in int8); others are skipped.

    Returns:
        A `RoundingResult` keyed by node name, weights in the node's own layout.
    """
    layers, skipped = split_layers(model, rounding_reason, only)
    weights, before, after = {}, {}, {}
    chunks = list(_chunks(layers, rows))
    with blas_single_thread():
        for chunk in track(chunks, desc="gptq rounding"):
            xs = collect_rows(model, [n.name for n in chunk], _as_dict(feeds),
                              max_rows=rows, batch_size=batch_size, reason=rounding_reason)
            for node in chunk:
                w, h = weight_matrix(node), hessians(xs.pop(node.name))
                wq = gptq_from_hessian(w, h, damp)
                weights[node.name] = _node_layout(node, wq)
                before[node.name] = quadratic_error(h, w, nearest_round(w))
                after[node.name] = quadratic_error(h, w, wq)
    log.info("gptq rounding: %d layers rounded, %d skipped", len(weights), len(skipped))
    return RoundingResult(weights, before, after, skipped)


def _chunks(layers: Sequence[gs.Node], rows: int) -> Iterator[list[gs.Node]]:
    """Layers grouped so the sampled rows of one group stay within `ROWS_BUDGET`."""
    chunk, used = [], 0
    for node in layers:
        k = int(np.prod(const_value(node.inputs[1]).shape[1:]))
        group = int(node.attrs.get("group", 1)) if node.op == "Conv" else 1
        size = 4 * rows * k * group
        if chunk and used + size > ROWS_BUDGET:
            yield chunk
            chunk, used = [], 0
        chunk.append(node)
        used += size
    if chunk:
        yield chunk


def _as_dict(feeds: Feeds | dict) -> dict[str, np.ndarray]:
    return feeds.arrays if isinstance(feeds, Feeds) else feeds


def _node_layout(node: gs.Node, wq: np.ndarray) -> np.ndarray:
    """[G, k, m] back to the node's weight layout (inverse of `recon.weight_matrix`)."""
    old = const_value(node.inputs[1])
    if node.op == "Conv":
        g, k, m = wq.shape
        return wq.transpose(0, 2, 1).reshape(g * m, *old.shape[1:]).astype(old.dtype)
    flat = wq[0]
    return (flat.T if node.op == "Gemm" and node.attrs.get("transB", 0) else flat).astype(old.dtype)


def apply_weights(model: Model, weights: dict[str, np.ndarray]) -> None:
    """Put rounded weights into `model` in place (a fresh constant per layer, never shared)."""
    for node in model.graph.nodes:
        new = weights.get(node.name)
        if new is None:
            continue
        old = node.inputs[1]
        if np.shape(new) != np.shape(old.values):
            raise GraphError(f"node {node.name!r}: rounded weight shape {np.shape(new)} "
                             f"!= {np.shape(old.values)}")
        node.inputs[1] = gs.Constant(f"{node.name}.weight_rounded", np.asarray(new))
