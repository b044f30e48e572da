"""QAdd (Add/Sub, §6) and QMul (Mul, Div by a constant, §7): broadcasting binary ops."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core import fixedpoint as fp
from compiler.core.ir import const_value, is_const
from compiler.core.qops.base import (
    GraphView,
    OpDef,
    Unit,
    UnitIO,
    act_lo_nonneg,
    io_fields,
    out_dtype,
    out_elements,
)
from compiler.core.qops.match import bounds, f64, with_activation
from compiler.core.qops.record import QOp


@dataclass(frozen=True, eq=False)
class QAdd(QOp):
    """y = clamp((xa·a_mult + xb·b_mult + 2^(shift-1)) >> shift, lo, hi) (§6; Sub: b_mult<0)."""

    a_mult: int
    b_mult: int
    shift: int
    lo: int
    hi: int


@dataclass(frozen=True, eq=False)
class QMul(QOp):
    """y = requant(xa·xb, m0, shift, lo, hi), numpy broadcasting (§7)."""

    m0: int
    shift: int
    lo: int
    hi: int


def match_binary(node: gs.Node, graph: gs.Graph) -> Unit | str:
    """Add/Sub/Mul of activations or with a constant, Div by a constant, + Relu/Clip.

    A Div by a constant becomes a Mul by its reciprocal.
    """
    a, b = node.inputs
    if is_const(a) and is_const(b):
        return "both operands constant (not folded)"
    if node.op == "Div":
        c = const_value(b)
        if c is None or not np.all(np.isfinite(c)) or np.any(c == 0):
            return "Div by a non-constant or zero divisor"
        b = gs.Constant(f"{b.name}__reciprocal",
                        np.asarray(1.0 / c.astype(np.float64), np.float32))
    kind = "add" if node.op in ("Add", "Sub") else "mul"
    unit = Unit(kind, [node], [a, b], list(node.outputs), {"sub": node.op == "Sub"})
    return with_activation(graph, unit)


def lower_add(unit: Unit, io: UnitIO) -> QOp:
    """Add/Sub -> QAdd with signed multipliers sharing one shift."""
    sa, sb = io.in_scales
    ma = f64(sa) / f64(io.out_scale)
    mb = f64(sb) / f64(io.out_scale) * (-1.0 if unit.params.get("sub") else 1.0)
    a, b, s = fp.add_multipliers(float(ma), float(mb))
    lo, hi = bounds(unit, io)
    return QAdd(**io_fields(io), a_mult=a, b_mult=b, shift=s, lo=lo, hi=hi)


def lower_mul(unit: Unit, io: UnitIO) -> QOp:
    """Mul -> QMul: requant of the int product."""
    sa, sb = io.in_scales
    m0, s = fp.quantize_multiplier(float(f64(sa) * f64(sb) / f64(io.out_scale)))
    lo, hi = bounds(unit, io)
    return QMul(**io_fields(io), m0=m0, shift=s, lo=lo, hi=hi)


def run_add(op: QAdd, args: list[np.ndarray], graph: GraphView) -> list[np.ndarray]:
    """§6 QAdd: one rounding of xa·Aa + xb·Ab."""
    a, b = args
    acc = a.astype(np.int64) * op.a_mult + b.astype(np.int64) * op.b_mult
    return [fp.requantize(acc, 1, op.shift, op.lo, op.hi, out_dtype(graph, op))]


def run_mul(op: QMul, args: list[np.ndarray], graph: GraphView) -> list[np.ndarray]:
    """§7 QMul."""
    a, b = args
    return [fp.requantize(a.astype(np.int64) * b.astype(np.int64), op.m0, op.shift, op.lo,
                          op.hi, out_dtype(graph, op))]


def add_nonnegative(unit: Unit, io: UnitIO) -> bool:
    """A fused Relu/Clip(a ≥ 0), or an Add of two never-negative operands."""
    return act_lo_nonneg(unit) or (not unit.params.get("sub") and all(io.in_nonneg))


def mul_nonnegative(unit: Unit, io: UnitIO) -> bool:
    """A fused Relu/Clip(a ≥ 0), or a product of two never-negative operands."""
    return act_lo_nonneg(unit) or all(io.in_nonneg)


def emit_add(e, op: QAdd, ins: list, outs: list) -> None:
    """§6 (float64 where exact: |acc| < 2^53 always, the rounding where proven)."""
    bound = sum(fp.max_abs(x.dtype) * abs(m) for x, m in zip(ins, (op.a_mult, op.b_mult),
                                                            strict=True))

    def acc(dtype):
        a = e.node("Mul", [e.cast(ins[0], dtype), e.scalar(op.a_mult, dtype)])
        b = e.node("Mul", [e.cast(ins[1], dtype), e.scalar(op.b_mult, dtype)])
        return e.node("Add", [a, b])
    e.requant_any(acc, 1, op.shift, op.lo, op.hi, outs[0], bound)


def emit_mul(e, op: QMul, ins: list, outs: list) -> None:
    """§7 mul (float64 where the rounding is proven exact)."""
    bound = fp.max_abs(ins[0].dtype) * fp.max_abs(ins[1].dtype)
    e.requant_any(lambda dtype: e.node("Mul", [e.cast(ins[0], dtype), e.cast(ins[1], dtype)]),
                  op.m0, op.shift, op.lo, op.hi, outs[0], bound)


DEFS = (
    OpDef(QAdd, "§6", "y = clamp((xa·Aa + xb·Ab + 2^(s-1)) >> s, lo, hi); Sub: Ab < 0",
          run_add, emit_add, out_elements,
          patterns="Add, Sub (activations or a constant operand) [+ Relu/Clip]",
          matchers={"Add": match_binary, "Sub": match_binary}, unit_kinds=("add",),
          lower=lower_add, nonnegative=add_nonnegative, int16_input=True, int16_output=True),
    OpDef(QMul, "§7", "y = requant(xa·xb, M0, s, lo, hi)", run_mul, emit_mul, out_elements,
          patterns="Mul (activations or a constant operand), Div by a constant "
          "[+ Relu/Clip]", matchers={"Mul": match_binary, "Div": match_binary},
          unit_kinds=("mul",), lower=lower_mul, nonnegative=mul_nonnegative,
          int16_input=True, int16_output=True),
)
