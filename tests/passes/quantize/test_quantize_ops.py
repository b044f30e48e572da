"""Per-op bit-exactness: numpy reference == model.quant.onnx in onnxruntime, every tensor."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
from onnx import helper

from compiler.core import qgraph as q
from tests.quant_helpers import check_quantized, make_model

rng = np.random.default_rng(0)
W = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.3  # noqa: E731
node = helper.make_node


def kinds(result) -> set[str]:
    return {op.kind for op in result.qgraph.ops}


@pytest.mark.parametrize("attrs,wshape", [
    ({"pads": [1, 1, 1, 1]}, (8, 4, 3, 3)),
    ({"pads": [0, 1, 2, 1], "strides": [2, 2]}, (8, 4, 3, 3)),
    ({"dilations": [2, 2], "pads": [2, 2, 2, 2]}, (8, 4, 3, 3)),
    ({"group": 4, "pads": [1, 1, 1, 1]}, (4, 1, 3, 3)),             # depthwise
    ({"group": 2, "strides": [2, 1]}, (6, 2, 3, 1)),                 # grouped, non-square
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (8, 4, 4, 4)),
    ({}, (16, 4, 1, 1)),
])
def test_conv_variants(attrs, wshape):
    model = make_model([node("Conv", ["x", "w", "b"], ["y"], **attrs)], {"x": [1, 4, 9, 9]},
                       ["y"], {"w": W(*wshape), "b": W(wshape[0])})
    result = check_quantized(model)
    conv = next(op for op in result.qgraph.ops if isinstance(op, q.QConv))
    assert conv.weight.dtype == np.int8 and conv.bias.dtype == np.int32
    assert np.all((conv.m0 >= 1 << 30) & (conv.m0 < 1 << 31))


@pytest.mark.parametrize("act,lo", [("Relu", 0), ("Clip6", 0), ("Clip-1", None)])
def test_conv_fused_activation(act, lo):
    nodes = [node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1])]
    inits = {"w": W(8, 3, 3, 3)}
    if act == "Relu":
        nodes.append(node("Relu", ["c"], ["y"]))
    else:
        bound = 6.0 if act == "Clip6" else 1.0
        inits.update(lo=np.float32(0.0 if act == "Clip6" else -bound), hi=np.float32(bound))
        nodes.append(node("Clip", ["c", "lo", "hi"], ["y"]))
    result = check_quantized(make_model(nodes, {"x": [1, 3, 8, 8]}, ["y"], inits))
    conv = next(op for op in result.qgraph.ops if isinstance(op, q.QConv))
    assert len(result.report["nodes"]) == 2 and kinds(result) >= {"QConv"}
    assert "QLut" not in kinds(result)            # fused, not a separate table
    if lo is not None:
        assert conv.lo == lo


def test_gemm_and_matmul_bias():
    nodes = [node("Gemm", ["x", "w", "c"], ["g"], alpha=0.5, beta=2.0),
             node("Relu", ["g"], ["r"]),
             node("MatMul", ["r", "w2"], ["m"]), node("Add", ["m", "b2"], ["y"])]
    model = make_model(nodes, {"x": [2, 16]}, ["y"],
                       {"w": W(16, 12), "c": W(12), "w2": W(12, 5), "b2": W(5)})
    result = check_quantized(model, batch=2)
    assert kinds(result) >= {"QGemm", "QMatMul"} and "QAdd" not in kinds(result)


def test_matmul_rank3():
    model = make_model([node("MatMul", ["x", "w"], ["y"])], {"x": [1, 7, 16]}, ["y"],
                       {"w": W(16, 8)})
    assert "QMatMul" in kinds(check_quantized(model))


def test_residual_add_sub_and_constants():
    nodes = [node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             node("Add", ["c", "x"], ["a"]), node("Relu", ["a"], ["r"]),
             node("Sub", ["r", "x"], ["s"]), node("Add", ["s", "k"], ["y"])]
    model = make_model(nodes, {"x": [1, 4, 6, 6]}, ["y"],
                       {"w": W(4, 4, 3, 3), "k": W(1, 4, 1, 1)})
    result = check_quantized(model)
    adds = [op for op in result.qgraph.ops if isinstance(op, q.QAdd)]
    assert len(adds) == 3 and adds[0].lo == 0 and adds[1].b_mult < 0
    assert any(t.data is not None for t in result.qgraph.tensors.values())


def test_squeeze_excite_mul_and_div():
    nodes = [node("GlobalAveragePool", ["x"], ["p"]), node("Sigmoid", ["p"], ["g"]),
             node("Mul", ["x", "g"], ["m"]), node("Mul", ["m", "k"], ["m2"]),
             node("Div", ["m2", "d"], ["y"])]
    # per-channel constants: QMul with an int8 constant operand (Div: by the reciprocal)
    model = make_model(nodes, {"x": [1, 8, 5, 5]}, ["y"],
                       {"k": np.linspace(0.5, 2, 8, dtype=np.float32).reshape(1, 8, 1, 1),
                        "d": np.linspace(4, 8, 8, dtype=np.float32).reshape(1, 8, 1, 1)})
    result = check_quantized(model)
    assert sum(isinstance(op, q.QMul) for op in result.qgraph.ops) == 3


def test_elementwise_region_is_one_table():
    # PaddleOCR-style: c·conv + d, hardswish as y·Clip(y+3, 0, 6)/6, then a·h + b
    sc = {f"s{i}": np.float32(v) for i, v in enumerate([0.8, 0.1, 3.0, 0.0, 6.0, 6.0, 1.2,
                                                        -0.05])}
    nodes = [node("Conv", ["x", "w"], ["c"]), node("Mul", ["c", "s0"], ["m"]),
             node("Add", ["m", "s1"], ["y0"]), node("Add", ["y0", "s2"], ["y3"]),
             node("Clip", ["y3", "s3", "s4"], ["cl"]), node("Mul", ["y0", "cl"], ["h6"]),
             node("Div", ["h6", "s5"], ["h"]), node("Mul", ["h", "s6"], ["ha"]),
             node("Add", ["ha", "s7"], ["y"])]
    model = make_model(nodes, {"x": [1, 3, 6, 6]}, ["y"], {"w": W(4, 3, 3, 3), **sc})
    result = check_quantized(model, min_cos=0.995)
    luts = [op for op in result.qgraph.ops if isinstance(op, q.QLut)]
    assert [op.fn for op in luts] == ["Mul+Add+Add+Clip+Mul+Div+Mul+Add"]
    assert kinds(result) == {"QQuantize", "QConv", "QLut", "QDequantize"}


def test_concat_different_scales():
    nodes = [node("Mul", ["x", "k"], ["big"]), node("Concat", ["x", "big", "x"], ["y"], axis=1)]
    model = make_model(nodes, {"x": [1, 3, 4, 4]}, ["y"], {"k": np.float32(5.0)})
    result = check_quantized(model, calibrator="max")  # output threshold = max(big)'s
    cat = next(op for op in result.qgraph.ops if isinstance(op, q.QConcat))
    assert (cat.m0[1], cat.shift[1]) == (1 << 30, 30)      # same scale: identity
    assert cat.m0[0] != 1 << 30


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    {"kernel_shape": [2, 3], "strides": [2, 2], "ceil_mode": 1},
    {"kernel_shape": [2, 2]},
])
def test_average_pool(attrs):
    model = make_model([node("AveragePool", ["x"], ["y"], **attrs)], {"x": [1, 3, 7, 7]}, ["y"])
    assert "QAvgPool" in kinds(check_quantized(model))


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
    {"kernel_shape": [3, 3], "dilations": [2, 2]},
])
def test_max_pool(attrs):
    model = make_model([node("MaxPool", ["x"], ["y"], **attrs)], {"x": [1, 3, 7, 7]}, ["y"])
    result = check_quantized(model)
    assert "QMaxPool" in kinds(result)
    assert result.qgraph.tensor("y__q").scale == result.qgraph.tensor("x__q").scale


def test_global_pools_and_reduce_mean():
    nodes = [node("GlobalAveragePool", ["x"], ["g"]),
             node("ReduceMean", ["x"], ["r"], axes=[2, 3], keepdims=0),
             node("Flatten", ["g"], ["f"]), node("Add", ["f", "r"], ["y"])]
    result = check_quantized(make_model(nodes, {"x": [1, 6, 5, 4]}, ["y"]))
    gaps = [op for op in result.qgraph.ops if isinstance(op, q.QGlobalAvgPool)]
    assert len(gaps) == 2 and not gaps[1].keepdims


@pytest.mark.parametrize("mode_attrs,scales,sizes", [
    ({}, [1, 1, 2, 2], None),
    ({"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, None,
     [1, 3, 7, 10]),
    ({"coordinate_transformation_mode": "half_pixel"}, [1, 1, 0.5, 1.5], None),
])
def test_resize_nearest(mode_attrs, scales, sizes):
    inits = {"roi": np.zeros(0, np.float32)}
    ins = ["x", "roi"]
    if scales is not None:
        inits["sc"] = np.array(scales, np.float32)
        ins.append("sc")
    else:
        inits["sc"] = np.zeros(0, np.float32)
        inits["sz"] = np.array(sizes, np.int64)
        ins += ["sc", "sz"]
    model = make_model([node("Resize", ins, ["y"], mode="nearest", **mode_attrs)],
                       {"x": [1, 3, 4, 5]}, ["y"], inits)
    assert "QResizeNearest" in kinds(check_quantized(model))


def test_data_movement():
    nodes = [node("Conv", ["x", "w"], ["c"]),
             node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
             node("Reshape", ["t", "shape"], ["r"]),
             node("Unsqueeze", ["r", "ax"], ["u"]), node("Squeeze", ["u", "ax"], ["s"]),
             node("Slice", ["s", "st", "en", "axs", "sp"], ["sl"]),
             node("Split", ["sl", "split"], ["a", "b"], axis=1),
             node("Pad", ["a", "pads", "pv"], ["pa"], mode="constant"),
             node("Pad", ["b", "rpads"], ["pb"], mode="reflect"),
             node("Concat", ["pa", "pb"], ["cat"], axis=1),
             node("Flatten", ["cat"], ["y"], axis=1)]
    inits = {"w": W(6, 3, 1, 1), "shape": np.array([1, 0, -1], np.int64),
             "ax": np.array([1], np.int64), "st": np.array([3, 0], np.int64),
             "en": np.array([-100, 6], np.int64), "axs": np.array([1, 2], np.int64),
             "sp": np.array([-1, 2], np.int64), "split": np.array([2, 2], np.int64),
             "pads": np.array([0, 1, 0, 0, 2, 0], np.int64), "pv": np.float32(0.25),
             "rpads": np.array([0, 1, 0, 0, 1, 0], np.int64)}
    result = check_quantized(make_model(nodes, {"x": [1, 3, 4, 4]}, ["y"], inits))
    moves = {op.op for op in result.qgraph.ops if isinstance(op, q.QMove)}
    assert moves == {"Transpose", "Reshape", "Unsqueeze", "Squeeze", "Slice", "Split", "Pad",
                     "Flatten"}


@pytest.mark.parametrize("op,attrs", [
    ("Sigmoid", {}), ("Tanh", {}), ("HardSigmoid", {"alpha": 0.25}), ("HardSwish", {}),
    ("LeakyRelu", {"alpha": 0.1}), ("Elu", {}), ("Softplus", {}),
])
def test_lookup_tables(op, attrs):
    nodes = [node("Mul", ["x", "k"], ["m"]), node(op, ["m"], ["y"], **attrs)]
    result = check_quantized(make_model(nodes, {"x": [1, 4, 6, 6]}, ["y"],
                                        {"k": np.float32(2.0)}))
    lut = next(op for op in result.qgraph.ops if isinstance(op, q.QLut))
    # a table never below 0 (Sigmoid, HardSigmoid, Softplus) is unsigned (fixed-point.md §15)
    unsigned = op in ("Sigmoid", "HardSigmoid", "Softplus")
    assert lut.table.shape == (256,) and lut.table.dtype == (np.uint8 if unsigned else np.int8)
    assert result.qgraph.tensor(lut.outputs[0]).dtype == lut.table.dtype.name


@pytest.mark.parametrize("gate,fn", [("Sigmoid", "SiLU"), ("HardSigmoid", "HardSigmoidMul")])
def test_swish_patterns_become_one_table(gate, fn):
    nodes = [node("Conv", ["x", "w"], ["c"]), node(gate, ["c"], ["g"]),
             node("Mul", ["c", "g"], ["y"])]
    result = check_quantized(make_model(nodes, {"x": [1, 3, 5, 5]}, ["y"], {"w": W(4, 3, 1, 1)}))
    luts = [op for op in result.qgraph.ops if isinstance(op, q.QLut)]
    assert [op.fn for op in luts] == [fn] and "QMul" not in kinds(result)


def test_unfused_relu_is_a_table():
    # the conv output is used twice, so the Relu cannot be fused into it
    nodes = [node("Conv", ["x", "w"], ["c"]), node("Relu", ["c"], ["r"]),
             node("Conv", ["c", "w2"], ["c2"]), node("Add", ["c2", "r"], ["y"])]
    result = check_quantized(make_model(nodes, {"x": [1, 3, 5, 5]}, ["y"],
                                        {"w": W(4, 3, 1, 1), "w2": W(4, 4, 1, 1)}))
    assert [op.fn for op in result.qgraph.ops if isinstance(op, q.QLut)] == ["Relu"]


def test_cpu_partition_boundaries_and_reasons():
    nodes = [node("Conv", ["x", "w"], ["c"]), node("Softmax", ["c"], ["sm"], axis=1),
             node("LRN", ["sm"], ["e"], size=3), node("Conv", ["e", "w2"], ["c2"]),
             node("Add", ["c2", "c"], ["y"]), node("LogSoftmax", ["e"], ["z"])]
    model = make_model(nodes, {"x": [1, 3, 5, 5]}, ["y", "z"],
                       {"w": W(4, 3, 1, 1), "w2": W(4, 4, 1, 1)})
    result = check_quantized(model, min_cos=0.95)
    parts = [op for op in result.qgraph.ops if isinstance(op, q.QCpuPartition)]
    # LogSoftmax reads only the host tensor `e`: the unit order keeps it with Softmax and
    # LRN (one host round trip), and the int8 Conv + Add run after that partition
    assert len(parts) == 1 and len(parts[0].reasons) == 3
    assert [n.op for n in parts[0].nodes] == ["Softmax", "LRN", "LogSoftmax"]
    assert sorted(parts[0].outputs) == ["e", "z"]
    assert "Softmax has no int8 implementation" in " ".join(parts[0].reasons.values())
    assert result.report["cpu_nodes"] == 3
    assert result.qgraph.tensor("z").dtype == "float32"


def test_intermediate_graph_output_and_dynamic_batch():
    nodes = [node("Conv", ["x", "w"], ["c"]), node("Relu", ["c"], ["r"]),
             node("Conv", ["r", "w2"], ["y"])]
    model = make_model(nodes, {"x": ["N", 3, 5, 5]}, ["r", "y"],
                       {"w": W(4, 3, 1, 1), "w2": W(2, 4, 1, 1)})
    result = check_quantized(model, batch=3)
    assert result.qgraph.tensor("r__q").is_quantized and result.qgraph.tensor("r").scale is None


def test_partition_boundaries_survive_onnxruntime_fusions(tmp_path):
    """onnxruntime would fold a boundary's scale into a float partition's MatMul or Conv
    (MatMulScaleFusion, ConvMulFusion, ConvAddFusion), which changes their rounding: the
    reference runs the partition alone, so an int8 value could differ by one LSB. The
    boundaries' Clip barriers (fixed-point.md §4, §5) keep every boundary tensor."""
    import onnxruntime as ort

    from compiler.core.io import to_proto

    nodes = [node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             node("Reshape", ["c", "s3"], ["r"]),                  # int8 [1, 4, 64]
             node("Transpose", ["r"], ["rt"], perm=[0, 2, 1]),
             node("MatMul", ["r", "rt"], ["g"]),                   # host: activations only
             node("MatMul", ["g", "r"], ["gr"]),
             node("Conv", ["gr", "w1"], ["c1"], pads=[1, 1]),      # host: a 1-D conv
             node("Reshape", ["c1", "s4"], ["c1r"]),
             node("Add", ["c1r", "c"], ["y"])]                     # int8 again
    model = make_model(nodes, {"x": [1, 3, 8, 8]}, ["y"],
                       {"w": W(4, 3, 3, 3), "w1": W(4, 4, 3),
                        "s3": np.array([1, 4, 64], np.int64),
                        "s4": np.array([1, 4, 8, 8], np.int64)})
    result = check_quantized(model, min_cos=0.9)
    parts = [op for op in result.qgraph.ops if isinstance(op, q.QCpuPartition)]
    boundary = {t for p in parts for t in (*p.inputs, *p.outputs)}
    assert {n.op for p in parts for n in p.nodes} >= {"MatMul", "Conv"}
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(to_proto(result.quant_model).SerializeToString(), opts,
                         providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    kept = {t for n in optimized.graph.node for t in (*n.input, *n.output)}
    host_convs = {n.outputs[0] for p in parts for n in p.nodes if n.op == "Conv"}
    # only Conv + Clip may fuse (FusedConv applies the same clamp to the same float result)
    assert boundary - kept <= host_convs, sorted(boundary - kept)
    assert not [n for n in optimized.graph.node if n.op_type == "FusedMatMul"]
    # every boundary scale is still multiplied on its own (none folded into a weight)
    scales = {np.float32(op.inv_scale if isinstance(op, q.QQuantize) else op.scale)
              for op in result.qgraph.ops if isinstance(op, (q.QQuantize, q.QDequantize))}
    emitted = _scalar_muls(to_proto(result.quant_model), scales)
    assert emitted >= 4 and _scalar_muls(optimized, scales) == emitted


def _scalar_muls(model: onnx.ModelProto, values: set) -> int:
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    consts |= {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t)
               for n in model.graph.node if n.op_type == "Constant"}
    return sum(1 for n in model.graph.node if n.op_type == "Mul" and any(
        i in consts and consts[i].size == 1 and np.float32(consts[i].item()) in values
        for i in n.input))
