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

from compiler.core.subgraphs import outer_inputs

DATA_DEPENDENT = frozenset({"NonMaxSuppression", "NonZero", "Unique", "Compress", "TopK",
                            "Loop", "Scan", "If"})
"""Ops whose output size may depend on input values (not only on input shapes)."""


def runtime_tensors(graph: gs.Graph) -> dict[str, str]:
    """Tensor name -> the node it got its run-time shape from ("NonZero 'nz'").

    `graph` must be topologically sorted.
    """
    batch = _batch_symbols(graph)
    found: dict[str, str] = {t.name: f"input {t.name!r}" for t in graph.inputs
                             if _unknown(t.shape, batch, suspect=False)}
    for node in graph.nodes:
        origins = [found[t.name] for t in list(node.inputs) + outer_inputs(node)
                   if t.name in found]
        suspect = bool(origins) or node.op in DATA_DEPENDENT
        for t in node.outputs:
            if t.name and _unknown(t.shape, batch, suspect):
                found[t.name] = origins[0] if origins else f"{node.op} {node.name!r}"
    return found


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
