"""Per-op lowering functions: one QOp -> typed instructions appended to a `Ctx`.

Each function takes (ctx, op, unit) where unit is NPU or CPU (the legalization result); all
integer constants are copied from the QGraph unchanged (docs/fixed-point.md §14).
`optable.py` maps op kinds to these functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compiler.core import fixedpoint as fp
from compiler.core import qgraph as q
from compiler.core.errors import TargetError
from compiler.core.qops import channel_tables
from targets.npusim import isa, weights
from targets.npusim.moves import lower_move
from targets.npusim.partition import partition_onnx


@dataclass
class Ctx:
    """Lowering state: tensor and blob tables, block hints, emitted code."""

    graph: q.QGraph
    hints: dict[str, int]
    tensors: list[dict[str, Any]] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)
    blobs: list[isa.Blob] = field(default_factory=list)
    blocks: dict[int, int] = field(default_factory=dict)
    code: list[isa.Instr] = field(default_factory=list)

    def shape(self, name: str) -> tuple[int, ...]:
        """Static shape of a tensor (a dynamic batch counts as 1).

        A run-time-shaped host tensor keeps `isa.RUNTIME_DIM` for its data-dependent dims.
        """
        qt = self.graph.tensor(name)
        shape = qt.shape
        if qt.runtime_shape and not shape:
            raise TargetError(f"tensor {name!r}: even its rank is unknown before run time; "
                              "the binary needs at least the rank of every host tensor")
        if qt.runtime_shape:
            return tuple(isa.RUNTIME_DIM if d < 0 else d for d in shape)
        if any(d < 0 for d in shape[1:]) or any(not isinstance(d, int) for d in shape):
            raise TargetError(f"tensor {name!r} has a dynamic shape {shape}; the NPU needs "
                              "static shapes (batch may be dynamic)")
        return tuple(1 if (i == 0 and d < 0) else d for i, d in enumerate(shape))

    def tensor(self, name: str) -> int:
        """Tensor-table id of a QGraph tensor (added on first use)."""
        if name not in self.ids:
            qt = self.graph.tensor(name)
            if qt.dtype not in isa.DTYPE_CODES:
                raise TargetError(f"tensor {name!r}: dtype {qt.dtype} has no NPU encoding")
            entry = {"name": name, "shape": self.shape(name), "dtype": qt.dtype,
                     "scale": _scale(qt), "region": "arena", "blob": -1}
            if qt.data is not None:
                entry.update(region="const", blob=self.blob("const", qt.data))
            self.ids[name] = len(self.tensors)
            self.tensors.append(entry)
        return self.ids[name]

    def blob(self, kind: str, array: np.ndarray, hint: int | None = None) -> int:
        """Blob-table id of a new constant (weights may be stored 1xN block-sparse)."""
        array = np.ascontiguousarray(array)
        block = weights.choose_block(array, hint) if kind == "weight" else 0
        if block:
            self.blocks[len(self.blobs)] = block
        self.blobs.append(isa.Blob(kind, array))
        return len(self.blobs) - 1

    def emit(self, ins: isa.Instr) -> None:
        """Append one instruction."""
        self.code.append(ins)


def _params(ctx: Ctx, op: Any) -> dict[str, int]:
    """weights/bias/mult/shift blobs of a Conv or Gemm."""
    return {"weights": _weights(ctx, op),
            "bias": ctx.blob("bias", op.bias.astype(np.int32)),
            "mult": ctx.blob("mult", _int32(op.m0, op.name)),
            "shift": ctx.blob("shift", _shift(op.shift, op.name))}


def _weights(ctx: Ctx, op: Any) -> int:
    """The weight blob: int8 (dense or 1xN block-sparse), or dense int16 (W16, §17)."""
    w = np.asarray(op.weight)
    if w.dtype == np.int16:
        if w.size and int(np.abs(w.astype(np.int64)).max()) > fp.WEIGHT16_MAX:
            raise TargetError(f"op {op.name!r}: 16-bit weight outside ±{fp.WEIGHT16_MAX}")
        return ctx.blob("weight16", w)
    if w.dtype != np.int8:
        raise TargetError(f"op {op.name!r}: weights of type {w.dtype} (int8 or int16 only)")
    return ctx.blob("weight", w, ctx.hints.get(op.name))


def _int32(values: Any, where: str) -> np.ndarray:
    arr = np.asarray(values, np.int64)
    if arr.size and (arr.min() < -(2**31 - 1) or arr.max() > 2**31 - 1):
        raise TargetError(f"op {where!r}: multiplier outside int32")
    return arr.astype(np.int32)


def _shift(values: Any, where: str) -> np.ndarray:
    arr = np.asarray(values, np.int64)
    if arr.size and (arr.min() < 1 or arr.max() > 62):
        raise TargetError(f"op {where!r}: shift outside [1, 62]")
    return arr.astype(np.uint8)


def _io(ctx: Ctx, op: q.QOp) -> dict[str, int]:
    return {"ifm": ctx.tensor(op.inputs[0]), "ofm": ctx.tensor(op.outputs[0])}


def conv(ctx: Ctx, op: q.QConv, unit: int) -> None:
    """QConv -> Conv or DepthwiseConv."""
    cls = isa.DepthwiseConv if op.depthwise else isa.Conv
    ctx.emit(cls(op.name, unit, **_io(ctx, op), **_params(ctx, op), stride=tuple(op.strides),
                 pads=tuple(op.pads), dilation=tuple(op.dilations), group=op.group, lo=op.lo,
                 hi=op.hi))


def gemm(ctx: Ctx, op: q.QGemm, unit: int) -> None:
    """QGemm / QMatMul -> FullyConnected."""
    ctx.emit(isa.FullyConnected(op.name, unit, **_io(ctx, op), **_params(ctx, op), lo=op.lo,
                                hi=op.hi))


def binary(ctx: Ctx, op: q.QAdd | q.QMul, unit: int) -> None:
    """QAdd -> Add, QMul -> Mul."""
    a, b = (ctx.tensor(n) for n in op.inputs)
    out = ctx.tensor(op.outputs[0])
    if isinstance(op, q.QAdd):
        ctx.emit(isa.Add(op.name, unit, a, b, out, op.a_mult, op.b_mult, op.shift, op.lo, op.hi))
    else:
        ctx.emit(isa.Mul(op.name, unit, a, b, out, op.m0, op.shift, op.lo, op.hi))


def concat(ctx: Ctx, op: q.QConcat, unit: int) -> None:
    """QConcat -> Concat (axis normalized)."""
    rank = len(ctx.shape(op.outputs[0]))
    ctx.emit(isa.Concat(op.name, unit, tuple(ctx.tensor(n) for n in op.inputs),
                        ctx.tensor(op.outputs[0]), op.axis % rank, tuple(op.m0),
                        tuple(op.shift)))


def avgpool(ctx: Ctx, op: q.QAvgPool, unit: int) -> None:
    """QAvgPool -> AvgPool with per-position multiplier blobs."""
    ctx.emit(isa.AvgPool(op.name, unit, **_io(ctx, op), mult=ctx.blob("mult", _int32(op.m0,
                                                                                   op.name)),
                         shift=ctx.blob("shift", _shift(op.shift, op.name)),
                         kernel=tuple(op.kernel), stride=tuple(op.strides), pads=tuple(op.pads),
                         lo=op.lo, hi=op.hi))


def global_avgpool(ctx: Ctx, op: q.QGlobalAvgPool, unit: int) -> None:
    """QGlobalAvgPool -> GlobalAvgPool."""
    ctx.emit(isa.GlobalAvgPool(op.name, unit, **_io(ctx, op), mult=op.m0, shift=op.shift,
                               lo=op.lo, hi=op.hi))


def maxpool(ctx: Ctx, op: q.QMaxPool, unit: int) -> None:
    """QMaxPool -> MaxPool (ceil_mode padding made explicit)."""
    x, y = ctx.shape(op.inputs[0]), ctx.shape(op.outputs[0])
    pads = list(op.pads)
    for ax in range(2):  # ceil_mode: the extra end padding becomes explicit
        need = (y[2 + ax] - 1) * op.strides[ax] + op.dilations[ax] * (op.kernel[ax] - 1) + 1
        pads[ax + 2] += max(0, need - (x[2 + ax] + pads[ax] + pads[ax + 2]))
    ctx.emit(isa.MaxPool(op.name, unit, **_io(ctx, op), kernel=tuple(op.kernel),
                         stride=tuple(op.strides), pads=tuple(pads),
                         dilation=tuple(op.dilations)))


def resize(ctx: Ctx, op: q.QResizeNearest, unit: int) -> None:
    """QResizeNearest -> Gather with one index blob per resized axis."""
    pairs = [(a, ctx.blob("index", np.asarray(idx, np.int64)))
             for a, idx in enumerate(op.indices) if idx is not None]
    ctx.emit(isa.Gather(op.name, unit, **_io(ctx, op), axes=tuple(a for a, _ in pairs),
                        indices=tuple(b for _, b in pairs)))


def lut(ctx: Ctx, op: q.QLut, unit: int) -> None:
    """QLut -> Lut (the blob stores the 256 entries' bytes: int8 or uint8 like the output)."""
    ctx.emit(isa.Lut(op.name, unit, **_io(ctx, op), table=ctx.blob("lut", _table_bytes(
        op.table, ctx.graph.tensor(op.outputs[0]).dtype))))


def _table_bytes(table: np.ndarray, dtype: str) -> np.ndarray:
    """A table of the output's type as int8 bytes (the blob's storage)."""
    return np.ascontiguousarray(table, np.dtype(dtype)).view(np.int8)


def channel_table(ctx: Ctx, op: q.QOp, unit: int) -> None:
    """Any channelwise op -> ChannelLut with the op's reference tabulated per channel."""
    table = channel_tables(op, ctx.shape(op.inputs[0])[1], ctx.graph.tensor(op.inputs[0]).dtype)
    ctx.emit(isa.ChannelLut(op.name, unit, **_io(ctx, op), table=ctx.blob("lut", _table_bytes(
        table, ctx.graph.tensor(op.outputs[0]).dtype))))


def quantize(ctx: Ctx, op: q.QQuantize, unit: int) -> None:
    """QQuantize -> Quantize."""
    ctx.emit(isa.Quantize(op.name, unit, **_io(ctx, op), inv_scale=float(op.inv_scale)))


def dequantize(ctx: Ctx, op: q.QDequantize, unit: int) -> None:
    """QDequantize -> Dequantize."""
    ctx.emit(isa.Dequantize(op.name, unit, **_io(ctx, op), scale=float(op.scale)))


def cpu_partition(ctx: Ctx, op: q.QCpuPartition, unit: int) -> None:
    """QCpuPartition -> CpuCall with the partition's float ONNX embedded."""
    shapes = {n: ctx.shape(n) for n in op.inputs + op.outputs}
    blob = len(ctx.blobs)
    ctx.blobs.append(isa.Blob("onnx", None, raw=partition_onnx(op, ctx.graph, shapes)))
    ctx.emit(isa.CpuCall(op.name, isa.CPU, blob, tuple(ctx.tensor(n) for n in op.inputs),
                         tuple(ctx.tensor(n) for n in op.outputs)))


def move(ctx: Ctx, op: q.QMove, unit: int) -> None:
    """Data movement (moves.py: one or more move instructions)."""
    lower_move(ctx, op, unit)


def _scale(qt) -> float:
    """A tensor's scale (r = scale · q).

    An 8/16-bit integer tensor of the float model itself (a uint8 image input) has none: it
    stands for its integers, scale 1.
    """
    if qt.scale is None and qt.dtype in ("int8", "uint8", "int16"):
        return 1.0
    return float(qt.scale or 0.0)
