"""QResizeNearest: nearest Resize/Upsample as per-axis gathers of precomputed indices (§9)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.ir import is_const, static_shape
from compiler.core.numerics import eval_node
from compiler.core.qops.arith import nbytes
from compiler.core.qops.base import GraphView, OpDef, OpWork, Unit, UnitIO, elements, io_fields
from compiler.core.qops.match import single
from compiler.core.qops.record import QOp


@dataclass(frozen=True, eq=False)
class QResizeNearest(QOp):
    """y = x gathered along each axis by `indices[axis]` (None: axis unchanged) (§9)."""

    indices: tuple[np.ndarray | None, ...]


def match_resize(node: gs.Node, graph: gs.Graph) -> Unit | str:
    """Nearest Resize/Upsample with constant scales/sizes and static shapes."""
    if node.attrs.get("mode", "nearest") != "nearest":
        return f"mode={node.attrs.get('mode')} (only nearest is integer data movement)"
    if static_shape(node.inputs[0]) is None or static_shape(node.outputs[0]) is None:
        return "needs static input and output shapes"
    if any(t.name and not is_const(t) for t in node.inputs[1:]):
        return "scales/sizes are not constant"
    return single("resize", node)


def resize_indices(node: gs.Node, opset: int) -> list[np.ndarray | None]:
    """Per-axis source index of every output position, by resizing index ramps."""
    shape = static_shape(node.inputs[0])
    result: list[np.ndarray | None] = []
    for axis, size in enumerate(shape):
        ramp_shape = [1] * len(shape)
        ramp_shape[axis] = size
        ramp = np.broadcast_to(np.arange(size, dtype=np.float32).reshape(ramp_shape), shape)
        probe = gs.Node(node.op, f"{node.name}__probe{axis}", dict(node.attrs),
                        inputs=[gs.Constant(f"{node.name}__ramp{axis}", np.ascontiguousarray(ramp))]
                        + list(node.inputs[1:]),
                        outputs=[gs.Variable(f"{node.name}__idx{axis}", dtype=np.float32)])
        out = np.asarray(eval_node(probe, opset)[0])
        index = tuple(slice(None) if i == axis else 0 for i in range(len(shape)))
        idx = out[index].astype(np.int64)
        result.append(None if np.array_equal(idx, np.arange(size)) else idx)
    return result


def lower_resize(unit: Unit, io: UnitIO) -> QOp:
    """Nearest Resize -> QResizeNearest with gather indices per axis."""
    return QResizeNearest(**io_fields(io), indices=resize_indices(unit.anchor, io.opset))


def run_resize(op: QResizeNearest, args: list[np.ndarray], graph: GraphView) -> list[np.ndarray]:
    """§9 nearest resize as per-axis gathers."""
    x = args[0]
    for axis, idx in enumerate(op.indices):
        if idx is not None:
            x = np.take(x, idx, axis=axis)
    return [x]


def emit_resize(e, op: QResizeNearest, ins: list, outs: list) -> None:
    """§9 resize: one Gather per resized axis."""
    x = ins[0]
    axes = [a for a, idx in enumerate(op.indices) if idx is not None]
    for i, axis in enumerate(axes):
        target = outs[0] if i == len(axes) - 1 else None
        x = e.node("Gather", [x, e.array(f"{op.name}::indices::{axis}")], out=target,
                   dtype=ins[0].dtype, axis=axis)
    if not axes:
        e.node("Identity", [x], out=outs[0])


def resize_work(op: QResizeNearest, graph: GraphView) -> OpWork:
    """One gathered element per output element."""
    return OpWork(0, elements(graph, op.outputs), nbytes(*op.indices))


DEFS = (OpDef(QResizeNearest, "§9", "y = x[idx_0[i0], idx_1[i1], ...] (gathers; scale kept)",
              run_resize, emit_resize, resize_work,
              patterns="Resize, Upsample (mode nearest, constant scales/sizes, static shapes)",
              matchers={"Resize": match_resize, "Upsample": match_resize},
              unit_kinds=("resize",), lower=lower_resize, scale_preserving=True,
              int16_input=True),)
