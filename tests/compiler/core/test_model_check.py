"""Load-time checks that ONNX's checker and shape inference leave out (issue #17)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from compiler.core.errors import GraphError, ModelLoadError, NpucError
from compiler.core.io import load_model
from tests.conftest import conv_model


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _set(node: onnx.NodeProto, **attrs) -> None:
    keep = [a for a in node.attribute if a.name not in attrs]
    del node.attribute[:]
    node.attribute.extend(keep + [helper.make_attribute(k, v) for k, v in attrs.items()])


def _bomb(model: onnx.ModelProto, shape: list[int]) -> None:
    """y + ReduceMax(ConstantOfShape(shape)): a tiny file describing a huge tensor."""
    model.graph.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), "s"))
    fc = _node(model, "fc")
    fc.output[0] = "pre"
    model.graph.node.extend([
        helper.make_node("ConstantOfShape", ["s"], ["big"], name="cos"),
        helper.make_node("ReduceMax", ["big"], ["m"], name="rmax", keepdims=0),
        helper.make_node("Add", ["pre", "m"], ["y"], name="add")])


def test_size_bomb_is_refused_before_anything_is_allocated():
    model = conv_model()
    _bomb(model, [1, 8, 100000, 100000])
    with pytest.raises(ModelLoadError, match=r"'big' would have shape \[1, 8, 100000, 100000\] "
                                             r"\(80,000,000,000 elements\); the limit is"):
        load_model(model)


def test_limit_is_raised_by_environment(monkeypatch):
    model = conv_model()
    _bomb(model, [1, 8, 64, 64])
    monkeypatch.setenv("NPUC_LIMIT_TENSOR_ELEMENTS", "1000")
    with pytest.raises(ModelLoadError, match="the limit is 1,000"):
        load_model(model)
    monkeypatch.setenv("NPUC_LIMIT_TENSOR_ELEMENTS", "40000")
    assert load_model(model).graph.nodes  # 32,768 elements: fine


@pytest.mark.parametrize("edit,match", [
    (lambda m: _set(_node(m, "conv"), group=3), "group 3 does not divide the 8 filters"),
    (lambda m: _set(_node(m, "conv"), group=2), "has 3 channels but weight 'w'"),
    (lambda m: _set(_node(m, "conv"), strides=[0, 0]), "strides must only contain positive"),
    (lambda m: _set(_node(m, "conv"), pads=[-1, -1, -1, -1]), "pads must not contain negat"),
    (lambda m: _set(_node(m, "conv"), kernel_shape=[5, 5]), "kernel_shape .5, 5. does not"),
])
def test_conv_inconsistent_with_its_weights_is_one_error(edit, match):
    model = conv_model()
    edit(model)
    with pytest.raises(NpucError, match=match):
        load_model(model)


def test_loop_trip_count_and_duplicate_outputs():
    model = conv_model()
    model.graph.output.append(model.graph.output[0])
    with pytest.raises(ModelLoadError, match="graph output 'y' is listed twice"):
        load_model(model)
    f32, scalar = onnx.TensorProto.FLOAT, []
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c_out"]),
         helper.make_node("Identity", ["v"], ["v_out"])], "body",
        [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, scalar),
         helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, scalar),
         helper.make_tensor_value_info("v", f32, scalar)],
        [helper.make_tensor_value_info("c_out", onnx.TensorProto.BOOL, scalar),
         helper.make_tensor_value_info("v_out", f32, scalar)])
    model = conv_model()
    model.graph.initializer.extend([numpy_helper.from_array(np.array(2 ** 40), "trip"),
                                    numpy_helper.from_array(np.array(True), "cond"),
                                    numpy_helper.from_array(np.array(0, np.float32), "v0")])
    fc = _node(model, "fc")
    fc.output[0] = "pre"
    model.graph.node.extend([
        helper.make_node("Loop", ["trip", "cond", "v0"], ["v_end"], name="spin", body=body),
        helper.make_node("Add", ["pre", "v_end"], ["y"], name="add")])
    with pytest.raises(GraphError, match=r"'spin' \(Loop\): constant trip count "
                                         r"1,099,511,627,776 exceeds 1,048,576"):
        load_model(model)
