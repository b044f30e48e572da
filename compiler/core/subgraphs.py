"""Subgraph attributes (If branches, Loop and Scan bodies) of float nodes kept on the CPU.

A subgraph may read tensors of the enclosing graphs by name ("outer-scope references").
When such a node moves into a CPU partition, those tensors become partition inputs, and
the names the body reads must follow the partition's renaming (an int8 tensor `t` is read
through its dequantized copy `t__dq`). Constants a body reads are exported inside the
body itself, so a partition never depends on a weight it does not carry.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.importers.onnx_importer import OnnxImporter

from compiler.core.errors import GraphError


def subgraphs(node: gs.Node) -> list[gs.Graph]:
    """The node's graph-valued attributes (If branches, Loop/Scan bodies)."""
    return [v for v in node.attrs.values() if isinstance(v, gs.Graph)]


def outer_inputs(node: gs.Node) -> list[gs.Variable]:
    """Variables the node's subgraphs (at any depth) read from the enclosing scopes."""
    found: dict[str, gs.Variable] = {}
    for graph in subgraphs(node):
        found.update(_foreign(graph))
    return list(found.values())


def _foreign(graph: gs.Graph) -> dict[str, gs.Variable]:
    local = {t.name for t in graph.inputs}
    local |= {t.name for n in graph.nodes for t in n.outputs if t.name}
    found: dict[str, gs.Variable] = {}
    for node in graph.nodes:
        for t in node.inputs:
            if t.name and t.name not in local and isinstance(t, gs.Variable):
                found[t.name] = t
        for inner in subgraphs(node):
            found.update({k: v for k, v in _foreign(inner).items() if k not in local})
    return found


def export_subgraph(graph: gs.Graph, rename: Mapping[str, str]) -> onnx.GraphProto:
    """The subgraph as a `GraphProto`, outer-scope reads renamed by `rename`.

    Value infos of outer tensors are dropped (the enclosing graph declares them).

    Raises:
        GraphError: graphsurgeon cannot export the subgraph.
    """
    outer = set(_foreign(graph))
    try:
        proto = OnnxExporter.export_graph(graph, do_type_check=False)
    except Exception as e:  # graphsurgeon raises several types on a malformed subgraph
        raise GraphError(f"cannot export subgraph {graph.name!r}: {e}") from e
    keep = [v for v in proto.value_info if v.name not in outer]
    del proto.value_info[:]
    proto.value_info.extend(keep)
    rename_reads(proto, {k: v for k, v in rename.items() if k in outer})
    return proto


def rename_reads(graph: onnx.GraphProto, rename: Mapping[str, str]) -> None:
    """Rename the tensors a `GraphProto` (and its nested subgraphs) reads, in place.

    ONNX forbids a subgraph from redefining an outer name, so a plain rename is exact.
    """
    if not rename:
        return
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
        for inner in graph_attrs(node):
            rename_reads(inner, rename)
    for out in graph.output:
        out.name = rename.get(out.name, out.name)


def graph_attrs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The sub-graphs a node holds in its attributes (If branches, Loop/Scan bodies)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def outer_names(graph: onnx.GraphProto) -> list[str]:
    """Names a `GraphProto` (and its nested subgraphs) reads from enclosing scopes."""
    local = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    local |= {t.values.name for t in graph.sparse_initializer}
    local |= {o for n in graph.node for o in n.output if o}
    found: dict[str, None] = {}
    for node in graph.node:
        found.update((i, None) for i in node.input if i and i not in local)
        for inner in graph_attrs(node):
            found.update((i, None) for i in outer_names(inner) if i not in local)
    found.update((o.name, None) for o in graph.output if o.name not in local)
    return list(found)


def import_subgraph(graph: onnx.GraphProto, tensor: Callable[[str], gs.Tensor],
                    opset: int) -> gs.Graph:
    """A `GraphProto` as a graphsurgeon subgraph whose outer reads are `tensor(name)`.

    Binding the outer tensors lets graphsurgeon see the dependency (cleanup keeps their
    producers, toposort orders them first).
    """
    bound = OrderedDict((name, tensor(name)) for name in outer_names(graph))
    try:
        return OnnxImporter.import_graph(graph, tensor_map=bound, opset=opset)
    except Exception as e:  # graphsurgeon raises several types on a malformed subgraph
        raise GraphError(f"cannot import subgraph {graph.name!r}: {e}") from e
