"""Plain numpy executor of a QGraph, written from docs/fixed-point.md alone.

It shares nothing with the ONNX emitter except the QGraph data and the requantization
formula of `fixedpoint.py`. Integer convolutions run as im2col GEMMs in float64, which is
exact: every product is below 2^14 and every sum below 2^31 < 2^53. Depthwise convolutions
accumulate kernel taps in int64. CPU partitions run their float nodes in onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from compiler.core import fixedpoint as fp
from compiler.core import qgraph as q
from compiler.core.errors import DataError, GraphError
from passes.quantize.cpu import run_partition

Env = dict[str, np.ndarray]


def _pad_nchw(x: np.ndarray, pads: tuple[int, ...], value: int = 0) -> np.ndarray:
    top, left, bottom, right = pads
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def _windows(x: np.ndarray, kernel, strides, dilations, out_hw=None) -> np.ndarray:
    """[N, C, OH, OW, kh, kw] view of a padded input."""
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    win = sliding_window_view(x, span, axis=(2, 3))[..., ::dilations[0], ::dilations[1]]
    win = win[:, :, ::strides[0], ::strides[1]]
    if out_hw is not None:
        win = win[:, :, :out_hw[0], :out_hw[1]]
    return win


CHUNK_ELEMENTS = 1 << 22  # float64 elements per im2col / weight block (32 MiB)


def _gemm_exact(cols: np.ndarray, w: np.ndarray) -> np.ndarray:
    """int64 cols[M, K] @ w[N, K]ᵀ through float64 BLAS in bounded blocks (exact: < 2^53)."""
    out = np.empty((cols.shape[0], w.shape[0]), np.int64)
    rows = max(1, CHUNK_ELEMENTS // max(cols.shape[1], 1))
    wide = max(1, CHUNK_ELEMENTS // max(w.shape[1], 1))
    for j in range(0, w.shape[0], wide):
        wf = w[j:j + wide].astype(np.float64).T
        for i in range(0, cols.shape[0], rows):
            out[i:i + rows, j:j + wide] = cols[i:i + rows].astype(np.float64) @ wf
    return out


def conv_acc(x: np.ndarray, op: q.QConv) -> np.ndarray:
    """int64 accumulator Σ x·w + bias of a (grouped) 2-D convolution."""
    xp = _pad_nchw(x, op.pads)
    cout, cin_g, kh, kw = op.weight.shape
    if op.depthwise:
        return _depthwise_acc(xp, op)
    win = _windows(xp, (kh, kw), op.strides, op.dilations)
    n, _, oh, ow = win.shape[:4]
    acc = np.empty((n, cout, oh, ow), np.int64)
    per = cout // op.group
    for g in range(op.group):
        cols = win[:, g * cin_g:(g + 1) * cin_g].transpose(0, 2, 3, 1, 4, 5)
        w = op.weight[g * per:(g + 1) * per].reshape(per, -1)
        out = _gemm_exact(cols.reshape(n * oh * ow, -1), w)
        acc[:, g * per:(g + 1) * per] = out.reshape(n, oh, ow, per).transpose(0, 3, 1, 2)
    return acc + op.bias.astype(np.int64).reshape(1, -1, 1, 1)


def _depthwise_acc(xp: np.ndarray, op: q.QConv) -> np.ndarray:
    cout, _, kh, kw = op.weight.shape
    x64 = xp.astype(np.int64)
    (sh, sw), (dh, dw) = op.strides, op.dilations
    oh = (xp.shape[2] - (kh - 1) * dh - 1) // sh + 1
    ow = (xp.shape[3] - (kw - 1) * dw - 1) // sw + 1
    acc = np.zeros((xp.shape[0], cout, oh, ow), np.int64)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + (oh - 1) * sh + 1, sh)
            tap = x64[:, :, rows, j * dw:j * dw + (ow - 1) * sw + 1:sw]
            acc += tap * op.weight[:, 0, i, j].astype(np.int64).reshape(1, -1, 1, 1)
    return acc + op.bias.astype(np.int64).reshape(1, -1, 1, 1)


def run_conv(op: q.QConv, x: np.ndarray) -> np.ndarray:
    """§11 QConv."""
    shape = (1, -1, 1, 1)
    return fp.requantize(conv_acc(x, op), op.m0.reshape(shape), op.shift.reshape(shape),
                         op.lo, op.hi)


def run_gemm(op: q.QGemm, x: np.ndarray) -> np.ndarray:
    """§11 QGemm / QMatMul (float64 GEMM is exact here)."""
    acc = _gemm_exact(x.reshape(-1, x.shape[-1]), op.weight).reshape(*x.shape[:-1], -1)
    return fp.requantize(acc + op.bias.astype(np.int64), op.m0, op.shift, op.lo, op.hi)


def run_add(op: q.QAdd, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """§6 QAdd: one rounding of xa·Aa + xb·Ab."""
    acc = a.astype(np.int64) * op.a_mult + b.astype(np.int64) * op.b_mult
    return fp.shift_round(acc, op.shift, op.lo, op.hi)


def run_mul(op: q.QMul, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """§7 QMul."""
    return fp.requantize(a.astype(np.int64) * b.astype(np.int64), op.m0, op.shift, op.lo, op.hi)


def run_concat(op: q.QConcat, *xs: np.ndarray) -> np.ndarray:
    """§7 QConcat."""
    parts = [fp.requantize(x.astype(np.int64), m0, s)
             for x, m0, s in zip(xs, op.m0, op.shift, strict=True)]
    return np.concatenate(parts, axis=op.axis)


def run_avgpool(op: q.QAvgPool, x: np.ndarray) -> np.ndarray:
    """§8 QAvgPool: zero-padded window sums, per-position multipliers."""
    win = _windows(_pad_nchw(x, op.pads), op.kernel, op.strides, (1, 1), op.m0.shape)
    acc = win.astype(np.int64).sum(axis=(-1, -2))
    return fp.requantize(acc, op.m0, op.shift, op.lo, op.hi)


def run_gap(op: q.QGlobalAvgPool, x: np.ndarray) -> np.ndarray:
    """§8 QGlobalAvgPool."""
    acc = x.astype(np.int64).sum(axis=(2, 3), keepdims=op.keepdims)
    return fp.requantize(acc, op.m0, op.shift, op.lo, op.hi)


def run_maxpool(op: q.QMaxPool, x: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:
    """§8 QMaxPool: padding never wins (pad value below -128)."""
    oh, ow = out_shape[2:]
    span = [(k - 1) * d + 1 for k, d in zip(op.kernel, op.dilations, strict=True)]
    top, left, bottom, right = op.pads
    bottom = max(bottom, (oh - 1) * op.strides[0] + span[0] - x.shape[2] - top)
    right = max(right, (ow - 1) * op.strides[1] + span[1] - x.shape[3] - left)
    xp = _pad_nchw(x.astype(np.int16), (top, left, bottom, right), value=-1000)
    win = _windows(xp, op.kernel, op.strides, op.dilations, (oh, ow))
    return win.max(axis=(-1, -2)).astype(np.int8)


def run_resize(op: q.QResizeNearest, x: np.ndarray) -> np.ndarray:
    """§9 nearest resize as per-axis gathers."""
    for axis, idx in enumerate(op.indices):
        if idx is not None:
            x = np.take(x, idx, axis=axis)
    return x


def _reshape(x: np.ndarray, shape: list[int]) -> np.ndarray:
    target = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(target)


def _slice(x: np.ndarray, a: dict) -> np.ndarray:
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(a["starts"], a["ends"], a["axes"], a["steps"], strict=True):
        index[axis] = slice(start, end, step)
    return x[tuple(index)]


def _pad(x: np.ndarray, a: dict) -> np.ndarray:
    pads = a["pads"]
    half = len(pads) // 2
    widths = [(pads[i], pads[i + half]) for i in range(half)]
    mode = {"constant": "constant", "edge": "edge", "reflect": "reflect"}[a["mode"]]
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=a["value"])
    return np.pad(x, widths, mode=mode)


def _flatten(x: np.ndarray, axis: int) -> np.ndarray:
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)


def _squeeze(x: np.ndarray, axes) -> np.ndarray:
    return np.squeeze(x) if axes is None else np.squeeze(x, axis=tuple(axes))


def _unsqueeze(x: np.ndarray, axes) -> np.ndarray:
    rank = x.ndim + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = np.expand_dims(x, axis)
    return x


MOVES: dict[str, Callable[[np.ndarray, dict], np.ndarray | list[np.ndarray]]] = {
    "Reshape": lambda x, a: _reshape(x, a["shape"]),
    "Flatten": lambda x, a: _flatten(x, a["axis"]),
    "Transpose": lambda x, a: x.transpose(a["perm"]),
    "Squeeze": lambda x, a: _squeeze(x, a["axes"]),
    "Unsqueeze": lambda x, a: _unsqueeze(x, a["axes"]),
    "Slice": _slice,
    "Split": lambda x, a: np.split(x, np.cumsum(a["split"])[:-1], axis=a["axis"]),
    "Pad": _pad,
}


def run_move(op: q.QMove, x: np.ndarray) -> list[np.ndarray]:
    """§9 data movement with ONNX semantics."""
    out = MOVES[op.op](x, op.attrs)
    return [np.ascontiguousarray(o) for o in (out if isinstance(out, list) else [out])]


def _run_op(op: q.QOp, args: list[np.ndarray], graph: q.QGraph) -> list[np.ndarray]:
    if isinstance(op, q.QCpuPartition):
        return run_partition(op, dict(zip(op.inputs, args, strict=True)), graph)
    if isinstance(op, q.QMove):
        return run_move(op, args[0])
    if isinstance(op, q.QMaxPool):
        return [run_maxpool(op, args[0], graph.tensor(op.outputs[0]).shape)]
    if isinstance(op, q.QConcat):
        return [run_concat(op, *args)]
    kernel = KERNELS.get(type(op))
    if kernel is None:
        raise GraphError(f"reference: no kernel for {op.kind}")
    return [kernel(op, *args)]


KERNELS: dict[type, Callable[..., np.ndarray]] = {
    q.QConv: run_conv, q.QGemm: run_gemm, q.QMatMul: run_gemm, q.QAdd: run_add,
    q.QMul: run_mul, q.QAvgPool: run_avgpool, q.QGlobalAvgPool: run_gap,
    q.QResizeNearest: run_resize,
    q.QLut: lambda op, x: fp.apply_lut(x, op.table),
    q.QQuantize: lambda op, x: fp.quantize_input(x, op.inv_scale),
    q.QDequantize: lambda op, x: fp.dequantize(x, op.scale),
}


def execute(graph: q.QGraph, feeds: Mapping[str, np.ndarray], *,
            keep_all: bool = False) -> Env:
    """Run a QGraph on float feeds.

    Args:
        graph: The quantized graph.
        feeds: Graph input name -> array.
        keep_all: Return every tensor (int8 intermediates included), not just the outputs.

    Returns:
        Tensor name -> value.
    """
    missing = [n for n in graph.inputs if n not in feeds]
    if missing:
        raise DataError(f"reference: missing inputs {missing}")
    env: Env = {n: np.asarray(feeds[n]) for n in graph.inputs}
    env.update({n: t.data for n, t in graph.tensors.items() if t.data is not None})
    for op in graph.ops:
        outs = _run_op(op, [env[n] for n in op.inputs], graph)
        env.update(zip(op.outputs, outs, strict=True))
    return env if keep_all else {n: env[n] for n in graph.outputs}
