"""QPRelu: PRelu with a constant per-channel slope, as one requantization per element.

y = requant(x, M0, s) with the multiplier chosen by the sign of x (§7: a product by a
per-channel constant, one rounding). Matched: PRelu whose slope is constant and varies at
most along the channel axis (1). The op is channelwise, so a target without a dedicated
instruction runs it as one 256-entry table per channel (npusim: `channel_lut`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core import fixedpoint as fp
from compiler.core.ir import const_value
from compiler.core.qops.arith import nbytes
from compiler.core.qops.base import GraphView, OpDef, OpWork, Unit, UnitIO, elements, io_fields
from compiler.core.qops.match import f64, single
from compiler.core.qops.record import QOp


@dataclass(frozen=True, eq=False)
class QPRelu(QOp):
    """y = requant(x, pos_m0, pos_shift) if x >= 0 else requant(x, neg_m0[c], neg_shift[c]).

    `pos_m0`/`pos_shift` quantize Sx/Sy; `neg_m0`, `neg_shift` int64 [C] quantize
    |slope[c]|·Sx/Sy, and `neg_m0[c]` carries the sign of slope[c] (0 for a zero slope).
    """

    pos_m0: int
    pos_shift: int
    neg_m0: np.ndarray
    neg_shift: np.ndarray


def channel_slope(node: gs.Node) -> np.ndarray | str:
    """The slope as float64 [C] (C = input axis 1), or why it is not per-channel."""
    slope, shape = const_value(node.inputs[1]), node.inputs[0].shape
    if slope is None:
        return "slope is not constant"
    if shape is None or len(shape) < 2 or not isinstance(shape[1], int):
        return "needs a known channel count (axis 1)"
    rank, channels = len(shape), shape[1]
    dims = (1,) * (rank - slope.ndim) + slope.shape
    if slope.ndim > rank or dims[1] not in (1, channels) or \
            any(d != 1 for i, d in enumerate(dims) if i != 1):
        return f"slope of shape {slope.shape} is not per-channel"
    return np.broadcast_to(slope.reshape(-1).astype(np.float64), (channels,))


def match_prelu(node: gs.Node, graph: gs.Graph) -> Unit | str:
    """PRelu with a constant per-channel (or scalar) slope."""
    slope = channel_slope(node)
    if isinstance(slope, str):
        return slope
    unit = single("prelu", node)
    unit.params["slope"] = slope
    return unit


def lower_prelu(unit: Unit, io: UnitIO) -> QOp:
    """PRelu -> QPRelu: Sx/Sy for x >= 0, slope[c]·Sx/Sy (signed) for x < 0."""
    ratio = f64(io.in_scales[0]) / f64(io.out_scale)
    pos_m0, pos_shift = fp.quantize_multiplier(float(ratio))
    neg = unit.params["slope"] * ratio
    neg_m0, neg_shift = fp.quantize_multipliers(np.abs(neg))
    return QPRelu(**io_fields(io), pos_m0=pos_m0, pos_shift=pos_shift,
                  neg_m0=np.where(neg < 0, -neg_m0, neg_m0), neg_shift=neg_shift)


def _selected(op: QPRelu, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    negative = x < 0
    return (np.where(negative, op.neg_m0.reshape(shape), op.pos_m0),
            np.where(negative, op.neg_shift.reshape(shape), op.pos_shift))


def run_prelu(op: QPRelu, args: list[np.ndarray], graph: GraphView) -> list[np.ndarray]:
    """§7 PRelu: requant(x, M0, s), (M0, s) chosen by the sign of x and its channel."""
    m0, shift = _selected(op, args[0])
    return [fp.requantize(args[0].astype(np.int64), m0, shift)]


def emit_prelu(e, op: QPRelu, ins: list, outs: list) -> None:
    """Less + two Where pick (M0, s) per element; then the §3 requant with tensor shifts."""
    rank = len(e.qg.tensor(op.inputs[0]).shape)
    shape = [1, -1] + [1] * (rank - 2)
    x = e.cast(ins[0], np.int64)
    negative = e.node("Less", [x, e.scalar(0, np.int64)])
    m0 = e.node("Where", [negative, e.channel(f"{op.name}::neg_m0", shape),
                          e.scalar(op.pos_m0, np.int64)])
    shift = e.node("Where", [negative, e.channel(f"{op.name}::neg_shift", shape),
                             e.scalar(op.pos_shift, np.int64)])
    e.requant(x, m0, shift, *fp.qrange(outs[0].dtype), outs[0])


def prelu_work(op: QPRelu, graph: GraphView) -> OpWork:
    """One requantization per output element."""
    return OpWork(0, elements(graph, op.outputs), nbytes(op.neg_m0, op.neg_shift))


DEFS = (OpDef(QPRelu, "§7", "y = requant(x, M0+, s+) if x >= 0 else requant(x, M0-[c], s-[c]) "
              "(M0-[c] signed as slope[c])", run_prelu, emit_prelu, prelu_work,
              patterns="PRelu (constant slope, per channel or scalar)",
              matchers={"PRelu": match_prelu}, unit_kinds=("prelu",), lower=lower_prelu,
              channelwise=True),)
