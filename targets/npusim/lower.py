"""Lowering: a `QGraph` becomes a `Program` (typed instructions, tensor and blob tables).

Each quantized op kind has one small lowering function (`LOWERINGS`, data); the capability
table decides the execution unit of each op, and `alloc` places every tensor in the arena.
All integer constants are copied from the QGraph unchanged (docs/fixed-point.md §14).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compiler.core import qgraph as q
from compiler.core.errors import TargetError
from targets.npusim import isa, weights
from targets.npusim.alloc import Allocation, allocate, live_ranges
from targets.npusim.capability import legalize
from targets.npusim.partition import partition_onnx


@dataclass
class Lowered:
    """The result of lowering: program plus the build report data."""

    program: isa.Program
    blocks: dict[int, int]
    placement: list[dict[str, str]]
    cpu_partitions: int
    allocation: Allocation


@dataclass
class _Ctx:
    graph: q.QGraph
    hints: dict[str, int]
    tensors: list[dict[str, Any]] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)
    blobs: list[isa.Blob] = field(default_factory=list)
    blocks: dict[int, int] = field(default_factory=dict)
    code: list[isa.Instr] = field(default_factory=list)

    def shape(self, name: str) -> tuple[int, ...]:
        shape = self.graph.tensor(name).shape
        if any(d < 0 for d in shape[1:]) or any(not isinstance(d, int) for d in shape):
            raise TargetError(f"tensor {name!r} has a dynamic shape {shape}; the NPU needs "
                              "static shapes (batch may be dynamic)")
        return tuple(1 if (i == 0 and d < 0) else d for i, d in enumerate(shape))

    def tensor(self, name: str) -> int:
        if name not in self.ids:
            qt = self.graph.tensor(name)
            if qt.dtype not in isa.DTYPE_CODES:
                raise TargetError(f"tensor {name!r}: dtype {qt.dtype} has no NPU encoding")
            entry = {"name": name, "shape": self.shape(name), "dtype": qt.dtype,
                     "scale": float(qt.scale or 0.0), "region": "arena", "blob": -1}
            if qt.data is not None:
                entry.update(region="const", blob=self.blob("const", qt.data))
            self.ids[name] = len(self.tensors)
            self.tensors.append(entry)
        return self.ids[name]

    def blob(self, kind: str, array: np.ndarray, hint: int | None = None) -> int:
        array = np.ascontiguousarray(array)
        block = weights.choose_block(array, hint) if kind == "weight" else 0
        if block:
            self.blocks[len(self.blobs)] = block
        self.blobs.append(isa.Blob(kind, array))
        return len(self.blobs) - 1

    def emit(self, ins: isa.Instr) -> None:
        self.code.append(ins)


def _params(ctx: _Ctx, op: Any) -> dict[str, int]:
    """weights/bias/mult/shift blobs of a Conv or Gemm."""
    return {"weights": ctx.blob("weight", op.weight.astype(np.int8), ctx.hints.get(op.name)),
            "bias": ctx.blob("bias", op.bias.astype(np.int32)),
            "mult": ctx.blob("mult", _int32(op.m0, op.name)),
            "shift": ctx.blob("shift", _shift(op.shift, op.name))}


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


def _io(ctx: _Ctx, op: q.QOp) -> dict[str, int]:
    return {"ifm": ctx.tensor(op.inputs[0]), "ofm": ctx.tensor(op.outputs[0])}


def _conv(ctx: _Ctx, op: q.QConv, unit: int) -> None:
    cls = isa.DepthwiseConv if op.depthwise else isa.Conv
    ctx.emit(cls(op.name, unit, **_io(ctx, op), **_params(ctx, op), stride=tuple(op.strides),
                 pads=tuple(op.pads), dilation=tuple(op.dilations), group=op.group, lo=op.lo,
                 hi=op.hi))


def _gemm(ctx: _Ctx, op: q.QGemm, unit: int) -> None:
    ctx.emit(isa.FullyConnected(op.name, unit, **_io(ctx, op), **_params(ctx, op), lo=op.lo,
                                hi=op.hi))


def _binary(ctx: _Ctx, op: q.QAdd | q.QMul, unit: int) -> None:
    a, b = (ctx.tensor(n) for n in op.inputs)
    out = ctx.tensor(op.outputs[0])
    if isinstance(op, q.QAdd):
        ctx.emit(isa.Add(op.name, unit, a, b, out, op.a_mult, op.b_mult, op.shift, op.lo, op.hi))
    else:
        ctx.emit(isa.Mul(op.name, unit, a, b, out, op.m0, op.shift, op.lo, op.hi))


def _concat(ctx: _Ctx, op: q.QConcat, unit: int) -> None:
    rank = len(ctx.shape(op.outputs[0]))
    ctx.emit(isa.Concat(op.name, unit, tuple(ctx.tensor(n) for n in op.inputs),
                        ctx.tensor(op.outputs[0]), op.axis % rank, tuple(op.m0),
                        tuple(op.shift)))


def _avgpool(ctx: _Ctx, op: q.QAvgPool, unit: int) -> None:
    ctx.emit(isa.AvgPool(op.name, unit, **_io(ctx, op), mult=ctx.blob("mult", _int32(op.m0,
                                                                                   op.name)),
                         shift=ctx.blob("shift", _shift(op.shift, op.name)),
                         kernel=tuple(op.kernel), stride=tuple(op.strides), pads=tuple(op.pads),
                         lo=op.lo, hi=op.hi))


def _global_avgpool(ctx: _Ctx, op: q.QGlobalAvgPool, unit: int) -> None:
    ctx.emit(isa.GlobalAvgPool(op.name, unit, **_io(ctx, op), mult=op.m0, shift=op.shift,
                               lo=op.lo, hi=op.hi))


def _maxpool(ctx: _Ctx, op: q.QMaxPool, unit: int) -> None:
    x, y = ctx.shape(op.inputs[0]), ctx.shape(op.outputs[0])
    pads = list(op.pads)
    for ax in range(2):  # ceil_mode: the extra end padding becomes explicit
        need = (y[2 + ax] - 1) * op.strides[ax] + op.dilations[ax] * (op.kernel[ax] - 1) + 1
        pads[ax + 2] += max(0, need - (x[2 + ax] + pads[ax] + pads[ax + 2]))
    ctx.emit(isa.MaxPool(op.name, unit, **_io(ctx, op), kernel=tuple(op.kernel),
                         stride=tuple(op.strides), pads=tuple(pads),
                         dilation=tuple(op.dilations)))


def _resize(ctx: _Ctx, op: q.QResizeNearest, unit: int) -> None:
    pairs = [(a, ctx.blob("index", np.asarray(idx, np.int64)))
             for a, idx in enumerate(op.indices) if idx is not None]
    ctx.emit(isa.Gather(op.name, unit, **_io(ctx, op), axes=tuple(a for a, _ in pairs),
                        indices=tuple(b for _, b in pairs)))


def _lut(ctx: _Ctx, op: q.QLut, unit: int) -> None:
    ctx.emit(isa.Lut(op.name, unit, **_io(ctx, op), table=ctx.blob("lut", op.table.astype(
        np.int8))))


def _quantize(ctx: _Ctx, op: q.QQuantize, unit: int) -> None:
    ctx.emit(isa.Quantize(op.name, unit, **_io(ctx, op), inv_scale=float(op.inv_scale)))


def _dequantize(ctx: _Ctx, op: q.QDequantize, unit: int) -> None:
    ctx.emit(isa.Dequantize(op.name, unit, **_io(ctx, op), scale=float(op.scale)))


def _cpu_partition(ctx: _Ctx, op: q.QCpuPartition, unit: int) -> None:
    shapes = {n: ctx.shape(n) for n in op.inputs + op.outputs}
    blob = len(ctx.blobs)
    ctx.blobs.append(isa.Blob("onnx", None, raw=partition_onnx(op, ctx.graph, shapes)))
    ctx.emit(isa.CpuCall(op.name, isa.CPU, blob, tuple(ctx.tensor(n) for n in op.inputs),
                         tuple(ctx.tensor(n) for n in op.outputs)))


def _move(ctx: _Ctx, op: q.QMove, unit: int) -> None:
    from targets.npusim.moves import lower_move

    lower_move(ctx, op, unit)


LOWERINGS: dict[str, Callable[[_Ctx, Any, int], None]] = {
    "QConv": _conv, "QGemm": _gemm, "QMatMul": _gemm, "QAdd": _binary, "QMul": _binary,
    "QConcat": _concat, "QAvgPool": _avgpool, "QGlobalAvgPool": _global_avgpool,
    "QMaxPool": _maxpool, "QResizeNearest": _resize, "QLut": _lut, "QQuantize": _quantize,
    "QDequantize": _dequantize, "QCpuPartition": _cpu_partition, "QMove": _move}


def lower(graph: q.QGraph, hints: dict[str, int] | None = None,
          metadata: dict[str, Any] | None = None) -> Lowered:
    """Lower a QGraph; `hints` maps node names to their 1xN block from sparsity metadata."""
    ctx = _Ctx(graph, hints or {})
    for name in graph.inputs:
        ctx.tensor(name)
    placement = []
    for op in graph.ops:
        unit, reason = legalize(op, graph)
        placement.extend(_placement(op, unit, reason))
        if op.kind not in LOWERINGS:
            raise TargetError(f"op {op.name!r}: no lowering for {op.kind}")
        LOWERINGS[op.kind](ctx, op, isa.NPU if unit == "NPU" else isa.CPU)
    program, allocation = _finish(ctx, metadata or {})
    return Lowered(program, ctx.blocks, placement, count_partitions(program.code), allocation)


def _placement(op: q.QOp, unit: str, reason: str) -> list[dict[str, str]]:
    if isinstance(op, q.QCpuPartition):
        return [{"node": n.name, "op": n.op, "unit": "CPU",
                 "reason": op.reasons.get(n.name, reason)} for n in op.nodes]
    return [{"node": op.name, "op": op.kind, "unit": unit, "reason": reason}]


def count_partitions(code: tuple[isa.Instr, ...] | list[isa.Instr]) -> int:
    """Maximal runs of consecutive CPU instructions."""
    runs, previous = 0, isa.NPU
    for ins in code:
        runs += ins.unit == isa.CPU and previous != isa.CPU
        previous = ins.unit
    return runs


def _finish(ctx: _Ctx, metadata: dict[str, Any]) -> tuple[isa.Program, Allocation]:
    inputs = [ctx.tensor(n) for n in ctx.graph.inputs]
    outputs = [ctx.tensor(n) for n in ctx.graph.outputs]
    for t in inputs:
        ctx.tensors[t]["region"] = "input"
    for t in outputs:
        if ctx.tensors[t]["region"] != "arena":
            raise TargetError(f"graph output {ctx.tensors[t]['name']!r} is an input or "
                              "constant; nothing to compute")
        ctx.tensors[t]["region"] = "output"
    pinned = [i for i, t in enumerate(ctx.tensors) if t["region"] == "const"]
    sizes = {i: isa.Tensor(**t, offset=0).nbytes for i, t in enumerate(ctx.tensors)}
    ranges = live_ranges(ctx.code, len(ctx.tensors), inputs, outputs, pinned)
    allocation = allocate(sizes, ranges)
    tensors = tuple(isa.Tensor(**t, offset=allocation.offsets[i])
                    for i, t in enumerate(ctx.tensors))
    meta = {**metadata, "allocation": {"arena_bytes": allocation.arena_size,
                                       "naive_bytes": allocation.naive_bytes,
                                       "peak_live_bytes": allocation.peak_live_bytes}}
    program = isa.Program(tensors, tuple(ctx.blobs), tuple(ctx.code), tuple(inputs),
                          tuple(outputs), allocation.arena_size, meta)
    return program, allocation
