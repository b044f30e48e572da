"""Re-running ONNX shape inference on an IR model whose rewrites left shapes unknown."""

from __future__ import annotations

import logging

import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from compiler.core.io import to_proto
from compiler.core.ir import Model, static_shape

log = logging.getLogger(__name__)


def refresh_shapes(model: Model) -> int:
    """Fill in the shapes and types of tensors whose shape or type is not fully known.

    Shape inference runs with data propagation on the weightless skeleton of the model,
    so it costs no copy of the weights. Known shapes are never changed.

    Returns:
        The number of tensors whose shape and type became known.
    """
    if all(_known(t) for t in model.graph.tensors().values()):
        return 0
    try:
        inferred = onnx.shape_inference.infer_shapes(to_proto(model, skeleton=True),
                                                     data_prop=True)
    except Exception as e:  # inference raises several exception types; shapes stay unknown
        log.debug("shape inference failed: %s", e)
        return 0
    tensors = model.graph.tensors()
    values = list(inferred.graph.value_info) + list(inferred.graph.output)
    return sum(_update(tensors.get(v.name), v) for v in values)


def _known(tensor: gs.Tensor) -> bool:
    return isinstance(tensor, gs.Constant) or (static_shape(tensor) is not None
                                               and tensor.dtype is not None)


def _update(tensor: gs.Tensor | None, value: onnx.ValueInfoProto) -> bool:
    if tensor is None or _known(tensor) or not value.type.tensor_type.HasField("shape"):
        return False
    if static_shape(tensor) is None:
        tensor.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                        for d in value.type.tensor_type.shape.dim]
    if tensor.dtype is None and value.type.tensor_type.elem_type:
        tensor.dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    return _known(tensor)
