"""QMove: integer data movement with ONNX semantics; the scale is kept (§9).

Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Slice, Split and Pad with constant operands;
every operand becomes a plain attribute.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core import fixedpoint as fp
from compiler.core.errors import GraphError
from compiler.core.ir import const_value, is_const, static_shape
from compiler.core.qops.base import GraphView, OpDef, OpWork, Unit, UnitIO, elements, io_fields
from compiler.core.qops.record import QOp

MOVE_OPS = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Split", "Pad")


@dataclass(frozen=True, eq=False)
class QMove(QOp):
    """Integer data movement with ONNX semantics; every operand is in `attrs` (§9).

    attrs by op: Reshape {shape}, Flatten {axis}, Transpose {perm}, Squeeze/Unsqueeze {axes},
    Slice {starts, ends, axes, steps}, Split {axis, split}, Pad {pads, mode, value (in the
    input's precision)}.
    """

    op: str
    attrs: dict[str, Any] = field(default_factory=dict)


def match_move(node: gs.Node, graph: gs.Graph) -> Unit | str:
    """Reshape/Flatten/Transpose/Squeeze/Unsqueeze/Slice/Split/Pad with constant operands."""
    if any(t.name and not is_const(t) for t in node.inputs[1:]):
        return "shape/index operands are not constant"
    if node.op == "Pad":
        pads = const_value(node.inputs[1])
        if pads is None or np.any(pads < 0):
            return "negative or missing pads"
        if len(node.inputs) > 3 and node.inputs[3].name:
            return "Pad with explicit axes"
    if node.op == "Reshape" and node.attrs.get("allowzero", 0):
        return "Reshape allowzero=1"
    return Unit("move", [node], [node.inputs[0]], [o for o in node.outputs if o.name])


def _const_ints(t: gs.Tensor | None) -> list[int] | None:
    v = const_value(t) if t is not None and t.name else None
    return None if v is None else [int(x) for x in np.ravel(v)]


def pad_value(node: gs.Node, scale: float, dtype: str = "int8") -> int:
    """The constant of a Pad quantized at the input scale, clamped to `dtype` (§9)."""
    t = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    value = const_value(t) if t is not None else None
    return 0 if value is None else int(fp.quantize_constant(np.ravel(value)[:1], scale,
                                                            dtype)[0])


def move_attrs(node: gs.Node, scale: float, dtype: str = "int8") -> dict:
    """All operands of a data-movement node as plain attributes (ONNX semantics)."""
    ins = list(node.inputs) + [None] * 5
    rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
    if node.op == "Reshape":
        return {"shape": _const_ints(ins[1])}
    if node.op == "Flatten":
        return {"axis": int(node.attrs.get("axis", 1))}
    if node.op == "Transpose":
        return {"perm": [int(p) for p in node.attrs.get("perm", range(rank - 1, -1, -1))]}
    if node.op in ("Squeeze", "Unsqueeze"):
        axes = _const_ints(ins[1]) if ins[1] is not None else None
        return {"axes": axes if axes is not None else node.attrs.get("axes")}
    if node.op == "Slice":
        starts, ends = _const_ints(ins[1]), _const_ints(ins[2])
        axes = _const_ints(ins[3]) or list(range(len(starts)))
        return {"starts": starts, "ends": ends, "axes": axes,
                "steps": _const_ints(ins[4]) or [1] * len(starts)}
    if node.op == "Split":
        return {"axis": int(node.attrs.get("axis", 0)), "split": _split_sizes(node, ins[1])}
    if node.op == "Pad":
        return {"pads": _const_ints(ins[1]), "mode": node.attrs.get("mode", "constant"),
                "value": pad_value(node, scale, dtype)}
    raise GraphError(f"node {node.name!r}: {node.op} is not a data-movement op")


def _split_sizes(node: gs.Node, split: gs.Tensor | None) -> list[int]:
    sizes = _const_ints(split) if split is not None else node.attrs.get("split")
    if sizes:
        return [int(s) for s in sizes]
    shape = static_shape(node.inputs[0])
    n = len([o for o in node.outputs if o.name])
    axis = int(node.attrs.get("axis", 0))
    if shape is None:
        raise GraphError(f"node {node.name!r}: Split sizes need a static input shape")
    dim = shape[axis]
    base = math.ceil(dim / n)
    return [min(base, dim - i * base) for i in range(n)]


def lower_move(unit: Unit, io: UnitIO) -> QOp:
    """Data movement -> QMove."""
    return QMove(**io_fields(io), op=unit.anchor.op,
                 attrs=move_attrs(unit.anchor, io.in_scales[0], io.in_dtype(0)))


def move_signed_input(unit: Unit, io: UnitIO) -> bool:
    """A constant Pad whose value quantizes below 0 needs a signed input (§15)."""
    node = unit.anchor
    return node.op == "Pad" and node.attrs.get("mode", "constant") in ("constant", b"constant") \
        and pad_value(node, io.in_scales[0]) < 0


def _reshape(x: np.ndarray, shape: list[int]) -> np.ndarray:
    target = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(target)


def _slice(x: np.ndarray, a: dict) -> np.ndarray:
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(a["starts"], a["ends"], a["axes"], a["steps"], strict=True):
        index[axis] = slice(start, end, step)
    return x[tuple(index)]


def _pad(x: np.ndarray, a: dict) -> np.ndarray:
    pads = a["pads"]
    half = len(pads) // 2
    widths = [(pads[i], pads[i + half]) for i in range(half)]
    mode = {"constant": "constant", "edge": "edge", "reflect": "reflect"}[a["mode"]]
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=a["value"])
    return np.pad(x, widths, mode=mode)


def _flatten(x: np.ndarray, axis: int) -> np.ndarray:
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)


def _squeeze(x: np.ndarray, axes) -> np.ndarray:
    return np.squeeze(x) if axes is None else np.squeeze(x, axis=tuple(axes))


def _unsqueeze(x: np.ndarray, axes) -> np.ndarray:
    rank = x.ndim + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = np.expand_dims(x, axis)
    return x


MOVES: Mapping[str, Callable[[np.ndarray, dict], np.ndarray | list[np.ndarray]]] = {
    "Reshape": lambda x, a: _reshape(x, a["shape"]),
    "Flatten": lambda x, a: _flatten(x, a["axis"]),
    "Transpose": lambda x, a: x.transpose(a["perm"]),
    "Squeeze": lambda x, a: _squeeze(x, a["axes"]),
    "Unsqueeze": lambda x, a: _unsqueeze(x, a["axes"]),
    "Slice": _slice,
    "Split": lambda x, a: np.split(x, np.cumsum(a["split"])[:-1], axis=a["axis"]),
    "Pad": _pad,
}


def run_move(op: QMove, args: list[np.ndarray], graph: GraphView) -> list[np.ndarray]:
    """§9 data movement with ONNX semantics."""
    out = MOVES[op.op](args[0], op.attrs)
    return [np.ascontiguousarray(o) for o in (out if isinstance(out, list) else [out])]


def emit_move(e, op: QMove, ins: list, outs: list) -> None:
    """§9 data movement."""
    a, x = op.attrs, ins[0]
    ints = lambda v: e.scalar(list(v), np.int64)  # noqa: E731
    if op.op == "Split":
        e.nodes.append(gs.Node("Split", f"{op.name}/Split", {"axis": a["axis"]},
                               inputs=[x, ints(a["split"])], outputs=outs))
    elif op.op == "Pad" and fp.is_wide(x.dtype):  # onnxruntime pads no int16: via int32
        padded = e.node("Pad", [e.cast(x, np.int32), ints(a["pads"]),
                                e.scalar(a["value"], np.int32)], mode=a["mode"])
        e.cast_into(padded, outs[0])
    elif op.op in ("Reshape", "Squeeze", "Unsqueeze", "Slice", "Pad"):
        e.node(op.op, [x] + _operands(e, op, ints), out=outs[0],
               **({"mode": a["mode"]} if op.op == "Pad" else {}))
    elif op.op in ("Flatten", "Transpose"):
        key = "axis" if op.op == "Flatten" else "perm"
        e.node(op.op, [x], out=outs[0], **{key: a[key] if key == "axis" else list(a[key])})
    else:
        raise GraphError(f"emit: unknown move {op.op!r}")


def _operands(e, op: QMove, ints: Callable) -> list:
    a = op.attrs
    if op.op == "Reshape":
        return [ints(a["shape"])]
    if op.op == "Slice":
        return [ints(a[k]) for k in ("starts", "ends", "axes", "steps")]
    if op.op == "Pad":
        return [ints(a["pads"]), e.scalar(a["value"], np.dtype(e.qg.tensor(op.inputs[0]).dtype))]
    return [ints(a["axes"])] if a["axes"] is not None else []


def move_work(op: QMove, graph: GraphView) -> OpWork:
    """One element moved per output element."""
    return OpWork(0, elements(graph, op.outputs))


DEFS = (OpDef(QMove, "§9", "y = x rearranged with ONNX semantics (scale kept); Pad value "
              "quantized", run_move, emit_move, move_work,
              patterns=", ".join(MOVE_OPS) + " (constant shape/index operands)",
              matchers=dict.fromkeys(MOVE_OPS, match_move), unit_kinds=("move",),
              lower=lower_move, scale_preserving=True, signed_input=move_signed_input,
              int16_input=True),)
