"""Opset 18+ graphs (torch dynamo's default) brought down to the internal opset 17."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from compiler.core.errors import ModelLoadError
from compiler.core.io import load_model, to_proto
from compiler.core.numerics import run

RNG = np.random.default_rng(0)


def _model(nodes, x_shape, y_shapes, opset, inits=()):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, x_shape)],
                              [helper.make_tensor_value_info(n, 1, s) for n, s in y_shapes],
                              list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _ints(name, values):
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _same_function(proto, x_shape, tol=1e-6):
    model = load_model(proto)
    assert model.opset == 17
    feeds = {"x": RNG.standard_normal(x_shape).astype(np.float32)}
    want = run(proto, feeds)
    got = run(to_proto(model), feeds)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=tol, atol=tol)
    return model


@pytest.mark.parametrize("opset", [18, 20])
@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax", "ReduceL2"])
def test_reduce_axes_input_becomes_the_attribute(op, opset):
    nodes = [helper.make_node(op, ["x", "axes"], ["y"], keepdims=1, noop_with_empty_axes=0)]
    model = _same_function(_model(nodes, [1, 4, 5, 5], [("y", [1, 4, 1, 1])], opset,
                                  [_ints("axes", [2, 3])]), [1, 4, 5, 5])
    assert model.nodes[0].attrs["axes"] == [2, 3]


def test_reduce_noop_with_empty_axes_is_identity():
    nodes = [helper.make_node("ReduceMean", ["x"], ["y"], noop_with_empty_axes=1)]
    model = _same_function(_model(nodes, [1, 4, 5, 5], [("y", [1, 4, 5, 5])], 18),
                           [1, 4, 5, 5])
    assert [n.op for n in model.nodes] in ([], ["Identity"])


@pytest.mark.parametrize("channels", [12, 13])  # even, and uneven (last chunk smaller)
def test_split_num_outputs(channels):
    nodes = [helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3)]
    last = channels - 2 * ((channels + 2) // 3)
    chunk = (channels + 2) // 3
    proto = _model(nodes, [1, channels, 4, 4], [("a", [1, chunk, 4, 4]),
                                                ("b", [1, chunk, 4, 4]),
                                                ("c", [1, last, 4, 4])], 18)
    _same_function(proto, [1, channels, 4, 4])


def test_pad_with_axes_is_expanded_to_every_axis():
    nodes = [helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"], mode="reflect")]
    inits = [_ints("pads", [1, 2, 1, 2]), _ints("axes", [2, 3])]
    _same_function(_model(nodes, [1, 3, 6, 6], [("y", [1, 3, 8, 10])], 19, inits),
                   [1, 3, 6, 6])


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_is_decomposed(approximate):
    nodes = [helper.make_node("Gelu", ["x"], ["y"], approximate=approximate)]
    model = _same_function(_model(nodes, [1, 3, 4, 4], [("y", [1, 3, 4, 4])], 20),
                           [1, 3, 4, 4], tol=1e-5)
    assert "Gelu" not in [n.op for n in model.nodes]


def test_op_with_no_opset17_form_is_one_error_naming_it():
    nodes = [helper.make_node("CenterCropPad", ["x", "hw"], ["y"], name="crop", axes=[2, 3])]
    with pytest.raises(ModelLoadError, match=r"node 'crop' \(CenterCropPad\): op "
                                             r"introduced in opset 18"):
        load_model(_model(nodes, [1, 4, 6, 6], [("y", [1, 4, 3, 3])], 18,
                          [_ints("hw", [3, 3])]))


def _group_norm(x, groups, scale, bias, eps):
    n, c = x.shape[:2]
    g = x.reshape(n, groups, -1).astype(np.float64)
    g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)
    shape = (1, c) + (1,) * (x.ndim - 2)
    return g.reshape(x.shape) * scale.reshape(shape) + bias.reshape(shape)


def test_group_normalization_is_instance_norm_over_groups():
    scale, bias = RNG.standard_normal(6) + 1, RNG.standard_normal(6)
    nodes = [helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], name="gn",
                              num_groups=2, epsilon=1e-3)]
    inits = [numpy_helper.from_array(v.astype(np.float32), n)
             for n, v in (("s", scale), ("b", bias))]
    model = load_model(_model(nodes, [2, 6, 3, 5], [("y", [2, 6, 3, 5])], 21, inits))
    assert "InstanceNormalization" in [n.op for n in model.nodes]
    x = RNG.standard_normal((2, 6, 3, 5)).astype(np.float32)
    got = run(to_proto(model), {"x": x})["y"]
    np.testing.assert_allclose(got, _group_norm(x, 2, scale, bias, 1e-3), atol=1e-4)


def test_mish_is_decomposed():
    nodes = [helper.make_node("Mish", ["x"], ["y"], name="mish")]
    model = _same_function(_model(nodes, [1, 3, 4, 4], [("y", [1, 3, 4, 4])], 18),
                           [1, 3, 4, 4], tol=1e-5)
    assert [n.op for n in model.nodes] == ["Softplus", "Tanh", "Mul"]


def test_type_only_bumps_are_relabelled_and_checked():
    # Reshape/Transpose/Cast/Flatten were re-versioned for new types only (19-24).
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Cast", ["t"], ["c"], to=1, saturate=1),
             helper.make_node("Reshape", ["c", "shape"], ["r"]),
             helper.make_node("Flatten", ["r"], ["y"])]
    proto = _model(nodes, [1, 3, 4, 4], [("y", [1, 48])], onnx.defs.onnx_opset_version(),
                   [_ints("shape", [1, 4, 12])])
    model = load_model(proto)
    assert model.opset == 17 and [n.op for n in model.nodes][-1] == "Flatten"
