"""Tiny models for the hostile-input suite (a few kB each), and helpers to edit them.

Every builder returns a valid opset-17 `ModelProto` with seeded weights; the mutations in
`mutations.py` start from these.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import conv_model

FLOAT = TensorProto.FLOAT
HW = 8


def _w(rng: np.random.Generator, name: str, shape: tuple, scale: float = 0.3
       ) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _model(nodes: list, inputs: list, outputs: list, inits: list, name: str
           ) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def residual_model() -> onnx.ModelProto:
    """Conv stem, grouped conv, depthwise conv, residual Add, 1x1 expand, GAP, Gemm.

    The batch is symbolic ("N") so binding and `--input-shape` are exercised.
    """
    rng = np.random.default_rng(1)
    inits = [_w(rng, "w0", (8, 3, 3, 3)), _w(rng, "b0", (8,)),
             _w(rng, "wg", (8, 4, 3, 3)), _w(rng, "wd", (8, 1, 3, 3)),
             _w(rng, "w1", (16, 8, 1, 1)), _w(rng, "fw", (10, 16)), _w(rng, "fb", (10,))]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "wg"], ["cg"], name="grouped", group=2,
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["cg"], ["rg"], name="relug"),
        helper.make_node("Conv", ["rg", "wd"], ["cd"], name="depthwise", group=8,
                         pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["cd", "r0"], ["s"], name="residual"),
        helper.make_node("Conv", ["s", "w1"], ["c1"], name="expand"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["r1"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["N", 3, HW, HW])],
                  [helper.make_tensor_value_info("y", FLOAT, ["N", 10])], inits, "residual")


def cpu_model() -> onnx.ModelProto:
    """Conv-Relu-GAP-Flatten-Gemm-Softmax-Gemm: the Softmax stays on a CPU partition."""
    rng = np.random.default_rng(2)
    inits = [_w(rng, "w0", (8, 3, 3, 3)), _w(rng, "fw", (10, 8)), _w(rng, "fb", (10,)),
             _w(rng, "gw", (4, 10)), _w(rng, "gb", (4,))]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r0"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["g"], name="fc", transB=1),
        helper.make_node("Softmax", ["g"], ["sm"], name="softmax", axis=1),
        helper.make_node("Gemm", ["sm", "gw", "gb"], ["y"], name="fc2", transB=1),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", FLOAT, [1, 3, HW, HW])],
                  [helper.make_tensor_value_info("y", FLOAT, [1, 4])], inits, "cpu")


def resize_model() -> onnx.ModelProto:
    """Conv -> Resize x2 (nearest) -> Conv -> GAP: a scales input to blow up."""
    rng = np.random.default_rng(3)
    inits = [_w(rng, "w0", (4, 3, 3, 3)), _w(rng, "w1", (4, 4, 3, 3)),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Resize", ["c0", "", "scales"], ["u"], name="up", mode="nearest"),
        helper.make_node("Conv", ["u", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c1"], ["y"], name="gap"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", FLOAT, [1, 3, HW, HW])],
                  [helper.make_tensor_value_info("y", FLOAT, [1, 4, 1, 1])], inits, "resize")


BUILDERS = {"conv": conv_model, "res": residual_model, "cpu": cpu_model, "resize": resize_model}


def calib_array(n: int = 4, seed: int = 0) -> np.ndarray:
    """Calibration inputs [n, 3, 8, 8] for every model above."""
    return np.random.default_rng(seed).standard_normal((n, 3, HW, HW)).astype(np.float32)


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    """The node called `name`."""
    return next(n for n in model.graph.node if n.name == name)


def init(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    """The initializer called `name`."""
    return next(t for t in model.graph.initializer if t.name == name)


def set_attr(n: onnx.NodeProto, name: str, value) -> None:
    """Replace (or add) attribute `name` of node `n`."""
    keep = [a for a in n.attribute if a.name != name]
    del n.attribute[:]
    n.attribute.extend(keep + [helper.make_attribute(name, value)])


def replace_init(model: onnx.ModelProto, name: str, values: np.ndarray) -> None:
    """Give initializer `name` new values (shape and dtype from the array)."""
    t = init(model, name)
    t.CopyFrom(numpy_helper.from_array(values, name))
