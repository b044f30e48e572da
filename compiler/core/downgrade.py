"""Models newer than the internal opset, brought down to it without onnx's version converter.

The converter has no down-adapters for many opset 18+ ops (Split-18 has none at all, and
its Reduce-18 adapter leaves `noop_with_empty_axes` behind), yet the torch dynamo exporter
writes opset 18 and newer. Most of what changed after opset 17 is types (bfloat16, float8,
int4) or new ops; an op whose schema at the model's opset was introduced at or before the
internal opset is unchanged and needs nothing. For the rest:

* ops whose change is only new types or new attributes left at their defaults are
  relabelled (the new attributes dropped when they hold the default);
* the ops whose meaning moved are rewritten: Reduce* take `axes` as an input from 18 on
  (back to the attribute), Split-18's `num_outputs` (back to sizes), Pad-18's `axes`
  (expanded to all axes), Gelu-20 (decomposed with Erf or Tanh), Mish-18 (Softplus, Tanh,
  Mul), GroupNormalization-21 (InstanceNormalization over the groups, then the per-channel
  affine);
* anything else raises one line naming the node.

The result is checked against the internal opset by `onnx.checker` (the caller loads it),
so a relabelled node that does not fit its opset-17 schema is caught, never run.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import defs, helper, numpy_helper

from compiler.core.errors import ModelLoadError

REDUCE_OPS = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                        "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"})
# Attributes added after opset 17 that may be dropped when they hold these values.
DEFAULTED = {
    "Cast": {"saturate": 1}, "CastLike": {"saturate": 1},
    "Resize": {"antialias": 0, "keep_aspect_ratio_policy": "stretch"},
    "AveragePool": {"dilations": None}, "Pad": {}, "Split": {},
    "QuantizeLinear": {"saturate": 1, "block_size": 0, "output_dtype": 0},
    "DequantizeLinear": {"block_size": 0},
}


def downgrade(proto: onnx.ModelProto, label: str, opset: int, target: int) -> None:
    """Rewrite `proto` (opset `opset` > `target`) in place to the default-domain `target`.

    Raises:
        ModelLoadError: A node that has no equivalent at `target`, named with its op.
    """
    shapes = _shapes(proto)
    consts = {t.name: t for t in proto.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        nodes.extend(_node(node, opset, target, shapes, consts, proto, label))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = target


def _node(node: onnx.NodeProto, opset: int, target: int, shapes: dict, consts: dict,
          proto: onnx.ModelProto, label: str) -> list[onnx.NodeProto]:
    where = f"{label}: node {node.name!r} ({node.op_type})"
    if node.op_type in ("If", "Loop", "Scan"):
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _downgrade_graph(attr.g, opset, target, shapes, consts, proto, label)
    try:
        since = defs.get_schema(node.op_type, opset, "").since_version
    except defs.SchemaError as e:
        raise ModelLoadError(f"{where}: not an operator of opset {opset}") from e
    if since <= target:
        return [node]
    if node.op_type in REDUCE_OPS:
        return [_reduce(node, consts, where)]
    if node.op_type == "Split":
        return [_split(node, shapes, consts, proto, where)]
    if node.op_type == "Pad":
        return [_pad(node, shapes, consts, proto, where)]
    if node.op_type == "Gelu":
        return _gelu(node, proto)
    if node.op_type == "Mish":  # x·tanh(softplus(x)), the form exporters wrote before 18
        x, p = node.input[0], node.name or node.output[0]
        return [helper.make_node("Softplus", [x], [f"{p}__sp"], name=f"{p}__softplus"),
                helper.make_node("Tanh", [f"{p}__sp"], [f"{p}__t"], name=f"{p}__tanh"),
                helper.make_node("Mul", [x, f"{p}__t"], list(node.output), name=p)]
    if node.op_type == "GroupNormalization":
        return _group_norm(node, shapes, proto, where)
    if not _exists(node.op_type, target):
        raise ModelLoadError(f"{where}: op introduced in opset {since}, after the internal "
                             f"opset {target}; no rewrite known")
    _drop_defaulted(node, where)
    return [node]


def _downgrade_graph(graph: onnx.GraphProto, opset: int, target: int, shapes: dict,
                     consts: dict, proto: onnx.ModelProto, label: str) -> None:
    inner = {t.name: t for t in graph.initializer} | consts
    nodes = [out for n in graph.node for out in _node(n, opset, target, shapes, inner, proto,
                                                       label)]
    del graph.node[:]
    graph.node.extend(nodes)


def _exists(op: str, target: int) -> bool:
    try:
        defs.get_schema(op, target, "")
    except defs.SchemaError:
        return False
    return True


def _drop_defaulted(node: onnx.NodeProto, where: str) -> None:
    allowed = DEFAULTED.get(node.op_type, {})
    keep = []
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        value = value.decode() if isinstance(value, bytes) else value
        if attr.name in allowed and _is_default(attr.name, value, allowed[attr.name]):
            continue
        keep.append(attr)
    del node.attribute[:]
    node.attribute.extend(keep)
    if node.op_type == "Resize":
        mode = _attr(node, "coordinate_transformation_mode", "half_pixel")
        if mode == "half_pixel_symmetric" or _attr(node, "axes") is not None:
            raise ModelLoadError(f"{where}: coordinate mode {mode!r} / axes have no opset-17 "
                                 "equivalent")


def _is_default(name: str, value, default) -> bool:
    if default is None:  # a list attribute of all ones (dilations)
        return all(v == 1 for v in value)
    return value == default


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            value = helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _const_ints(name: str, consts: dict, where: str, what: str) -> list[int] | None:
    if not name:
        return None
    if name not in consts:
        raise ModelLoadError(f"{where}: {what} must be a constant to convert to opset 17")
    return [int(v) for v in numpy_helper.to_array(consts[name]).reshape(-1)]


def _reduce(node: onnx.NodeProto, consts: dict, where: str) -> onnx.NodeProto:
    axes = _const_ints(node.input[1], consts, where, "axes") if len(node.input) > 1 else None
    noop = _attr(node, "noop_with_empty_axes", 0)
    attrs = {"keepdims": _attr(node, "keepdims", 1)}
    if axes:
        attrs["axes"] = axes
    elif noop:
        return helper.make_node("Identity", [node.input[0]], list(node.output), name=node.name)
    return helper.make_node(node.op_type, [node.input[0]], list(node.output), name=node.name,
                            **attrs)


def _split(node: onnx.NodeProto, shapes: dict, consts: dict, proto: onnx.ModelProto,
           where: str) -> onnx.NodeProto:
    axis = _attr(node, "axis", 0)
    inputs = list(node.input)
    n = _attr(node, "num_outputs")
    if n is not None and not (len(inputs) > 1 and inputs[1]):
        dims = shapes.get(node.input[0])
        size = dims[axis] if dims is not None and -len(dims) <= axis < len(dims) else None
        if isinstance(size, int) and size % n:
            # Split-18 makes the last chunk smaller; Split-13 needs the sizes spelled out.
            chunk = math.ceil(size / n)
            sizes = [chunk] * (n - 1) + [size - chunk * (n - 1)]
            inputs = [inputs[0], _add_ints(proto, f"{node.name}__split_sizes", sizes)]
        elif size is None and len(node.output) != n:
            raise ModelLoadError(f"{where}: num_outputs={n} over an axis of unknown size")
    return helper.make_node("Split", inputs, list(node.output), name=node.name, axis=axis)


def _pad(node: onnx.NodeProto, shapes: dict, consts: dict, proto: onnx.ModelProto,
         where: str) -> onnx.NodeProto:
    mode = _attr(node, "mode", "constant")
    if mode == "wrap":
        raise ModelLoadError(f"{where}: mode 'wrap' has no opset-17 equivalent")
    inputs = list(node.input)
    if len(inputs) > 3 and inputs[3]:
        axes = _const_ints(inputs[3], consts, where, "axes")
        pads = _const_ints(inputs[1], consts, where, "pads")
        dims = shapes.get(inputs[0])
        if dims is None:
            raise ModelLoadError(f"{where}: Pad with axes needs the input rank")
        rank = len(dims)
        full = [0] * (2 * rank)
        for i, a in enumerate(axes):
            a = a % rank
            full[a], full[a + rank] = pads[i], pads[i + len(axes)]
        inputs = inputs[:1] + [_add_ints(proto, f"{node.name}__pads", full)] + inputs[2:3]
    return helper.make_node("Pad", inputs, list(node.output), name=node.name, mode=mode)


def _gelu(node: onnx.NodeProto, proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    x, y, p = node.input[0], node.output[0], node.name or node.output[0]
    dtype = np.float32

    def c(name: str, value: float) -> str:
        proto.graph.initializer.append(numpy_helper.from_array(np.array(value, dtype),
                                                               f"{p}__{name}"))
        return f"{p}__{name}"

    half = [helper.make_node("Mul", [x, c("half", 0.5)], [f"{p}__hx"], name=f"{p}__mul_half")]
    if _attr(node, "approximate", "none") == "tanh":
        # 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
        core = [helper.make_node("Pow", [x, c("three", 3.0)], [f"{p}__x3"], name=f"{p}__pow"),
                helper.make_node("Mul", [f"{p}__x3", c("k", 0.044715)], [f"{p}__kx3"],
                                 name=f"{p}__mul_k"),
                helper.make_node("Add", [x, f"{p}__kx3"], [f"{p}__in"], name=f"{p}__add_in"),
                helper.make_node("Mul", [f"{p}__in", c("s", math.sqrt(2 / math.pi))],
                                 [f"{p}__arg"], name=f"{p}__mul_s"),
                helper.make_node("Tanh", [f"{p}__arg"], [f"{p}__t"], name=f"{p}__tanh")]
    else:
        # 0.5·x·(1 + erf(x/√2))
        core = [helper.make_node("Div", [x, c("sqrt2", math.sqrt(2.0))], [f"{p}__arg"],
                                 name=f"{p}__div"),
                helper.make_node("Erf", [f"{p}__arg"], [f"{p}__t"], name=f"{p}__erf")]
    tail = [helper.make_node("Add", [f"{p}__t", c("one", 1.0)], [f"{p}__1t"],
                             name=f"{p}__add_one"),
            helper.make_node("Mul", [f"{p}__hx", f"{p}__1t"], [y], name=p)]
    return half + core + tail


def _group_norm(node: onnx.NodeProto, shapes: dict, proto: onnx.ModelProto,
                where: str) -> list[onnx.NodeProto]:
    """GroupNormalization -> Reshape [N, G, -1], InstanceNormalization, Reshape back, affine.

    InstanceNormalization normalizes each (n, g) row over everything else, which is what
    GroupNormalization does per group; scale and bias are per channel (opset 21; onnx's
    checker rejects the per-group opset-18 form as deprecated before this runs).
    """
    x, scale, bias = node.input[:3]
    y, p = node.output[0], node.name or node.output[0]
    groups = int(_attr(node, "num_groups"))
    rank = len(shapes.get(x) or [])
    if rank < 3 or groups < 1:
        raise ModelLoadError(f"{where}: GroupNormalization needs an input of known rank >= 3")
    ones, zeros = f"{p}__ones", f"{p}__zeros"
    proto.graph.initializer.extend([numpy_helper.from_array(np.ones(groups, np.float32), ones),
                                    numpy_helper.from_array(np.zeros(groups, np.float32), zeros)])
    affine = []
    for name, role in ((scale, "scale"), (bias, "bias")):
        shaped = f"{p}__{role}_shaped"
        affine.append(helper.make_node("Reshape", [name, _add_ints(
            proto, f"{p}__{role}_shape", [-1] + [1] * (rank - 2))], [shaped],
            name=f"{p}__{role}_reshape"))
    eps = float(_attr(node, "epsilon", 1e-5))
    return affine + [
        helper.make_node("Shape", [x], [f"{p}__shape"], name=f"{p}__shape"),
        helper.make_node("Reshape", [x, _add_ints(proto, f"{p}__groups", [0, groups, -1])],
                         [f"{p}__grouped"], name=f"{p}__group"),
        helper.make_node("InstanceNormalization", [f"{p}__grouped", ones, zeros],
                         [f"{p}__normed"], name=f"{p}__norm", epsilon=eps),
        helper.make_node("Reshape", [f"{p}__normed", f"{p}__shape"], [f"{p}__back"],
                         name=f"{p}__ungroup"),
        helper.make_node("Mul", [f"{p}__back", f"{p}__scale_shaped"], [f"{p}__scaled"],
                         name=f"{p}__mul"),
        helper.make_node("Add", [f"{p}__scaled", f"{p}__bias_shaped"], [y], name=p)]


def _add_ints(proto: onnx.ModelProto, name: str, values: list[int]) -> str:
    proto.graph.initializer.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
    return name


def _shapes(proto: onnx.ModelProto) -> dict[str, list]:
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # shapes only help (Split sizes, Pad rank); failures surface later
        inferred = proto
    out = {}
    graph = inferred.graph
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape"):
            out[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for t in graph.initializer:
        out[t.name] = list(t.dims)
    return out
