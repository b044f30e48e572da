"""CPU partitions: float nodes of a QGraph as graphsurgeon nodes, and running them.

Shared by the integer ONNX emitter (which inlines the nodes) and the numpy reference (which
runs them in onnxruntime): partitions are float code, outside the fixed-point contract.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core import qgraph as q
from compiler.core.io import INTERNAL_OPSET
from compiler.core.ir import Model
from compiler.core.numerics import run

TensorFn = Callable[[str], gs.Tensor]


def _attr(node: q.FloatNode, key: str, value):
    if isinstance(value, np.ndarray):
        return gs.Constant(f"{node.name}::{key}", value)
    if isinstance(value, tuple):
        return list(value)
    return value


def partition_nodes(op: q.QCpuPartition, tensor: TensorFn) -> list[gs.Node]:
    """The partition's float nodes; `tensor(name)` supplies (or creates) every tensor."""
    nodes = []
    for fn in op.nodes:
        attrs = {k: _attr(fn, k, v) for k, v in fn.attrs.items()}
        nodes.append(gs.Node(fn.op, fn.name, attrs, domain=fn.domain or None,
                             inputs=[tensor(n) if n else gs.Variable.empty() for n in fn.inputs],
                             outputs=[tensor(n) if n else gs.Variable.empty()
                                      for n in fn.outputs]))
    return nodes


def partition_model(op: q.QCpuPartition, feeds: Mapping[str, np.ndarray],
                    opset: int = INTERNAL_OPSET) -> Model:
    """A standalone float model of one partition (inputs typed from `feeds`)."""
    made: dict[str, gs.Tensor] = {}

    def tensor(name: str) -> gs.Tensor:
        if name not in made:
            if name in op.constants:
                made[name] = gs.Constant(name, op.constants[name])
            elif name in feeds:
                arr = feeds[name]
                made[name] = gs.Variable(name, dtype=arr.dtype, shape=list(arr.shape))
            else:
                made[name] = gs.Variable(name)
        return made[name]

    nodes = partition_nodes(op, tensor)
    outputs = [tensor(n) for n in op.outputs]
    for t in outputs:
        t.dtype = t.dtype or np.float32
    graph = gs.Graph(nodes=nodes, inputs=[tensor(n) for n in op.inputs], outputs=outputs,
                     opset=opset)
    return Model(graph, opset)


def run_partition(op: q.QCpuPartition, feeds: Mapping[str, np.ndarray],
                  graph: q.QGraph) -> list[np.ndarray]:
    """Run a partition's float nodes in onnxruntime; outputs in `op.outputs` order."""
    model = partition_model(op, feeds)
    for t in model.graph.outputs:
        t.dtype = np.dtype(graph.tensor(t.name).dtype)
    out = run(model, {n: feeds[n] for n in op.inputs})
    return [out[n] for n in op.outputs]
