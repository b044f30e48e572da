"""CPU partitions: the float nodes of a `QCpuPartition` as a standalone ONNX model.

The binary embeds each partition as serialized ONNX bytes (section CPU); the simulator runs
it with onnxruntime. Inputs and outputs keep the QGraph tensor names, in the order of the
`CpuCall` instruction.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.errors import TargetError
from compiler.core.io import INTERNAL_OPSET, to_proto
from compiler.core.ir import Model
from compiler.core.qgraph import QCpuPartition, QGraph
from compiler.core.qops.cpu_partition import node_attr
from targets.npusim.isa import RUNTIME_DIM


def partition_onnx(op: QCpuPartition, graph: QGraph, shapes: dict[str, tuple[int, ...]],
                   opset: int = INTERNAL_OPSET) -> bytes:
    """Serialized ONNX for one partition (float nodes + their constants)."""
    tensors: dict[str, gs.Tensor] = {}
    for name, value in op.constants.items():
        tensors[name] = gs.Constant(name, np.asarray(value))
    inputs = [_variable(graph, n, shapes, tensors) for n in op.inputs]
    outputs = [_variable(graph, n, shapes, tensors) for n in op.outputs]
    nodes = [_node(n, tensors, opset) for n in op.nodes]
    g = gs.Graph(nodes=nodes, inputs=inputs, outputs=outputs, name=f"cpu_{op.name}",
                 opset=opset)
    try:
        proto = to_proto(Model(g, opset))
    except Exception as e:  # graphsurgeon/onnx raise several types on a bad node
        raise TargetError(f"CPU partition {op.name!r}: cannot export ({e})") from e
    return proto.SerializeToString()


def _variable(graph: QGraph, name: str, shapes: dict[str, tuple[int, ...]],
              tensors: dict[str, gs.Tensor]) -> gs.Variable:
    qt = graph.tensor(name)
    shape = [None if d == RUNTIME_DIM else d for d in shapes[name]]  # symbolic in ONNX
    var = gs.Variable(name, dtype=np.dtype(qt.dtype), shape=shape)
    tensors[name] = var
    return var


def _node(node: Any, tensors: dict[str, gs.Tensor], opset: int) -> gs.Node:
    def tensor(name: str) -> gs.Tensor:
        if name == "":
            return gs.Variable.empty()
        return tensors.setdefault(name, gs.Variable(name))

    attrs = {k: node_attr(node, k, v, tensor, opset) for k, v in node.attrs.items()}
    return gs.Node(node.op, node.name, attrs, [tensor(n) for n in node.inputs],
                   [tensor(n) for n in node.outputs], domain=node.domain or None)
