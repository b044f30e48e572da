"""Weights checked at load: a NaN or Inf parameter is a broken model, not something to prune."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.errors import GraphError
from compiler.core.ir import Model

# Ops whose constant inputs are learned parameters the passes rewrite (prune, sparsify,
# quantize). Other constants may hold -inf on purpose (masks, clip bounds, fill values).
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization",
                          "PRelu", "InstanceNormalization", "LayerNormalization"})


def check_weights_finite(model: Model, label: str) -> None:
    """Refuse NaN or Inf in the parameters of weighted layers.

    Raises:
        GraphError: Naming the file, the node and the tensor.
    """
    for node in model.graph.nodes:
        if node.op not in WEIGHTED_OPS:
            continue
        for tensor in node.inputs:
            values = tensor.values if isinstance(tensor, gs.Constant) else None
            if values is None or values.dtype.kind != "f":
                continue
            if not all_finite(np.asarray(values)):
                bad = int(values.size - np.isfinite(np.asarray(values)).sum())
                raise GraphError(f"{label}: node {node.name!r} ({node.op}): {bad} NaN/Inf "
                                 f"value(s) in {tensor.name!r}; the model is broken")


def all_finite(values: np.ndarray, chunk: int = 1 << 20) -> bool:
    """`np.isfinite(values).all()` a chunk at a time: no mask as large as the weight."""
    flat = values.reshape(-1)
    return all(bool(np.isfinite(flat[i:i + chunk]).all()) for i in range(0, flat.size, chunk))
