"""Fold inference-mode BatchNormalization into a neighbouring layer, or lower it to one.

Order of preference, each exact in float:
1. into the producing Conv / ConvTranspose / Gemm (the usual Conv-BN-ReLU export);
2. into the consuming Conv when that conv has no padding (BN-Conv with a 1x1 or unpadded
   kernel: a padded border would see the BN shift where the original saw zeros);
3. otherwise (on a graph input, after Add or Concat, before an activation as in DenseNet's
   BN-ReLU-Conv) into a depthwise 1x1 Conv with the BN's per-channel scale and shift, which
   the quantizer maps to the NPU like any depthwise layer instead of leaving it on the CPU.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.ir import (
    Model,
    bypass,
    const_value,
    consumers,
    is_graph_output,
    producer,
    release_unused,
)
from passes.base import RewritePass


def fold_batchnorm(model: Model) -> int:
    """Fold or lower each inference-mode BatchNormalization with constant statistics.

    BN in training mode, with non-constant statistics or of rank < 3 (BatchNorm1d after a
    Flatten) is kept as it is.

    Returns:
        The number of BatchNormalization nodes folded away or lowered to a depthwise Conv.
    """
    graph, rewritten = model.graph, 0
    for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
        affine = bn_affine(bn)
        if affine is None:
            continue
        layer = _foldable_producer(graph, bn)
        replaced = list(layer.inputs[1:]) if layer is not None else []
        if layer is not None and _fold_into(layer, *affine):
            release_unused(graph, replaced)  # the old weights leave memory at once
            rewritten += bypass(graph, bn)
        elif _fold_forward(graph, bn, *affine) or _to_depthwise(bn, *affine):
            rewritten += 1
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return rewritten


def bn_affine(bn: gs.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) with BN(x) = scale·x + shift per channel, or None if not constant."""
    if bn.attrs.get("training_mode", 0) or len(bn.outputs) != 1:
        return None
    params = [const_value(t) for t in bn.inputs[1:5]]
    if any(p is None for p in params):
        return None
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    scale = gamma / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
    return scale, beta - mean * scale


def _foldable_producer(graph: gs.Graph, bn: gs.Node) -> gs.Node | None:
    x = bn.inputs[0]
    layer = producer(x)
    if layer is None or len(x.outputs) != 1 or is_graph_output(graph, x):
        return None
    if layer.op not in _FOLDERS or const_value(layer.inputs[1]) is None:
        return None
    return layer


def _fold_forward(graph: gs.Graph, bn: gs.Node, scale: np.ndarray, shift: np.ndarray) -> bool:
    """Fold BN into its only consumer, an unpadded, ungrouped Conv.

    W·(s·x + t) + b = (W·diag(s))·x + (b + W·t).
    """
    y = bn.outputs[0]
    users = consumers(y)
    if len(users) != 1 or is_graph_output(graph, y):
        return False
    conv = users[0]
    if conv.op != "Conv" or conv.inputs[0] is not y or not _unpadded(conv):
        return False
    w = const_value(conv.inputs[1]) if len(conv.inputs) > 1 else None
    if w is None or conv.attrs.get("group", 1) != 1 or w.shape[1] != scale.size:
        return False
    bias = _bias(conv, w.shape[0])
    if bias is None:
        return False
    in_shape = (1, -1) + (1,) * (w.ndim - 2)
    axes = tuple(range(1, w.ndim))
    new_b = bias + (w.astype(np.float64) * shift.reshape(in_shape)).sum(axis=axes)
    replaced = list(conv.inputs[1:])
    _set_weights(conv, _rescaled(w, lambda i, j: scale.reshape(in_shape)), new_b)
    release_unused(graph, replaced)
    conv.inputs[0] = bn.inputs[0]
    bn.outputs.clear()
    return True


def _unpadded(conv: gs.Node) -> bool:
    auto_pad = conv.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        return False
    return not any(conv.attrs.get("pads", ()))


def _to_depthwise(bn: gs.Node, scale: np.ndarray, shift: np.ndarray) -> bool:
    """Replace BN by Conv(group=C, 1x1 kernel, weight=scale, bias=shift) in place."""
    x = bn.inputs[0]
    rank = len(x.shape) if x.shape is not None else 0
    if rank < 3 or (isinstance(x.shape[1], int) and x.shape[1] != scale.size):
        return False
    dtype = x.dtype if x.dtype is not None else np.float32
    name = bn.name or bn.outputs[0].name
    c = scale.size
    weight = gs.Constant(f"{name}.dw_weight", scale.reshape((c, 1) + (1,) * (rank - 2))
                         .astype(dtype))
    bias = gs.Constant(f"{name}.dw_bias", shift.astype(dtype))
    bn.op = "Conv"
    bn.attrs = {"group": c, "kernel_shape": [1] * (rank - 2)}
    bn.inputs = [x, weight, bias]
    return True


def _fold_conv(layer: gs.Node, scale: np.ndarray, shift: np.ndarray) -> bool:
    w = const_value(layer.inputs[1])
    column = (1,) * (w.ndim - 1)
    new_w = _rescaled(w, lambda i, j: scale[i:j].reshape((-1,) + column))
    _set_weights(layer, new_w, _bias(layer, w.shape[0]) * scale + shift)
    return True


_BLOCK = 1 << 18  # elements per float64 temporary (2 MiB): big layers go in row blocks


def _rescaled(w: np.ndarray, factor, alpha: float = 1.0) -> np.ndarray:
    """`alpha·(w·factor)` in float64, stored in w's dtype, computed in blocks of rows.

    `factor(i, j)` is the float64 factor broadcasting against rows i:j. Same numbers as the
    whole-array expression, without whole-layer float64 temporaries.
    """
    out = np.empty(w.shape, w.dtype)
    rows = max(1, _BLOCK // max(1, int(np.prod(w.shape[1:]))))
    for i in range(0, len(w), rows):
        block = w[i:i + rows].astype(np.float64) * factor(i, i + rows)
        out[i:i + rows] = alpha * block if alpha != 1.0 else block
    return out


def _fold_conv_transpose(layer: gs.Node, scale: np.ndarray, shift: np.ndarray) -> bool:
    w = const_value(layer.inputs[1]).astype(np.float64)  # [Cin, Cout/group, k...]
    group = layer.attrs.get("group", 1)
    cout_g = w.shape[1]
    grouped = w.reshape((group, w.shape[0] // group, cout_g) + w.shape[2:])
    grouped = grouped * scale.reshape((group, 1, cout_g) + (1,) * (w.ndim - 2))
    _set_weights(layer, grouped.reshape(w.shape), _bias(layer, cout_g * group) * scale + shift)
    return True


def _fold_gemm(layer: gs.Node, scale: np.ndarray, shift: np.ndarray) -> bool:
    if len(layer.outputs[0].shape or ()) != 2 or layer.attrs.get("transA", 0):
        return False
    b = const_value(layer.inputs[1])
    trans_b = layer.attrs.get("transB", 0)
    n = b.shape[0] if trans_b else b.shape[1]
    c = _bias(layer, n)
    if c is None or scale.size != n:
        return False
    alpha, beta = layer.attrs.get("alpha", 1.0), layer.attrs.get("beta", 1.0)
    new_b = _rescaled(b, (lambda i, j: scale[i:j, None]) if trans_b else
                      (lambda i, j: scale[None, :]), alpha)
    layer.attrs.update(alpha=1.0, beta=1.0)
    _set_weights(layer, new_b, beta * c * scale + shift)
    return True


def _bias(layer: gs.Node, n: int) -> np.ndarray | None:
    if len(layer.inputs) < 3 or layer.inputs[2].name == "":
        return np.zeros(n)
    c = const_value(layer.inputs[2])
    if c is None or c.size not in (1, n):
        return None
    return np.broadcast_to(c.astype(np.float64).reshape(-1), (n,))


def _set_weights(layer: gs.Node, w: np.ndarray, b: np.ndarray) -> None:
    # Fresh constants: the old ones may be shared with other nodes.
    dtype = layer.inputs[1].values.dtype
    name = layer.name or layer.outputs[0].name
    new_w = gs.Constant(f"{name}.weight_bnfold", w.astype(dtype, copy=False))
    new_b = gs.Constant(f"{name}.bias_bnfold", b.astype(dtype))
    layer.inputs = [layer.inputs[0], new_w, new_b]


_FOLDERS = {"Conv": _fold_conv, "ConvTranspose": _fold_conv_transpose, "Gemm": _fold_gemm}


def _fold_into(layer: gs.Node, scale: np.ndarray, shift: np.ndarray) -> bool:
    return _FOLDERS[layer.op](layer, scale, shift)


class FoldBatchNorm(RewritePass):
    """Pass: fold BatchNormalization into a neighbouring layer or lower it to a depthwise Conv."""

    rewrite = staticmethod(fold_batchnorm)
