"""Lowering: a `QGraph` becomes a `Program` (typed instructions, tensor and blob tables).

Each quantized op kind has one small lowering function, found in the op table
(`optable.py`, data); the capability view decides the execution unit of each op, and
`alloc` places every tensor in the arena. All integer constants are copied from the QGraph
unchanged (docs/fixed-point.md §14).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compiler.core import qgraph as q
from compiler.core.errors import TargetError
from targets.npusim import isa
from targets.npusim.alloc import Allocation, allocate, live_ranges
from targets.npusim.capability import legalize
from targets.npusim.lowerings import Ctx
from targets.npusim.optable import support


@dataclass
class Lowered:
    """The result of lowering: program plus the build report data."""

    program: isa.Program
    blocks: dict[int, int]
    placement: list[dict[str, str]]
    cpu_partitions: int
    allocation: Allocation


def lower(graph: q.QGraph, hints: dict[str, int] | None = None,
          metadata: dict[str, Any] | None = None) -> Lowered:
    """Lower a QGraph; `hints` maps node names to their 1xN block from sparsity metadata."""
    ctx = Ctx(graph, hints or {})
    for name in graph.inputs:
        ctx.tensor(name)
    placement = []
    for op in graph.ops:
        unit, reason = legalize(op, graph)
        placement.extend(_placement(op, unit, reason))
        rules = support(op.kind)
        if rules is None:
            raise TargetError(f"op {op.name!r}: no lowering for {op.kind}")
        rules.lower(ctx, op, isa.NPU if unit == "NPU" else isa.CPU)
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


def _finish(ctx: Ctx, metadata: dict[str, Any]) -> tuple[isa.Program, Allocation]:
    inputs = [ctx.tensor(n) for n in ctx.graph.inputs]
    outputs = [ctx.tensor(n) for n in ctx.graph.outputs]
    for t in inputs:
        if isa.RUNTIME_DIM in ctx.tensors[t]["shape"]:
            raise TargetError(f"input {ctx.tensors[t]['name']!r} has dimensions unknown at "
                              "build time; bind them with --input-shape")
        ctx.tensors[t]["region"] = "input"
    for t in outputs:
        if ctx.tensors[t]["region"] != "arena":
            raise TargetError(f"graph output {ctx.tensors[t]['name']!r} is an input or "
                              "constant; nothing to compute")
        ctx.tensors[t]["region"] = "output"
    pinned = [i for i, t in enumerate(ctx.tensors) if t["region"] == "const"]
    table = [isa.Tensor(**t, offset=0) for t in ctx.tensors]
    sizes = {i: t.nbytes for i, t in enumerate(table) if not t.runtime}  # host: no arena
    ranges = live_ranges(ctx.code, len(ctx.tensors), inputs, outputs, pinned)
    allocation = allocate(sizes, ranges)
    tensors = tuple(isa.Tensor(**t, offset=allocation.offsets.get(i, 0))
                    for i, t in enumerate(ctx.tensors))
    meta = {**metadata, "allocation": {"arena_bytes": allocation.arena_size,
                                       "naive_bytes": allocation.naive_bytes,
                                       "peak_live_bytes": allocation.peak_live_bytes}}
    program = isa.Program(tensors, tuple(ctx.blobs), tuple(ctx.code), tuple(inputs),
                          tuple(outputs), allocation.arena_size, meta)
    return program, allocation
