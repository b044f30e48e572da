"""Parameter and MAC counts of an ONNX CNN, comparable with torchvision's published numbers."""

from __future__ import annotations

import numpy as np
import onnx

from compiler.core.errors import GraphError

#: Node inputs that are learnable parameters (BN running mean/var are buffers, not params).
PARAM_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,),
                "BatchNormalization": (1, 2)}


def count_params(model: onnx.ModelProto) -> int:
    """Elements of the initializers used as weights, biases or BN scale/shift."""
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    used: set[str] = set()
    for node in model.graph.node:
        slots = PARAM_INPUTS.get(node.op_type, ())
        used.update(node.input[i] for i in slots if i < len(node.input) and node.input[i])
    return sum(sizes[n] for n in used if n in sizes)


def count_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of the Conv and Gemm nodes (symbolic dims count as 1).

    The model must carry inferred shapes (as `GraphBuilder.build` output does).
    """
    shapes = _shapes(model)
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        if node.output[0] not in shapes or node.input[1] not in weights:
            raise GraphError(f"count_macs: no shape for {node.name or node.output[0]!r}")
        # Conv: every output element costs (Cin/group)*kh*kw; Gemm: every output costs K.
        per_out = np.prod(weights[node.input[1]][1:]) if node.op_type == "Conv" else (
            _gemm_k(node, weights[node.input[1]]))
        total += int(np.prod(shapes[node.output[0]])) * int(per_out)
    return total


def _gemm_k(node: onnx.NodeProto, w_shape: tuple[int, ...]) -> int:
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return w_shape[1] if trans_b else w_shape[0]


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    infos = list(model.graph.value_info) + list(model.graph.output)
    return {v.name: [d.dim_value if d.HasField("dim_value") else 1
                     for d in v.type.tensor_type.shape.dim] for v in infos}

