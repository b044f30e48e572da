"""Pooling (§8): QAvgPool, QGlobalAvgPool (also ReduceMean over H, W) and QMaxPool."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core import fixedpoint as fp
from compiler.core.errors import GraphError
from compiler.core.ir import const_value, consumers, static_shape
from compiler.core.numerics import eval_node
from compiler.core.qops.arith import nbytes, pad_nchw, windows
from compiler.core.qops.base import (
    GraphView,
    OpDef,
    OpWork,
    Unit,
    UnitIO,
    act_lo_nonneg,
    elements,
    io_fields,
    out_dtype,
)
from compiler.core.qops.match import bounds, explicit_pads, f64, single, with_activation
from compiler.core.qops.record import INT8_MAX, INT8_MIN, QOp


@dataclass(frozen=True, eq=False)
class QAvgPool(QOp):
    """Padded 2-D window sum, requantized per output position with m0/shift [OH, OW] (§8)."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    m0: np.ndarray
    shift: np.ndarray
    lo: int = INT8_MIN
    hi: int = INT8_MAX


@dataclass(frozen=True, eq=False)
class QGlobalAvgPool(QOp):
    """Sum over H·W, requantized with scalar m0/shift (§8)."""

    m0: int
    shift: int
    lo: int = INT8_MIN
    hi: int = INT8_MAX
    keepdims: bool = True


@dataclass(frozen=True, eq=False)
class QMaxPool(QOp):
    """2-D max pooling on int8 (ONNX semantics); output scale = input scale."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...] = (1, 1)
    ceil_mode: int = 0


# --- matchers -------------------------------------------------------------------------------

def match_avgpool(node: gs.Node, graph: gs.Graph) -> Unit | str:
    """AveragePool 2-D with a static input shape (the divisor map depends on it)."""
    shape = static_shape(node.inputs[0])
    if shape is None or len(shape) != 4:
        return "needs a static 4-D input shape"
    if any(d != 1 for d in node.attrs.get("dilations", [1, 1])):
        return "dilated average pooling"
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return f"auto_pad={node.attrs['auto_pad']}"
    return with_activation(graph, single("avgpool", node))


def match_global_pool(node: gs.Node, graph: gs.Graph) -> Unit | str:
    """GlobalAveragePool, or ReduceMean over axes (2, 3), on a 4-D tensor with static H, W."""
    shape = node.inputs[0].shape
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]):
        return "needs a 4-D input with static spatial size"
    keepdims = True
    if node.op == "ReduceMean":
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1:
            axes = const_value(node.inputs[1])
        if axes is None or sorted(int(a) % 4 for a in np.ravel(axes)) != [2, 3]:
            return "ReduceMean over axes other than (2, 3)"
        keepdims = bool(node.attrs.get("keepdims", 1))
    unit = Unit("gap", [node], [node.inputs[0]], list(node.outputs), {"keepdims": keepdims})
    return with_activation(graph, unit)


def match_maxpool(node: gs.Node, graph: gs.Graph) -> Unit | str:
    """MaxPool 2-D without the indices output."""
    if len([o for o in node.outputs if o.name]) != 1 or consumers(node.outputs[-1]) and \
            len(node.outputs) > 1:
        return "the indices output is used"
    if len(node.attrs.get("kernel_shape", [])) != 2:
        return "only 2-D max pooling"
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return f"auto_pad={node.attrs['auto_pad']}"
    return Unit("maxpool", [node], [node.inputs[0]], [node.outputs[0]])


# --- lowering -------------------------------------------------------------------------------

def pool_geometry(node: gs.Node) -> tuple[list[int], list[int], list[int], list[int]]:
    """(kernel, strides, pads incl. ceil_mode end padding, output spatial size)."""
    shape = static_shape(node.inputs[0])
    kernel = [int(k) for k in node.attrs["kernel_shape"]]
    strides = [int(s) for s in node.attrs.get("strides", [1] * len(kernel))]
    pads = [int(p) for p in node.attrs.get("pads", [0] * 2 * len(kernel))]
    out = list(static_shape(node.outputs[0])[2:])
    for i, size in enumerate(shape[2:]):
        need = (out[i] - 1) * strides[i] + kernel[i] - (size + pads[i] + pads[i + len(kernel)])
        pads[i + len(kernel)] += max(need, 0)
    return kernel, strides, pads, out


def avgpool_counts(node: gs.Node, opset: int) -> np.ndarray:
    """Divisor per output position [OH, OW], as onnxruntime computes it (measured)."""
    shape = static_shape(node.inputs[0])
    ones = np.ones((1, 1) + tuple(shape[2:]), np.float32)
    probe = gs.Node("AveragePool", f"{node.name}__probe", dict(node.attrs),
                    inputs=[gs.Constant(f"{node.name}__ones", ones)],
                    outputs=[gs.Variable(f"{node.name}__avg", dtype=np.float32)])
    avg = np.asarray(eval_node(probe, opset)[0], np.float64)[0, 0]
    kernel, strides, pads, out = pool_geometry(node)
    valid = np.ones(tuple(out), np.float64)
    for axis in range(2):
        start = np.arange(out[axis]) * strides[axis] - pads[axis]
        stop = np.minimum(start + kernel[axis], shape[2 + axis])
        size = np.maximum(stop - np.maximum(start, 0), 0).astype(np.float64)
        valid = valid * (size.reshape(-1, 1) if axis == 0 else size.reshape(1, -1))
    if np.any(avg <= 0):
        raise GraphError(f"node {node.name!r}: average pool window without inputs")
    return np.rint(valid / avg).astype(np.int64)


def lower_avgpool(unit: Unit, io: UnitIO) -> QOp:
    """AveragePool -> QAvgPool with per-position multipliers Sx/(Sy·count)."""
    node = unit.anchor
    kernel, strides, pads, _ = pool_geometry(node)
    counts = avgpool_counts(node, io.opset)
    m = f64(io.in_scales[0]) / (f64(io.out_scale) * counts.astype(np.float64))
    m0, shift = fp.quantize_multipliers(m)
    lo, hi = bounds(unit, io)
    return QAvgPool(**io_fields(io), kernel=kernel, strides=strides, pads=pads, m0=m0,
                    shift=shift, lo=lo, hi=hi)


def lower_gap(unit: Unit, io: UnitIO) -> QOp:
    """GlobalAveragePool / ReduceMean(2,3) -> QGlobalAvgPool."""
    h, w = unit.anchor.inputs[0].shape[2:]
    m = f64(io.in_scales[0]) / (f64(io.out_scale) * f64(int(h) * int(w)))
    peak = -fp.qrange(io.in_dtype(0))[0]
    m0, s = fp.quantize_multiplier(float(m), fp.multiplier_bits(int(h) * int(w) * peak))
    lo, hi = bounds(unit, io)
    return QGlobalAvgPool(**io_fields(io), m0=m0, shift=s, lo=lo, hi=hi,
                          keepdims=unit.params.get("keepdims", True))


def lower_maxpool(unit: Unit, io: UnitIO) -> QOp:
    """MaxPool -> QMaxPool (attributes only)."""
    a = unit.anchor.attrs
    kernel = [int(k) for k in a["kernel_shape"]]
    return QMaxPool(**io_fields(io), kernel=kernel,
                    strides=[int(s) for s in a.get("strides", [1, 1])],
                    pads=explicit_pads(unit.anchor, kernel, list(a.get("strides", [1, 1])),
                                       list(a.get("dilations", [1, 1]))),
                    dilations=[int(d) for d in a.get("dilations", [1, 1])],
                    ceil_mode=int(a.get("ceil_mode", 0)))


# --- reference ------------------------------------------------------------------------------

def run_avgpool(op: QAvgPool, args: list[np.ndarray], graph: GraphView) -> list[np.ndarray]:
    """§8 QAvgPool: zero-padded window sums, per-position multipliers."""
    win = windows(pad_nchw(args[0], op.pads), op.kernel, op.strides, (1, 1), op.m0.shape)
    acc = win.astype(np.int64).sum(axis=(-1, -2))
    return [fp.requantize(acc, op.m0, op.shift, op.lo, op.hi, out_dtype(graph, op))]


def run_gap(op: QGlobalAvgPool, args: list[np.ndarray], graph: GraphView) -> list[np.ndarray]:
    """§8 QGlobalAvgPool."""
    acc = args[0].astype(np.int64).sum(axis=(2, 3), keepdims=op.keepdims)
    return [fp.requantize(acc, op.m0, op.shift, op.lo, op.hi, out_dtype(graph, op))]


def run_maxpool(op: QMaxPool, args: list[np.ndarray], graph: GraphView) -> list[np.ndarray]:
    """§8 QMaxPool: padding never wins (pad value below the input type's minimum)."""
    x = args[0]
    oh, ow = graph.tensor(op.outputs[0]).shape[2:]
    span = [(k - 1) * d + 1 for k, d in zip(op.kernel, op.dilations, strict=True)]
    top, left, bottom, right = op.pads
    bottom = max(bottom, (oh - 1) * op.strides[0] + span[0] - x.shape[2] - top)
    right = max(right, (ow - 1) * op.strides[1] + span[1] - x.shape[3] - left)
    xp = pad_nchw(x.astype(np.int32), (top, left, bottom, right), value=-(1 << 20))
    win = windows(xp, op.kernel, op.strides, op.dilations, (oh, ow))
    return [win.max(axis=(-1, -2)).astype(x.dtype)]


# --- integer ONNX ---------------------------------------------------------------------------

def emit_avgpool(e, op: QAvgPool, ins: list, outs: list) -> None:
    """§8 avg pool: window sums as a depthwise conv with an all-ones kernel.

    In float32 (exact: a window sum of 8-bit values is far below 2^24), else ConvInteger.
    """
    channels = e.qg.tensor(op.inputs[0]).shape[1]
    attrs = {"strides": list(op.strides), "pads": list(op.pads), "group": channels,
             "kernel_shape": list(op.kernel)}
    window = int(np.prod(op.kernel))
    bound = window * fp.max_abs(ins[0].dtype)

    def acc(dtype):
        if bound < fp.FLOAT32_EXACT and np.dtype(ins[0].dtype).itemsize == 1:
            ones = e.scalar(np.ones((channels, 1, *op.kernel)), np.float32)
            return e.cast(e.node("Conv", [e.cast(ins[0], np.float32), ones], dtype=np.float32,
                                 **attrs), dtype)
        ones = e.scalar(np.ones((channels, 1, *op.kernel)), np.int8)
        return e.cast(e.node("ConvInteger", [ins[0], ones], dtype=np.int32, **attrs), dtype)
    e.requant_any(acc, e.array(f"{op.name}::m0"), e.array(f"{op.name}::shift"), op.lo, op.hi,
                  outs[0], bound, op.m0, op.shift)


def emit_gap(e, op: QGlobalAvgPool, ins: list, outs: list) -> None:
    """§8 global pool: ReduceSum in float64 (exact, |sum| < 2^53) or int64."""
    spatial = e.qg.tensor(op.inputs[0]).shape[2:]
    bound = np.inf if any(d < 0 for d in spatial) else \
        int(np.prod(spatial)) * fp.max_abs(ins[0].dtype)  # unknown size: int64
    e.requant_any(lambda dtype: e.node("ReduceSum", [e.cast(ins[0], dtype),
                                                     e.scalar([2, 3], np.int64)],
                                       keepdims=int(op.keepdims)),
                  op.m0, op.shift, op.lo, op.hi, outs[0], bound)


def emit_maxpool(e, op: QMaxPool, ins: list, outs: list) -> None:
    """§8 max pool on int8/uint8; int16 through float32, which holds every int16 exactly."""
    attrs = {"kernel_shape": list(op.kernel), "strides": list(op.strides),
             "pads": list(op.pads), "dilations": list(op.dilations), "ceil_mode": op.ceil_mode}
    x = ins[0]
    if fp.is_wide(x.dtype):  # onnxruntime's MaxPool takes no int16
        pooled = e.node("MaxPool", [e.cast(x, np.float32)], **attrs)
        e.cast_into(pooled, outs[0])
    else:
        e.node("MaxPool", [x], out=outs[0], **attrs)


# --- work -----------------------------------------------------------------------------------

def pool_nonnegative(unit: Unit, io: UnitIO) -> bool:
    """A fused Relu/Clip(a ≥ 0), or the mean of a never-negative input."""
    return act_lo_nonneg(unit) or io.in_nonneg[0]


def window_work(op: QAvgPool | QMaxPool, graph: GraphView) -> OpWork:
    """Each output element reads a kernel window."""
    out = elements(graph, op.outputs)
    return OpWork(0, out * int(np.prod(op.kernel)), nbytes(getattr(op, "m0", None),
                                                           getattr(op, "shift", None)))


def gap_work(op: QGlobalAvgPool, graph: GraphView) -> OpWork:
    """Every input element is summed once."""
    return OpWork(0, elements(graph, op.inputs))


DEFS = (
    OpDef(QAvgPool, "§8", "acc = zero-padded window sum; y = requant(acc, M0[oh, ow], "
          "s[oh, ow], lo, hi)", run_avgpool, emit_avgpool, window_work,
          patterns="AveragePool (2-D, static input shape, no dilation) [+ Relu/Clip]",
          matchers={"AveragePool": match_avgpool}, unit_kinds=("avgpool",),
          lower=lower_avgpool, nonnegative=pool_nonnegative, int16_output=True),
    OpDef(QGlobalAvgPool, "§8", "y = requant(Σ_hw x, M0, s, lo, hi)", run_gap, emit_gap,
          gap_work, patterns="GlobalAveragePool, ReduceMean over axes (2, 3) [+ Relu/Clip]",
          matchers={"GlobalAveragePool": match_global_pool, "ReduceMean": match_global_pool},
          unit_kinds=("gap",), lower=lower_gap, nonnegative=pool_nonnegative,
          int16_input=True, int16_output=True),
    OpDef(QMaxPool, "§8", "y = window max (padding never wins); output scale and type = "
          "input's", run_maxpool, emit_maxpool, window_work,
          patterns="MaxPool (2-D, indices output unused)", matchers={"MaxPool": match_maxpool},
          unit_kinds=("maxpool",), lower=lower_maxpool, scale_preserving=True,
          int16_input=True),
)
