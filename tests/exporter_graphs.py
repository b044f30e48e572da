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


def _vi(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, FLOAT, shape)


def _single_op(node: onnx.NodeProto, in_shape: list, out_shape: list, opset: int,
               inits: list | None = None, ir_version: int = 4) -> onnx.ModelProto:
    """x -> Conv 1x1 -> node -> y: one old-style op behind a layer, as exporters leave it."""
    rng = np.random.default_rng(opset)
    c = in_shape[1]
    conv = helper.make_node("Conv", ["x", "w"], ["h"], name="conv", kernel_shape=[1, 1])
    node.input[0] = "h"
    inits = [_init(rng, "w", (c, c, 1, 1))] + list(inits or [])
    graph = helper.make_graph([conv, node], f"{node.op_type}_{opset}", [_vi("x", in_shape)],
                              [_vi(o, out_shape) for o in node.output[:1]], inits)
    return _model(graph, opset, ir_version)


def upsample_model(opset: int, mode: str = "nearest",
                   scales: tuple = (1.0, 1.0, 2.0, 2.0)) -> onnx.ModelProto:
    """Upsample as opset 7 (scales attribute) or opset 9 (scales input) writes it."""
    shape = [1, 4, 5, 5]
    out = [int(d * s) for d, s in zip(shape, scales, strict=True)]
    if opset < 9:
        node = helper.make_node("Upsample", ["h"], ["y"], name="up", mode=mode,
                                scales=[float(s) for s in scales])
        return _single_op(node, shape, out, opset)
    node = helper.make_node("Upsample", ["h", "scales"], ["y"], name="up", mode=mode)
    scale = numpy_helper.from_array(np.asarray(scales, np.float32), "scales")
    return _single_op(node, shape, out, opset, [scale])


def spatial_bn_model(opset: int, spatial: int) -> onnx.ModelProto:
    """BatchNormalization with the `spatial` attribute (opsets 7/8); spatial=0 has
    per-activation statistics of shape (C, H, W)."""
    rng = np.random.default_rng(3)
    shape = [1, 4, 3, 3]
    stats = (4,) if spatial else (4, 3, 3)
    inits = [_init(rng, "bn_s", stats, 0.5), _init(rng, "bn_b", stats),
             _init(rng, "bn_rm", stats), _init(rng, "bn_riv", stats, 0.5)]
    node = helper.make_node("BatchNormalization", ["h", "bn_s", "bn_b", "bn_rm", "bn_riv"],
                            ["y"], name="bn", epsilon=1e-3, spatial=spatial)
    return _single_op(node, shape, shape, opset, inits)


def clip_model(opset: int, lo: float | None, hi: float | None) -> onnx.ModelProto:
    """Clip with min/max as attributes (opset < 11) or as inputs (>= 11; None: omitted)."""
    shape = [1, 4, 3, 3]
    if opset < 11:
        bounds = {k: float(v) for k, v in (("min", lo), ("max", hi)) if v is not None}
        return _single_op(helper.make_node("Clip", ["h"], ["y"], name="clip", **bounds),
                          shape, shape, opset)
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), n)
             for n, v in (("lo", lo), ("hi", hi)) if v is not None]
    ins = ["h", "lo" if lo is not None else "", "hi" if hi is not None else ""]
    while ins[-1] == "":
        ins.pop()
    return _single_op(helper.make_node("Clip", ins, ["y"], name="clip"), shape, shape,
                      opset, inits)


def dropout_model(opset: int, with_mask: bool = False) -> onnx.ModelProto:
    """Dropout as exporters write it: `ratio` attribute (opsets 7-10), ratio and
    training_mode inputs (>= 12), with the mask output listed or not."""
    shape = [1, 4, 3, 3]
    outs = ["y", "mask"] if with_mask else ["y"]
    if opset < 12:
        return _single_op(helper.make_node("Dropout", ["h"], outs, name="drop", ratio=0.3),
                          shape, shape, opset)
    inits = [numpy_helper.from_array(np.asarray(0.3, np.float32), "ratio"),
             numpy_helper.from_array(np.asarray(False), "training")]
    node = helper.make_node("Dropout", ["h", "ratio", "training"], outs, name="drop")
    return _single_op(node, shape, shape, opset, inits)


def variadic_model(op: str, opset: int, n: int = 3) -> onnx.ModelProto:
    """Sum / Mean / Max of N inputs (N branches of one layer and a bias term, broadcast
    from opset 8 on, as opset 8 introduced)."""
    rng = np.random.default_rng(n)
    shape = [1, 4, 3, 3]
    nodes = [helper.make_node("Conv", ["x", f"w{i}"], [f"h{i}"], name=f"conv{i}",
                              kernel_shape=[1, 1]) for i in range(n)]
    nodes.append(helper.make_node(op, [f"h{i}" for i in range(n)] + ["bias"], ["y"], name="sum"))
    inits = [_init(rng, f"w{i}", (4, 4, 1, 1)) for i in range(n)]
    inits.append(_init(rng, "bias", (1, 4, 1, 1) if opset >= 8 else tuple(shape)))
    graph = helper.make_graph(nodes, f"{op}{n}", [_vi("x", shape)], [_vi("y", shape)], inits)
    return _model(graph, opset, 4)


def _shape_ints(prefix: str, src: str, axis: int) -> list[onnx.NodeProto]:
    """Gather(Shape(src), axis) as a scalar named `{prefix}`, the torch.onnx way."""
    return [helper.make_node("Shape", [src], [f"{prefix}_shape"]),
            helper.make_node("Constant", [], [f"{prefix}_idx"],
                             value=numpy_helper.from_array(np.asarray(axis, np.int64))),
            helper.make_node("Gather", [f"{prefix}_shape", f"{prefix}_idx"], [prefix], axis=0)]


def _const(name: str, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name],
                            value=numpy_helper.from_array(np.asarray(value, np.int64)))


def _unsqueeze(src: str, dst: str, opset: int) -> list[onnx.NodeProto]:
    if opset < 13:  # axes became an input in opset 13
        return [helper.make_node("Unsqueeze", [src], [dst], axes=[0])]
    return [_const(f"{dst}_axes", [0]), helper.make_node("Unsqueeze", [src, f"{dst}_axes"], [dst])]


def _channel_split(split: str, opset: int) -> list[onnx.NodeProto]:
    """h -> a, b: torchvision ShuffleNetV2's `x.chunk(2, dim=1)` with bounds from Shape."""
    nodes = _shape_ints("c", "h", 1) + [_const("two", 2),
                                         helper.make_node("Div", ["c", "two"], ["half"]),
                                         helper.make_node("Mul", ["half", "two"], ["c2"]),
                                         helper.make_node("Sub", ["c2", "half"], ["rest"])]
    nodes += (_unsqueeze("half", "half1", opset) + _unsqueeze("c2", "end1", opset)
              + _unsqueeze("rest", "rest1", opset))
    if split == "Split":
        return nodes + [helper.make_node("Concat", ["half1", "rest1"], ["sizes"], axis=0),
                        helper.make_node("Split", ["h", "sizes"], ["a", "b"], axis=1)]
    return nodes + [_const("zero", [0]), _const("axis1", [1]),
                    helper.make_node("Slice", ["h", "zero", "half1", "axis1"], ["a"]),
                    helper.make_node("Slice", ["h", "half1", "end1", "axis1"], ["b"])]


def _channel_shuffle(opset: int) -> list[onnx.NodeProto]:
    """cat -> shuffled: Reshape(N, 2, C/2, H, W) - Transpose - Reshape(N, C, H, W), the
    target shapes computed from Shape like torch.onnx writes them."""
    nodes = []
    for axis, name in enumerate(("n", "cc", "hh", "ww")):
        nodes += _shape_ints(name, "cat", axis) + _unsqueeze(name, f"{name}1", opset)
    nodes += [_const("two1", [2]), _const("two_s", 2),
              helper.make_node("Div", ["cc", "two_s"], ["cg"])] + _unsqueeze("cg", "cg1", opset)
    nodes += [helper.make_node("Concat", ["n1", "two1", "cg1", "hh1", "ww1"], ["shape5"], axis=0),
              helper.make_node("Reshape", ["cat", "shape5"], ["r5"]),
              helper.make_node("Transpose", ["r5"], ["t5"], perm=[0, 2, 1, 3, 4]),
              helper.make_node("Concat", ["n1", "cc1", "hh1", "ww1"], ["shape4"], axis=0),
              helper.make_node("Reshape", ["t5", "shape4"], ["shuffled"])]
    return nodes


def shufflenet_unit(split: str = "Slice", c: int = 16, hw: int = 8,
                    opset: int = 13) -> onnx.ModelProto:
    """A ShuffleNetV2 basic unit as torch.onnx exports it with Shape-computed split bounds.

    x -> Conv 1x1 (h) -> channel split (Slice or Split, sizes from Shape/Gather/Div/Mul/Sub)
    -> branch Conv 1x1 + Relu on the second half -> Concat -> channel shuffle (Reshape
    shapes from Shape arithmetic) -> Conv 1x1 -> y.
    """
    rng = np.random.default_rng(11)
    half = c // 2
    inits = [_init(rng, "w0", (c, c, 1, 1)), _init(rng, "w1", (half, half, 1, 1)),
             _init(rng, "w2", (c, c, 1, 1))]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["h"], name="conv0", kernel_shape=[1, 1])]
    nodes += _channel_split(split, opset)
    nodes += [helper.make_node("Conv", ["b", "w1"], ["bc"], name="branch", kernel_shape=[1, 1]),
              helper.make_node("Relu", ["bc"], ["br"]),
              helper.make_node("Concat", ["a", "br"], ["cat"], axis=1)]
    nodes += _channel_shuffle(opset)
    nodes.append(helper.make_node("Conv", ["shuffled", "w2"], ["y"], name="conv2",
                                  kernel_shape=[1, 1]))
    graph = helper.make_graph(nodes, f"shufflenet_{split}", [_vi("x", [1, c, hw, hw])],
                              [_vi("y", [1, c, hw, hw])], inits)
    return _model(graph, opset, 8)


def standalone_bn_model(c: int = 16, hw: int = 8) -> onnx.ModelProto:
    """BatchNormalization with no producing layer to fold into, as PaddlePaddle and
    DenseNet-style exports write it: on the graph input, after an Add and after a Concat."""
    rng = np.random.default_rng(5)
    inits = (_bn_inits(rng, "bn0", 3) + _bn_inits(rng, "bn1", c) + _bn_inits(rng, "bn2", 2 * c)
             + [_init(rng, "w1", (c, 3, 3, 3)), _init(rng, "w2", (c, c, 3, 3)),
                _init(rng, "w3", (c, 2 * c, 1, 1))])

    def bn(p: str, x: str, y: str) -> onnx.NodeProto:
        return helper.make_node("BatchNormalization", [x] + [f"{p}_{k}" for k in
                                ("s", "b", "rm", "riv")], [y], name=p, epsilon=1e-5)

    def conv(w: str, x: str, y: str, k: int) -> onnx.NodeProto:
        return helper.make_node("Conv", [x, w], [y], name=f"conv_{w}", kernel_shape=[k, k],
                                pads=[k // 2] * 4)

    nodes = [
        bn("bn0", "x", "x_bn"), conv("w1", "x_bn", "a", 3),
        helper.make_node("Relu", ["a"], ["a_r"]), conv("w2", "a_r", "b", 3),
        helper.make_node("Add", ["a_r", "b"], ["s"]), bn("bn1", "s", "s_bn"),
        helper.make_node("Relu", ["s_bn"], ["s_r"]),
        helper.make_node("Concat", ["s_r", "a_r"], ["cat"], axis=1), bn("bn2", "cat", "cat_bn"),
        conv("w3", "cat_bn", "y", 1),
    ]
    graph = helper.make_graph(nodes, "standalone_bn", [_vi("x", [1, 3, hw, hw])],
                              [_vi("y", [1, c, hw, hw])], inits)
    return _model(graph, 13, 7)


def legacy_classifier(opset: int) -> onnx.ModelProto:
    """Conv-BN-Relu-MaxPool-Flatten-Gemm written for `opset`, as the first model-zoo files
    were: IR v3 with weights as graph inputs, `consumed_inputs` (< 6), `is_test` (< 7) and
    Gemm `broadcast` (< 7); from opset 7 on the same graph in today's spelling."""
    rng = np.random.default_rng(11)
    inits = [_init(rng, "w", (4, 3, 3, 3)), *_bn_inits(rng, "bn", 4),
             _init(rng, "gw", (64, 5)), _init(rng, "gb", (5,))]
    old = opset < 7
    bn_attrs = {"is_test": 1} if old else {}
    if opset < 6:
        bn_attrs["consumed_inputs"] = [0, 0, 0, 1, 1]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1],
                         kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", ["c", "bn_s", "bn_b", "bn_rm", "bn_riv"], ["n"],
                         name="bn", **bn_attrs),
        helper.make_node("Relu", ["n"], ["r"], name="relu",
                         **({"consumed_inputs": [0]} if opset < 6 else {})),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "gw", "gb"], ["y"], name="fc",
                         **({"broadcast": 1} if old else {})),
    ]
    inputs = [_vi("x", [1, 3, 8, 8])]
    if old:
        inputs += [_vi(t.name, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "legacy", inputs, [_vi("y", [1, 5])], inits)
    return _model(graph, opset, 3 if old else 8)
