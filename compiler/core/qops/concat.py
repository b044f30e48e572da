"""QConcat: each input requantized to the output scale, then joined (§7)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core import fixedpoint as fp
from compiler.core.ir import is_const
from compiler.core.qops.base import (
    GraphView,
    OpDef,
    Unit,
    UnitIO,
    io_fields,
    out_dtype,
    out_elements,
)
from compiler.core.qops.match import f64
from compiler.core.qops.record import QOp

IDENTITY = (1 << 30, 30)  # (m0, shift) of a multiplier of exactly 1


@dataclass(frozen=True, eq=False)
class QConcat(QOp):
    """Each input requantized to the output scale with its own (m0, shift), then joined (§7)."""

    axis: int
    m0: tuple[int, ...]
    shift: tuple[int, ...]


def match_concat(node: gs.Node, graph: gs.Graph) -> Unit | str:
    """Concat of activations (constant inputs become int8 constants)."""
    if all(is_const(t) for t in node.inputs):
        return "all inputs constant (not folded)"
    return Unit("concat", [node], list(node.inputs), list(node.outputs))


def lower_concat(unit: Unit, io: UnitIO) -> QOp:
    """Concat -> QConcat, one multiplier per input (identity when scales match)."""
    pairs = [fp.quantize_multiplier(float(f64(s) / f64(io.out_scale))) for s in io.in_scales]
    return QConcat(**io_fields(io), axis=int(unit.anchor.attrs.get("axis", 1)),
                   m0=[p[0] for p in pairs], shift=[p[1] for p in pairs])


def run_concat(op: QConcat, args: list[np.ndarray], graph: GraphView) -> list[np.ndarray]:
    """§7 QConcat: each input requantized into the output precision's range."""
    dtype = out_dtype(graph, op)
    lo, hi = fp.qrange(dtype)
    parts = [fp.requantize(x.astype(np.int64), m0, s, lo, hi, dtype)
             for x, m0, s in zip(args, op.m0, op.shift, strict=True)]
    return [np.concatenate(parts, axis=op.axis)]


def emit_concat(e, op: QConcat, ins: list, outs: list) -> None:
    """§7 concat: identity inputs of the output's type pass through, others are requantized."""
    dtype = np.dtype(outs[0].dtype)
    lo, hi = fp.qrange(dtype)
    parts = []
    for x, m0, s in zip(ins, op.m0, op.shift, strict=True):
        if (m0, s) == IDENTITY and np.dtype(x.dtype) == dtype:
            parts.append(x)
        else:
            parts.append(e.requant_any(lambda t, x=x: e.cast(x, t), m0, s, lo, hi,
                                       e.tmp("concat_in", dtype), fp.max_abs(x.dtype)))
    e.node("Concat", parts, out=outs[0], axis=op.axis)


DEFS = (OpDef(QConcat, "§7", "y = concat(requant(x_i, M0_i, s_i)) along axis",
              run_concat, emit_concat, out_elements, patterns="Concat",
              matchers={"Concat": match_concat}, unit_kinds=("concat",), lower=lower_concat,
              nonnegative=lambda unit, io: all(io.in_nonneg), int16_input=True,
              int16_output=True),)
