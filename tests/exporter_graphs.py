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


# --- Pruning-relevant structure as exporters write it (passes/prune) -------------------------


class _Net:
    """Nodes and seeded initializers of one exporter-style graph; onnx infers the shapes."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, value, dtype=np.float32, name: str | None = None) -> str:
        name = name or self.fresh("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op: str, inputs: list[str], n_out: int = 1, name: str | None = None,
           **attrs) -> str | list[str]:
        name = name or self.fresh(op.lower())
        outs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs if n_out > 1 else outs[0]

    def conv(self, x: str, cin: int, cout: int, k: int = 1, stride: int = 1, group: int = 1,
             pad: int | None = None, name: str | None = None) -> str:
        fan = cin // group * k * k
        w = self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan)
        pad = k // 2 if pad is None else pad
        return self.op("Conv", [x, self.const(w), self.const(self.rng.standard_normal(cout) * 0.1)],
                       name=name, kernel_shape=[k, k], strides=[stride, stride],
                       pads=[pad] * 4, group=group)

    def per_channel(self, c: int, shape: tuple, low: float = 0.5) -> str:
        return self.const(self.rng.uniform(low, low + 1.0, c).reshape(shape))

    def silu(self, x: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x])])

    def model(self, name: str, inputs: dict, outputs: list[str], opset: int = 13,
              ir_version: int = 8) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, [_vi(k, v) for k, v in inputs.items()],
                                  [], self.inits)
        model = onnx.shape_inference.infer_shapes(_model(graph, opset, ir_version))
        infos = {v.name: v for v in model.graph.value_info}
        model.graph.output.extend(infos[o] for o in outputs)  # shapes as the exporter wrote them
        for o in outputs:
            model.graph.value_info.remove(infos[o])
        return model


def tf2onnx_nhwc_stack(c: int = 8, hw: int = 16) -> onnx.ModelProto:
    """A conv stack as tf2onnx writes a Keras NHWC model.

    NHWC input -> Transpose -> Conv -> Relu -> Transpose to NHWC -> leftover BatchNorm as
    Mul/Add with [C] constants -> explicit Pad of H and W (TF "SAME") -> Transpose -> stride-2
    depthwise Conv -> Clip(0, 6) -> two 1x1 Convs, each Transposed to NHWC -> residual Add in
    NHWC -> Relu -> Reshape [N, H*W, C] -> ReduceMean over H*W -> MatMul + Add -> Softmax.
    """
    n = _Net(21)
    x = n.op("Transpose", ["x"], name="to_nchw", perm=[0, 3, 1, 2])
    h = n.op("Relu", [n.conv(x, 3, c, 3, name="conv1")])
    h = n.op("Transpose", [h], name="to_nhwc1", perm=[0, 2, 3, 1])
    h = n.op("Mul", [h, n.per_channel(c, (c,))], name="bn_mul")
    h = n.op("Add", [h, n.per_channel(c, (c,), -0.5)], name="bn_add")
    pads = n.const([0, 1, 1, 0, 0, 1, 1, 0], np.int64)
    h = n.op("Pad", [h, pads], name="same_pad")
    h = n.op("Transpose", [h], name="to_nchw2", perm=[0, 3, 1, 2])
    h = n.conv(h, c, c, 3, stride=2, group=c, pad=0, name="dw")
    h = n.op("Clip", [h, n.const(0.0), n.const(6.0)], name="relu6")
    a = n.op("Transpose", [n.conv(h, c, 2 * c, name="pw_a")], perm=[0, 2, 3, 1])
    b = n.op("Transpose", [n.conv(h, c, 2 * c, name="pw_b")], perm=[0, 2, 3, 1])
    s = n.op("Relu", [n.op("Add", [a, b], name="residual")])
    s = n.op("Reshape", [s, n.const([1, -1, 2 * c], np.int64)], name="to_seq")
    s = n.op("ReduceMean", [s], name="pool", axes=[1], keepdims=0)
    w = n.rng.standard_normal((2 * c, 10)) * np.sqrt(1.0 / (2 * c))
    y = n.op("Add", [n.op("MatMul", [s, n.const(w)], name="fc"), n.const(np.zeros(10))])
    n.op("Softmax", [y], name="y", axis=-1)
    return n.model("tf2onnx_nhwc", {"x": [1, hw, hw, 3]}, ["y_out"])


def pad_conv(c: int = 8, hw: int = 16) -> onnx.ModelProto:
    """Explicit Pad nodes in front of Convs (tflite2onnx / TF "SAME" on strided convs).

    Conv -> Relu -> Pad (constant, bottom/right only) -> stride-2 Conv without pads ->
    Relu -> Pad (reflect) -> depthwise Conv -> Relu -> Conv 1x1 -> y.
    """
    n = _Net(22)
    h = n.op("Relu", [n.conv("x", 3, c, 3, name="conv1")])
    h = n.op("Pad", [h, n.const([0, 0, 0, 0, 0, 0, 1, 1], np.int64), n.const(0.0)],
             name="pad_br", mode="constant")
    h = n.op("Relu", [n.conv(h, c, 2 * c, 3, stride=2, pad=0, name="conv2")])
    h = n.op("Pad", [h, n.const([0, 0, 1, 1, 0, 0, 1, 1], np.int64)], name="pad_reflect",
             mode="reflect")
    h = n.op("Relu", [n.conv(h, 2 * c, 2 * c, 3, group=2 * c, pad=0, name="dw")])
    n.conv(h, 2 * c, 4, name="y")
    return n.model("pad_conv", {"x": [1, 3, hw, hw]}, ["y_out"])


def fpn_resize(c: int = 8, hw: int = 16, opset: int = 13) -> onnx.ModelProto:
    """A feature pyramid: lateral 1x1 convs, top-down Resize (scales, and sizes that name the
    channel count) added to the laterals, Concat of the levels, a BatchNormalization left
    unfused after the Concat, a 3x3 head conv. Opset 9: Upsample instead of Resize."""
    n = _Net(23)
    c0 = n.op("Relu", [n.conv("x", 3, c, 3, name="stem")])
    c1 = n.op("Relu", [n.conv(c0, c, 2 * c, 3, stride=2, name="down1")])
    c2 = n.op("Relu", [n.conv(c1, 2 * c, 4 * c, 3, stride=2, name="down2")])
    l2, l1, l0 = (n.conv(c2, 4 * c, c, name="lat2"), n.conv(c1, 2 * c, c, name="lat1"),
                  n.conv(c0, c, c, name="lat0"))
    p1 = n.op("Add", [l1, _upsample(n, l2, [1, c, hw // 2, hw // 2], opset, "up2")], name="td1")
    p0 = n.op("Add", [l0, _upsample(n, p1, [1, c, hw, hw], opset, "up1", sizes=True)],
              name="td0")
    up = _upsample(n, l2, [1, c, hw, hw], opset, "up2x4", factor=4.0)
    cat = n.op("Concat", [p0, up], name="fuse", axis=1)
    cat = n.op("BatchNormalization", [cat, n.per_channel(2 * c, (2 * c,)),
                                      n.per_channel(2 * c, (2 * c,), -0.5),
                                      n.per_channel(2 * c, (2 * c,), -0.5),
                                      n.per_channel(2 * c, (2 * c,))], name="fuse_bn")
    h = n.op("Relu", [n.conv(n.op("Relu", [cat]), 2 * c, c, 3, name="head")])
    n.conv(h, c, 2, name="y")
    return n.model(f"fpn_{opset}", {"x": [1, 3, hw, hw]}, ["y_out"], opset=opset,
                   ir_version=4 if opset < 10 else 8)


def _upsample(n: _Net, x: str, out: list[int], opset: int, name: str, factor: float = 2.0,
              sizes: bool = False) -> str:
    if opset < 10:
        return n.op("Upsample", [x, n.const([1.0, 1.0, factor, factor])], name=name,
                    mode="nearest")
    if sizes:
        return n.op("Resize", [x, "", "", n.const(out, np.int64)], name=name, mode="nearest")
    return n.op("Resize", [x, "", n.const([1.0, 1.0, factor, factor])], name=name,
                mode="nearest")


def db_head(c: int = 8, hw: int = 16) -> onnx.ModelProto:
    """PP-OCR's DB detection head: Conv 3x3 + BN + Relu, ConvTranspose 2x2/2 + BN + Relu,
    ConvTranspose 2x2/2 to one channel, Sigmoid (BNs written unfused, as paddle2onnx does)."""
    n = _Net(24)
    h = n.op("Relu", [n.conv("x", 3, 4 * c, 3, stride=2, name="backbone")])
    h = n.op("Relu", [_bn(n, n.conv(h, 4 * c, c, 3, name="head_conv"), c)])
    h = n.op("Relu", [_bn(n, _deconv(n, h, c, c, "head_up1"), c)])
    n.op("Sigmoid", [_deconv(n, h, c, 1, "head_up2")], name="y")
    return n.model("db_head", {"x": [1, 3, hw, hw]}, ["y_out"])


def scaled_heads_softmax(c: int = 8, hw: int = 16, gain: float = 40.0) -> onnx.ModelProto:
    """SSD-style class logits: two 1x1 heads, the second `gain` times larger, each reshaped
    to [1, anchors, 2], concatenated over the anchors and a Softmax over the classes."""
    n = _Net(26)
    h = n.op("Relu", [n.conv("x", 3, c, 3, stride=2, name="backbone")])
    small = n.conv(h, c, 2, name="head_small")
    big = n.op("Mul", [n.conv(h, c, 2, name="head_big"), n.const(gain)], name="head_gain")
    shape = n.const([1, -1, 2], np.int64)
    flat = [n.op("Reshape", [n.op("Transpose", [t], name=f"{k}_nhwc", perm=[0, 2, 3, 1]),
                             shape], name=f"{k}_flat") for k, t in (("small", small),
                                                                     ("big", big))]
    n.op("Softmax", [n.op("Concat", flat, name="logits", axis=1)], name="probs", axis=-1)
    return n.model("scaled_heads_softmax", {"x": [1, 3, hw, hw]}, ["probs_out"])


def _bn(n: _Net, x: str, c: int) -> str:
    stats = [n.per_channel(c, (c,)), n.per_channel(c, (c,), -0.5),
             n.per_channel(c, (c,), -0.5), n.per_channel(c, (c,))]
    return n.op("BatchNormalization", [x, *stats], epsilon=1e-5)


def _deconv(n: _Net, x: str, cin: int, cout: int, name: str) -> str:
    w = n.rng.standard_normal((cin, cout, 2, 2)) * np.sqrt(2.0 / cin)
    return n.op("ConvTranspose", [x, n.const(w), n.const(np.zeros(cout))], name=name,
                kernel_shape=[2, 2], strides=[2, 2])


def c2f_detect(c: int = 8, hw: int = 16, reg: int = 4, nc: int = 3) -> onnx.ModelProto:
    """An Ultralytics-style C2f block and a one-level detection head with DFL.

    C2f: cv1 (Conv 1x1 to 2c, SiLU as Sigmoid*Mul) -> Split [c, c] -> a bottleneck on the
    second half with a residual Add -> Concat of the three -> cv2. Head: box Conv to
    4*reg, class Conv to nc, Concat -> Reshape [N, 4*reg+nc, H*W] -> Split [4*reg, nc];
    DFL: Reshape [N, 4, reg, A] -> Transpose -> Softmax over the bins -> Conv with fixed
    arange weights -> Reshape [N, 4, A]; classes Sigmoid; Concat -> y [N, 4+nc, A].
    """
    n = _Net(25)
    x = n.silu(n.conv("x", 3, 2 * c, 3, stride=2, name="stem"))
    y0, y1 = n.op("Split", [n.silu(n.conv(x, 2 * c, 2 * c, name="cv1")),
                            n.const([c, c], np.int64)], n_out=2, name="chunk", axis=1)
    m = n.silu(n.conv(n.silu(n.conv(y1, c, c, 3, name="m0_cv1")), c, c, 3, name="m0_cv2"))
    y2 = n.op("Add", [y1, m], name="m0_add")
    h = n.silu(n.conv(n.op("Concat", [y0, y1, y2], name="c2f_cat", axis=1), 3 * c, 2 * c,
                      name="cv2"))
    box = n.conv(n.silu(n.conv(h, 2 * c, c, 3, name="box0")), c, 4 * reg, name="box1")
    cls = n.conv(n.silu(n.conv(h, 2 * c, c, 3, name="cls0")), c, nc, name="cls1")
    a = (hw // 2) ** 2
    cat = n.op("Reshape", [n.op("Concat", [box, cls], name="head_cat", axis=1),
                           n.const([1, 4 * reg + nc, a], np.int64)], name="flat_anchors")
    dist, scores = n.op("Split", [cat, n.const([4 * reg, nc], np.int64)], n_out=2,
                        name="box_cls", axis=1)
    bins = n.op("Reshape", [dist, n.const([1, 4, reg, a], np.int64)], name="dfl_bins")
    bins = n.op("Softmax", [n.op("Transpose", [bins], perm=[0, 2, 1, 3])], name="dfl_softmax",
                axis=1)
    proj = n.const(np.arange(reg, dtype=np.float32).reshape(1, reg, 1, 1))
    dist = n.op("Reshape", [n.op("Conv", [bins, proj], name="dfl"), n.const([1, 4, a], np.int64)])
    n.op("Concat", [dist, n.op("Sigmoid", [scores])], name="y", axis=1)
    return n.model("c2f_detect", {"x": [1, 3, hw, hw]}, ["y_out"])


def rpn_objectness(c: int = 8, hw: int = 16, anchors: int = 3) -> onnx.ModelProto:
    """torchvision's RPN head on two pyramid levels, as `torch.onnx` (opset 11) exports it.

    One head (3x3 Conv + Relu, then 1x1 cls_logits and bbox_pred Convs) shared by both levels
    (the same initializers). Per level: Reshape [1, A, k, H, W] -> Transpose [0, 3, 4, 1, 2]
    -> Reshape [1, H*W*A, k]; Concat over the levels. Objectness: Flatten(axis=-1) to
    [H*W*A, 1] -> Reshape [1, -1] -> Flatten(axis=2) to [H*W*A, 1] (Flatten over all axes,
    axis == rank) -> Sigmoid. Boxes: Reshape [-1, 4].
    """
    n = _Net(28)
    w = [n.const(n.rng.standard_normal(s) * np.sqrt(2.0 / np.prod(s[1:])))
         for s in ((c, c, 3, 3), (anchors, c, 1, 1), (4 * anchors, c, 1, 1))]
    b = [n.const(n.rng.standard_normal(k) * 0.1) for k in (c, anchors, 4 * anchors)]
    levels = [n.op("Relu", [n.conv("x", 3, c, 3, stride=2, name="stem")])]
    levels.append(n.op("Relu", [n.conv(levels[0], c, c, 3, stride=2, name="down")]))
    cls, box = [], []
    for i, x in enumerate(levels):
        t = n.op("Relu", [n.op("Conv", [x, w[0], b[0]], name=f"head{i}", kernel_shape=[3, 3],
                                pads=[1, 1, 1, 1])])
        size = hw // 2 ** (i + 1)
        for j, (kind, k, out) in enumerate((("cls", 1, cls), ("box", 4, box)), 1):
            y = n.op("Conv", [t, w[j], b[j]], name=f"{kind}{i}", kernel_shape=[1, 1])
            y = n.op("Reshape", [y, n.const([1, anchors, k, size, size], np.int64)])
            y = n.op("Transpose", [y], perm=[0, 3, 4, 1, 2])
            out.append(n.op("Reshape", [y, n.const([1, -1, k], np.int64)]))
    obj = n.op("Flatten", [n.op("Concat", cls, name="cls_cat", axis=1)], name="obj_flat",
               axis=-1)
    obj = n.op("Reshape", [obj, n.const([1, -1], np.int64)], name="obj_view")
    n.op("Sigmoid", [n.op("Flatten", [obj], name="obj_all", axis=2)], name="objectness")
    n.op("Reshape", [n.op("Concat", box, name="box_cat", axis=1), n.const([-1, 4], np.int64)],
         name="boxes")
    return n.model("rpn_objectness", {"x": [1, 3, hw, hw]}, ["objectness_out", "boxes_out"],
                   opset=11, ir_version=6)


def se_block(c: int = 8, hw: int = 16, style: str = "mobilenetv3") -> onnx.ModelProto:
    """An inverted residual with squeeze-excite as torchvision / timm export it.

    mobilenetv3: HardSwish, GlobalAveragePool -> Conv -> Relu -> Conv -> HardSigmoid -> Mul.
    efficientnet: SiLU (Sigmoid*Mul), ReduceMean over H, W -> Conv -> SiLU -> Conv ->
    Sigmoid -> Mul. Both: stem -> expand 1x1 -> depthwise 3x3 -> SE -> project 1x1 ->
    residual Add -> head Conv -> pool -> Flatten -> Gemm.
    """
    n = _Net(26)
    act = n.silu if style == "efficientnet" else (lambda t: n.op("HardSwish", [t]))
    x = act(n.conv("x", 3, c, 3, stride=2, name="stem"))
    h = act(n.conv(x, c, 4 * c, name="expand"))
    h = act(n.conv(h, 4 * c, 4 * c, 3, group=4 * c, name="dw"))
    if style == "efficientnet":
        s = n.op("ReduceMean", [h], name="se_pool", axes=[2, 3], keepdims=1)
        s = n.op("Sigmoid", [n.conv(n.silu(n.conv(s, 4 * c, c, name="se_reduce")), c, 4 * c,
                                    name="se_expand")], name="se_gate")
    else:
        s = n.op("GlobalAveragePool", [h], name="se_pool")
        s = n.op("HardSigmoid", [n.conv(n.op("Relu", [n.conv(s, 4 * c, c, name="se_reduce")]),
                                        c, 4 * c, name="se_expand")], name="se_gate",
                 alpha=1 / 6, beta=0.5)
    h = n.op("Add", [x, n.conv(n.op("Mul", [h, s], name="se_scale"), 4 * c, c,
                               name="project")], name="residual")
    h = act(n.conv(h, c, 4 * c, name="head"))
    h = n.op("Flatten", [n.op("GlobalAveragePool", [h], name="pool")], axis=1)
    w = n.rng.standard_normal((10, 4 * c)) * np.sqrt(1.0 / (4 * c))
    n.op("Gemm", [h, n.const(w), n.const(np.zeros(10))], name="y", transB=1)
    return n.model(f"se_{style}", {"x": [1, 3, hw, hw]}, ["y_out"], opset=14)  # HardSwish


def shufflenet_v2(c: int = 16, hw: int = 32, units: int = 3) -> onnx.ModelProto:
    """torchvision's ShuffleNetV2 stage with static shapes: a stride-2 unit (two branches,
    Concat, channel shuffle) then `units - 1` basic units (channel Split into halves, the
    second half through 1x1 / depthwise 3x3 / 1x1, Concat, shuffle); conv5, pool, Gemm."""
    n = _Net(27)
    x = n.op("MaxPool", [n.op("Relu", [n.conv("x", 3, c, 3, stride=2, name="conv1")])],
             kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    b1 = n.op("Relu", [n.conv(n.conv(x, c, c, 3, stride=2, group=c, name="s0_b1_dw"), c, c,
                              name="s0_b1_pw")])
    b2 = _shuffle_branch(n, x, c, 2, "s0_b2")
    x, size = _shuffle(n, n.op("Concat", [b1, b2], axis=1), 2 * c, hw // 8, "s0")
    for u in range(1, units):
        a, b = n.op("Split", [x, n.const([c, c], np.int64)], n_out=2, name=f"s{u}_chunk", axis=1)
        x, _ = _shuffle(n, n.op("Concat", [a, _shuffle_branch(n, b, c, 1, f"s{u}_b2")], axis=1),
                        2 * c, size, f"s{u}")
    h = n.op("Relu", [n.conv(x, 2 * c, 4 * c, name="conv5")])
    h = n.op("Flatten", [n.op("GlobalAveragePool", [h])], axis=1)
    w = n.rng.standard_normal((10, 4 * c)) * np.sqrt(1.0 / (4 * c))
    n.op("Gemm", [h, n.const(w), n.const(np.zeros(10))], name="fc", transB=1)
    return n.model("shufflenet_v2", {"x": [1, 3, hw, hw]}, ["fc_out"])


def _shuffle_branch(n: _Net, x: str, c: int, stride: int, name: str) -> str:
    h = n.op("Relu", [n.conv(x, c, c, name=f"{name}_pw1")])
    h = n.conv(h, c, c, 3, stride=stride, group=c, name=f"{name}_dw")
    return n.op("Relu", [n.conv(h, c, c, name=f"{name}_pw2")])


def _shuffle(n: _Net, x: str, c: int, size: int, name: str) -> tuple[str, int]:
    h = n.op("Reshape", [x, n.const([1, 2, c // 2, size, size], np.int64)], name=f"{name}_view")
    h = n.op("Transpose", [h], name=f"{name}_swap", perm=[0, 2, 1, 3, 4])
    return n.op("Reshape", [h, n.const([1, c, size, size], np.int64)], name=f"{name}_flat"), size


def svtr_mixer(c: int = 8, h: int = 4, w: int = 16) -> onnx.ModelProto:
    """PP-OCR rec's SVTR block as paddle2onnx writes it: Conv -> Reshape [N, C, H*W] ->
    Transpose to [N, L, C] -> LayerNorm decomposed (ReduceMean, Sub, Pow, Sqrt, Div, scale,
    shift) -> MLP (MatMul + Add, HardSwish, MatMul + Add) -> residual Add -> Transpose and
    Reshape back to NCHW -> Conv."""
    n = _Net(28)
    x = n.op("Relu", [n.conv("x", 3, c, 3, name="conv_in")])
    s = n.op("Transpose", [n.op("Reshape", [x, n.const([1, c, h * w], np.int64)],
                                name="to_seq")], name="to_nlc", perm=[0, 2, 1])
    d = n.op("Sub", [s, n.op("ReduceMean", [s], name="ln_mean", axes=[-1])], name="ln_sub")
    var = n.op("ReduceMean", [n.op("Pow", [d, n.const(2.0)])], name="ln_var", axes=[-1])
    y = n.op("Div", [d, n.op("Sqrt", [n.op("Add", [var, n.const(1e-5)])])], name="ln_div")
    y = n.op("Add", [n.op("Mul", [y, n.per_channel(c, (c,))], name="ln_scale"),
                     n.per_channel(c, (c,), -0.5)], name="ln_shift")
    fc1 = n.rng.standard_normal((c, 2 * c)) * np.sqrt(2.0 / c)
    y = n.op("MatMul", [y, n.const(fc1)], name="fc1")
    y = n.op("HardSwish", [n.op("Add", [y, n.const(np.zeros(2 * c))], name="fc1_bias")])
    fc2 = n.rng.standard_normal((2 * c, c)) * np.sqrt(1.0 / c)
    y = n.op("Add", [n.op("MatMul", [y, n.const(fc2)], name="fc2"), n.const(np.zeros(c))],
             name="fc2_bias")
    s = n.op("Transpose", [n.op("Add", [s, y], name="residual")], name="to_ncl",
             perm=[0, 2, 1])
    x = n.op("Reshape", [s, n.const([1, c, h, w], np.int64)], name="to_map")
    n.conv(x, c, 4, name="y")
    return n.model("svtr_mixer", {"x": [1, 3, h, w]}, ["y_out"], opset=14)


# --- detectors that keep their post-processing (issue #16 item 3) -----------------------------

def _f32(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _i64(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.int64), name)


def _backbone(rng: np.random.Generator, c: int = 8):
    """x [1,3,16,16] -> Conv 3x3 + Relu -> Conv 3x3 stride 2 + Relu -> feat [1,c,8,8]."""
    inits = [_init(rng, "bb_w0", (c, 3, 3, 3)), _init(rng, "bb_b0", (c,)),
             _init(rng, "bb_w1", (c, c, 3, 3)), _init(rng, "bb_b1", (c,))]
    nodes = [helper.make_node("Conv", ["x", "bb_w0", "bb_b0"], ["bb_c0"], name="bb_conv0",
                              kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["bb_c0"], ["bb_r0"], name="bb_relu0"),
             helper.make_node("Conv", ["bb_r0", "bb_w1", "bb_b1"], ["bb_c1"], name="bb_conv1",
                              kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["bb_c1"], ["feat"], name="bb_relu1")]
    return inits, nodes


BACKBONE_MACS = 16 * 16 * 8 * 3 * 9 + 8 * 8 * 8 * 8 * 9
"""MACs of `_backbone` (c=8): 55,296 + 36,864."""


def _head(rng: np.random.Generator, name: str, src: str, cin: int, cout: int):
    """A 1x1 Conv head; 64·cin·cout MACs on the [1, cin, 8, 8] feature map."""
    inits = [_init(rng, f"{name}_w", (cout, cin, 1, 1)), _init(rng, f"{name}_b", (cout,))]
    return inits, [helper.make_node("Conv", [src, f"{name}_w", f"{name}_b"], [name], name=name,
                                    kernel_shape=[1, 1])]


def _anchors(name: str, src: str, channels: int, last: bool) -> list[onnx.NodeProto]:
    """[1, C, 8, 8] -> [1, 64, C] (last) or [1, C, 64], as SSD heads flatten anchors."""
    nodes = [helper.make_node("Reshape", [src, f"{name}_shape"], [f"{name}_flat"],
                              name=f"{name}_reshape")]
    if last:
        nodes.append(helper.make_node("Transpose", [f"{name}_flat"], [name], perm=[0, 2, 1],
                                      name=f"{name}_transpose"))
    else:
        nodes[0].output[0] = name
    return nodes


def _detector(rng: np.random.Generator, classes: int):
    """Backbone plus box and class heads: boxes [1, 64, 4], scores [1, classes, 64]."""
    inits, nodes = _backbone(rng)
    for name, cout in (("box_head", 4), ("cls_head", classes)):
        more_i, more_n = _head(rng, name, "feat", 8, cout)
        inits, nodes = inits + more_i, nodes + more_n
    inits += [_i64("boxes_shape", [1, 4, 64]), _i64("logits_shape", [1, classes, 64])]
    nodes += _anchors("boxes", "box_head", 4, True) + _anchors("logits", "cls_head", classes,
                                                               False)
    nodes.append(helper.make_node("Sigmoid", ["logits"], ["scores"], name="scores_sigmoid"))
    return inits, nodes



def _graph_model(nodes, name: str, inits, outputs, opset: int = 13,
                 domains: tuple[tuple[str, int], ...] = ()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, [_vi("x", [1, 3, 16, 16])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)] + [
        helper.make_opsetid(d, v) for d, v in domains], producer_name="exporter_graphs")
    model.ir_version = 8
    return model


def ssd_nms_model() -> onnx.ModelProto:
    """An SSD / torchvision-style tail: boxes and scores -> NonMaxSuppression -> Gather.

    The outputs (`det_boxes` [K, 4], `det_scores` [K], `det_labels` [K]) have a
    data-dependent first dimension K <= 3 · 5 (scores above 0.85, IoU 0.5).
    """
    rng = np.random.default_rng(21)
    inits, nodes = _detector(rng, classes=3)
    inits += [_i64("max_out", [5]), _f32("iou", [0.5]), _f32("score_thr", [0.85]),
              _i64("col_box", 2), _i64("col_cls", 1), _i64("axis0", [0])]
    nodes += [
        helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "score_thr"],
                         ["selected"], name="nms"),
        helper.make_node("Gather", ["selected", "col_box"], ["box_idx"], axis=1,
                         name="pick_box_idx"),
        helper.make_node("Gather", ["selected", "col_cls"], ["det_labels"], axis=1,
                         name="pick_label"),
        helper.make_node("Squeeze", ["boxes", "axis0"], ["boxes0"], name="boxes_squeeze"),
        helper.make_node("Gather", ["boxes0", "box_idx"], ["det_boxes"], axis=0,
                         name="gather_boxes"),
        helper.make_node("GatherND", ["scores", "selected"], ["det_scores"],
                         name="gather_scores"),
    ]
    outs = [_vi("det_boxes", ["K", 4]), _vi("det_scores", ["K"]),
            helper.make_tensor_value_info("det_labels", TensorProto.INT64, ["K"])]
    return _graph_model(nodes, "ssd_nms", inits, outs)


def clip_boxes_model() -> onnx.ModelProto:
    """torchvision RetinaNet's per-level post-processing, as `torch.onnx` exports it.

    Per level (score thresholds 0.5 and 1.5, the second never reached by a Sigmoid, so that
    level keeps no box, as a pyramid level with no detection): scores above the threshold
    -> NonZero -> Gather of their boxes [K, 4] -> `clip_boxes_to_image`: x and y columns
    sliced, clamped with Max / Min, Unsqueezed and Concatenated to [K, 2, 2], then Reshaped
    back to the run-time shape of the boxes (Shape -> Gather -> Unsqueeze -> Concat). The
    levels are Concatenated: `det_boxes` [K, 4].
    """
    rng = np.random.default_rng(29)
    inits, nodes = _detector(rng, classes=1)
    inits += [_i64("flat", [-1]), _i64("box_rows", [-1, 4]), _i64("ax0", [0]),
              _i64("ax1", [1]), _i64("ax2", [2]), _i64("start0", [0]), _i64("start1", [1]),
              _i64("end", [2**62]), _i64("step2", [2]), _i64("dim0", 0), _i64("dim1", 1),
              _f32("zero", 0.0), _f32("width", 16.0), _f32("height", 16.0)]
    nodes += [helper.make_node("Reshape", ["scores", "flat"], ["scores_flat"]),
              helper.make_node("Reshape", ["boxes", "box_rows"], ["box_rows_all"])]
    levels = []
    for lvl, thr in enumerate((0.5, 1.5)):
        p = f"l{lvl}_"
        inits.append(_f32(f"{p}thr", thr))
        nodes += [
            helper.make_node("Greater", ["scores_flat", f"{p}thr"], [f"{p}keep"]),
            helper.make_node("NonZero", [f"{p}keep"], [f"{p}nz"]),
            helper.make_node("Squeeze", [f"{p}nz", "ax0"], [f"{p}idx"]),
            helper.make_node("Gather", ["box_rows_all", f"{p}idx"], [f"{p}boxes"], axis=0),
        ]
        for col, start, limit in (("x", "start0", "width"), ("y", "start1", "height")):
            nodes += [
                helper.make_node("Slice", [f"{p}boxes", start, "end", "ax1", "step2"],
                                 [f"{p}{col}"]),
                helper.make_node("Max", [f"{p}{col}", "zero"], [f"{p}{col}_lo"]),
                helper.make_node("Min", [f"{p}{col}_lo", limit], [f"{p}{col}_hi"]),
                helper.make_node("Unsqueeze", [f"{p}{col}_hi", "ax2"], [f"{p}{col}_3d"]),
            ]
        nodes.append(helper.make_node("Concat", [f"{p}x_3d", f"{p}y_3d"], [f"{p}xy"], axis=2))
        nodes.append(helper.make_node("Shape", [f"{p}boxes"], [f"{p}shape"]))
        for k in (0, 1):
            nodes += [helper.make_node("Gather", [f"{p}shape", f"dim{k}"], [f"{p}d{k}"], axis=0),
                      helper.make_node("Unsqueeze", [f"{p}d{k}", "ax0"], [f"{p}d{k}_1d"])]
        nodes += [helper.make_node("Concat", [f"{p}d0_1d", f"{p}d1_1d"], [f"{p}target"],
                                   axis=0),
                  helper.make_node("Reshape", [f"{p}xy", f"{p}target"], [f"{p}clipped"],
                                   name=f"{p}clip_reshape")]
        levels.append(f"{p}clipped")
    nodes.append(helper.make_node("Concat", levels, ["det_boxes"], axis=0, name="levels"))
    for i, node in enumerate(nodes):
        node.name = node.name or f"{node.op_type.lower()}_{i}"
    return _graph_model(nodes, "clip_boxes", inits, [_vi("det_boxes", ["K", 4]),
                                                      _vi("scores", [1, 1, 64])])


def topk_model(dynamic_k: bool = False) -> onnx.ModelProto:
    """Best-scoring anchors: TopK over the class-0 scores, Gather of their boxes.

    With `dynamic_k`, k = min(#scores > 0.4, 10) is computed from the data (the shape of
    both outputs is then only known at run time).
    """
    rng = np.random.default_rng(22)
    inits, nodes = _detector(rng, classes=1)
    inits += [_i64("k10", [10]), _i64("sq_axes", [1])]
    nodes.append(helper.make_node("Squeeze", ["scores", "sq_axes"], ["score0"],
                                  name="score_squeeze"))
    k = "k10"
    if dynamic_k:
        nodes += [helper.make_node("Greater", ["score0", "k_thr"], ["above"], name="above"),
                  helper.make_node("Cast", ["above"], ["above_i"], to=TensorProto.INT64,
                                   name="above_cast"),
                  helper.make_node("ReduceSum", ["above_i"], ["n_above"], keepdims=0,
                                   name="count"),
                  helper.make_node("Reshape", ["n_above", "k10_shape"], ["n_above1"],
                                   name="count_1d"),
                  helper.make_node("Min", ["n_above1", "k10"], ["k"], name="k_min")]
        inits += [_i64("k10_shape", [1]), _f32("k_thr", 0.4)]
        k = "k"
    nodes += [helper.make_node("TopK", ["score0", k], ["top_scores", "top_idx"], axis=1,
                               name="topk"),
              helper.make_node("Gather", ["boxes", "top_idx"], ["top_boxes4"], axis=1,
                               name="gather_top"),
              helper.make_node("Squeeze", ["top_boxes4", "sq_axes"], ["top_boxes"],
                               name="top_squeeze")]
    kdim = "k" if dynamic_k else 10
    return _graph_model(nodes, "topk", inits, [_vi("top_scores", [1, kdim]),
                                                _vi("top_boxes", [1, kdim, 4])])


def nonzero_model() -> onnx.ModelProto:
    """Heat-map peaks: Conv -> Sigmoid -> Greater -> NonZero, then Shape arithmetic and
    ConstantOfShape on the data-dependent count, and a static Shape-computed Reshape that
    load-time folding resolves (its Conv stays on the NPU)."""
    rng = np.random.default_rng(23)
    inits, nodes = _backbone(rng)
    more_i, more_n = _head(rng, "heat_head", "feat", 8, 1)
    inits += more_i + [_f32("thr", 0.5), _i64("idx0", 0), _i64("minus1", [-1]),
                       _i64("two", [2])]
    nodes += more_n + [
        helper.make_node("Sigmoid", ["heat_head"], ["heat"], name="heat_sigmoid"),
        helper.make_node("Greater", ["heat", "thr"], ["peaks"], name="peaks"),
        helper.make_node("NonZero", ["peaks"], ["nz"], name="nonzero"),
        helper.make_node("Transpose", ["nz"], ["coords"], perm=[1, 0], name="coords"),
        helper.make_node("Shape", ["coords"], ["coords_shape"], name="coords_shape"),
        helper.make_node("Gather", ["coords_shape", "idx0"], ["n_peaks"], axis=0,
                         name="n_peaks"),
        helper.make_node("Unsqueeze", ["n_peaks", "idx0_axes"], ["n_peaks1"],
                         name="n_peaks1"),
        helper.make_node("Concat", ["n_peaks1", "two"], ["ones_shape"], axis=0,
                         name="ones_shape"),
        helper.make_node("ConstantOfShape", ["ones_shape"], ["ones"], name="ones",
                         value=numpy_helper.from_array(np.ones(1, np.float32))),
        helper.make_node("Shape", ["heat"], ["heat_shape"], name="heat_shape"),
        helper.make_node("Slice", ["heat_shape", "zero1", "one1"], ["batch1"],
                         name="batch_dim"),
        helper.make_node("Concat", ["batch1", "minus1"], ["flat_shape"], axis=0,
                         name="flat_shape"),
        helper.make_node("Reshape", ["feat", "flat_shape"], ["feat_flat"], name="flatten"),
        helper.make_node("Gemm", ["feat_flat", "fc_w", "fc_b"], ["logits"], transB=1,
                         name="fc"),
    ]
    inits += [_i64("idx0_axes", [0]), _i64("zero1", [0]), _i64("one1", [1]),
              _init(rng, "fc_w", (5, 8 * 64)), _init(rng, "fc_b", (5,))]
    outs = [helper.make_tensor_value_info("coords", TensorProto.INT64, ["P", 4]),
            _vi("ones", ["P", 2]), _vi("logits", [1, 5])]
    return _graph_model(nodes, "nonzero", inits, outs)



def _if_branch(name: str, op: str, scale: float) -> onnx.GraphProto:
    """One If branch: `op(feat)` (an outer-scope reference) times a branch-local constant."""
    return helper.make_graph(
        [helper.make_node(op, ["feat"], [f"{name}_a"], name=f"{name}_{op.lower()}"),
         helper.make_node("Mul", [f"{name}_a", f"{name}_k"], [f"{name}_out"],
                          name=f"{name}_mul")],
        name, [], [_vi(f"{name}_out", [1, 8, 8, 8])], [_f32(f"{name}_k", scale)])


def _loop_body() -> onnx.GraphProto:
    """v <- 0.5 · v + pooled (outer scope); scan output: every v."""
    nodes = [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="loop_cond"),
             helper.make_node("Mul", ["v", "decay"], ["v_half"], name="loop_mul"),
             helper.make_node("Add", ["v_half", "pooled"], ["v_out"], name="loop_add"),
             helper.make_node("Identity", ["v_out"], ["v_scan"], name="loop_scan")]
    inputs = [helper.make_tensor_value_info("iter", TensorProto.INT64, []),
              helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), _vi("v", [1, 4])]
    outputs = [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
               _vi("v_out", [1, 4]), _vi("v_scan", [1, 4])]
    return helper.make_graph(nodes, "loop_body", inputs, outputs)


def control_flow_model() -> onnx.ModelProto:
    """If in the middle (its branches read `feat` from the outer scope), a Conv after it,
    and a Loop at the tail whose body reads the pooled head output from the outer scope.

    x -> backbone -> feat -> If(mean(feat) > 0.5: Relu(feat)·1.5 else Neg(feat)·0.5) ->
    Conv 1x1 (8->4) -> GlobalAveragePool -> Flatten -> pooled [1, 4];
    Loop 3 times v <- 0.5·v + pooled from v0 = 0 -> `final` [1, 4], `trace` [3, 1, 4].
    """
    rng = np.random.default_rng(24)
    inits, nodes = _backbone(rng)
    more_i, more_n = _head(rng, "post_head", "branch", 8, 4)
    inits += more_i + [_f32("mean_thr", 0.5), _i64("trips", 3), _f32("decay", 0.5),
                       _f32("v0", np.zeros((1, 4)))]
    nodes += [
        helper.make_node("ReduceMean", ["feat"], ["feat_mean"], keepdims=0, name="feat_mean"),
        helper.make_node("Greater", ["feat_mean", "mean_thr"], ["bright"], name="bright"),
        helper.make_node("If", ["bright"], ["branch"], name="if_bright",
                         then_branch=_if_branch("then", "Relu", 1.5),
                         else_branch=_if_branch("else", "Neg", 0.5)),
    ] + more_n + [
        helper.make_node("GlobalAveragePool", ["post_head"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["pooled"], axis=1, name="flatten"),
        helper.make_node("Loop", ["trips", "", "v0"], ["final", "trace"], name="loop",
                         body=_loop_body()),
    ]
    return _graph_model(nodes, "control_flow", inits, [_vi("final", [1, 4]),
                                                        _vi("trace", [3, 1, 4])])



def _missing(kind: str, src: str, dst: str, rng: np.random.Generator):
    """One op the target lacks, [1, 8, 8, 8] -> [1, 8, 8, 8]."""
    if kind == "layernorm":
        return ([_init(rng, "ln_s", (8,), 0.5), _init(rng, "ln_b", (8,))],
                [helper.make_node("LayerNormalization", [src, "ln_s", "ln_b"], [dst], axis=-1,
                                  epsilon=1e-5, name="layernorm")], ())
    if kind == "einsum":
        return ([_init(rng, "mix", (8, 8))],
                [helper.make_node("Einsum", [src, "mix"], [dst], equation="nchw,dc->ndhw",
                                  name="einsum")], ())
    if kind == "gelu":  # onnxruntime's contrib op, as transformer exporters fuse it
        return [], [helper.make_node("Gelu", [src], [dst], domain="com.microsoft",
                                     name="gelu")], (("com.microsoft", 1),)
    if kind == "erf":  # Erf is an NPU lookup table, the Softmax after it is not
        return [], [helper.make_node("Erf", [src], [f"{dst}_e"], name="erf"),
                    helper.make_node("Softmax", [f"{dst}_e"], [dst], axis=1,
                                     name="softmax")], ()
    raise ValueError(kind)


def missing_op_model(kind: str = "layernorm") -> onnx.ModelProto:
    """An op the target lacks in the middle: backbone -> op -> Conv 3x3 + Relu -> Conv 1x1.

    `kind`: layernorm (LayerNormalization over W), einsum (a 1x1 mixing written as Einsum),
    gelu (com.microsoft Gelu, a custom domain) or erf (Erf then Softmax over channels). The
    Convs after it still run on the NPU.
    """
    rng = np.random.default_rng(25)
    inits, nodes = _backbone(rng)
    more_i, more_n, domains = _missing(kind, "feat", "mid", rng)
    inits += more_i + [_init(rng, "tail_w0", (8, 8, 3, 3)), _init(rng, "tail_w1", (4, 8, 1, 1))]
    nodes += more_n + [
        helper.make_node("Conv", ["mid", "tail_w0"], ["tail_c0"], name="tail_conv0",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["tail_c0"], ["tail_r0"], name="tail_relu0"),
        helper.make_node("Conv", ["tail_r0", "tail_w1"], ["y"], name="tail_conv1",
                         kernel_shape=[1, 1])]
    return _graph_model(nodes, f"missing_{kind}", inits, [_vi("y", [1, 4, 8, 8])],
                        opset=17, domains=domains)



def _loop_graph(name: str, nodes: list, carried: list, scans: list = ()) -> onnx.GraphProto:
    """A Loop body: (iter, cond, *carried) -> (cond, *carried, *scans); `carried`/`scans`
    as (name_in, name_out, shape) / (name, shape)."""
    inputs = [helper.make_tensor_value_info("iter", TensorProto.INT64, []),
              helper.make_tensor_value_info("c_in", TensorProto.BOOL, [])]
    outputs = [helper.make_tensor_value_info("c_out", TensorProto.BOOL, [])]
    inputs += [_vi(i, s) for i, _, s in carried]
    outputs += [_vi(o, s) for _, o, s in carried] + [_vi(n, s) for n, s in scans]
    body = [helper.make_node("Identity", ["c_in"], ["c_out"], name=f"{name}_cond")] + nodes
    return helper.make_graph(body, name, inputs, outputs)


def nested_control_flow_model() -> onnx.ModelProto:
    """A Loop whose body holds an If whose branches read `feat` two scopes up, and a Conv
    after the Loop (ONNX cannot infer the Loop output's shape: the Conv runs on the host).

    acc <- acc + (Relu(feat) if mean(feat) > 0.3 else feat), twice, from 0 -> Conv 1x1.
    """
    rng = np.random.default_rng(26)
    inits, nodes = _backbone(rng)
    shape = [1, 8, 8, 8]
    branches = {k: helper.make_graph([helper.make_node(op, ["feat"], [f"{k}_out"],
                                                       name=f"inner_{k}")], f"inner_{k}", [],
                                     [_vi(f"{k}_out", shape)])
                for k, op in (("then", "Relu"), ("else", "Identity"))}
    body = _loop_graph("body", [
        helper.make_node("If", ["flag"], ["sel"], name="inner_if",
                         then_branch=branches["then"], else_branch=branches["else"]),
        helper.make_node("Add", ["acc", "sel"], ["acc_out"], name="body_add")],
        [("acc", "acc_out", shape)])
    inits += [_f32("thr", 0.3), _i64("trips", 2), _f32("zeros", np.zeros(shape)),
              _init(rng, "after_w", (4, 8, 1, 1))]
    nodes += [helper.make_node("ReduceMean", ["feat"], ["m"], keepdims=0, name="mean"),
              helper.make_node("Greater", ["m", "thr"], ["flag"], name="flag"),
              helper.make_node("Loop", ["trips", "", "zeros"], ["acc_final"], body=body,
                               name="loop"),
              helper.make_node("Conv", ["acc_final", "after_w"], ["y"], name="conv_after",
                               kernel_shape=[1, 1])]
    return _graph_model(nodes, "nested_control_flow", inits, [_vi("y", [1, 4, 8, 8])])


def host_tensor_model() -> onnx.ModelProto:
    """A run-time-shaped tensor crossing from one CPU partition to a later one over NPU work.

    feat -> NonZero(feat > 1) -> Transpose (host); feat -> Softmax (host) -> Conv 1x1 (NPU);
    GatherND(conv, peaks) (host) -> `vals` [P]; and a Loop whose trip count is computed from
    the data (4·max of the pooled features), so its scan output `trace` has a run-time length.
    """
    rng = np.random.default_rng(27)
    inits, nodes = _backbone(rng)
    body = _loop_graph("body", [helper.make_node("Mul", ["v", "half"], ["v_out"], name="b_mul"),
                                helper.make_node("Identity", ["v_out"], ["v_scan"],
                                                 name="b_scan")],
                       [("v", "v_out", [1, 8])], [("v_scan", [1, 8])])
    inits += [_f32("one", 1.0), _f32("half", 0.5), _f32("four", 4.0),
              _init(rng, "mix_w", (8, 8, 1, 1))]
    nodes += [
        helper.make_node("Softmax", ["feat"], ["sm"], axis=1, name="softmax"),
        helper.make_node("Greater", ["feat", "one"], ["pos"], name="pos"),
        helper.make_node("NonZero", ["pos"], ["nz"], name="nonzero"),
        helper.make_node("Conv", ["sm", "mix_w"], ["mixed"], name="mix", kernel_shape=[1, 1]),
        helper.make_node("Transpose", ["nz"], ["peaks"], perm=[1, 0], name="peaks"),
        helper.make_node("GatherND", ["mixed", "peaks"], ["vals"], name="gather_vals"),
        helper.make_node("GlobalAveragePool", ["feat"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["pooled"], name="flatten"),
        helper.make_node("ReduceMax", ["pooled"], ["mx"], keepdims=0, name="max"),
        helper.make_node("Mul", ["mx", "four"], ["mx4"], name="times4"),
        helper.make_node("Cast", ["mx4"], ["trips"], to=TensorProto.INT64, name="trips"),
        helper.make_node("Loop", ["trips", "", "pooled"], ["final", "trace"], body=body,
                         name="loop")]
    return _graph_model(nodes, "host_tensor", inits,
                        [_vi("vals", ["P"]), _vi("final", [1, 8]), _vi("trace", ["T", 1, 8])])


def residual_classifier(c: int = 8, hw: int = 8, classes: int = 10) -> onnx.ModelProto:
    """A small residual CNN for per-layer sweeps (sensitivity, passes/quantize).

    stem (3x3 Conv+Relu) -> conv_a (3x3+Relu) -> conv_b (3x3) -> add (+ stem) -> Relu ->
    dw (depthwise 3x3+Relu) -> gap -> Flatten -> fc (Gemm). Node names as listed.
    """
    n = _Net(31)
    stem = n.op("Relu", [n.conv("x", 3, c, 3, name="stem")])
    a = n.op("Relu", [n.conv(stem, c, c, 3, name="conv_a")])
    b = n.conv(a, c, c, 3, name="conv_b")
    r = n.op("Relu", [n.op("Add", [stem, b], name="add")])
    d = n.op("Relu", [n.conv(r, c, c, 3, group=c, name="dw")])
    f = n.op("Flatten", [n.op("GlobalAveragePool", [d], name="gap")], axis=1)
    w = n.const(n.rng.standard_normal((classes, c)) * 0.5)
    n.op("Gemm", [f, w, n.const(np.zeros(classes))], name="fc", transB=1)
    return n.model("residual_classifier", {"x": [1, 3, hw, hw]}, ["fc_out"])
