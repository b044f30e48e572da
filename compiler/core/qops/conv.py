"""QConv: 2-D convolution (dense, grouped, depthwise) + bias + per-channel requant (§11)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core import fixedpoint as fp
from compiler.core.ir import const_value, is_const, static_shape
from compiler.core.qops.arith import gemm_exact, nbytes, pad_nchw, windows
from compiler.core.qops.base import (
    GraphView,
    OpDef,
    OpWork,
    Unit,
    UnitIO,
    act_lo_nonneg,
    io_fields,
    out_dtype,
)
from compiler.core.qops.match import bounds, explicit_pads, single, weight_layer, with_activation
from compiler.core.qops.record import QOp


@dataclass(frozen=True, eq=False)
class QConv(QOp):
    """2-D convolution (incl. grouped/depthwise) + bias + per-channel requant (§11).

    `weight` int8 [Cout, Cin/group, kh, kw]; `bias` int32 [Cout]; `m0`, `shift` int64 [Cout];
    `pads` in ONNX order (top, left, bottom, right); `weight_scale` float32 [Cout] (`Sw`,
    needed to export the QDQ model; None in QGraphs written before it was recorded).
    """

    weight: np.ndarray
    bias: np.ndarray
    m0: np.ndarray
    shift: np.ndarray
    lo: int
    hi: int
    strides: tuple[int, ...] = (1, 1)
    pads: tuple[int, ...] = (0, 0, 0, 0)
    dilations: tuple[int, ...] = (1, 1)
    group: int = 1
    weight_scale: np.ndarray | None = None

    @property
    def depthwise(self) -> bool:
        """True when every group has one input and one output channel."""
        return self.group > 1 and self.weight.shape[1] == 1 and self.weight.shape[0] == self.group


def match_conv(node: gs.Node, graph: gs.Graph) -> Unit | str:
    """Conv 2-D with constant weights (any group) + optional Relu/Clip."""
    w = const_value(node.inputs[1])
    if w is None:
        return "weights are not constant"
    if w.ndim != 4:
        return f"only 2-D convolutions run in int8 (weight rank {w.ndim})"
    if len(node.inputs) > 2 and node.inputs[2].name and not is_const(node.inputs[2]):
        return "bias is not constant"
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") and \
            static_shape(node.inputs[0]) is None:
        return "auto_pad needs a static input shape"
    return with_activation(graph, single("conv", node))


def lower_conv(unit: Unit, io: UnitIO) -> QOp:
    """Conv (+ act) -> QConv with per-channel weights, int32 bias and multipliers."""
    node = unit.anchor
    w = const_value(node.inputs[1])
    b = const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    layer = weight_layer(w, b, io, node.name)
    kernel = list(w.shape[2:])
    strides = [int(s) for s in node.attrs.get("strides", [1, 1])]
    dilations = [int(d) for d in node.attrs.get("dilations", [1, 1])]
    lo, hi = bounds(unit, io)
    return QConv(**io_fields(io), **layer, lo=lo, hi=hi, strides=strides,
                 pads=explicit_pads(node, kernel, strides, dilations), dilations=dilations,
                 group=int(node.attrs.get("group", 1)))


def conv_acc(x: np.ndarray, op: QConv) -> np.ndarray:
    """int64 accumulator Σ x·w + bias of a (grouped) 2-D convolution."""
    xp = pad_nchw(x, op.pads)
    cout, cin_g, kh, kw = op.weight.shape
    if op.depthwise:
        return _depthwise_acc(xp, op)
    win = windows(xp, (kh, kw), op.strides, op.dilations)
    n, _, oh, ow = win.shape[:4]
    acc = np.empty((n, cout, oh, ow), np.int64)
    per = cout // op.group
    for g in range(op.group):
        cols = win[:, g * cin_g:(g + 1) * cin_g].transpose(0, 2, 3, 1, 4, 5)
        w = op.weight[g * per:(g + 1) * per].reshape(per, -1)
        out = gemm_exact(cols.reshape(n * oh * ow, -1), w)
        acc[:, g * per:(g + 1) * per] = out.reshape(n, oh, ow, per).transpose(0, 3, 1, 2)
    return acc + op.bias.astype(np.int64).reshape(1, -1, 1, 1)


def _depthwise_acc(xp: np.ndarray, op: QConv) -> np.ndarray:
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


def run_conv(op: QConv, args: list[np.ndarray], graph: GraphView) -> list[np.ndarray]:
    """§11 QConv."""
    shape = (1, -1, 1, 1)
    return [fp.requantize(conv_acc(args[0], op), op.m0.reshape(shape), op.shift.reshape(shape),
                          op.lo, op.hi, out_dtype(graph, op))]


def emit_conv(e, op: QConv, ins: list, outs: list) -> None:
    """§11 conv: exact float32 Conv(s) over input-channel ranges, or ConvInteger; requant."""
    attrs = {"strides": list(op.strides), "pads": list(op.pads),
             "dilations": list(op.dilations), "group": op.group,
             "kernel_shape": list(op.weight.shape[2:])}
    cin = op.weight.shape[1] if op.group == 1 else 1

    def conv_float(x: gs.Tensor, k0: int, k1: int, w: gs.Tensor) -> gs.Tensor:
        w = e.as_float(w)
        if (k0, k1) != (0, cin):  # a range of input channels (group 1 only)
            x, w = (e.slice(t, k0, k1, axis=1) for t in (x, w))
        return e.node("Conv", [x, w], dtype=np.float32, **attrs)

    def input_l1(values: np.ndarray) -> np.ndarray:
        taps = np.abs(values.astype(np.int64)).sum(axis=(2, 3))  # [Cout, Cin/group]
        # grouped convs are not split: their input channels differ per output channel
        return taps if op.group == 1 else taps.sum(axis=1, keepdims=True)

    e.weighted_layer(
        op, ins[0], outs[0], e.array(f"{op.name}::weight"),
        lambda x, w: e.node("ConvInteger", [x, w], dtype=np.int32, **attrs), conv_float,
        lambda key: e.channel(key, [1, -1, 1, 1]), input_l1)


def qdq_conv(e, op: QConv) -> None:
    """The float Conv reads DequantizeLinear of the int8 weights and int32 bias."""
    node, sw, bias = e.weight_inputs(op)
    node.inputs = [node.inputs[0], e.dq(f"{op.name}_weight", op.weight, sw, 0), bias]


def conv_work(op: QConv, graph: GraphView) -> OpWork:
    """MACs = output positions x Cout x Cin/group x kh x kw."""
    n, _, oh, ow = (max(d, 1) for d in graph.tensor(op.outputs[0]).shape)
    macs = n * oh * ow * int(np.prod(op.weight.shape))
    return OpWork(macs, n * oh * ow * op.weight.shape[0], nbytes(op.weight, op.bias, op.m0,
                                                               op.shift))


DEFS = (OpDef(
    QConv, "§11", "acc = Σ x·W[c] + B[c] (int32; int64 for int16 x, §16); "
    "y = requant(acc, M0[c], s[c], lo, hi)",
    run_conv, emit_conv, conv_work, nonnegative=lambda unit, io: act_lo_nonneg(unit),
    patterns="Conv (2-D, constant weights; any group, "
    "depthwise, dilation, auto_pad) "
    "[+ Relu/Clip]", matchers={"Conv": match_conv}, unit_kinds=("conv",), lower=lower_conv,
    emit_qdq=qdq_conv, int16_input=True, int16_output=True),)
