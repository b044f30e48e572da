"""Small graph simplifications: Sum/Mean -> Add, drop Identity / inference Dropout, dead nodes."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.ir import Model, bypass, const_value, is_graph_output, static_shape
from passes.base import RewritePass


def sum_to_add(model: Model) -> int:
    """Rewrite Sum as a chain of Adds and Mean as that chain times 1/N (one input: dropped).

    Every intermediate of the chain gets its broadcast shape when the inputs' shapes are
    known, so later analyses (dependency groups, costs) see no unknown shape.

    Returns:
        The number of Sum / Mean nodes rewritten.
    """
    graph, count = model.graph, 0
    for node in [n for n in graph.nodes if n.op in ("Sum", "Mean")]:
        if len(node.inputs) == 1:
            count += bypass(graph, node)
            continue
        acc = _add_chain(graph, node, node.inputs[:-1])
        if node.op == "Mean":
            acc = _add_chain(graph, node, [acc, node.inputs[-1]])
            scale = np.asarray(1.0 / len(node.inputs), dtype=node.outputs[0].dtype or np.float32)
            node.op, node.inputs = "Mul", [acc, gs.Constant(f"{node.name}_inv_n", scale)]
        else:
            node.op, node.inputs = "Add", [acc, node.inputs[-1]]
        count += 1
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return count


def _add_chain(graph: gs.Graph, node: gs.Node, terms: list[gs.Tensor]) -> gs.Tensor:
    """Add `terms` left to right with new Add nodes named after `node`; return the result."""
    acc = terms[0]
    for term in terms[1:]:
        i = sum(1 for n in graph.nodes if n.name.startswith(f"{node.name}_add"))
        out = gs.Variable(f"{node.name}_sum{i}", dtype=node.outputs[0].dtype,
                          shape=_broadcast_shape(acc, term))
        graph.nodes.append(gs.Node("Add", f"{node.name}_add{i}", inputs=[acc, term],
                                   outputs=[out]))
        acc = out
    return acc


def _broadcast_shape(a: gs.Tensor, b: gs.Tensor) -> list[int] | None:
    shape_a, shape_b = static_shape(a), static_shape(b)
    if shape_a is None or shape_b is None:
        return None
    return list(np.broadcast_shapes(shape_a, shape_b))


def drop_identities(model: Model) -> int:
    """Remove Identity and inference-mode Dropout nodes.

    Returns:
        The number of nodes removed.
    """
    graph, count = model.graph, 0
    for node in [n for n in graph.nodes if n.op in ("Identity", "Dropout")]:
        if node.op == "Dropout" and not _is_inference_dropout(graph, node):
            continue
        count += bypass(graph, node)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return count


def _is_inference_dropout(graph: gs.Graph, node: gs.Node) -> bool:
    mask_used = len(node.outputs) > 1 and (node.outputs[1].outputs
                                          or is_graph_output(graph, node.outputs[1]))
    if mask_used:
        return False
    if len(node.inputs) > 2 and node.inputs[2].name:
        training = const_value(node.inputs[2])
        return training is not None and not bool(training)
    return True


def remove_dead_nodes(model: Model) -> int:
    """Remove nodes whose outputs reach no graph output.

    Returns:
        The number of nodes removed.
    """
    before = len(model.graph.nodes)
    model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return before - len(model.graph.nodes)


class SumToAdd(RewritePass):
    """Pass: Sum -> Add."""

    rewrite = staticmethod(sum_to_add)


class DropIdentities(RewritePass):
    """Pass: remove Identity and inference-mode Dropout."""

    rewrite = staticmethod(drop_identities)


class RemoveDeadNodes(RewritePass):
    """Pass: remove nodes that do not contribute to any output."""

    rewrite = staticmethod(remove_dead_nodes)
