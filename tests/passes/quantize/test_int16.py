"""int16 activations with int8 weights (A16W8, docs/fixed-point.md §16): the byte split, the
64-bit accumulator and its narrower multipliers (checked with exact integers and
`fractions`), which tensors become int16, and reference == model.quant.onnx throughout."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from onnx import helper

from compiler.core import fixedpoint as fp
from compiler.core import qgraph as q
from compiler.core.errors import ConfigError, GraphError
from compiler.core.numerics import cosine, run, session
from passes.quantize.calibrate import tap_outputs
from passes.quantize.reference import execute
from tests.quant_helpers import check_quantized, feeds_for, make_model, mismatches

node = helper.make_node


# -- arithmetic ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int8])
def test_every_activation_splits_into_exact_int8_parts(dtype):
    """The emitted split (Mod fmod=0, exact Div) in onnxruntime, on every value of the type.

    Only int8 parts reach ConvInteger/MatMulInteger: onnxruntime's u8×s8 kernels saturate
    on x86 without VNNI (emit_int.IntEmitter.signed_parts).
    """
    import onnx_graphsurgeon as gs

    from passes.quantize.emit_int import IntEmitter
    info = np.iinfo(dtype)
    xs = np.arange(info.min, info.max + 1).astype(dtype)
    e = IntEmitter(q.QGraph({}, (), (), (), {}))
    x = gs.Variable("x", dtype=dtype, shape=[len(xs)])
    parts = e.signed_parts(x)
    for i, (_, t) in enumerate(parts):
        t.name = f"p{i}"
    g = gs.Graph(nodes=e.nodes, inputs=[x], outputs=[t for _, t in parts], opset=17)
    out = run(session(gs.export_onnx(g)), {"x": xs}) if len(parts) > 1 or e.nodes else \
        {"p0": xs}
    assert [f for f, _ in parts] == {np.int16: [256, 128, 1], np.uint8: [128, 1],
                                     np.int8: [1]}[dtype]
    total = np.zeros(len(xs), np.int64)
    for i, (factor, _) in enumerate(parts):
        assert out[f"p{i}"].dtype == np.int8
        total += factor * out[f"p{i}"].astype(np.int64)
    assert np.array_equal(total, xs.astype(np.int64))


def test_uint8_and_int16_macs_are_exact_where_u8s8_kernels_saturate():
    """Adjacent products 255·127 + 255·127 > 2^15: exact through the int8 parts."""
    import onnx_graphsurgeon as gs

    from passes.quantize.emit_int import IntEmitter
    w = np.full((4, 1), 127, np.int8)
    for dtype, value in ((np.uint8, 255), (np.int16, 32767), (np.int16, -32768)):
        e = IntEmitter(q.QGraph({}, (), (), (), {}))
        x = gs.Variable("x", dtype=dtype, shape=[1, 4])
        acc = e.integer_mac(x, lambda t, e=e: e.node("MatMulInteger", [t, gs.Constant("w", w)],
                                                     dtype=np.int32))
        acc.name, acc.dtype = "acc", np.int64
        g = gs.Graph(nodes=e.nodes, inputs=[x], outputs=[acc], opset=17)
        got = run(session(gs.export_onnx(g)), {"x": np.full((1, 4), value, dtype)})["acc"]
        assert got.dtype == np.int64 and got.item() == 4 * 127 * value


@pytest.mark.parametrize("k", [1, 9, 576, 4608, fp.A16_MAX_K - 1])
def test_a16w8_accumulator_and_multiplier_bounds(k):
    acc_max = fp.mac_acc_bound(k, "int16")
    assert acc_max == k * (1 << 22) + (1 << 31) - 1 >= k * 32768 * 127 + fp.ACC_MAX
    bits = fp.multiplier_bits(acc_max)
    assert 23 <= bits <= 31
    # the worst accumulator times the largest M0, plus the rounding term, stays in int64
    worst = acc_max * ((1 << bits) - 1) + (1 << (fp.MAX_SHIFT - 1))
    assert worst < 1 << 63
    # and the byte split's two int32 sums cannot overflow
    assert k * 128 * 127 < 1 << 31 and k * 255 * 127 < 1 << 31


def test_eight_bit_layers_keep_31_bit_multipliers():
    for dtype in ("int8", "uint8"):
        assert fp.mac_acc_bound(4608, dtype) == fp.ACC_MAX
        assert fp.multiplier_bits(fp.ACC_MAX) == 31


def test_too_long_a16w8_reduction_is_rejected():
    with pytest.raises(GraphError, match="reduction length 65536 too large for int16"):
        fp.bias_bound(fp.A16_MAX_K, "big", "int16")
    assert fp.bias_bound(fp.A16_MAX_K - 1, "ok", "int16") == fp.ACC_MAX


@pytest.mark.parametrize("bits", [23, 27, 31])
def test_narrow_multiplier_relative_error_is_at_most_2_to_minus_bits(bits):
    for m in np.random.default_rng(bits).uniform(-30, 10, 500):
        m = 2.0 ** float(m)
        m0, s = fp.quantize_multiplier(m, bits)
        assert 1 << (bits - 1) <= m0 < 1 << bits and 1 <= s <= fp.MAX_SHIFT
        err = abs(Fraction(m0, 1 << s) - Fraction(m))
        assert err <= Fraction(m) / (1 << bits)


def test_narrow_multiplier_flush_and_saturation_are_ideal():
    bits = 23
    m0, s = fp.quantize_multiplier(2.0 ** (bits - 64), bits)  # tiny: flushed
    assert (m0, s) == (0, fp.MAX_SHIFT)
    acc = np.array([fp.mac_acc_bound(fp.A16_MAX_K - 1, "int16")], np.int64)
    ideal = Fraction(int(acc[0])) * Fraction(2.0 ** (bits - 64))
    assert abs(ideal) < Fraction(1, 2)  # so 0 is the ideal result
    assert fp.requantize(acc, m0, s, -32768, 32767, np.int16)[0] == 0
    m0, s = fp.quantize_multiplier(2.0 ** 40, bits)  # huge: saturates
    assert (m0, s) == ((1 << bits) - 1, 1)
    assert fp.requantize(np.array([1, -1, 0]), m0, s, -32768, 32767, np.int16).tolist() == \
        [32767, -32768, 0]


@pytest.mark.parametrize("k", [576, 4608, 30000])
def test_requantize_of_extreme_a16w8_accumulators_matches_exact_rationals(k):
    """int64 numpy == round-half-up of acc·M0/2^s in exact arithmetic, at the bounds."""
    bits = fp.multiplier_bits(fp.mac_acc_bound(k, "int16"))
    a = fp.mac_acc_bound(k, "int16")
    accs = [a, -a, a - 1, -(a - 1), k * 32768 * 127, -k * 32768 * 127, 12345, 0]
    for m in (0.9999, 1.0, 2.0 ** -20, 3.3e-7, 1.7e-9):
        m0, s = fp.quantize_multiplier(m, bits)
        got = fp.requantize(np.array(accs, np.int64), m0, s, -(1 << 40), 1 << 40, np.int64)
        for acc, y in zip(accs, got.tolist(), strict=True):
            exact = Fraction(acc * m0, 1 << s)
            assert y == int(np.floor(exact + Fraction(1, 2))), (acc, m)


# -- graphs ----------------------------------------------------------------------------------

def _net(gate: str = "Sigmoid"):
    """conv-relu-maxpool-(pad-conv | conv)-add-sigmoid-gap-flatten-gemm (fixed weights).

    `gate="PRelu"`: a PRelu (per-channel tables, 8-bit inputs only) instead of the Sigmoid.
    """
    rng = np.random.default_rng(16)
    W = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.3  # noqa: E731
    nodes = [node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
             node("Relu", ["c"], ["r"], name="relu1"),
             node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], pads=[1, 1, 0, 0],
                  strides=[2, 2], name="mp"),
             node("Conv", ["p", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             node("Pad", ["p", "pads"], ["p1"], name="pad"),
             node("Conv", ["p1", "w3"], ["p2"], name="conv3"),
             node("Add", ["c2", "p2"], ["a"], name="add"),
             node("Sigmoid", ["a"], ["s"], name="sig") if gate == "Sigmoid" else
             node("PRelu", ["a", "slope"], ["s"], name="sig"),
             node("GlobalAveragePool", ["s"], ["g"], name="gap"),
             node("Flatten", ["g"], ["f"], name="fl"),
             node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc")]
    inits = {"w": W(64, 3, 3, 3), "b": W(64), "w2": W(16, 64, 3, 3), "b2": W(16),
             "w3": W(16, 64, 3, 3), "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
             "wf": W(10, 16), "bf": W(10),
             "slope": np.linspace(0.05, 0.3, 16, dtype=np.float32).reshape(1, 16, 1, 1)}
    return make_model(nodes, {"x": [1, 3, 16, 16]}, ["y"], inits)


def _dtypes(result) -> dict[str, str]:
    return {n: t.dtype for n, t in result.qgraph.tensors.items()
            if t.is_quantized and t.data is None}


def test_a_raised_conv_reads_and_writes_int16_and_moves_follow():
    result = check_quantized(_net(), calibrator="max", int16=("conv2",), min_cos=0.99)
    d = _dtypes(result)
    # conv2 reads p (a MaxPool output, so r too) and writes c2; conv1 therefore writes int16
    assert d["r"] == d["p"] == d["c2"] == "int16"
    assert d["p1"] == "int16"  # the Pad moves p's values: p's type
    assert d["x__q"] == "int8" and d["p2"] == "int8" and d["s"] == "uint8"
    conv2 = next(op for op in result.qgraph.ops if op.name == "conv2")
    bits = fp.multiplier_bits(fp.mac_acc_bound(64 * 9, "int16"))
    assert bits == 62 - (576 * (1 << 22) + fp.ACC_MAX).bit_length() == 29
    assert np.all(conv2.m0 < 1 << bits) and np.all(conv2.m0 >= 1 << (bits - 1))
    assert list(result.qgraph.info["int16"]) == ["conv2"]


def test_int16_everywhere_is_bit_exact_and_tables_interpolate_int16():
    layers = ("conv1", "conv2", "conv3", "add", "fc")
    result = check_quantized(_net(), calibrator="max", int16=layers, min_cos=0.99)
    d = _dtypes(result)
    assert d["x__q"] == d["a"] == d["g"] == d["f"] == d["y__q"] == "int16"
    # the Sigmoid table reads the int16 Add output itself: 513 interpolated knots (§18)
    assert "a" + q.NARROW_SUFFIX not in d
    lut = next(op for op in result.qgraph.ops if op.kind == "QLut")
    assert lut.inputs == ("a",) and lut.table.shape == (fp.LUT16_ENTRIES,) == (513,)
    feeds = feeds_for(_net(), 1, seed=5)
    env = execute(result.qgraph, feeds, keep_all=True)
    assert env["a"].dtype == np.int16 and np.abs(env["a"]).max() > 127
    assert mismatches(result.qgraph, feeds) == {}
    # a per-channel table (PRelu) still reads an int8 copy of the int16 tensor
    prelu = check_quantized(_net("PRelu"), calibrator="max", int16=layers, min_cos=0.99)
    d = _dtypes(prelu)
    assert d["a"] == "int16" and d["a" + q.NARROW_SUFFIX] == "int8"
    assert mismatches(prelu.qgraph, feeds) == {}


def test_int16_beats_int8_on_the_raised_tensor():
    """The raised layer's step shrinks 258x; its error keeps only the int8 weights' share."""
    model = _net()
    feeds = feeds_for(model, 1, seed=6)
    errs, steps = {}, {}
    for wide in ((), ("conv2",)):
        result = check_quantized(model, calibrator="max", int16=wide, min_cos=0.99)
        env = execute(result.qgraph, feeds, keep_all=True)
        t = result.qgraph.tensor("c2")
        steps[wide] = t.scale
        ref = run(tap_outputs(result.float_model, ["c2"]), feeds)["c2"]
        # median: a test sample beyond the calibrated range clips a few elements either way
        errs[wide] = float(np.median(np.abs(env["c2"] * np.float64(t.scale) - ref)))
    assert steps[()] / steps[("conv2",)] == pytest.approx(32767 / 127, rel=1e-6)
    assert errs[("conv2",)] < 0.8 * errs[()]


def test_qdq_model_runs_with_int16_points():
    model = _net()
    result = check_quantized(model, calibrator="max", int16=("conv2",), min_cos=0.99)
    proto = result.qdq_model
    ops = [(n.op, n.domain) for n in proto.graph.nodes if n.op == "QuantizeLinear"]
    assert ("QuantizeLinear", "com.microsoft") in ops
    feeds = feeds_for(model, 1, seed=7)
    ref, qdq = run(result.float_model, feeds), run(proto, feeds)
    assert cosine(ref["y"], qdq["y"]) > 0.999


def test_int16_needs_real_npu_nodes():
    with pytest.raises(ConfigError, match="int16: no node named 'nope'"):
        check_quantized(_net(), calibrator="max", int16=("nope",))
    with pytest.raises(ConfigError, match="int16: node 'sig' runs on the CPU"):
        check_quantized(_net(), calibrator="max", int16=("sig",), keep_float=("sig",))


def test_old_qgraph_versions_still_load():
    result = check_quantized(_net(), calibrator="max")
    desc, arrays = result.qgraph.to_json()
    assert desc["version"] == q.VERSION == 4
    desc["version"] = 3
    assert q.QGraph.from_json(desc, arrays) == result.qgraph
    desc["version"] = 2
    assert q.QGraph.from_json(desc, arrays) == result.qgraph


def test_int8_copy_of_an_int16_tensor_keeps_the_int8_clip():
    """A per-channel table after an int16 layer reads the grid it has in the all-int8 model.

    mse clips an int8 tensor well inside its range; the int16 threshold (32767 levels) is
    near max|x|. An int8 copy over the int16 range would give the table 127 coarser steps
    than with no int16 layer at all (EfficientNet-B0: every layer of the budget loop in
    int16 scored cosine 0.924 against 0.937 all-int8, before the copy kept the int8 clip).
    """
    int8 = check_quantized(_net("PRelu"), calibrator="mse", min_cos=0.99)
    wide = check_quantized(_net("PRelu"), calibrator="mse", int16=("add",), min_cos=0.99)
    s8 = int8.qgraph.tensor("a").scale
    a16 = wide.qgraph.tensor("a")
    copy = wide.qgraph.tensor("a" + q.NARROW_SUFFIX)
    assert a16.dtype == "int16" and copy.dtype == "int8"
    assert copy.scale == s8  # the all-int8 model's clip, re-derived from the same histogram
    same_range = float(np.float32(np.float64(a16.scale) * 32767 / 127))
    assert copy.scale < same_range  # mse clips (2 % on this net): the old copy was coarser
    assert wide.table.dtype("a") == "int16"  # reading the copy's clip recorded nothing
    feeds = feeds_for(_net("PRelu"), 1, seed=7)
    assert mismatches(wide.qgraph, feeds) == {}
    env = execute(wide.qgraph, feeds, keep_all=True)
    # the copy saturates where |a| exceeds the int8 clip, as the all-int8 tensor does
    assert np.abs(env["a" + q.NARROW_SUFFIX]).max() == 127


def test_unnamed_mac_layers_read_an_int8_copy_of_an_int16_tensor():
    """Only the named layers run 16-bit MACs: conv2 and conv3 read conv1's int16 output
    (through MaxPool / Pad) as int8 copies, so 16-bit MACs are exactly conv1's."""
    from passes.quantize.budget16 import sixteen_bit_mac_share

    result = check_quantized(_net(), calibrator="max", int16=("conv1",), min_cos=0.99)
    d = _dtypes(result)
    assert d["r"] == d["p"] == d["p1"] == "int16"
    ops = {op.name: op for op in result.qgraph.ops}
    assert ops["conv2"].inputs == ("p" + q.NARROW_SUFFIX,)
    assert ops["conv3"].inputs == ("p1" + q.NARROW_SUFFIX,)
    assert d["p" + q.NARROW_SUFFIX] == d["p1" + q.NARROW_SUFFIX] == "int8"
    macs = {"conv1": 16 * 16 * 64 * 27, "conv2": 8 * 8 * 16 * 576, "conv3": 8 * 8 * 16 * 576,
            "fc": 10 * 16}
    assert sixteen_bit_mac_share(result.qgraph) == pytest.approx(
        macs["conv1"] / sum(macs.values()))
    # named, conv2 reads the int16 tensor itself
    both = check_quantized(_net(), calibrator="max", int16=("conv1", "conv2"), min_cos=0.99)
    assert {op.name: op for op in both.qgraph.ops}["conv2"].inputs == ("p",)
