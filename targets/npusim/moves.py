"""Lowering of `QMove` (integer data movement, docs/fixed-point.md §9) to move instructions.

Reshape, Flatten, Squeeze and Unsqueeze are row-major reinterpretations (`Reshape`);
Transpose keeps its permutation; Slice and each Split output become a normalized `Slice`
(start and step per axis, the count being the output shape); Pad keeps its mode and value.
"""

from __future__ import annotations

from typing import Any

from compiler.core.errors import TargetError
from compiler.core.qgraph import QMove
from targets.npusim import isa

RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
PAD_MODES = {"constant": 0, "edge": 1, "reflect": 2}


def lower_move(ctx: Any, op: QMove, unit: int) -> None:
    """Append the instructions of one QMove to `ctx` (a lowering context)."""
    x = ctx.tensor(op.inputs[0])
    shape = ctx.shape(op.inputs[0])
    if op.op in RESHAPES:
        ctx.emit(isa.Reshape(op.name, unit, x, ctx.tensor(op.outputs[0])))
    elif op.op == "Transpose":
        perm = tuple(op.attrs.get("perm") or reversed(range(len(shape))))
        ctx.emit(isa.Transpose(op.name, unit, x, ctx.tensor(op.outputs[0]), perm))
    elif op.op == "Slice":
        starts, steps = _slice(op, shape, ctx.shape(op.outputs[0]))
        ctx.emit(isa.Slice(op.name, unit, x, ctx.tensor(op.outputs[0]), starts, steps))
    elif op.op == "Split":
        _split(ctx, op, unit, x, shape)
    elif op.op == "Pad":
        ctx.emit(_pad(op, unit, x, ctx.tensor(op.outputs[0]), len(shape)))
    else:
        raise TargetError(f"op {op.name!r}: move {op.op!r} has no NPU lowering")


def _slice(op: QMove, shape: tuple[int, ...], out: tuple[int, ...]
           ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    starts, steps = [0] * len(shape), [1] * len(shape)
    attrs = op.attrs
    axes = attrs.get("axes") or range(len(attrs["starts"]))
    step_list = attrs.get("steps") or [1] * len(attrs["starts"])
    for axis, start, end, step in zip(axes, attrs["starts"], attrs["ends"], step_list,
                                      strict=True):
        axis = axis % len(shape)
        begin, _, stride = slice(int(start), int(end), int(step)).indices(shape[axis])
        starts[axis], steps[axis] = begin, stride
        count = len(range(*slice(int(start), int(end), int(step)).indices(shape[axis])))
        if count != out[axis]:
            raise TargetError(f"op {op.name!r}: slice gives {count} elements on axis {axis}, "
                              f"the graph says {out[axis]}")
    return tuple(starts), tuple(steps)


def _split(ctx: Any, op: QMove, unit: int, x: int, shape: tuple[int, ...]) -> None:
    axis = int(op.attrs.get("axis", 0)) % len(shape)
    offset = 0
    for name in op.outputs:
        out = ctx.shape(name)
        starts = tuple(offset if a == axis else 0 for a in range(len(shape)))
        ctx.emit(isa.Slice(f"{op.name}:{name}", unit, x, ctx.tensor(name), starts,
                           (1,) * len(shape)))
        offset += out[axis]
    if offset != shape[axis]:
        raise TargetError(f"op {op.name!r}: split sizes sum to {offset}, axis has {shape[axis]}")


def _pad(op: QMove, unit: int, x: int, y: int, rank: int) -> isa.Pad:
    pads = tuple(int(v) for v in op.attrs["pads"])
    mode = op.attrs.get("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode not in PAD_MODES or len(pads) != 2 * rank or min(pads, default=0) < 0:
        raise TargetError(f"op {op.name!r}: pad mode {mode!r} / pads {pads} not supported")
    return isa.Pad(op.name, unit, x, y, pads, PAD_MODES[mode], int(op.attrs.get("value", 0)))
