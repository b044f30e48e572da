"""16-bit weights (W16, A16W16; docs/fixed-point.md §17): the radix-255 digit split, the
weight grid, the multiplier bound (checked with exact integers and `fractions`), the float32
ranges and integer parts of the emitted layer at their extremes, which layers may have
16-bit weights, and what W16 buys over int8 weights."""

from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import helper

from compiler.core import fixedpoint as fp
from compiler.core import qgraph as q
from compiler.core.errors import ConfigError, GraphError
from compiler.core.io import load_model, to_proto
from compiler.core.numerics import cosine, run, session
from passes.quantize.api import quantize_model
from passes.quantize.emit_int import IntEmitter
from tests.quant_helpers import feeds_for, make_model, mismatches

node = helper.make_node


# -- arithmetic ------------------------------------------------------------------------------

def test_every_16bit_weight_splits_into_two_int8_digits_in_the_graph():
    """`w = 255·hi + lo` for every representable weight, as emitted and run in onnxruntime."""
    ws = np.arange(-fp.WEIGHT16_MAX, fp.WEIGHT16_MAX + 1).astype(np.int16)
    hi, lo = fp.split_weight16(ws)
    assert hi.dtype == lo.dtype == np.int8
    assert np.array_equal(255 * hi.astype(np.int64) + lo, ws.astype(np.int64))
    assert max(np.abs(hi).max(), np.abs(lo).max()) == 127  # within s8×s8's exact range
    e = IntEmitter(q.QGraph({}, (), (), (), {}))
    w = gs.Variable("w", dtype=np.int16, shape=[len(ws)])
    parts = e.weight_parts(ws, w)
    assert [f for f, _, _ in parts] == [255, 1]
    for i, (_, t, _) in enumerate(parts):
        t.name = f"d{i}"
    g = gs.Graph(nodes=e.nodes, inputs=[w], outputs=[t for _, t, _ in parts], opset=17)
    out = run(session(gs.export_onnx(g)), {"w": ws})
    assert np.array_equal(out["d0"], hi) and np.array_equal(out["d1"], lo)
    for bad in (fp.WEIGHT16_MAX + 1, -fp.WEIGHT16_MAX - 1):
        with pytest.raises(GraphError, match="outside"):
            fp.split_weight16(np.array([bad]))


def test_16bit_weight_grid_is_256_times_finer():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    q8, s8 = fp.quantize_weights(w)
    q16, s16 = fp.quantize_weights(w, dtype="int16")
    assert q16.dtype == np.int16 and np.abs(q16).max(axis=(1, 2, 3)).tolist() == [32512] * 6
    np.testing.assert_allclose(s16.astype(np.float64) * 256, s8, rtol=1e-6)
    err8 = np.abs(q8 * s8[:, None, None, None] - w).max()
    err16 = np.abs(q16 * s16[:, None, None, None] - w).max()
    assert err16 <= err8 / 200 and err16 <= s16.max() / 2 * (1 + 1e-6)


@pytest.mark.parametrize("x_dtype", ["int8", "uint8", "int16"])
def test_w16_multipliers_keep_every_product_within_int64(x_dtype):
    """|acc|·M0 + 2^(s-1) < 2^63 for the largest accumulator the layer's own weights allow,
    and the int64 requantizer equals round-half-up of acc·M0/2^s computed with Fractions."""
    k = 300
    w = np.full((2, k), fp.WEIGHT16_MAX, np.int16)
    w[1, ::2] = -fp.WEIGHT16_MAX
    lo, hi = fp.QRANGE[x_dtype]
    bound = fp.wide_weight_acc_bound(w, x_dtype)
    assert bound == k * fp.WEIGHT16_MAX * max(-lo, hi) + fp.ACC_MAX
    bits = fp.layer_multiplier_bits(w, x_dtype)
    assert bits == min(31, 62 - bound.bit_length()) >= 16
    m0 = (1 << bits) - 1
    for shift in (1, 31, 62):
        assert bound * m0 + (1 << (shift - 1)) < 1 << 63
    accs = np.array([-bound, -bound + 1, -1, 0, 1, bound - 1, bound], np.int64)
    shift = bits + 10
    got = fp.requantize(accs, np.int64(m0), np.int64(shift), -(1 << 40), 1 << 40, np.int64)
    want = [int(np.floor(Fraction(int(a) * m0, 1 << shift) + Fraction(1, 2))) for a in accs]
    assert got.tolist() == want


def _w16_gemm(weight: np.ndarray, x_dtype, k: int):
    """Emit a W16 QGemm-like layer (M = 1, wide clamp: output = accumulator); run(x) -> y."""
    n = len(weight)
    op = SimpleNamespace(name="fc", weight=weight.astype(np.int16),
                         bias=np.arange(n, dtype=np.int32) * 1000 - 7,
                         m0=np.full(n, 1 << 15, np.int64), shift=np.full(n, 15, np.int64),
                         lo=-(1 << 45), hi=1 << 45)
    e = IntEmitter(q.QGraph({}, (), (), (), {}))
    consts = {f"fc::{key}": gs.Constant(f"fc::{key}", getattr(op, key))
              for key in ("bias", "m0", "shift")}
    w = gs.Constant("w", np.ascontiguousarray(op.weight.T))
    x = gs.Variable("x", dtype=x_dtype, shape=[None, k])
    y = gs.Variable("y", dtype=np.int64)

    def matmul_float(t, k0, k1, wt):
        wf = e.slice(e.cast(wt, np.float32), k0, k1, axis=0)
        return e.node("MatMul", [e.slice(t, k0, k1, axis=-1), wf], dtype=np.float32)

    e.weighted_layer(op, x, y, w, lambda t, wt: e.node("MatMulInteger", [t, wt],
                                                         dtype=np.int32),
                     matmul_float, consts.__getitem__, lambda v: np.abs(v.astype(np.int64)))
    sess = session(gs.export_onnx(gs.Graph(nodes=e.nodes, inputs=[x], outputs=[y], opset=17)))
    want = lambda v: v.astype(np.int64) @ op.weight.astype(np.int64).T + op.bias  # noqa: E731
    return {n.op for n in e.nodes}, (lambda v: run(sess, {"x": v})["y"]), want


@pytest.mark.parametrize("x_dtype, k, form", [
    (np.int8, 64, "MatMul"), (np.uint8, 700, "MatMul"), (np.int16, 64, "MatMulInteger")])
def test_w16_layer_is_exact_at_the_extremes(x_dtype, k, form):
    """Extreme weights (±32512, mixed digits) and inputs: the digit sums recombine exactly,
    through float32 ranges (8-bit x) or the integer parts (int16 x)."""
    rng = np.random.default_rng(k)
    w = np.stack([np.full(k, fp.WEIGHT16_MAX), np.full(k, -fp.WEIGHT16_MAX),
                  rng.integers(-fp.WEIGHT16_MAX, fp.WEIGHT16_MAX + 1, k),
                  np.where(np.arange(k) % 2, 127 * 255 - 1, -128)])
    ops, got, want = _w16_gemm(w, x_dtype, k)
    assert form in ops and ("MatMulInteger" in ops) == (form == "MatMulInteger")
    info = np.iinfo(x_dtype)
    x = np.stack([np.full(k, info.min), np.full(k, info.max),
                  rng.integers(info.min, info.max + 1, k),
                  np.where(np.arange(k) % 2, info.min, info.max)]).astype(x_dtype)
    np.testing.assert_array_equal(got(x), want(x))


# -- which layers ----------------------------------------------------------------------------

def _convnet():
    rng = np.random.default_rng(3)
    nodes = [node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="c1"),
             node("Relu", ["c1"], ["r1"], name="r1"),
             node("Conv", ["r1", "w2"], ["c2"], name="c2"),
             node("Add", ["c2", "r1"], ["a"], name="add"),
             node("GlobalAveragePool", ["a"], ["g"], name="gap"),
             node("Flatten", ["g"], ["f"], name="flat"),
             node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc")]
    inits = {"w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
             "b1": rng.standard_normal(8).astype(np.float32) * 0.1,
             "w2": rng.standard_normal((8, 8, 1, 1)).astype(np.float32) * 0.3,
             "wf": rng.standard_normal((5, 8)).astype(np.float32),
             "bf": rng.standard_normal(5).astype(np.float32)}
    return make_model(nodes, {"x": ["N", 3, 10, 10]}, ["y"], inits)


@pytest.mark.parametrize("names, match", [(["nope"], "no node named 'nope'"),
                                          (["add"], "has no weights"),
                                          (["gap"], "has no weights")])
def test_only_conv_gemm_matmul_layers_take_16bit_weights(names, match):
    model = _convnet()
    with pytest.raises(ConfigError, match=match):
        quantize_model(model, feeds_for(model, 4, 0), int16_weights=names)


def test_w16_layers_skip_gptq_and_stay_exact():
    """Naming a fused node (the Relu) raises its layer; GPTQ leaves the W16 layers alone;
    reference == model.quant.onnx and the QGraph round-trips through it."""
    model = _convnet()
    calib, evals = feeds_for(model, 16, 0), feeds_for(model, 16, 1)
    base = quantize_model(model, calib, rounding="gptq")
    w16 = quantize_model(model, calib, rounding="gptq", int16_weights=["r1", "fc"])
    assert list(w16.qgraph.info["int16_weights"]) == ["c1", "fc"]
    weights = {op.name: op.weight.dtype for op in w16.qgraph.ops if hasattr(op, "weight")}
    assert weights == {"c1": np.int16, "c2": np.int8, "fc": np.int16}
    assert set(w16.report["weight_rounding"]) == {"c2"}  # GPTQ skips the W16 layers
    assert set(base.report["weight_rounding"]) == {"c1", "c2", "fc"}
    assert mismatches(w16.qgraph, evals) == {}
    assert q.QGraph.from_model(load_model(to_proto(w16.quant_model))) == w16.qgraph


def test_a16w16_removes_the_weights_error_that_a16w8_keeps():
    """With every activation int16, what is left of A16W8's error is its int8 weights';
    A16W16 cuts it by orders of magnitude (measured on the calibration samples, so no
    value is clipped: 5.6e-6 -> 3.7e-10)."""
    model = _convnet()
    calib = evals = feeds_for(model, 16, 0)
    layers = ["c1", "c2", "add", "gap", "fc"]
    ref = run(session(model), evals)["y"]
    err = {}
    for label, weights in (("a16w8", []), ("a16w16", ["c1", "c2", "fc"])):
        r = quantize_model(model, calib, int16=layers, int16_weights=weights,
                           bias_correction=False)
        assert mismatches(r.qgraph, evals) == {}
        err[label] = 1 - cosine(run(r.quant_model, evals)["y"], ref)
    assert 0 < err["a16w16"] < err["a16w8"] / 1000
