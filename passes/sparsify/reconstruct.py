"""Masked reconstruction: re-fit each sparsified layer's surviving weights by least squares.

Layers are visited in graph order. For each one, the regressors are its inputs in the sparse
model as it is so far (earlier layers already re-fitted, so later ones compensate their
error) and the targets are the float teacher's outputs of the same layer; the rows come from
`passes.recon.collect_layer_io`. In 1xN every output channel of a block keeps the same input
columns, so `passes.recon.ridge_fit` solves one ridge problem per distinct mask column and
masked weights are not in the solve: zero blocks stay exactly zero. Weights are written back
into the original initializers so the metadata's names stay valid.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from compiler.ir import Model, const_value, is_const
from passes.recon import collect_layer_io, refit_reason, ridge_fit
from passes.sparsify.criteria import element_mask
from passes.sparsify.layers import Layer, weight_layers
from passes.sparsify.metadata import LayerMask

log = logging.getLogger(__name__)


@dataclass
class ReconOptions:
    """Knobs of the reconstruction.

    Attributes:
        rows: Output positions (regression rows) sampled per layer.
        ridge: Ridge strength relative to the mean diagonal of the input Gram matrix.
        seed: Seed of the position sampling.
    """

    rows: int = 8192
    ridge: float = 1e-3
    seed: int = 0


def reconstruct(student: Model, teacher: Model, masks: Mapping[str, LayerMask],
                feeds: Mapping[str, np.ndarray],
                options: ReconOptions | None = None) -> dict[str, dict]:
    """Re-fit the masked layers of `student` (in place) to match `teacher`'s layer outputs.

    Args:
        student: The sparse model (same node names and shapes as the teacher).
        teacher: The float model (after any reordering, before masking).
        masks: Node name -> block mask of each sparsified layer.
        feeds: Calibration inputs, batch on axis 0.
        options: Rows, ridge strength, seed.

    Returns:
        Node name -> {"error_before", "error_after"} (relative L2 error of the layer output
        on the sampled rows), or {"skipped": reason}.
    """
    opts = options or ReconOptions()
    report = {}
    for layer in [x for x in weight_layers(student) if x.name in masks]:
        reason = refit_reason(layer.node)
        if reason:
            report[layer.name] = {"skipped": reason}
            continue
        io = collect_layer_io(student, [layer.name], feeds, teacher=teacher,
                              max_rows=opts.rows, seed=opts.seed)[layer.name]
        report[layer.name] = refit_layer(layer, masks[layer.name], io.x, io.y, opts.ridge)
    return report


def refit_layer(layer: Layer, mask: LayerMask, x: np.ndarray, y: np.ndarray,
                ridge: float) -> dict[str, float]:
    """Masked ridge fit of one layer's weights (and per-channel bias) on rows (x, y).

    Args:
        layer: The layer (weights rewritten in place).
        mask: Its block mask.
        x: Regressors `[G, P, Cin/G * K]` (or `[P, D]` for one group).
        y: Targets `[G, P, Cout/G]` (or `[P, Cout]`).
        ridge: Relative ridge strength.

    The new weights are kept only when they lower the error on the rows.
    """
    x, y = (x, y) if x.ndim == 3 else (x[None], y[None])
    w0 = layer.logical()
    keep = np.ascontiguousarray(element_mask(mask.mask, mask.block, w0.shape))
    keep = keep.reshape(w0.shape[0], -1)
    w_old = np.where(keep, w0.reshape(w0.shape[0], -1), 0)
    bias = bias_tensor(layer)
    b_old = None if bias is None else np.asarray(bias.values).reshape(-1)
    w_new, b_new = _fit_groups(x, y, keep, b_old is not None, ridge)
    scale = float(np.linalg.norm(np.asarray(y, np.float64))) or 1.0
    before = np.sqrt(_sq_error(x, y, w_old, b_old)) / scale
    after = np.sqrt(_sq_error(x, y, w_new, b_new)) / scale
    if after >= before:
        log.info("%s: re-fit did not lower the error (%.4g >= %.4g), kept", layer.name,
                 after, before)
        return {"error_before": before, "error_after": before}
    layer.store(w_new.reshape(w0.shape))
    if bias is not None:
        bias.values = b_new.reshape(np.shape(bias.values)).astype(bias.values.dtype)
    return {"error_before": before, "error_after": after}


def _fit_groups(x: np.ndarray, y: np.ndarray, keep: np.ndarray, with_bias: bool,
                ridge: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Masked ridge fit of each conv group: weights `[Cout, D]` and bias `[Cout]` or None."""
    per = keep.shape[0] // len(x)
    ws, bs = [], []
    for g in range(len(x)):
        w, b = ridge_fit(x[g], y[g], ridge, mask=keep[g * per:(g + 1) * per].T,
                         fit_intercept=with_bias)
        ws.append(w.T)
        bs.append(b)
    return np.concatenate(ws), (np.concatenate(bs) if with_bias else None)


def bias_tensor(layer: Layer):
    """The layer's own per-output-channel bias constant, or None."""
    node = layer.node
    if node.op not in ("Conv", "Gemm") or len(node.inputs) <= 2:
        return None
    b = node.inputs[2]
    if not is_const(b) or const_value(b).size != layer.cout or len(b.outputs) > 1:
        return None
    return b


def _sq_error(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> float:
    """Summed squared error over groups of `x[g] @ w_g.T + b_g` against `y[g]`."""
    per = w.shape[0] // len(x)
    total = 0.0
    for g in range(len(x)):
        pred = np.asarray(x[g], np.float64) @ np.asarray(w[g * per:(g + 1) * per], np.float64).T
        if b is not None:
            pred = pred + b[g * per:(g + 1) * per]
        total += float(np.square(pred - y[g]).sum())
    return total
