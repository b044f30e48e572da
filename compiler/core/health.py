"""Graph health check run after each pass when `verify_each` is on."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from compiler.core.errors import GraphError
from compiler.core.ir import Model


def check_graph(model: Model, *, onnx_checks: bool = True) -> None:
    """Check edges, topological order and names; optionally the ONNX checker and shapes.

    Raises:
        GraphError: naming the first offending node or tensor.
    """
    graph = model.graph
    available = _check_inputs(graph)
    for node in graph.nodes:
        _check_node(node, available)
        for out in node.outputs:
            if out.name in available:
                raise GraphError(f"tensor {out.name!r} is produced twice (node {node.name!r})")
            available.add(out.name)
    for out in graph.outputs:
        if out.name not in available:
            raise GraphError(f"graph output {out.name!r} is never produced")
    if onnx_checks:
        _check_onnx(model)


def _check_inputs(graph: gs.Graph) -> set[str]:
    available = {t.name for t in graph.inputs}
    if len(available) != len(graph.inputs):
        raise GraphError("duplicate graph input names")
    return available


def _check_node(node: gs.Node, available: set[str]) -> None:
    for t in node.inputs:
        if t.name == "" or isinstance(t, gs.Constant):
            continue
        if t.name not in available:
            raise GraphError(
                f"node {node.name!r} ({node.op}) reads {t.name!r} before it is produced "
                "(broken edge or not topologically sorted)")
        if not any(n is node for n in t.outputs):
            raise GraphError(f"edge {t.name!r} -> {node.name!r} is not linked both ways")
    for t in node.outputs:
        if not any(n is node for n in t.inputs):
            raise GraphError(f"edge {node.name!r} -> {t.name!r} is not linked both ways")


def _check_onnx(model: Model) -> None:
    from compiler.core.io import (
        to_proto,  # io imports the IR; keep the dependency one-way at import
    )

    proto = to_proto(model, skeleton=True)
    try:
        onnx.checker.check_model(proto)
        onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except Exception as e:  # checker and inference raise several exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GraphError(f"graph fails ONNX checks: {first}") from e

