"""Exporter-style test graphs, written the way real exporters write them.

Each builder returns an `onnx.ModelProto` with seeded weights; the graphs are small but keep
the exporter's quirks (IR v3 initializer inputs, old-opset attributes, Shape arithmetic).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT


def _init(rng: np.random.Generator, name: str, shape: tuple, low: float | None = None):
    if low is None:
        values = rng.standard_normal(shape) * 0.3
    else:
        values = rng.uniform(low, low + 1.0, shape)
    return numpy_helper.from_array(values.astype(np.float32), name)


def _bn_inits(rng: np.random.Generator, prefix: str, c: int) -> list[onnx.TensorProto]:
    return [_init(rng, f"{prefix}_s", (c,), 0.5), _init(rng, f"{prefix}_b", (c,)),
            _init(rng, f"{prefix}_rm", (c,)), _init(rng, f"{prefix}_riv", (c,), 0.5)]


def _model(graph: onnx.GraphProto, opset: int, ir_version: int) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="exporter_graphs")
    model.ir_version = ir_version
    return model


def _conv_bn_relu(rng: np.random.Generator, p: str, x: str, cin: int, cout: int):
    inits = [_init(rng, f"{p}_w_0", (cout, cin, 3, 3))] + _bn_inits(rng, f"{p}_bn", cout)
    nodes = [
        helper.make_node("Conv", [x, f"{p}_w_0"], [f"{p}_1"],
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("BatchNormalization",
                         [f"{p}_1"] + [f"{p}_bn_{k}" for k in ("s", "b", "rm", "riv")],
                         [f"{p}_2"], epsilon=1e-5),
        helper.make_node("Relu", [f"{p}_2"], [f"{p}_3"]),
    ]
    return inits, nodes


def caffe2_resnet_block(c: int = 16, hw: int = 8) -> onnx.ModelProto:
    """A caffe2-era model-zoo graph: opset 9, IR v3, every initializer also a graph input.

    A Conv+BN+Relu stem, three Conv+BN+Relu branches on it, Sum of the three branches,
    GlobalAveragePool, Flatten, Gemm; names in caffe2's `gpu_0/..._0` style. With c >= 16 the
    branch weights are large enough to be detached by the lean quantize loader.
    """
    rng = np.random.default_rng(7)
    inits, nodes = _conv_bn_relu(rng, "gpu_0/conv1", "gpu_0/data_0", 3, c)
    for i in range(3):
        more_inits, more_nodes = _conv_bn_relu(rng, f"gpu_0/res{i}", "gpu_0/conv1_3", c, c)
        inits, nodes = inits + more_inits, nodes + more_nodes
    inits += [_init(rng, "gpu_0/pred_w_0", (10, c)), _init(rng, "gpu_0/pred_b_0", (10,))]
    nodes += [
        helper.make_node("Sum", [f"gpu_0/res{i}_3" for i in range(3)], ["gpu_0/sum_1"]),
        helper.make_node("GlobalAveragePool", ["gpu_0/sum_1"], ["gpu_0/pool_1"]),
        helper.make_node("Flatten", ["gpu_0/pool_1"], ["gpu_0/flat_1"], axis=1),
        helper.make_node("Gemm", ["gpu_0/flat_1", "gpu_0/pred_w_0", "gpu_0/pred_b_0"],
                         ["gpu_0/softmax_1"], transB=1),
    ]
    data = helper.make_tensor_value_info("gpu_0/data_0", FLOAT, [1, 3, hw, hw])
    weight_inputs = [helper.make_tensor_value_info(t.name, FLOAT, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "caffe2_block", [data] + weight_inputs,
                              [helper.make_tensor_value_info("gpu_0/softmax_1", FLOAT, [1, 10])],
                              inits)
    return _model(graph, opset=9, ir_version=3)
