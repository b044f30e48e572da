import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from compiler.core.cost import model_cost
from compiler.core.io import load_model
from passes.canonicalize import canonicalize
from tests.conftest import light_path


def _single(op, x_shape, w_shape, y_shape, **attrs):
    w = numpy_helper.from_array(np.ones(w_shape, np.float32), "w")
    node = helper.make_node(op, ["x", "w"], ["y"], name="n", **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", 1, x_shape)],
        [helper.make_tensor_value_info("y", 1, y_shape)], [w])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model_cost(load_model(proto)).nodes[0]


def test_conv_macs_and_params():
    cost = _single("Conv", [1, 16, 8, 8], [32, 16, 3, 3], [1, 32, 8, 8], pads=[1] * 4)
    assert cost.macs == 32 * 8 * 8 * 16 * 9
    assert cost.params == 32 * 16 * 9


def test_grouped_and_depthwise_conv_macs():
    grouped = _single("Conv", [1, 16, 8, 8], [32, 4, 3, 3], [1, 32, 8, 8], group=4,
                      pads=[1] * 4)
    depthwise = _single("Conv", [2, 16, 8, 8], [16, 1, 3, 3], [2, 16, 4, 4], group=16,
                        strides=[2, 2], pads=[1] * 4)
    assert grouped.macs == 32 * 64 * 4 * 9
    assert depthwise.macs == 2 * 16 * 16 * 9


def test_conv_transpose_macs():
    cost = _single("ConvTranspose", [1, 8, 4, 4], [8, 6, 2, 2], [1, 6, 8, 8], strides=[2, 2])
    assert cost.macs == 8 * 16 * 6 * 4


def test_gemm_and_matmul_macs():
    gemm = _single("Gemm", [4, 10], [7, 10], [4, 7], transB=1)
    matmul = _single("MatMul", [2, 3, 5, 10], [10, 7], [2, 3, 5, 7])
    assert gemm.macs == 4 * 7 * 10 and gemm.params == 70
    assert matmul.macs == 2 * 3 * 5 * 7 * 10


def test_pooling_and_elementwise_are_ops_not_macs():
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])
    graph = helper.make_graph([node, helper.make_node("Relu", ["y"], ["z"])], "g",
                              [helper.make_tensor_value_info("x", 1, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("z", 1, [1, 4, 4, 4])])
    report = model_cost(load_model(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)])))
    pool, relu = report.nodes
    assert (pool.macs, pool.ops) == (0, 64 * 4)
    assert (relu.macs, relu.ops) == (0, 64)


def test_resnet50_light_zoo_macs_and_params():
    model = canonicalize(load_model(light_path("resnet50"))).model
    report = model_cost(model)
    assert report.macs == pytest.approx(4.09e9, rel=0.01)
    # caffe2's ResNet-50 (folded BN biases) is 25.53 M; torchvision's is 25.56 M.
    assert report.params == pytest.approx(25.6e6, rel=0.01)


def test_resnet50_zoo_builder_macs_and_params():
    zoo = pytest.importorskip("models.zoo")
    proto, _ = zoo.resnet50()
    report = model_cost(load_model(proto))
    assert report.macs == pytest.approx(4.09e9, rel=0.01)
    assert report.params == 25_557_032
    assert isinstance(proto, onnx.ModelProto)
