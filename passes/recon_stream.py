"""Streaming least-squares statistics: every output position of every calibration sample.

`passes.recon` samples a few thousand output positions per layer and keeps them as rows.
Here the normal equations are accumulated instead, batch by batch: the Gram matrix of the
layer's input patches (with a ones column for the intercept) and their cross products with
the targets. Memory is `O(D^2)` per group whatever the number of samples, so a re-fit sees
all `samples x H x W` positions (200k on Fashion-MNIST at 28x28 from 256 images instead of
4096-8192 sampled rows). Every `HOLDOUT`-th sample goes to a second, held-out set of
statistics, which chooses the ridge strength and decides whether a re-fit is kept at all
(error on held-out samples is exact from the statistics: `w^T G w - 2 w^T c + y^T y`).

    stats = layer_stats(student, teacher, node, feeds, target=node.outputs[0].name)
    w, b, info = refit(stats, w_old, b_old, ridge=1e-3)      # w [G, D, M], b [G, M]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.blas import blas_single_thread
from compiler.core.ir import Model, const_value
from passes.recon import censored_targets, conv_geometry, iter_tensors

HOLDOUT = 5  # every 5th calibration sample is held out
RIDGE_STEPS = 4  # ridge * 10**k, k < RIDGE_STEPS, tried on the held-out samples


@dataclass
class Normal:
    """Normal equations of a grouped regression with an intercept column (last of D+1).

    Attributes:
        gram: `[G, D+1, D+1]` sum of x_aug^T x_aug.
        cross: `[G, D+1, M]` sum of x_aug^T y.
        yy: Sum of y^2.
    """

    gram: np.ndarray
    cross: np.ndarray
    yy: float

    def __add__(self, other: Normal) -> Normal:
        return Normal(self.gram + other.gram, self.cross + other.cross, self.yy + other.yy)


@dataclass
class LayerStats:
    """Fitting and held-out normal equations of one layer."""

    fit: Normal
    held: Normal

    @property
    def total(self) -> Normal:
        """Both sets together (the final solve)."""
        return self.fit + self.held


def all_patches(node: gs.Node, x: np.ndarray) -> np.ndarray:
    """Input patches of every output position: `[G, B*OH*OW, Cin/G*kh*kw]` (rows by sample).

    The column order matches the weight `[Cout, Cin/G, kh, kw]` flattened per group; Gemm /
    MatMul inputs are their rows (`[1, B, K]`).
    """
    if node.op != "Conv":
        return x.reshape(1, -1, x.shape[-1])
    kh, kw = const_value(node.inputs[1]).shape[2:]
    strides, dil, pads, (oh, ow) = conv_geometry(node, x.shape[2:], (kh, kw))
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    taps = [xp[:, :, i * dil[0]:i * dil[0] + strides[0] * (oh - 1) + 1:strides[0],
               j * dil[1]:j * dil[1] + strides[1] * (ow - 1) + 1:strides[1]]
            for i in range(kh) for j in range(kw)]
    cols = np.stack(taps, axis=2)  # [B, C, kh*kw, OH, OW]
    b, c = x.shape[:2]
    group = int(node.attrs.get("group", 1))
    cols = cols.transpose(0, 3, 4, 1, 2).reshape(b * oh * ow, group, -1)
    return cols.transpose(1, 0, 2)


def output_rows(node: gs.Node, y: np.ndarray) -> np.ndarray:
    """A layer's output (or a same-shaped tensor) as rows `[G, B*OH*OW, Cout/G]`."""
    if node.op != "Conv":
        return y.reshape(1, -1, y.shape[-1])
    group = int(node.attrs.get("group", 1))
    b, c = y.shape[:2]
    return y.transpose(0, 2, 3, 1).reshape(-1, group, c // group).transpose(1, 0, 2)


def _normal(x: np.ndarray, y: np.ndarray) -> Normal:
    # One batch's products in float32 BLAS (a few thousand rows: ~1e-6 relative error, far
    # below the ridge), summed over batches in float64.
    xa = np.concatenate([x.astype(np.float32), np.ones((*x.shape[:2], 1), np.float32)], axis=2)
    y32 = y.astype(np.float32)
    gram = np.matmul(xa.transpose(0, 2, 1), xa).astype(np.float64)
    cross = np.matmul(xa.transpose(0, 2, 1), y32).astype(np.float64)
    return Normal(gram, cross, float(np.square(y32, dtype=np.float64).sum()))


def layer_stats(student: Model, teacher: Model, node: gs.Node, feeds, *, target: str,
                out_pos: np.ndarray | None = None, shortcut: str | None = None,
                batch_size: int = 16, censor: tuple | None = None) -> LayerStats:
    """Normal equations of `node` (a student layer) against a teacher tensor.

    Args:
        student: The compressed model; the regressors are `node`'s input patches in it.
        teacher: The float model.
        node: The student's Conv/Gemm/MatMul node.
        feeds: Calibration inputs (dict of arrays or `Feeds`).
        target: Teacher tensor the layer output should match (its own output, or the
            output of the residual Add it feeds).
        out_pos: Teacher channels matching the student's output channels (pruning), or
            None for all.
        shortcut: Student tensor subtracted from the target (the other operand of the
            residual Add: the layer then fits what the Add needs from it).
        batch_size: Samples per onnxruntime run.
        censor: `(w [G, D, M], b [G, M], Bounds)`: targets go through
            `passes.recon.censored_targets` with the predictions of these weights (plus the
            shortcut), so the statistics describe the activation-aware fit.
    """
    s_names = [node.inputs[0].name] + ([shortcut] if shortcut else [])
    fit = held = None
    sample = 0
    pairs = zip(iter_tensors(student, s_names, feeds, batch_size, only=True),
                iter_tensors(teacher, [target], feeds, batch_size, only=True), strict=True)
    with blas_single_thread():
        for s_vals, t_vals in pairs:
            y = t_vals[target] if out_pos is None else _take(node, t_vals[target], out_pos)
            if shortcut:
                y = y - s_vals[shortcut]
            x_rows, y_rows = all_patches(node, s_vals[s_names[0]]), output_rows(node, y)
            if censor is not None:
                off = output_rows(node, s_vals[shortcut]) if shortcut else 0.0
                y_rows = censored_targets(y_rows, predict(x_rows, censor[0], censor[1]), off,
                                          censor[2])
            per = x_rows.shape[1] // len(y)
            is_held = np.repeat((sample + np.arange(len(y))) % HOLDOUT == HOLDOUT - 1, per)
            sample += len(y)
            fit = _add(fit, _normal(x_rows[:, ~is_held], y_rows[:, ~is_held]))
            held = _add(held, _normal(x_rows[:, is_held], y_rows[:, is_held]))
    return LayerStats(fit, held)


def predict(x_rows: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """Layer outputs `[G, n, M]` of patch rows `[G, n, D]` for `w [G, D, M]`, `b [G, M]`."""
    out = np.matmul(x_rows.astype(np.float32), np.asarray(w, np.float32))
    return out if b is None else out + np.asarray(b, np.float32)[:, None, :]


def _take(node: gs.Node, value: np.ndarray, positions: np.ndarray) -> np.ndarray:
    # Channels are axis 1 of a Conv output, the last axis of a Gemm / MatMul output.
    return np.take(value, positions, axis=1 if node.op == "Conv" else -1)


def _add(acc: Normal | None, new: Normal) -> Normal:
    return new if acc is None else acc + new


def solve(normal: Normal, ridge: float, keep: np.ndarray | None = None,
          intercept: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Ridge solution `(w [G, D, M], b [G, M])` of the normal equations.

    Args:
        normal: The statistics.
        ridge: Ridge strength relative to the mean diagonal of the (uncentred) input Gram
            matrix; the intercept is not penalised.
        keep: Optional bool `[G, D, M]`: weights allowed to be non-zero (masked re-fit;
            columns sharing a pattern share one solve).
        intercept: Fit the intercept (else b is 0).
    """
    g, d1, m = normal.cross.shape
    w = np.zeros((g, d1, m))
    with blas_single_thread():
        for k in range(g):
            w[k] = _solve_group(normal.gram[k], normal.cross[k], ridge,
                                None if keep is None else keep[k], intercept)
    return w[:, :-1].astype(np.float32), w[:, -1].astype(np.float32)


def _solve_group(gram: np.ndarray, cross: np.ndarray, ridge: float, keep: np.ndarray | None,
                 intercept: bool) -> np.ndarray:
    d = len(gram) - 1
    reg = np.full(d + 1, ridge * max(float(np.mean(np.diag(gram)[:d])), 1e-12))
    reg[d] = 0.0
    a = gram + np.diag(reg)
    if keep is None:
        keep = np.ones((d, cross.shape[1]), bool)
    full = np.concatenate([keep, np.full((1, keep.shape[1]), intercept)], axis=0)
    w = np.zeros_like(cross)
    patterns, inverse = np.unique(full.T, axis=0, return_inverse=True)
    for p, pattern in enumerate(patterns):
        cols, free = np.flatnonzero(inverse.ravel() == p), np.flatnonzero(pattern)
        if free.size:
            w[np.ix_(free, cols)] = _lin_solve(a[np.ix_(free, free)], cross[np.ix_(free, cols)])
    return w


def _lin_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(a, b, rcond=None)[0]


def rel_error(normal: Normal, w: np.ndarray, b: np.ndarray | None) -> float:
    """Relative squared error of `x @ w + b` against the targets, from the statistics."""
    if normal.yy <= 0:
        return 0.0
    bias = np.zeros((w.shape[0], w.shape[2])) if b is None else np.asarray(b, np.float64)
    wa = np.concatenate([np.asarray(w, np.float64), bias[:, None, :]], axis=1)
    # sum_g trace(Wg^T Gg Wg) through a batched matmul (a 3-operand einsum loops in C)
    quad = float(np.sum(wa * np.matmul(normal.gram, wa)))
    lin = float(np.sum(wa * normal.cross))
    return max(quad - 2 * lin + normal.yy, 0.0) / normal.yy


def refit(stats: LayerStats, w_old: np.ndarray, b_old: np.ndarray | None, ridge: float,
          keep: np.ndarray | None = None,
          intercept: bool = True) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Ridge chosen on the held-out samples, then re-fitted on all samples.

    The old weights are kept when no ridge strength lowers the held-out error.

    Returns:
        (w [G, D, M], b [G, M] or `b_old`, report with held-out errors before/after).
    """
    before = rel_error(stats.held, w_old, b_old)
    tried = {}
    for lam in (ridge * 10.0 ** k for k in range(RIDGE_STEPS)):
        w, b = solve(stats.fit, lam, keep, intercept)
        tried[lam] = rel_error(stats.held, w, b if intercept else b_old)
    best = min(tried, key=tried.get)
    if tried[best] >= before:
        return w_old, b_old, {"error_before": round(before, 5), "error_after": round(before, 5)}
    w, b = solve(stats.total, best, keep, intercept)
    return w, (b if intercept else b_old), {"error_before": round(before, 5),
                                            "error_after": round(tried[best], 5),
                                            "ridge": best}


def act_refit(stats: LayerStats, w: np.ndarray, b: np.ndarray | None, ridge: float,
              intercept: bool = True) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Solve the censored statistics (`layer_stats(..., censor=(w, b, bounds))`).

    Kept only when it lowers the held-out censored error of `(w, b)` (an upper bound of the
    error after the activation, exact for `(w, b)` where the activation clamps both).

    Returns:
        (w, b, whether the activation-aware fit was taken).
    """
    before = rel_error(stats.held, w, b)
    w_try, b_try = solve(stats.fit, ridge, None, intercept)
    if rel_error(stats.held, w_try, b_try if intercept else b) >= before:
        return w, b, False
    w_new, b_new = solve(stats.total, ridge, None, intercept)
    return w_new, (b_new if intercept else b), True


__all__ = ["HOLDOUT", "LayerStats", "Normal", "act_refit", "all_patches", "layer_stats",
           "output_rows", "predict", "refit", "rel_error", "solve"]
