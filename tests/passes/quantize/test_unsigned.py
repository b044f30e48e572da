"""uint8 (zero point 0) for never-negative tensors (docs/fixed-point.md §15): which tensors
become unsigned, their scales, the int8 conversion a negative Pad needs, tables indexed by a
uint8 input, the QDQ export, and reference == model.quant.onnx == simulator throughout."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

from compiler.core import fixedpoint as fp
from compiler.core import qgraph as q
from compiler.core.io import to_proto
from compiler.core.numerics import cosine, run
from passes.quantize.api import quantize_model
from passes.quantize.calibrate import finalize
from passes.quantize.reference import execute
from targets.npusim import build_binary, verify
from tests.quant_helpers import check_quantized, feeds_for, make_model

rng = np.random.default_rng(3)
W = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.3  # noqa: E731
node = helper.make_node


def _conv_relu(extra=(), out="r", act="Relu"):
    nodes = [node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             node(act, ["c"] + (["lo", "hi"] if act == "Clip" else []), [out]), *extra]
    inits = {"w": W(8, 3, 3, 3), "b": W(8), "lo": np.float32(0), "hi": np.float32(6)}
    return nodes, inits


def _simulator_exact(result, feeds):
    report = verify(result.quant_model, build_binary(result.quant_model).data, feeds)
    assert report.consistent
    assert all(o["mismatched"] == 0 and o["elements"] > 0 for o in report.outputs)


@pytest.mark.parametrize("act", ["Relu", "Clip"])
def test_conv_relu_output_is_uint8_with_scale_t_over_255(act):
    nodes, inits = _conv_relu(act=act)
    model = make_model(nodes, {"x": [1, 3, 8, 8]}, ["r"], {k: v for k, v in inits.items()
                                                            if act == "Clip" or k in "wb"})
    result = check_quantized(model, calibrator="max")
    t = result.qgraph.tensor("r__q")
    assert t.dtype == "uint8"
    threshold = result.table.thresholds["r"]
    assert t.scale == float(np.float32(threshold / 255.0))
    conv = result.qgraph.ops[1]
    assert (conv.lo, conv.hi) == (0, 255)
    # on the calibration batch the maximum maps to T, i.e. the top code 255 (int8: 127)
    calib = feeds_for(model, 8, seed=0)
    env = execute(result.qgraph, calib, keep_all=True)
    assert env["r__q"].dtype == np.uint8 and env["r__q"].max() == 255
    _simulator_exact(result, feeds_for(model, 1, seed=4))


def test_unsigned_off_keeps_every_tensor_int8():
    nodes, inits = _conv_relu()
    model = make_model(nodes, {"x": [1, 3, 8, 8]}, ["r"], {"w": inits["w"], "b": inits["b"]})
    result = check_quantized(model, unsigned=False)
    dtypes = {t.dtype for t in result.qgraph.tensors.values() if t.is_quantized}
    assert dtypes == {"int8"}
    assert result.qgraph.info["unsigned"] is False


def test_uint8_halves_the_relu_output_error():
    nodes, inits = _conv_relu()
    model = make_model(nodes, {"x": ["N", 3, 8, 8]}, ["r"], {"w": inits["w"], "b": inits["b"]})
    test = feeds_for(model, 4, seed=7)
    ref = run(model, test)["r"]
    err = {}
    for unsigned in (False, True):
        result = check_quantized(model, calibrator="max", unsigned=unsigned)
        err[unsigned] = float(np.abs(run(result.quant_model, test)["r"] - ref).mean())
    # the output rounding step halves; input and weight rounding stay: 0.69x measured
    assert err[True] < 0.8 * err[False]


def test_mse_threshold_of_a_uint8_tensor_is_optimal_for_255_levels(tmp_path):
    nodes, inits = _conv_relu(extra=[node("Conv", ["r", "w2"], ["y"])])
    inits["w2"] = W(4, 8, 1, 1)
    model = make_model(nodes, {"x": [1, 3, 8, 8]}, ["y"], {k: inits[k] for k in ("w", "b", "w2")})
    signed = check_quantized(model, calib=16, calibrator="mse", unsigned=False)
    result = check_quantized(model, calib=16, calibrator="mse")
    t8, t_u8 = signed.table.thresholds["r"], result.table.thresholds["r"]
    assert (signed.table.dtype("r"), result.table.dtype("r")) == ("int8", "uint8")
    assert t_u8 == finalize(result.table.states["r"], "mse", dtype="uint8") > t8
    assert result.qgraph.tensor("r").dtype == "uint8"
    assert result.qgraph.tensor("r").scale == fp.activation_scale(t_u8, "r", "uint8")
    assert result.table.thresholds["y"] == signed.table.thresholds["y"]  # int8: unchanged
    # the saved table (with each tensor's precision) reproduces the build exactly
    path = result.table.save(tmp_path / "calibration.json")
    again = quantize_model(model, table=path)
    assert again.qgraph == result.qgraph and again.table == result.table
    assert not again.table.unoptimised


def test_negative_pad_after_relu_converts_to_int8_and_keeps_the_function():
    nodes, inits = _conv_relu([node("Pad", ["r", "pads", "v"], ["p"], mode="constant"),
                               node("Conv", ["p", "w2"], ["y"])])
    inits.update(pads=np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), v=np.float32(-0.75),
                 w2=W(4, 8, 3, 3))
    model = make_model(nodes, {"x": [1, 3, 8, 8]}, ["y"], {k: v for k, v in inits.items()
                                                            if k not in ("lo", "hi")})
    result = check_quantized(model, min_cos=0.99)
    qg = result.qgraph
    assert qg.tensor("r").dtype == "uint8"
    conv8 = qg.tensor("r" + q.SIGNED_SUFFIX)
    assert conv8.dtype == "int8" and conv8.scale == float(np.float32(np.float64(
        qg.tensor("r").scale) * 255 / 127))
    (to8,) = [op for op in qg.ops if op.outputs == ("r" + q.SIGNED_SUFFIX,)]
    assert isinstance(to8, q.QConcat) and to8.inputs == ("r",)
    pad = next(op for op in qg.ops if isinstance(op, q.QMove))
    assert pad.inputs == ("r" + q.SIGNED_SUFFIX,)
    assert pad.attrs["value"] == int(fp.qround(-0.75 / conv8.scale))
    # the padded border holds -0.75, as in the float model
    env = execute(qg, feeds_for(model, 1, seed=2), keep_all=True)
    assert np.all(env["p"][:, :, 0, :] == pad.attrs["value"])
    _simulator_exact(result, feeds_for(model, 1, seed=5))


def test_non_negative_pad_keeps_uint8():
    nodes, inits = _conv_relu([node("Pad", ["r", "pads", "v"], ["y"], mode="constant")])
    inits.update(pads=np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), v=np.float32(0.5))
    model = make_model(nodes, {"x": [1, 3, 8, 8]}, ["y"], {k: v for k, v in inits.items()
                                                            if k not in ("lo", "hi")})
    result = check_quantized(model)
    assert result.qgraph.tensor("y__q").dtype == "uint8"
    assert not any(n.endswith(q.SIGNED_SUFFIX) for n in result.qgraph.tensors)
    _simulator_exact(result, feeds_for(model, 1, seed=5))


@pytest.mark.parametrize("fn,out", [("Sigmoid", "uint8"), ("Tanh", "uint8"), ("Neg", "int8")])
def test_lut_with_uint8_input(fn, out):
    nodes, inits = _conv_relu([node(fn, ["r"], ["y"])])
    model = make_model(nodes, {"x": [1, 3, 8, 8]}, ["y"], {"w": inits["w"], "b": inits["b"]})
    result = check_quantized(model)
    qg = result.qgraph
    lut = next(op for op in qg.ops if isinstance(op, q.QLut))
    assert qg.tensor(lut.inputs[0]).dtype == "uint8"
    assert qg.tensor(lut.outputs[0]).dtype == out == lut.table.dtype.name
    # entry i is f(i·Sx): no offset for a uint8 input
    sx, sy = qg.tensor(lut.inputs[0]).scale, qg.tensor(lut.outputs[0]).scale
    expect = fp.table_from(fp.LUT_FUNCTIONS[fn](np.arange(256) * np.float64(sx)), sy, out)
    np.testing.assert_array_equal(lut.table, expect)
    _simulator_exact(result, feeds_for(model, 1, seed=6))


def test_concat_of_uint8_and_int8_is_int8_and_all_uint8_is_uint8():
    nodes = [node("Conv", ["x", "w"], ["c"]), node("Relu", ["c"], ["r"]),
             node("Conv", ["x", "w2"], ["s"]), node("Relu", ["s"], ["t"]),
             node("Concat", ["r", "c"], ["mixed"], axis=1),
             node("Concat", ["r", "t"], ["both"], axis=1)]
    model = make_model(nodes, {"x": [1, 3, 6, 6]}, ["mixed", "both"],
                       {"w": W(4, 3, 1, 1), "w2": W(4, 3, 1, 1)})
    result = check_quantized(model)
    assert result.qgraph.tensor("mixed__q").dtype == "int8"
    assert result.qgraph.tensor("both__q").dtype == "uint8"
    _simulator_exact(result, feeds_for(model, 1, seed=8))


def test_bias_bound_of_a_uint8_input_conv():
    nodes, inits = _conv_relu([node("Conv", ["r", "w2", "b2"], ["y"])])
    model = make_model(nodes, {"x": [1, 3, 8, 8]}, ["y"], {
        "w": inits["w"], "b": inits["b"], "w2": W(4, 8, 1, 1) * 1e-6,
        "b2": np.float32([3.0, -2.0, 0.5, 40.0])})
    result = check_quantized(model)
    (conv,) = [op for op in result.qgraph.ops if isinstance(op, q.QConv) and op.inputs == ("r",)]
    assert result.qgraph.tensor(conv.inputs[0]).dtype == "uint8"
    bound = fp.bias_bound(8, x_dtype="uint8")
    assert bound == (1 << 31) - 1 - 8 * (1 << 15)
    assert np.max(np.abs(conv.bias.astype(np.int64))) <= bound


def test_qdq_export_of_uint8_tensors_runs_in_onnxruntime():
    nodes, inits = _conv_relu([node("Sigmoid", ["r"], ["y"])])
    model = make_model(nodes, {"x": [1, 3, 8, 8]}, ["y"], {"w": inits["w"], "b": inits["b"]})
    result = check_quantized(model)
    proto = to_proto(result.qdq_model)
    zps = {i.name: i.data_type for i in proto.graph.initializer if i.name.endswith("__z")}
    assert zps == {"x__z": 3, "r__z": 2, "y__z": 2}  # int8 input; uint8 ReLU and Sigmoid
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    test = feeds_for(model, 1, seed=9)
    got = sess.run(None, test)[0]
    # onnxruntime's own u8×s8 kernels saturate on x86 without VNNI (0.99981 measured on an
    # AVX2 machine, > 0.9999 with VNNI): the QDQ model is onnxruntime's arithmetic, not ours
    assert cosine(got, run(result.quant_model, test)["y"]) > 0.999


@pytest.mark.slow
def test_zoo_mobilenetv2_has_uint8_tensors_and_is_bit_exact():
    from models.zoo import ARCHITECTURES
    from passes.quantize.api import quantize_model
    from tests.quant_helpers import mismatches

    proto, sample = ARCHITECTURES["mobilenetv2"](image_size=64)
    key = next(iter(sample))
    shape = sample[key].shape
    calib = {key: np.random.default_rng(0).standard_normal((2, *shape[1:])).astype(np.float32)}
    result = quantize_model(proto, calib)
    counts = Counter(t.dtype for t in result.qgraph.tensors.values() if t.is_quantized)
    assert counts["uint8"] > 20
    test = {key: np.random.default_rng(1).standard_normal(shape).astype(np.float32)}
    assert mismatches(result.qgraph, test) == {}
    _simulator_exact(result, test)
