"""Tensors whose shape is only known at run time; they, and what reads them, stay on the host.

NonMaxSuppression, NonZero, TopK with a computed k, Loop scan outputs and everything
computed from them have sizes that depend on the data. The NPU works on static shapes, so
these tensors live on the host (float CPU partitions) and every node reading one runs
there too. A shape counts as run-time when shape inference left a dimension unknown, except
a dynamic batch: dimension 0 when the graph inputs have a symbolic batch, unless the tensor
is computed from a run-time tensor or by an op whose output size depends on the data.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.ir import is_const
from compiler.core.subgraphs import outer_inputs
from compiler.core.subgraphs import subgraphs as subgraphs_of

DATA_DEPENDENT = frozenset({"NonMaxSuppression", "NonZero", "Unique", "Compress", "TopK",
                            "Loop", "Scan", "If"})
"""Ops whose output size may depend on input values (not only on input shapes)."""

SIZE_INPUTS = {"Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,),
               "Range": (0, 1, 2), "OneHot": (1,), "Resize": (2, 3), "Slice": (1, 2, 3, 4),
               "Pad": (1,), "Split": (1,), "TopK": (1,)}
"""Inputs whose values set an output size; when one is computed, the size may be data."""


def runtime_tensors(graph: gs.Graph) -> dict[str, str]:
    """Tensor name -> the node it got its run-time shape from ("NonZero 'nz'").

    `graph` must be topologically sorted. With a symbolic batch, an unknown dimension 0 is
    taken for the batch unless the tensor is "tainted": computed by a data-dependent op, by
    an op whose size input is computed from data values (Shape arithmetic on untainted
    tensors does not count: its only unknown is the batch), or from a tainted tensor (the
    Shape of NMS detections feeding a ConstantOfShape).
    """
    batch = _batch_symbols(graph)
    found: dict[str, str] = {t.name: f"input {t.name!r}" for t in graph.inputs
                             if _unknown(t.shape, batch, suspect=False)}
    tainted: dict[str, str] = dict(found)  # values derived from run-time sizes or data
    shapes: set[str] = set()  # values computed from the shapes of untainted tensors
    for node in graph.nodes:
        origins = [tainted[t.name] for t in list(node.inputs) + outer_inputs(node)
                   if t.name in tainted]
        origin = origins[0] if origins else f"{node.op} {node.name!r}"
        if not origins and _shape_arithmetic(node, shapes):
            shapes.update(t.name for t in node.outputs if t.name)
        suspect = bool(origins) or node.op in DATA_DEPENDENT or _data_size(node, shapes)
        for t in node.outputs:
            if t.name and suspect:
                tainted[t.name] = origin
            if t.name and _unknown(t.shape, batch, suspect):
                found[t.name] = origin
    return found


def _shape_arithmetic(node: gs.Node, shapes: set[str]) -> bool:
    """Shape/Size of a tensor, or arithmetic on such values (the batch is the only unknown)."""
    if node.op in ("Shape", "Size"):
        return True
    live = [t for t in node.inputs if t.name and not is_const(t)]
    return bool(live) and not subgraphs_of(node) and all(t.name in shapes for t in live)


def _data_size(node: gs.Node, shapes: set[str]) -> bool:
    """True when a size input of the node is computed from data values (not from shapes)."""
    return any(i < len(node.inputs) and node.inputs[i].name and not is_const(node.inputs[i])
               and node.inputs[i].name not in shapes for i in SIZE_INPUTS.get(node.op, ()))


def _batch_symbols(graph: gs.Graph) -> set | None:
    """Symbols (or None) of the graph inputs' dynamic batch; None when inputs are static."""
    dims = {t.shape[0] for t in graph.inputs if t.shape and not _known(t.shape[0])}
    return dims or None


def _known(dim) -> bool:
    return isinstance(dim, (int, np.integer)) and dim >= 0


def _unknown(shape, batch: set | None, suspect: bool) -> bool:
    """True when `shape` has a dimension that is not known before run time."""
    if shape is None:
        return True
    dims = list(shape)
    if all(_known(d) for d in dims):
        return False
    if any(not _known(d) for d in dims[1:]) or batch is None:
        return True
    return suspect and dims[0] not in batch - {None}
