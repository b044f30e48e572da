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
