"""QLut: smooth activations and elementwise regions as one 256-entry table (§10).

Matches unary functions (`LUT_OPS`), x·Sigmoid(x) (SiLU) and x·HardSigmoid(x) as one table;
`passes/quantize/patterns.py` also forms multi-node elementwise regions (regions.py) whose
units carry `params["region"]`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core import fixedpoint as fp
from compiler.core.fixedpoint import LUT_FUNCTIONS
from compiler.core.qops.base import GraphView, OpDef, OpWork, Unit, UnitIO, elements, io_fields
from compiler.core.qops.match import clip_bounds, is_float, single_consumer
from compiler.core.qops.record import QOp
from compiler.core.qops.regions import region_values

LUT_OPS = ("Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Relu", "Clip", "Elu",
           "Softplus", "Softsign", "Abs", "Neg")


@dataclass(frozen=True, eq=False)
class QLut(QOp):
    """y = table[x + offset]; `table` [256] of the output's type; `fn` names the function.

    offset = 128 for an int8 input, 0 for uint8 (§10, §15). An int16 input reads a
    513-knot table, linearly interpolated (§18).
    """

    table: np.ndarray
    fn: str = ""


def match_gated(gate: gs.Node, graph: gs.Graph) -> Unit | None:
    """x·Sigmoid(x) (SiLU) or x·HardSigmoid(x) as one table, matched at the gate node."""
    x, gate_t = gate.inputs[0], gate.outputs[0]
    mul = single_consumer(graph, gate_t)
    if mul is None or mul.op != "Mul" or not {id(t) for t in mul.inputs} == {id(x), id(gate_t)}:
        return None
    if not is_float(mul.outputs[0]):
        return None
    if gate.op == "Sigmoid":
        return Unit("lut", [gate, mul], [x], list(mul.outputs), {"fn": "SiLU"})
    params = {"alpha": float(gate.attrs.get("alpha", 0.2)),
              "beta": float(gate.attrs.get("beta", 0.5))}
    return Unit("lut", [gate, mul], [x], list(mul.outputs),
                {"fn": "HardSigmoidMul", "fn_params": params})


def _fn_params(node: gs.Node) -> dict[str, float] | str:
    if node.op == "Clip":
        bounds = clip_bounds(node)
        if bounds is None:
            return "Clip bounds are not constant"
        return {k: v for k, v in zip(("lo", "hi"), bounds, strict=True) if v is not None}
    if node.op in ("LeakyRelu", "Elu"):
        return {"alpha": float(node.attrs.get("alpha", 0.01 if node.op == "LeakyRelu" else 1.0))}
    if node.op == "HardSigmoid":
        return {"alpha": float(node.attrs.get("alpha", 0.2)),
                "beta": float(node.attrs.get("beta", 0.5))}
    return {}


def match_lut(node: gs.Node, graph: gs.Graph) -> Unit | str:
    """Elementwise unary functions tabulated in 256 entries."""
    if node.op in ("Sigmoid", "HardSigmoid"):
        gated = match_gated(node, graph)
        if gated is not None:
            return gated
    params = _fn_params(node)
    if isinstance(params, str):
        return params
    if node.op not in LUT_FUNCTIONS:
        return f"no table for {node.op}"
    return Unit("lut", [node], [node.inputs[0]], list(node.outputs),
                {"fn": node.op, "fn_params": params})


def lut_values(unit: Unit, io: UnitIO) -> np.ndarray:
    """F on the 256 real inputs of the table (float64; NaN outside f's domain).

    Cached in the unit: the builder asks for the sign before lowering (a region runs in
    onnxruntime).
    """
    key = (io.in_scales[0], io.in_dtype(0))
    cache = unit.params.setdefault("lut_values", {})
    if key not in cache:
        if unit.params.get("region"):
            cache[key] = region_values(unit.nodes, unit.inputs[0], unit.outputs[0],
                                       io.in_scales[0], io.opset, io.in_dtype(0))
        else:
            cache[key] = fp.lut_values(unit.params["fn"], io.in_scales[0], io.in_dtype(0),
                                       **unit.params.get("fn_params", {}))
    return cache[key]


def lut_nonnegative(unit: Unit, io: UnitIO) -> bool:
    """F ≥ 0 on every table input (Sigmoid, HardSigmoid, Relu, ...): no entry is negative."""
    v = lut_values(unit, io)
    return bool(np.all(np.isnan(v) | (v >= 0)))


def lower_lut(unit: Unit, io: UnitIO) -> QOp:
    """Unary function -> QLut (256-entry table over the input's range, output's type)."""
    table = fp.table_from(lut_values(unit, io), io.out_scale, io.out_dtype)
    return QLut(**io_fields(io), table=table, fn=unit.params["fn"])


def run_lut(op: QLut, args: list[np.ndarray], graph: GraphView) -> list[np.ndarray]:
    """§10 table lookup; §18 interpolated for an int16 input."""
    return [fp.lookup(args[0], op.table)]


def emit_lut(e, op: QLut, ins: list, outs: list) -> None:
    """§10: table[x + offset] via Gather (offset 128 for int8, none for uint8); §18 for int16."""
    if fp.is_wide(ins[0].dtype):
        _emit_lut16(e, op, ins[0], outs[0])
        return
    idx = e.cast(ins[0], np.int64)
    offset = fp.lut_offset(ins[0].dtype)
    if offset:
        idx = e.node("Add", [idx, e.scalar(offset, np.int64)])
    e.node("Gather", [e.array(f"{op.name}::table"), idx], out=outs[0], axis=0)


def _emit_lut16(e, op: QLut, x: gs.Tensor, out: gs.Tensor) -> None:
    """§18 in int32: two Gathers at the knots around `x + 32768` and the rounded blend."""
    step = 1 << fp.LUT16_SHIFT
    u = e.node("Add", [e.cast(x, np.int32), e.scalar(32768, np.int32)])  # [0, 65535]
    frac = e.node("Mod", [u, e.scalar(step, np.int32)], fmod=0)
    i = e.cast(e.node("Div", [e.node("Sub", [u, frac]), e.scalar(step, np.int32)]), np.int64)
    table = e.cast(e.array(f"{op.name}::table"), np.int32)
    t0 = e.node("Gather", [table, i], axis=0)
    t1 = e.node("Gather", [table, e.node("Add", [i, e.scalar(1, np.int64)])], axis=0)
    blend = e.node("Add", [e.node("Mul", [t0, e.scalar(step, np.int32)]),
                           e.node("Mul", [e.node("Sub", [t1, t0]), frac])])
    v = e.node("Add", [blend, e.scalar(step // 2, np.int32)])
    low = e.node("Mod", [v, e.scalar(step, np.int32)], fmod=0)  # floor division, any sign
    y = e.node("Div", [e.node("Sub", [v, low]), e.scalar(step, np.int32)])
    e.cast_into(y, out)


def lut_work(op: QLut, graph: GraphView) -> OpWork:
    """One lookup per output element."""
    return OpWork(0, elements(graph, op.outputs), int(op.table.nbytes))


DEFS = (OpDef(QLut, "§10", "y = table[x + offset] (table of f, 256 entries; offset 128 for int8, "
              "0 for uint8)", run_lut,
              emit_lut, lut_work, patterns=", ".join(LUT_OPS) + "; x·Sigmoid(x), "
              "x·HardSigmoid(x); single-input elementwise regions (e.g. GELU)",
              matchers=dict.fromkeys(LUT_OPS, match_lut), unit_kinds=("lut",),
              lower=lower_lut, channelwise=True, nonnegative=lut_nonnegative,
              int16_input=True, int16_output=True),)
