"""Checks of a loaded model's structure that ONNX's checker and shape inference leave out.

Run at load on the shape-inferred (weightless) graph, so a model that onnxruntime would
reject halfway through a run, or that would allocate gigabytes from a few bytes, is refused
at once with one line naming the file, the node and the problem:

- every tensor whose shape is known fits `limits.TENSOR_ELEMENTS` (ConstantOfShape /
  Expand / Tile / Resize / Range size bombs, huge declared inputs);
- a Loop with a constant trip count runs at most `limits.LOOP_TRIPS` iterations;
- Conv / ConvTranspose attributes and weights agree with their input (group divides the
  channels, kernel channels x group = input channels, bias length, positive strides and
  dilations, non-negative pads, kernel_shape matching the weight).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from compiler.core import limits
from compiler.core.errors import GraphError, ModelLoadError
from compiler.core.onnxfile import skeleton_copy

Shape = list[int | None]


def check_as_is(proto: onnx.ModelProto, label: str) -> None:
    """`check_model` for a model that is run as it is (not normalized by the loader).

    Shape inference runs on a weightless copy first; a model that inference rejects is left
    to onnxruntime to judge.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton_copy(proto), data_prop=True)
    except Exception:  # noqa: BLE001 - inference raises several types; onnxruntime decides
        return
    check_model(inferred, label)


def check_model(proto: onnx.ModelProto, label: str) -> None:
    """Raise on the first size or Conv-consistency problem (see the module docstring)."""
    for kind, values in (("input", proto.graph.input), ("output", proto.graph.output)):
        names = [v.name for v in values]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ModelLoadError(f"{label}: graph {kind} {twice[0]!r} is listed twice")
    for tensor in proto.graph.initializer:
        if tensor.HasField("segment"):  # a chunk of a tensor: nothing reads those
            raise ModelLoadError(f"{label}: initializer {tensor.name!r} is a tensor segment, "
                                 "which is not supported")
    shapes = _shapes(proto)
    _check_sizes(shapes, label)
    consts = _constant_ints(proto)
    for node in proto.graph.node:
        check = _NODE_CHECKS.get(node.op_type)
        if check is not None and node.domain in ("", "ai.onnx"):
            check(node, shapes, consts, f"{label}: node {node.name!r} ({node.op_type})")


def _dims(value: onnx.ValueInfoProto) -> Shape | None:
    if not value.type.HasField("tensor_type") or \
            not value.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None
            for d in value.type.tensor_type.shape.dim]


def _shapes(proto: onnx.ModelProto) -> dict[str, Shape]:
    graph = proto.graph
    shapes = {}
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        dims = _dims(value)
        if dims is not None:
            shapes[value.name] = dims
    for tensor in graph.initializer:
        shapes[tensor.name] = list(tensor.dims)
    return shapes


def _check_sizes(shapes: dict[str, Shape], label: str) -> None:
    cap = limits.limit("TENSOR_ELEMENTS")
    for name, dims in shapes.items():
        known = [d for d in dims if d is not None]
        if any(d < 0 for d in known):
            raise ModelLoadError(f"{label}: tensor {name!r} has a negative dimension {dims}")
        count = math.prod(known)
        if count > cap:
            raise ModelLoadError(
                f"{label}: tensor {name!r} would have shape {dims} ({count:,} elements); the "
                f"limit is {cap:,} (NPUC_LIMIT_TENSOR_ELEMENTS raises it)")


def _constant_ints(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Small integer constants (initializers and Constant nodes), for trip counts."""
    out = {}
    for tensor in proto.graph.initializer:
        if tensor.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and \
                math.prod(tensor.dims) <= 16 and tensor.data_location != tensor.EXTERNAL:
            out[tensor.name] = numpy_helper.to_array(tensor)
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == onnx.TensorProto.INT64 and \
                        math.prod(attr.t.dims) <= 16:
                    out[node.output[0]] = numpy_helper.to_array(attr.t)
    return out


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _check_conv(node: onnx.NodeProto, shapes: dict[str, Shape],
                consts: dict[str, np.ndarray], where: str) -> None:
    x = shapes.get(node.input[0]) if node.input else None
    w = shapes.get(node.input[1]) if len(node.input) > 1 else None
    if not w or len(w) < 3 or any(d is None for d in w):
        return  # a weight computed at run time: onnxruntime checks it
    transposed = node.op_type == "ConvTranspose"
    group = _attr(node, "group", 1)
    if not isinstance(group, int) or group < 1:
        raise GraphError(f"{where}: group {group!r} must be a positive integer")
    out_channels = w[1] * group if transposed else w[0]
    in_channels = w[0] if transposed else w[1] * group
    if w[0] % group:
        raise GraphError(f"{where}: group {group} does not divide the {w[0]} filters of "
                         f"weight {node.input[1]!r} {w}")
    if x and len(x) > 1 and x[1] is not None and x[1] != in_channels:
        raise GraphError(f"{where}: input {node.input[0]!r} has {x[1]} channels but weight "
                         f"{node.input[1]!r} {w} with group {group} expects {in_channels}")
    b = shapes.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if b is not None and b != [out_channels]:
        raise GraphError(f"{where}: bias {node.input[2]!r} has shape {b}, expected "
                         f"[{out_channels}]")
    _check_window(node, w, where)


def _check_window(node: onnx.NodeProto, w: list[int], where: str) -> None:
    spatial = len(w) - 2
    kernel = _attr(node, "kernel_shape")
    if kernel is not None and list(kernel) != w[2:]:
        raise GraphError(f"{where}: kernel_shape {list(kernel)} does not match the weight's "
                         f"{w[2:]}")
    for name, count, low in (("strides", spatial, 1), ("dilations", spatial, 1),
                             ("pads", 2 * spatial, 0)):
        values = _attr(node, name)
        if values is not None and not _ints(values, count, low):
            raise GraphError(f"{where}: {name} {list(values)!r:.80} must be {count} integers "
                             f">= {low}")


def _ints(values: Any, count: int, low: int) -> bool:
    return (isinstance(values, (list, tuple)) and len(values) == count
            and all(isinstance(v, int) and v >= low for v in values))


def _check_loop(node: onnx.NodeProto, shapes: dict[str, Shape],
                consts: dict[str, np.ndarray], where: str) -> None:
    trips = consts.get(node.input[0]) if node.input and node.input[0] else None
    cap = limits.limit("LOOP_TRIPS")
    if trips is not None and trips.size == 1 and int(trips.reshape(-1)[0]) > cap:
        raise GraphError(f"{where}: constant trip count {int(trips.reshape(-1)[0]):,} exceeds "
                         f"{cap:,} iterations (NPUC_LIMIT_LOOP_TRIPS raises it)")


_NODE_CHECKS: dict[str, Callable] = {"Conv": _check_conv, "ConvTranspose": _check_conv,
                                     "Loop": _check_loop}
