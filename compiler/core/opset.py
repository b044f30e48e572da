"""Opset conversion of exporter output to the internal opset, keeping the float function.

onnx's version converter does most of the work. Around it this module:

* rewrites what the converter refuses: BatchNormalization with `spatial=0` (opsets 7/8,
  per-activation statistics) becomes Mul + Add with folded constants;
* keeps node names (the converter drops them; reports and errors name nodes): they are
  restored by the first output's name, which the converter keeps;
* makes Resize nodes converted from Upsample compute what Upsample computed
  (`asymmetric` coordinates, `floor` nearest rounding) instead of Resize's defaults;
* turns a converter failure into one line naming the node that cannot be converted.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

from compiler.core.downgrade import downgrade
from compiler.core.errors import ModelLoadError

log = logging.getLogger(__name__)


def convert_opset(proto: onnx.ModelProto, label: str, opset: int,
                  target: int) -> onnx.ModelProto:
    """Convert `proto` from `opset` to `target`; see the module docstring.

    Raises:
        ModelLoadError: The converter cannot convert a node (named in the message).
    """
    if proto.ir_version < 4:
        proto.ir_version = 4
    if opset > target:
        # onnx's converter lacks most down-adapters past 17 (see compiler/core/downgrade.py).
        downgrade(proto, label, opset, target)
        return proto
    _rewrite_unconvertible(proto, label)
    names = {n.output[0]: n.name for n in proto.graph.node if n.output}
    upsamples = {n.output[0]: n for n in proto.graph.node if n.op_type == "Upsample"}
    try:
        if opset < 7:
            # The 6 -> 7 adapters (Gemm/Add `broadcast`) need input shapes, which shape
            # inference only gives from opset 6 on (older ops have no inference functions).
            proto = _with_shapes(version_converter.convert_version(proto, 6)
                                 if opset < 6 else proto)
        converted = version_converter.convert_version(proto, target)
    except Exception as e:  # the converter raises bare RuntimeErrors of many kinds
        raise _conversion_error(proto, label, opset, target, e) from e
    _restore_names(converted, names)
    _fix_upsample_resizes(converted, upsamples)
    log.debug("%s: converted opset %d -> %d", label, opset, target)
    return converted


def _with_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(proto)
    except Exception:  # shape inference is a help here, the converter reports real failures
        return proto


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _conversion_error(proto: onnx.ModelProto, label: str, opset: int, target: int,
                      e: Exception) -> ModelLoadError:
    node = failing_node(proto, target)
    where = f"node {node.name!r} ({node.op_type}): " if node is not None else ""
    return ModelLoadError(
        f"{label}: cannot convert opset {opset} to {target}: {where}{_first_line(e)}")


def failing_node(proto: onnx.ModelProto, target: int) -> onnx.NodeProto | None:
    """The first node that the version converter cannot convert on its own, if any."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # diagnosis only: fall back to untyped probes
        inferred = proto
    types = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    inits = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if not _converts_alone(proto, node, types, inits, target):
            return node
    return None


def _converts_alone(proto: onnx.ModelProto, node: onnx.NodeProto, types: dict, inits: dict,
                    target: int) -> bool:
    names = [i for i in node.input if i]
    ins = [types.get(i) or helper.make_empty_tensor_value_info(i) for i in names]
    outs = [helper.make_empty_tensor_value_info(o) for o in node.output if o]
    graph = helper.make_graph([node], "probe", ins, outs,
                              [inits[i] for i in names if i in inits])
    single = helper.make_model(graph, opset_imports=proto.opset_import, ir_version=4)
    try:
        version_converter.convert_version(single, target)
    except Exception:  # same bare RuntimeErrors as above: this node is the culprit
        return False
    return True


def _restore_names(proto: onnx.ModelProto, names: dict[str, str]) -> None:
    # Some adapters keep the name on one of the nodes they expand into (Softmax 9 -> 13).
    taken = {n.name for n in proto.graph.node if n.name}
    for node in proto.graph.node:
        name = names.get(node.output[0]) if not node.name and node.output else None
        if name and name not in taken:
            node.name = name
            taken.add(name)


def _fix_upsample_resizes(proto: onnx.ModelProto, upsamples: dict[str, onnx.NodeProto]) -> None:
    # Upsample maps output x to input x / scale (asymmetric) and rounds nearest down;
    # the converter leaves Resize's defaults (half_pixel, round_prefer_floor).
    for node in proto.graph.node:
        if node.op_type == "Resize" and node.output[0] in upsamples:
            _set_attr(node, "coordinate_transformation_mode", "asymmetric")
            if _attr(node, "mode", b"nearest") == b"nearest":
                _set_attr(node, "nearest_mode", "floor")


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(name, value)])


def _rewrite_unconvertible(proto: onnx.ModelProto, label: str) -> None:
    inits = {t.name: t for t in proto.graph.initializer}
    for node in list(proto.graph.node):
        if node.op_type == "BatchNormalization" and _attr(node, "spatial", 1) == 0:
            _rewrite_per_activation_bn(proto, node, inits, label)


def _rewrite_per_activation_bn(proto: onnx.ModelProto, node: onnx.NodeProto,
                               inits: dict[str, onnx.TensorProto], label: str) -> None:
    """BatchNormalization(spatial=0) -> Mul + Add (per-channel stats: just spatial=1)."""
    params = [inits.get(name) for name in node.input[1:5]]
    if len(params) < 4 or any(p is None for p in params):
        raise ModelLoadError(f"{label}: node {node.name!r} (BatchNormalization): spatial=0 with "
                             "non-constant statistics cannot be converted")
    gamma, beta, mean, var = (numpy_helper.to_array(p).astype(np.float64) for p in params)
    if gamma.ndim == 1:  # per-channel statistics: spatial makes no difference
        _set_attr(node, "spatial", 1)
        return
    scale = gamma / np.sqrt(var + _attr(node, "epsilon", 1e-5))
    shift = beta - mean * scale
    _replace_with_affine(proto, node, scale.astype(np.float32), shift.astype(np.float32))


def _replace_with_affine(proto: onnx.ModelProto, node: onnx.NodeProto, scale: np.ndarray,
                         shift: np.ndarray) -> None:
    graph, p = proto.graph, node.name
    graph.initializer.extend([numpy_helper.from_array(scale, f"{p}_scale"),
                              numpy_helper.from_array(shift, f"{p}_shift")])
    mul = helper.make_node("Mul", [node.input[0], f"{p}_scale"], [f"{p}_scaled"], name=f"{p}_mul")
    add = helper.make_node("Add", [f"{p}_scaled", f"{p}_shift"], [node.output[0]], name=p)
    at = list(graph.node).index(node)
    graph.node.remove(node)
    graph.node.insert(at, add)
    graph.node.insert(at, mul)

