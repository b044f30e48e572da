"""Small graph simplifications: Sum -> Add, drop Identity / inference Dropout, dead nodes."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from compiler.core.ir import Model, bypass, const_value, is_graph_output
from passes.base import RewritePass


def sum_to_add(model: Model) -> int:
    """Rewrite Sum as Add (a chain of Adds for more than two inputs; one input is dropped).

    Returns:
        The number of Sum nodes rewritten.
    """
    graph, count = model.graph, 0
    for node in [n for n in graph.nodes if n.op == "Sum"]:
        if len(node.inputs) == 1:
            count += bypass(graph, node)
            continue
        acc = node.inputs[0]
        for i, term in enumerate(node.inputs[1:-1]):
            out = gs.Variable(f"{node.name}_sum{i}", dtype=node.outputs[0].dtype)
            graph.nodes.append(gs.Node("Add", f"{node.name}_add{i}", inputs=[acc, term],
                                       outputs=[out]))
            acc = out
        node.op, node.inputs = "Add", [acc, node.inputs[-1]]
        count += 1
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return count


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
