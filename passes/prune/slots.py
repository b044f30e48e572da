"""Channel slots and the tracer interface the channel rules call.

A tensor's `Slot` holds one element id per position of its channel axis. The channel axis is
axis 1 where a tensor is produced (Conv, Gemm, graph inputs) and moves with the ops that move
it: a Transpose to NHWC puts it last, a MatMul over a sequence reads it from the last axis,
Squeeze/Unsqueeze/Reduce/Reshape shift it. Inside a channel shuffle it spans two axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.ir import static_shape
from compiler.core.subgraphs import outer_inputs


@dataclass(frozen=True)
class Slot:
    """Channel ids of one tensor.

    Attributes:
        arr: One id per channel position (flattened over `dims`).
        dims: Sizes of the channel axes starting at `axis`: (C,) normally, (G, C/G) inside a
            channel shuffle.
        axis: The tensor axis where the channel axes start (1 for NCHW, 3 for NHWC).
    """

    arr: np.ndarray
    dims: tuple[int, ...]
    axis: int = 1

    @property
    def axes(self) -> range:
        """The tensor axes the channels occupy."""
        return range(self.axis, self.axis + len(self.dims))

    def at(self, axis: int) -> Slot:
        """The same channels on another axis."""
        return Slot(self.arr, self.dims, axis)


def flat(arr: np.ndarray, axis: int = 1) -> Slot:
    """A one-axis slot."""
    return Slot(arr, (len(arr),), axis)


class Tracer:
    """What the rules call; subclasses decide what fresh ids, ties and blocks mean."""

    def __init__(self) -> None:
        self.slots: dict[str, Slot] = {}
        self.opset = 17

    def slot(self, tensor: gs.Tensor) -> Slot | None:
        """The slot of a tensor, or None for constants and non-channel tensors."""
        return self.slots.get(tensor.name) if tensor.name else None

    def set(self, tensor: gs.Tensor, slot: Slot) -> None:
        """Record a tensor's slot."""
        self.slots[tensor.name] = slot

    def fresh(self, tensor: gs.Tensor, n: int) -> np.ndarray:
        """Ids of a producer's output channels."""
        raise NotImplementedError

    def tie(self, a: np.ndarray, b: np.ndarray, node: gs.Node) -> None:
        """Ids at equal positions of `a` and `b` must be removed together."""
        raise NotImplementedError

    def block(self, arr: np.ndarray, reason: str, where: dict | None = None) -> None:
        """The channels in `arr` must not be removed.

        Args:
            arr: The pinned ids.
            reason: The user-facing reason.
            where: What pins them: {"node", "op"} or {"input"} / {"output"} (a graph tensor).
        """

    def cut(self, node: gs.Node, tensor: gs.Tensor, arr: np.ndarray,
            ranges: list[tuple[int, int]]) -> list[np.ndarray]:
        """Split `arr` (the slot of `tensor`) by old position ranges [start, stop)."""
        return [arr[a:b] for a, b in ranges]


def shape_of(tensor: gs.Tensor) -> tuple[int, ...] | None:
    """Static shape with a symbolic batch (axis 0) read as 1; None if another dim is unknown."""
    shape = tensor.shape
    if shape is None:
        return None
    if len(shape) and not isinstance(shape[0], (int, np.integer)):
        shape = [1, *shape[1:]]
    return static_shape(gs.Variable("probe", shape=list(shape)))


def carries_channels(tensor: gs.Tensor) -> bool:
    """Variable float tensors of rank >= 2 have a channel axis (axis 1 where produced)."""
    if isinstance(tensor, gs.Constant) or not tensor.name:
        return False
    shape = tensor.shape
    dtype = np.dtype(tensor.dtype) if tensor.dtype is not None else np.dtype(np.float32)
    return shape is not None and len(shape) >= 2 and dtype.kind == "f"


def describe(node: gs.Node) -> str:
    """`Op node 'name'`, or the first output's name for unnamed nodes."""
    if node.name:
        return f"{node.op} node {node.name!r}"
    out = node.outputs[0].name if node.outputs else "?"
    return f"{node.op} node (output {out!r})"


def blocker(node: gs.Node) -> dict:
    """The `where` of a block by a node: its label and op."""
    return {"node": label(node), "op": node.op}


def label(node: gs.Node) -> str:
    """A short node label for group members: its name, else its first output's name."""
    return node.name or (node.outputs[0].name if node.outputs else node.op)


def unknown(node: gs.Node, tr: Tracer, why: str | None = None) -> None:
    """An op whose channel semantics are unknown: pin its inputs and outputs."""
    reason = f"{describe(node)}: {why or 'channel semantics unknown'}"
    # an If/Loop/Scan body reads enclosing tensors by name, not through node.inputs
    for t in [*node.inputs, *outer_inputs(node)]:
        s = tr.slot(t)
        if s is not None:
            tr.block(s.arr, reason, blocker(node))
    for t in node.outputs:
        if carries_channels(t):
            axis = _guess_axis(node, tr, t)
            n = t.shape[axis] if isinstance(t.shape[axis], (int, np.integer)) else 1
            arr = tr.fresh(t, n)
            tr.set(t, flat(arr, axis))
            tr.block(arr, reason, blocker(node))


def _guess_axis(node: gs.Node, tr: Tracer, out: gs.Tensor) -> int:
    # An unknown op's output of the same rank as a traced input keeps that input's channel
    # axis (a LayerNorm's ReduceMean [N, L, 1] then broadcasts over [N, L, C] downstream).
    for t in node.inputs:
        s = tr.slot(t)
        if s is not None and len(s.dims) == 1 and t.shape is not None \
                and len(t.shape) == len(out.shape):
            return s.axis
    return 1


def channel_input(node: gs.Node, tr: Tracer, axis: int) -> Slot | None:
    """The input's slot when its channels are on `axis` (one axis), else None.

    A slot traced on another axis (a graph input read as NCHW that is really NHWC, an
    unknown op's output) is pinned with the reason: the op reads channels the trace cannot
    follow, but its own outputs can still be fresh.
    """
    x = tr.slot(node.inputs[0])
    if x is None or (x.axis == axis and len(x.dims) == 1):
        return x
    tr.block(x.arr, f"{describe(node)}: reads channels on axis {axis}, traced on axis "
                    f"{x.axis}" + (" as a shuffle" if len(x.dims) > 1 else ""), blocker(node))
    return None


def produce(node: gs.Node, tr: Tracer, n: int, axis: int = 1) -> np.ndarray:
    """Fresh ids for a producer's first output, on `axis`."""
    arr = tr.fresh(node.outputs[0], n)
    tr.set(node.outputs[0], flat(arr, axis))
    return arr
