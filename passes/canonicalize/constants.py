"""Fold Constant / ConstantOfShape / Shape-of-static / all-constant subgraphs into initializers."""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.ir import (
    Model,
    is_const,
    is_graph_output,
    release_unused,
    replace_uses,
    static_shape,
)
from compiler.core.numerics import eval_node
from compiler.core.shape_inference import refresh_shapes
from passes.base import RewritePass

log = logging.getLogger(__name__)

# Ops whose value is not a function of their inputs alone.
_NOT_FOLDABLE = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                 "Multinomial", "Bernoulli", "If", "Loop", "Scan"}
_MAX_FOLDED_ELEMENTS = 1 << 27  # 512 MiB of float32: room for VGG-sized FC weights


def fold_constants(model: Model) -> int:
    """Replace every node whose outputs are known at compile time by initializers.

    Rounds of folding alternate with shape inference until nothing more folds: folding
    Shape arithmetic (ShuffleNet's channel split bounds, Reshape targets) makes the shapes
    after a Slice/Split/Reshape known, which lets the next Shape of them fold in turn.

    Returns:
        The number of nodes folded.
    """
    total = 0
    while True:
        folded = _fold_round(model)
        total += folded
        if not folded or not refresh_shapes(model):
            return total


def _fold_round(model: Model) -> int:
    """One pass over the nodes in topological order; returns the number folded."""
    graph, folded = model.graph, 0
    for node in list(graph.nodes):
        values = constant_outputs(node, model.opset)
        if values is None or any(is_graph_output(graph, t) for t in node.outputs):
            continue
        for tensor, value in zip(node.outputs, values, strict=True):
            replace_uses(graph, tensor, gs.Constant(tensor.name, np.asarray(value)))
        inputs = list(node.inputs)
        node.inputs.clear()
        node.outputs.clear()
        release_unused(graph, inputs)
        folded += 1
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return folded


def constant_outputs(node: gs.Node, opset: int) -> list[np.ndarray] | None:
    """The node's output values when they can be computed now, else None."""
    if node.op == "Constant":
        return [_constant_attr(node)]
    if node.op == "Shape":
        return _static_shape_value(node)
    if node.op in _NOT_FOLDABLE or node.domain not in (None, "", "ai.onnx") or not node.inputs:
        return None
    if not all(is_const(t) or t.name == "" for t in node.inputs):
        return None
    values = eval_node(node, opset)
    if sum(np.asarray(v).size for v in values) > _MAX_FOLDED_ELEMENTS:
        return None
    return values


def _constant_attr(node: gs.Node) -> np.ndarray:
    attrs = node.attrs
    if "value" in attrs:
        return np.asarray(attrs["value"].values)
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    if "value_string" in attrs or "value_strings" in attrs:
        return np.asarray(attrs.get("value_string", attrs.get("value_strings")))
    raise ValueError(f"Constant node {node.name!r} has no supported value attribute")


def _static_shape_value(node: gs.Node) -> list[np.ndarray] | None:
    shape = static_shape(node.inputs[0])
    if shape is None:
        return None
    start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
    return [np.asarray(shape[start:end], dtype=np.int64)]


class FoldConstants(RewritePass):
    """Pass: fold compile-time-known nodes into initializers."""

    rewrite = staticmethod(fold_constants)
