"""Channel importance criteria: l1, l2, random, hrank (feature-map rank), css (leverage scores).

Every criterion returns, per prunable group, one score per channel (higher = more important).
A group's score sums its members' scores, each member's vector first divided by its mean so
that a wide consumer does not drown a narrow producer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.blas import blas_single_thread
from compiler.core.errors import ConfigError, DataError
from compiler.core.ir import const_value
from passes.prune.groups import Analysis, Group
from passes.recon import iter_tensors

log = logging.getLogger(__name__)

CRITERIA = ("l1", "l2", "random", "hrank", "css")
NEEDS_DATA = ("hrank",)


def score_groups(analysis: Analysis, criterion: str, *, calib=None, seed: int = 0,
                 max_samples: int = 32) -> dict[int, np.ndarray]:
    """Per prunable group id: importance of each channel (length `group.channels`).

    Args:
        analysis: The analysed model.
        criterion: One of `CRITERIA`.
        calib: Calibration feeds (needed by "hrank").
        seed: Seed of "random".
        max_samples: Calibration samples used by "hrank".

    Raises:
        ConfigError: Unknown criterion. DataError: "hrank" without calibration data.
    """
    groups = [g for g in analysis.groups if g.prunable]
    if criterion not in CRITERIA:
        raise ConfigError(f"--criterion: unknown {criterion!r} (choose from {', '.join(CRITERIA)})")
    if criterion == "random":
        rng = np.random.default_rng(seed)
        return {g.id: rng.random(g.channels) for g in groups}
    if criterion == "hrank":
        if calib is None:
            raise DataError("criterion hrank needs calibration data (--calib)")
        with blas_single_thread():
            return hrank_scores(analysis, groups, calib, max_samples)
    nodes = {n.name: n for n in analysis.model.graph.nodes}
    fn = css_scores if criterion == "css" else (lambda g, nd: norm_scores(g, nd, criterion))
    with blas_single_thread():
        return {g.id: fn(g, nodes) for g in groups}


def _normalized_sum(vectors: Sequence[np.ndarray], size: int) -> np.ndarray:
    total = np.zeros(size)
    for v in vectors:
        mean = float(np.mean(v))
        total += v / mean if mean > 0 else v
    return total


def _taps(w: np.ndarray) -> int:
    """Kernel positions per (out, in) channel pair (1 for a matrix)."""
    return int(np.prod(w.shape[2:], dtype=np.int64))


def output_rows(node: gs.Node) -> np.ndarray:
    """The producer's weights as one row per output channel position: [Cout, fan_in]."""
    w = const_value(node.inputs[1])
    taps = _taps(w)  # explicit sizes, not -1: a weight may have a 0-sized axis
    if node.op == "Conv":
        return w.reshape(w.shape[0], w.shape[1] * taps)
    if node.op == "ConvTranspose":
        group = int(node.attrs.get("group", 1))
        cin_g, cout_g = w.shape[0] // group, w.shape[1]
        blocks = w.reshape(group, cin_g, cout_g, taps).transpose(0, 2, 1, 3)
        return blocks.reshape(group * cout_g, cin_g * taps)
    if node.op == "Gemm" and node.attrs.get("transB", 0):
        return w
    return w.T


def input_columns(node: gs.Node) -> np.ndarray:
    """The consumer's weights as one row per input channel position: [Cin, fan_out]."""
    w = const_value(node.inputs[1])
    taps = _taps(w)
    if node.op == "Conv":
        group = int(node.attrs.get("group", 1))
        cout_g = w.shape[0] // group
        blocks = w.reshape(group, cout_g, w.shape[1], taps).transpose(0, 2, 1, 3)
        return blocks.reshape(group * w.shape[1], cout_g * taps)
    if node.op == "ConvTranspose":
        return w.reshape(w.shape[0], w.shape[1] * taps)
    if node.op == "Gemm" and node.attrs.get("transB", 0):
        return w.T
    return w


def _per_channel(group: Group, tensor: str, values: np.ndarray) -> np.ndarray:
    pos = group.positions(tensor)
    return values[pos].sum(axis=1) if pos.shape[1] else np.zeros(group.channels)


def norm_scores(group: Group, nodes: dict[str, gs.Node], criterion: str) -> np.ndarray:
    """l1 / l2 norm of each channel's producer filters and consumer input slices."""
    order = 1 if criterion == "l1" else 2
    vectors = []
    for name in group.producers:
        node = nodes[name]
        norms = _norms(output_rows(node), order)
        vectors.append(_per_channel(group, node.outputs[0].name, norms))
    for name in group.consumers:
        node = nodes[name]
        norms = _norms(input_columns(node), order)
        vectors.append(_per_channel(group, node.inputs[0].name, norms))
    return _normalized_sum(vectors, group.channels)


def _norms(rows: np.ndarray, order: int) -> np.ndarray:
    if order == 1:
        return np.abs(rows).sum(axis=1, dtype=np.float64)
    return np.sqrt(np.einsum("ij,ij->i", rows, rows, dtype=np.float64))


def leverage_scores(rows: np.ndarray, energy: float = 0.9) -> np.ndarray:
    """Leverage score of each row of a filter matrix (CHEX's column subset selection).

    With M = U S V^T, row i's score is sum_{j<k} U[i, j]^2, k being the number of singular
    values holding `energy` of the spectrum: how much row i matters to the dominant subspace.
    """
    if rows.size == 0:
        return np.zeros(len(rows))
    rows = rows.astype(np.float64)
    # Eigen-decompose the smaller Gram matrix: far cheaper than an SVD of the filters.
    if rows.shape[0] <= rows.shape[1]:
        power, u = np.linalg.eigh(rows @ rows.T)
        power, u = power[::-1].clip(0), u[:, ::-1]
    else:
        power, v = np.linalg.eigh(rows.T @ rows)
        power, v = power[::-1].clip(0), v[:, ::-1]
        u = (rows @ v) / np.sqrt(np.maximum(power, 1e-30))
    cum = np.cumsum(power) / max(float(np.sum(power)), 1e-30)
    k = int(min(np.searchsorted(cum, energy) + 1, np.count_nonzero(power > 1e-12 * power[0])))
    return np.sum(u[:, :max(k, 1)] ** 2, axis=1)


def css_scores(group: Group, nodes: dict[str, gs.Node]) -> np.ndarray:
    """Leverage scores of each channel in its producers' filter matrices."""
    vectors = []
    for name in group.producers:
        node = nodes[name]
        rows = output_rows(node)
        group_count = int(node.attrs.get("group", 1)) if node.op == "Conv" else 1
        scores = np.concatenate([leverage_scores(block)
                                 for block in np.split(rows, group_count)])
        vectors.append(_per_channel(group, node.outputs[0].name, scores))
    if not vectors:  # no weight-bearing producer (cannot happen for prunable groups)
        return np.ones(group.channels)
    return _normalized_sum(vectors, group.channels)


def feature_map_ranks(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """Matrix rank of every [H, W] feature map of a batch [N, C, H, W] -> [N, C].

    `axis` is the channel axis (the last one for a MatMul over a sequence). A map that is
    not 2-D ([N, C], [N, L, C]) has rank 1 when it is not all zero.
    """
    x = np.moveaxis(x, axis, 1)
    if x.ndim != 4:
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        return (np.abs(flat).max(axis=2) > 0).astype(np.float64)
    return np.linalg.matrix_rank(x.astype(np.float32)).astype(np.float64)


def hrank_scores(analysis: Analysis, groups: list[Group], calib,
                 max_samples: int = 32) -> dict[int, np.ndarray]:
    """HRank: average rank of each channel's feature map over calibration batches."""
    tensors = sorted({t for g in groups for t in g.activations})
    arrays = calib.arrays if hasattr(calib, "arrays") else calib
    feeds = {k: np.asarray(v)[:max_samples] for k, v in arrays.items()}
    sums = {t: 0.0 for t in tensors}
    count = 0
    for values in iter_tensors(analysis.model, tensors, feeds, batch_size=8):
        for t in tensors:
            axis = analysis.slots[t].axis
            sums[t] = sums[t] + feature_map_ranks(values[t], axis).sum(axis=0)
        count += len(next(iter(values.values())))
    if count == 0:
        raise DataError("hrank: calibration data is empty")
    out = {}
    for g in groups:
        vectors = [_per_channel(g, t, sums[t] / count) for t in g.activations]
        out[g.id] = _normalized_sum(vectors, g.channels) if vectors else np.ones(g.channels)
    return out


def select(scores: np.ndarray, keep: int) -> np.ndarray:
    """Indices of the `keep` highest scores, in ascending channel order (stable ties)."""
    order = np.argsort(-scores, kind="stable")[:keep]
    return np.sort(order)
