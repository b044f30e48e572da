"""QCpuPartition: float nodes the quantizer leaves on the CPU, float tensors in and out (§12).

The integer ONNX emitter inlines the nodes and the numpy reference runs them in
onnxruntime: partitions are float code, outside the fixed-point contract.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from compiler.core.io import INTERNAL_OPSET
from compiler.core.ir import Model
from compiler.core.numerics import run
from compiler.core.qops.arith import nbytes
from compiler.core.qops.base import GraphView, OpDef, OpWork, elements
from compiler.core.qops.record import FloatNode, QOp
from compiler.core.subgraphs import import_subgraph

TensorFn = Callable[[str], gs.Tensor]


@dataclass(frozen=True, eq=False)
class QCpuPartition(QOp):
    """Float nodes run on the CPU, float tensors in and out (§12).

    Attributes:
        nodes: The float nodes in topological order.
        constants: Float model initializers the nodes read, by their original names.
        reasons: Node name -> why it could not be quantized (user-facing).
    """

    nodes: tuple[FloatNode, ...] = ()
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)


def node_attr(node: FloatNode, key: str, value, tensor: TensorFn, opset: int):
    """A FloatNode attribute as graphsurgeon takes it.

    Subgraphs (GraphProto) are imported with their outer-scope names bound to `tensor(name)`.
    """
    if isinstance(value, np.ndarray):
        return gs.Constant(f"{node.name}::{key}", value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, onnx.GraphProto):
        return import_subgraph(value, tensor, opset)
    return value


def partition_nodes(op: QCpuPartition, tensor: TensorFn,
                    opset: int = INTERNAL_OPSET) -> list[gs.Node]:
    """The partition's float nodes; `tensor(name)` supplies (or creates) every tensor."""
    nodes = []
    for fn in op.nodes:
        attrs = {k: node_attr(fn, k, v, tensor, opset) for k, v in fn.attrs.items()}
        nodes.append(gs.Node(fn.op, fn.name, attrs, domain=fn.domain or None,
                             inputs=[tensor(n) if n else gs.Variable.empty() for n in fn.inputs],
                             outputs=[tensor(n) if n else gs.Variable.empty()
                                      for n in fn.outputs]))
    return nodes


def partition_model(op: QCpuPartition, feeds: Mapping[str, np.ndarray],
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

    nodes = partition_nodes(op, tensor, opset)
    outputs = [tensor(n) for n in op.outputs]
    for t in outputs:
        t.dtype = t.dtype or np.float32
    graph = gs.Graph(nodes=nodes, inputs=[tensor(n) for n in op.inputs], outputs=outputs,
                     opset=opset)
    return Model(graph, opset)


def run_partition(op: QCpuPartition, feeds: Mapping[str, np.ndarray],
                  graph: GraphView) -> list[np.ndarray]:
    """Run a partition's float nodes in onnxruntime; outputs in `op.outputs` order."""
    model = partition_model(op, feeds)
    for t in model.graph.outputs:
        t.dtype = np.dtype(graph.tensor(t.name).dtype)
    out = run(model, {n: np.asarray(feeds[n]) for n in op.inputs})  # numpy scalars too
    return [out[n] for n in op.outputs]


def run_cpu_partition(op: QCpuPartition, args: list[np.ndarray],
                      graph: GraphView) -> list[np.ndarray]:
    """§12: the float nodes in onnxruntime."""
    return run_partition(op, dict(zip(op.inputs, args, strict=True)), graph)


def emit_cpu_partition(e, op: QCpuPartition, ins: list, outs: list) -> None:
    """§12: the float nodes, inlined."""
    def tensor(name: str) -> gs.Tensor:
        return e.array(name) if name in op.constants else e.tensor(name)

    e.nodes.extend(partition_nodes(op, tensor))


def cpu_work(op: QCpuPartition, graph: GraphView) -> OpWork:
    """Float work is not counted; the elements crossing the boundary are."""
    return OpWork(0, elements(graph, op.inputs + op.outputs), nbytes(*op.constants.values()))


DEFS = (OpDef(QCpuPartition, "§12", "float ONNX nodes run by the host (not quantizable)",
              run_cpu_partition, emit_cpu_partition, cpu_work),)
