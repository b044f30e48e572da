"""The IR: an onnx-graphsurgeon graph plus the model-level facts passes must carry along.

Passes work on `Model.graph` (graphsurgeon nodes and tensors) and never on protobufs;
`compiler.core.io` converts between the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.errors import GraphError


@dataclass
class Model:
    """A model in the IR.

    Attributes:
        graph: The graphsurgeon graph (nodes, tensors, inputs, outputs).
        opset: Default-domain opset the graph is written in.
        metadata: ONNX `metadata_props`, carried through passes (e.g. 1xN masks).
        source: Path the model was loaded from, if any; saving refuses to overwrite it.
    """

    graph: gs.Graph
    opset: int
    metadata: dict[str, str] = field(default_factory=dict)
    source: str | None = None

    def copy(self) -> Model:
        """Copy the graph so a pass can rewrite it without touching the original.

        Nodes and tensors are copied; constant arrays are shared, not copied (weights are
        most of a model's memory), and frozen read-only in both models: a pass changes a
        weight by giving the node a new constant (copy on write), never in place.
        """
        graph = self.graph.copy()
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Constant) and isinstance(tensor.values, np.ndarray):
                freeze(tensor.values)
        return Model(graph, self.opset, dict(self.metadata), self.source)

    @property
    def nodes(self) -> list[gs.Node]:
        """Nodes in graph order."""
        return self.graph.nodes


def freeze(array: np.ndarray) -> np.ndarray:
    """Make `array` read-only (shared between models: writes must go to a new array)."""
    array.flags.writeable = False
    return array


def release_unused(graph: gs.Graph, tensors: list[gs.Tensor]) -> None:
    """Let go of the values of constants that nothing reads any more.

    A replaced weight would otherwise stay in memory until the graph's reference cycles are
    collected (graphsurgeon tensors and nodes point at each other), so a pass that replaces
    every weight would briefly hold two copies. Arrays another model shares stay alive there.
    """
    for tensor in tensors:
        if isinstance(tensor, gs.Constant) and not tensor.outputs \
                and not is_graph_output(graph, tensor):
            dtype = tensor.dtype if isinstance(tensor.dtype, np.dtype) else np.float32
            tensor.values = np.zeros((0,), dtype=dtype)


def const_value(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of a constant tensor, or None when it is a variable (or absent)."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    return None


def is_const(tensor: gs.Tensor | None) -> bool:
    """True for a constant (initializer) tensor."""
    return isinstance(tensor, gs.Constant)


def producer(tensor: gs.Tensor) -> gs.Node | None:
    """The node producing `tensor`, or None for inputs and constants."""
    return tensor.inputs[0] if tensor.inputs else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    """Nodes reading `tensor`."""
    return list(tensor.outputs)


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    """True when `tensor` is one of the graph outputs."""
    return any(out is tensor for out in graph.outputs)


def static_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    """The tensor's shape when every dimension is a known integer, else None."""
    shape = tensor.shape
    if shape is None or any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        return None
    return tuple(int(d) for d in shape)


def require_shape(tensor: gs.Tensor, node: gs.Node) -> tuple[int, ...]:
    """Like `static_shape` but raises a `GraphError` naming the node when unknown."""
    shape = static_shape(tensor)
    if shape is None:
        raise GraphError(f"node {node.name!r} ({node.op}): shape of {tensor.name!r} is unknown")
    return shape


def replace_uses(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every consumer of `old` (and the graph outputs) read `new` instead."""
    for node in consumers(old):
        node.inputs = [new if t is old else t for t in node.inputs]
    graph.outputs = [new if t is old else t for t in graph.outputs]


def bypass(graph: gs.Graph, node: gs.Node) -> bool:
    """Remove a single-input pass-through node (Identity-like), rewiring its consumers.

    When the node's output is a graph output, the input tensor takes over the output's name
    so the model's interface is unchanged; that is impossible when the input is itself a
    graph input, a constant or another graph output, in which case nothing changes.

    Returns:
        True when the node was removed.
    """
    src, dst = node.inputs[0], node.outputs[0]
    if is_graph_output(graph, dst):
        if is_const(src) or src in graph.inputs or is_graph_output(graph, src):
            return False
        src.name, dst.name = dst.name, src.name + "__bypassed"
    replace_uses(graph, dst, src)
    node.outputs.clear()
    node.inputs.clear()
    return True


def channel_axis_size(tensor: gs.Tensor) -> int | None:
    """Size of axis 1 (NCHW channels), or None when unknown."""
    shape = tensor.shape
    if shape is None or len(shape) < 2 or not isinstance(shape[1], (int, np.integer)):
        return None
    return int(shape[1])
