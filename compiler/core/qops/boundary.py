"""QQuantize (§4) and QDequantize (§5): the float/integer boundaries the builder inserts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx.helper import np_dtype_to_tensor_dtype

from compiler.core import fixedpoint as fp
from compiler.core.qops.base import GraphView, OpDef, out_dtype, out_elements
from compiler.core.qops.record import QOp


@dataclass(frozen=True, eq=False)
class QQuantize(QOp):
    """float32 -> int8/uint8: clamp(floor(x ⊗ inv_scale ⊕ 0.5), qmin, qmax) in float32 (§4)."""

    scale: float
    inv_scale: float


@dataclass(frozen=True, eq=False)
class QDequantize(QOp):
    """int8/uint8 -> float32: float32(q) ⊗ scale (§5)."""

    scale: float


def run_quantize(op: QQuantize, args: list[np.ndarray], graph: GraphView) -> list[np.ndarray]:
    """§4."""
    return [fp.quantize_input(args[0], op.inv_scale, out_dtype(graph, op).name)]


def run_dequantize(op: QDequantize, args: list[np.ndarray],
                   graph: GraphView) -> list[np.ndarray]:
    """§5."""
    return [fp.dequantize(args[0], op.scale)]


def emit_quantize(e, op: QQuantize, ins: list, outs: list) -> None:
    """§4; the leading Clip is a fusion barrier (§4: it changes no result)."""
    lo, hi = fp.qrange(outs[0].dtype)
    c_lo, c_hi = fp.quantize_barrier(op.inv_scale, lo, hi)
    v = e.node("Clip", [ins[0], e.scalar(c_lo, np.float32), e.scalar(c_hi, np.float32)])
    v = e.node("Mul", [v, e.scalar(op.inv_scale, np.float32)])
    v = e.node("Floor", [e.node("Add", [v, e.scalar(0.5, np.float32)])])
    v = e.node("Clip", [v, e.scalar(lo, np.float32), e.scalar(hi, np.float32)])
    e.node("Cast", [v], out=outs[0], to=np_dtype_to_tensor_dtype(np.dtype(outs[0].dtype)))


def emit_dequantize(e, op: QDequantize, ins: list, outs: list) -> None:
    """§5; the trailing Clip to the ends of the dequantized range is a fusion barrier (§5)."""
    v = e.node("Mul", [e.cast(ins[0], np.float32), e.scalar(op.scale, np.float32)])
    lo, hi = (fp.dequantize(np.array(b), op.scale) for b in fp.qrange(ins[0].dtype))
    e.node("Clip", [v, e.scalar(lo, np.float32), e.scalar(hi, np.float32)], out=outs[0])


DEFS = (
    OpDef(QQuantize, "§4", "q = clamp(floor(x ⊗ inv_scale ⊕ 0.5), qmin, qmax) in float32",
          run_quantize, emit_quantize, out_elements, int16_output=True),
    OpDef(QDequantize, "§5", "x = float32(q) ⊗ scale", run_dequantize, emit_dequantize,
          out_elements, int16_input=True),
)
