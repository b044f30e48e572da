"""QGemm / QMatMul: x[..., K] · Wᵀ + bias with per-output-channel requant (§11)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core import fixedpoint as fp
from compiler.core.ir import const_value
from compiler.core.qops.arith import gemm_exact, nbytes
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
from compiler.core.qops.match import (
    bounds,
    single,
    single_consumer,
    weight_layer,
    with_activation,
)
from compiler.core.qops.record import QOp


@dataclass(frozen=True, eq=False)
class QGemm(QOp):
    """x[..., K] · Wᵀ + bias with per-output-channel requant along the last axis (§11).

    `weight` int8 [N, K] (output-channel major); `bias` int32 [N]; `m0`, `shift` int64 [N];
    `weight_scale` float32 [N] (the `Sw` that `m0`/`shift` and the bias were derived from).
    """

    weight: np.ndarray
    bias: np.ndarray
    m0: np.ndarray
    shift: np.ndarray
    lo: int
    hi: int
    weight_scale: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class QMatMul(QGemm):
    """A MatMul with a constant right operand; same arithmetic as `QGemm`."""


def match_gemm(node: gs.Node, graph: gs.Graph) -> Unit | str:
    """Gemm with constant B, transA=0, bias broadcast along N."""
    if node.attrs.get("transA", 0):
        return "transA=1 is not supported"
    b = const_value(node.inputs[1])
    if b is None or b.ndim != 2:
        return "B is not a constant matrix"
    n = b.shape[0] if node.attrs.get("transB", 0) else b.shape[1]
    if len(node.inputs) > 2 and node.inputs[2].name:
        c = const_value(node.inputs[2])
        if c is None or c.size not in (1, n) or (c.ndim == 2 and c.shape[0] != 1):
            return "C is not a constant broadcast along N"
    return with_activation(graph, single("gemm", node))


def match_matmul(node: gs.Node, graph: gs.Graph) -> Unit | str:
    """MatMul with a constant 2-D right operand, + optional constant bias Add, + Relu/Clip."""
    b = const_value(node.inputs[1])
    if b is None:
        return "MatMul of two activations stays float"
    if b.ndim != 2:
        return f"right operand has rank {b.ndim}, need 2"
    unit = single("matmul", node)
    user = single_consumer(graph, node.outputs[0])
    if user is not None and user.op == "Add":
        other = [t for t in user.inputs if t is not node.outputs[0]]
        c = const_value(other[0]) if len(other) == 1 else None
        if c is not None and c.size == b.shape[1] and c.shape[-1] == b.shape[1]:
            unit.nodes.append(user)
            unit.outputs = list(user.outputs)
            unit.params["bias"] = c.reshape(-1)
    return with_activation(graph, unit)


def _gemm_weights(unit: Unit) -> tuple[np.ndarray, np.ndarray | None]:
    # the weight stays in its dtype (quantize_weights widens it block by block): a float64
    # copy of a large FC weight was the memory peak of quantizing big models
    node = unit.anchor
    b = const_value(node.inputs[1])
    if node.op == "MatMul":
        bias = unit.params.get("bias")
        return b.T, None if bias is None else np.asarray(bias, np.float64)
    w = b if node.attrs.get("transB", 0) else b.T
    alpha = float(node.attrs.get("alpha", 1.0))
    if alpha != 1.0:
        w = w.astype(np.float64) * alpha
    c = const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    if c is None:
        return w, None
    bias = np.broadcast_to(np.asarray(c, np.float64).reshape(-1), (w.shape[0],))
    return w, bias * float(node.attrs.get("beta", 1.0))


def lower_gemm(unit: Unit, io: UnitIO) -> QOp:
    """Gemm/MatMul with a constant right operand -> QGemm/QMatMul (weight [N, K])."""
    w, bias = _gemm_weights(unit)
    lo, hi = bounds(unit, io)
    cls = QMatMul if unit.kind == "matmul" else QGemm
    return cls(**io_fields(io), **weight_layer(w, bias, io, unit.anchor.name), lo=lo, hi=hi)


def run_gemm(op: QGemm, args: list[np.ndarray], graph: GraphView) -> list[np.ndarray]:
    """§11 QGemm / QMatMul (float64 GEMM is exact here)."""
    x = args[0]
    acc = gemm_exact(x.reshape(-1, x.shape[-1]), op.weight).reshape(*x.shape[:-1], -1)
    return [fp.requantize(acc + op.bias.astype(np.int64), op.m0, op.shift, op.lo, op.hi,
                          out_dtype(graph, op))]


def emit_gemm(e, op: QGemm, ins: list, outs: list) -> None:
    """§11 gemm: exact float32 MatMul(s) over K ranges, or MatMulInteger; on Wᵀ."""
    def matmul_float(x: gs.Tensor, k0: int, k1: int, w: gs.Tensor) -> gs.Tensor:
        wk = e.as_float(w)
        if (k0, k1) != (0, op.weight.shape[1]):
            x, wk = e.slice(x, k0, k1, axis=-1), e.slice(wk, k0, k1, axis=0)
        return e.node("MatMul", [x, wk], dtype=np.float32)

    w = e.node("Transpose", [e.array(f"{op.name}::weight")], perm=[1, 0])
    e.weighted_layer(op, ins[0], outs[0], w,
                     lambda x, wt: e.node("MatMulInteger", [x, wt], dtype=np.int32),
                     matmul_float, e.array, lambda values: np.abs(values.astype(np.int64)))


def qdq_gemm(e, op: QGemm) -> None:
    """The float Gemm/MatMul reads DequantizeLinear of the int8 weights and int32 bias."""
    node, sw, bias = e.weight_inputs(op)
    if node.op == "Gemm":
        node.inputs = [node.inputs[0], e.dq(f"{op.name}_weight", op.weight, sw, 0), bias]
        node.attrs.update(transB=1, alpha=1.0, beta=1.0)
    else:
        node.inputs[1] = e.dq(f"{op.name}_weight", np.ascontiguousarray(op.weight.T), sw, 1)
        e.matmul_bias(node, bias)


def gemm_work(op: QGemm, graph: GraphView) -> OpWork:
    """MACs = rows x N x K."""
    out = elements(graph, op.outputs)
    return OpWork(out * op.weight.shape[1], out, nbytes(op.weight, op.bias, op.m0, op.shift))


_SUMMARY = ("acc = B[n] + Σ_k x[..., k]·W[n, k] (int32; int64 for int16 x, §16); "
            "y = requant(acc, M0[n], s[n], lo, hi)")
DEFS = (
    OpDef(QGemm, "§11", _SUMMARY, run_gemm, emit_gemm, gemm_work,
          patterns="Gemm (constant B, transA=0, C broadcast along N) [+ Relu/Clip]",
          matchers={"Gemm": match_gemm}, unit_kinds=("gemm",), lower=lower_gemm,
          emit_qdq=qdq_gemm, nonnegative=lambda unit, io: act_lo_nonneg(unit),
          int16_input=True, int16_output=True),
    OpDef(QMatMul, "§11", _SUMMARY, run_gemm, emit_gemm, gemm_work,
          patterns="MatMul (constant 2-D right operand) [+ constant bias Add] [+ Relu/Clip]",
          matchers={"MatMul": match_matmul}, unit_kinds=("matmul",), lower=lower_gemm,
          emit_qdq=qdq_gemm, nonnegative=lambda unit, io: act_lo_nonneg(unit),
          int16_input=True, int16_output=True),
)
