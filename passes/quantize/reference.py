"""Plain numpy executor of a QGraph, written from docs/fixed-point.md alone.

Each op's kernel is the `reference` of its definition (compiler/core/qops, one module per
op family); it shares nothing with the ONNX emission of the same op except the QGraph data
and the requantization formula of `fixedpoint.py`. CPU partitions run their float nodes in
onnxruntime.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from compiler.core import qgraph as q
from compiler.core.errors import DataError
from compiler.core.qops import op_def

Env = dict[str, np.ndarray]


def _run_op(op: q.QOp, args: list[np.ndarray], graph: q.QGraph) -> list[np.ndarray]:
    return op_def(op.kind).reference(op, args, graph)


def execute(graph: q.QGraph, feeds: Mapping[str, np.ndarray], *,
            keep_all: bool = False) -> Env:
    """Run a QGraph on float feeds.

    Args:
        graph: The quantized graph.
        feeds: Graph input name -> array.
        keep_all: Return every tensor (int8 intermediates included), not just the outputs.

    Returns:
        Tensor name -> value.
    """
    missing = [n for n in graph.inputs if n not in feeds]
    if missing:
        raise DataError(f"reference: missing inputs {missing}")
    env: Env = {n: np.asarray(feeds[n]) for n in graph.inputs}
    env.update({n: t.data for n, t in graph.tensors.items() if t.data is not None})
    for op in graph.ops:
        outs = _run_op(op, [env[n] for n in op.inputs], graph)
        env.update(zip(op.outputs, outs, strict=True))
    return env if keep_all else {n: env[n] for n in graph.outputs}
