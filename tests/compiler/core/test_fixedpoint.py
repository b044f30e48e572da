"""Fixed-point primitives against exact rational arithmetic (docs/fixed-point.md §2-§4, §6)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from compiler.core import fixedpoint as fp
from compiler.core.errors import DataError, GraphError


def exact_requant(acc: int, m0: int, s: int, lo: int = -128, hi: int = 127) -> int:
    """Round half up of acc·M0·2^-s with Fraction arithmetic, then clamp."""
    v = Fraction(acc * m0, 2 ** s)
    return min(max(math.floor(v + Fraction(1, 2)), lo), hi)


def ideal(acc: int, m: float, lo: int = -128, hi: int = 127) -> int:
    """The real-number result round_half_up(acc·M) with M taken exactly from the float."""
    return min(max(math.floor(Fraction(acc) * Fraction(m) + Fraction(1, 2)), lo), hi)


def check(accs, m0, s, lo=-128, hi=127):
    wide = np.int8 if (lo, hi) == (-128, 127) or max(abs(lo), abs(hi)) < 128 else np.int64
    got = fp.requantize(np.array(accs, np.int64), m0, s, lo, hi, dtype=wide)
    want = [exact_requant(a, m0, s, lo, hi) for a in accs]
    assert got.tolist() == want
    return want


@pytest.mark.parametrize("m", [0.5, 0.75, 1.0, 1.5, 3.5, 0.1, 1e-3, 2 ** -20, 0.9999999999,
                               1.0000000001, 2 ** 29, 1 / 3])
def test_quantize_multiplier_range_and_error(m):
    m0, s = fp.quantize_multiplier(m)
    assert 1 << 30 <= m0 < 1 << 31 and 1 <= s <= 62
    err = abs(Fraction(m0, 2 ** s) - Fraction(m)) / Fraction(m)
    assert err <= Fraction(1, 2 ** 31)


def test_quantize_multiplier_edges():
    assert fp.quantize_multiplier(1.0) == (1 << 30, 30)
    assert fp.quantize_multiplier(0.0) == (0, 62)
    assert fp.quantize_multiplier(2 ** -40) == (0, 62)             # flushed
    assert fp.quantize_multiplier(2.0 ** 31) == ((1 << 31) - 1, 1)  # saturated
    # f·2^31 rounding up to 2^31 renormalises to 2^30 with one less shift
    m0, s = fp.quantize_multiplier(1 - 2 ** -40)
    assert (m0, s) == (1 << 30, 30)
    for bad in (float("nan"), float("inf"), -0.5):
        with pytest.raises(GraphError):
            fp.quantize_multiplier(bad)


def test_ties_round_half_up():
    # M = 1/2 exactly: acc odd gives exact .5 ties
    m0, s = fp.quantize_multiplier(0.5)
    assert check([1, 3, 5, -1, -3, -5, 0], m0, s) == [1, 2, 3, 0, -1, -2, 0]


def test_negative_ties_toward_plus_infinity():
    m0, s = fp.quantize_multiplier(0.25)
    # -2·0.25 = -0.5 -> 0 ; -6·0.25 = -1.5 -> -1 ; -10·0.25 = -2.5 -> -2
    assert check([-2, -6, -10, 2, 6, 10], m0, s) == [0, -1, -2, 1, 2, 3]


def test_identity_multiplier_is_exact():
    m0, s = fp.quantize_multiplier(1.0)
    accs = list(range(-128, 128))
    assert check(accs, m0, s) == accs


@pytest.mark.parametrize("m", [0.999999, 1.0 + 2 ** -30, 1.7, 5.25, 100.0])
def test_m_near_one_and_above(m):
    m0, s = fp.quantize_multiplier(m)
    accs = list(range(-200, 201, 7)) + [-(2 ** 31), 2 ** 31 - 1]
    check(accs, m0, s)
    # agrees with the ideal real result except where M0 rounding crosses a tie
    rng = np.random.default_rng(0)
    for acc in rng.integers(-100, 100, 200).tolist():
        assert abs(exact_requant(acc, m0, s) - ideal(acc, m)) <= 1


def test_tiny_multiplier_gives_zero_even_at_accumulator_extremes():
    for m in (2 ** -32 * 0.999, 2 ** -35, 1e-12):
        m0, s = fp.quantize_multiplier(m)
        accs = [-(2 ** 31), -(2 ** 31) + 1, -1, 0, 1, 2 ** 31 - 1]
        assert check(accs, m0, s) == [ideal(a, m) for a in accs] == [0] * 6
    # smallest non-flushed multiplier: shift 62 at the int32 extremes, no overflow
    m0, s = fp.quantize_multiplier(2.0 ** -32)
    assert s == 62
    check([-(2 ** 31), 2 ** 31 - 1], m0, s, lo=-(2 ** 40), hi=2 ** 40)


def test_saturation_and_clamp_bounds():
    m0, s = fp.quantize_multiplier(0.9)
    assert check([1000, -1000, 141, -143], m0, s) == [127, -128, 127, -128]
    assert check([-50, 50, 200], m0, s, lo=0, hi=60) == [0, 45, 60]
    m0, s = fp.quantize_multiplier(2.0 ** 35)          # saturated multiplier
    assert check([-1, 0, 1], m0, s) == [-128, 0, 127]


def test_int32_accumulator_extremes_exact():
    rng = np.random.default_rng(1)
    accs = [-(2 ** 31), 2 ** 31 - 1, 2 ** 31, -(2 ** 31) + 1] + rng.integers(
        -(2 ** 31), 2 ** 31, 500).tolist()
    for m in (0.5, 2 ** -10, 2 ** -24, 0.7 * 2 ** -31, 1.3e-5):
        m0, s = fp.quantize_multiplier(m)
        check(accs, m0, s, lo=-(2 ** 62), hi=2 ** 62)   # no clamp: checks the full int64 path


def test_random_multipliers_against_fractions():
    rng = np.random.default_rng(2)
    for m in np.exp(rng.uniform(np.log(1e-9), np.log(1e3), 60)):
        m0, s = fp.quantize_multiplier(float(m))
        check(rng.integers(-(2 ** 31), 2 ** 31, 64).tolist(), m0, s)


def test_per_channel_broadcast():
    m0, s = fp.quantize_multipliers(np.array([0.5, 0.25, 3.0]))
    acc = np.array([[[3]], [[-6]], [[7]]], np.int64)            # [C,1,1]
    got = fp.requantize(acc, m0.reshape(3, 1, 1), s.reshape(3, 1, 1))
    assert got.ravel().tolist() == [2, -1, 21]


def test_add_multipliers_share_shift_and_single_rounding():
    a, b, s = fp.add_multipliers(0.7, -0.3)
    assert b < 0 < a and (1 << 30) <= a < (1 << 31)
    xs = np.arange(-128, 128)
    acc = xs * a + xs[::-1] * b
    got = fp.shift_round(acc, s)
    want = [exact_requant(int(v), 1, s) for v in acc]
    assert got.tolist() == want
    # multipliers exact to 2^-31 relative for the larger one
    assert abs(Fraction(a, 2 ** s) - Fraction(0.7)) <= Fraction(0.7) / 2 ** 31


def test_input_quantization_float32_rules():
    inv = fp.inverse_scale(0.1)
    x = np.array([0.0, 0.05, -0.05, 0.15, -0.15, 1e9, -np.inf, np.inf, 12.7, -12.8],
                 np.float32)
    q = fp.quantize_input(x, inv)
    v = np.floor(x * np.float32(inv) + np.float32(0.5))
    assert q.tolist() == np.clip(v, -128, 127).astype(np.int8).tolist()
    assert q[5] == 127 and q[6] == -128 and q[7] == 127
    # float32 (not float64) arithmetic: 0.49999997 + 0.5 rounds to 1.0 in float32
    assert fp.quantize_input(np.array([0.49999997], np.float32), 1.0)[0] == 1


def test_scales_and_fallbacks():
    assert fp.activation_scale(127.0) == 1.0
    assert fp.activation_scale(0.0) == pytest.approx(fp.T_MIN / 127)
    with pytest.raises(DataError):
        fp.activation_scale(float("nan"))
    with pytest.raises(DataError):
        fp.activation_scale(float("inf"))
    w = np.array([[1.0, -2.0], [0.0, 0.0], [0.5, 0.25]], np.float32)
    q, sw = fp.quantize_weights(w)
    assert q.tolist() == [[64, -127], [0, 0], [127, 64]]
    assert sw[1] == sw.max() and np.all(sw > 0)
    with pytest.raises(GraphError):
        fp.quantize_weights(np.array([[np.nan, 1.0]], np.float32))


def test_bias_saturates_to_accumulator_budget():
    sw = np.array([1e-6, 0.01], np.float32)
    b = fp.quantize_bias(np.array([1e6, 1.0]), 1e-3, sw, k=9)
    assert b[0] == 2 ** 31 - 1 - 9 * 2 ** 14 and b[1] == 100000
    with pytest.raises(GraphError):
        fp.bias_bound(1 << 17)


def test_lut_tables():
    t = fp.build_lut("Sigmoid", 8 / 127, 1 / 127)
    assert t.dtype == np.int8 and t.shape == (256,)
    assert t[128] == 64 and t[0] == 0 and t[255] == 127     # sigmoid(0)=0.5 -> 63.5 -> 64
    x = np.array([-128, 0, 127], np.int8)
    assert fp.apply_lut(x, t).tolist() == [0, 64, 127]
    relu = fp.build_lut("Relu", 0.1, 0.1)
    assert fp.apply_lut(np.arange(-128, 128), relu).tolist() == [0] * 128 + list(range(128))
    with pytest.raises(GraphError):
        fp.build_lut("Nope", 1.0, 1.0)


def test_clamp_bounds():
    assert fp.clamp_bounds(0.0, 6.0, 6 / 127) == (0, 127)
    assert fp.clamp_bounds(0.0, 6.0, 0.1) == (0, 60)
    assert fp.clamp_bounds(None, None, 0.1) == (-128, 127)


def test_bias_scale_floor_is_the_smallest_scale_that_keeps_the_bias_unsaturated():
    b = np.array([7.07, -7.07, 0.5, 0.0, 123.0])
    sx, k = 0.00787, 27
    floor = fp.bias_scale_floor(b, sx, k)
    assert floor[3] == 0.0  # no bias: no floor
    floor[3] = 1e-3
    bound = fp.bias_bound(k)
    q = fp.quantize_bias(b, sx, floor, k)
    assert np.all(np.abs(q.astype(np.int64)) <= bound)
    denom = np.float64(sx) * floor.astype(np.float64)
    assert np.all(np.abs(q * denom - b) <= 0.5 * denom + 1e-12)  # no saturation error
    below = np.nextafter(floor, np.float32(0))
    nonzero = b != 0
    assert np.all(np.abs(b[nonzero]) / (np.float64(sx) * below[nonzero]) > bound)
    assert fp.bias_scale_floor(None, sx, k) is None


def test_near_dead_channel_keeps_its_bias_through_int8():
    # BatchNorm folding of a channel with gamma ~ 0 leaves weights ~1e-7 and a bias of
    # several units; a plain per-channel scale (1e-9) would saturate the int32 bias and
    # output ~0 for that channel of a linear (no activation) layer.
    from compiler.core.builder import GraphBuilder
    from compiler.core.numerics import run
    from passes.quantize.api import quantize_model

    gb = GraphBuilder("dead", 0)
    x = gb.input("x", ["N", 4, 6, 6])
    w = gb.rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    w[1] = 1e-7
    y = gb.conv(x, w, np.array([0.2, 3.0, -0.4], np.float32), name="c")
    gb.output(y)
    model = gb.build()
    feeds = {"x": np.random.default_rng(1).standard_normal((8, 4, 6, 6)).astype(np.float32)}
    result = quantize_model(model, feeds, "max")
    out = run(result.quant_model, feeds)["c"]
    op = next(o for o in result.qgraph.ops if o.name == "c")
    assert np.max(np.abs(op.bias.astype(np.int64))) < fp.bias_bound(36)
    step = result.qgraph.tensors["c__q"].scale
    np.testing.assert_allclose(out[:, 1], 3.0, atol=step)


# --- unsigned 8-bit tensors (§15) ------------------------------------------------------------

def test_precisions_are_defined_once():
    assert fp.QRANGE == {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
    assert fp.qrange(np.uint8) == (0, 255) and fp.qrange("int8") == (-128, 127)
    assert fp.is_quantized_dtype("uint8") and not fp.is_quantized_dtype("float32")
    with pytest.raises(GraphError):
        fp.qrange("float32")
    # the product bound is the next power of two above max|x|·127
    assert fp.product_bound("int8") == 1 << 14 > 128 * 127 >= 1 << 13
    assert fp.product_bound("uint8") == 1 << 15 > 255 * 127 >= 1 << 14
    assert fp.product_bound("int16") == 1 << 22 > 32768 * 127 >= 1 << 21
    assert fp.is_wide("int16") and not fp.is_wide("uint8")


def test_uint8_activation_scale_is_t_over_255():
    assert fp.activation_scale(255.0, dtype="uint8") == 1.0
    assert fp.activation_scale(6.0, dtype="uint8") == float(np.float32(6 / 255))
    assert fp.activation_scale(0.0, dtype="uint8") == pytest.approx(fp.T_MIN / 255)


@pytest.mark.parametrize("m", [0.5, 1 / 3, 0.0123, 1.0, 2.75])
def test_uint8_requant_bounds_against_fractions(m):
    m0, s = fp.quantize_multiplier(m)
    # accumulators around every rounding tie, the 255.5 / -0.5 clamp edges and int32 limits
    ties = [Fraction(2 * c - 1, 2) / Fraction(m0, 2 ** s) for c in (0, 1, 128, 255, 256, 1000)]
    accs = sorted({math.floor(t) + d for t in ties for d in (-1, 0, 1, 2)}
                  | {-(2 ** 31), 2 ** 31 - 1, -1, 0, 1})
    got = fp.requantize(np.array(accs, np.int64), m0, s, 0, 255, dtype=np.uint8)
    assert got.dtype == np.uint8
    assert got.tolist() == [exact_requant(a, m0, s, 0, 255) for a in accs]
    # and within one LSB of the ideal real result, saturating at 0 and 255
    assert all(abs(g - ideal(a, m, 0, 255)) <= 1 for g, a in zip(got.tolist(), accs, strict=True))


def test_uint8_clamp_bounds_and_relu6():
    s = fp.activation_scale(6.0, dtype="uint8")
    assert fp.clamp_bounds(0.0, 6.0, s, "uint8") == (0, 255)
    assert fp.clamp_bounds(0.0, 6.0, 0.1, "uint8") == (0, 60)
    assert fp.clamp_bounds(None, None, 0.1, "uint8") == (0, 255)
    assert fp.clamp_bounds(0.3, 100.0, 0.1, "uint8") == (3, 255)


def test_uint8_bias_bound_halves_the_reduction_limit():
    k = 1000
    assert fp.bias_bound(k, x_dtype="uint8") == 2 ** 31 - 1 - k * 2 ** 15
    # worst case: 255·127 per product stays inside int32 with the bound
    assert fp.bias_bound(k, x_dtype="uint8") + k * 255 * 127 <= 2 ** 31 - 1
    assert fp.bias_bound((1 << 16) - 1, x_dtype="uint8") == 2 ** 15 - 1
    with pytest.raises(GraphError):
        fp.bias_bound(1 << 16, x_dtype="uint8")
    fp.bias_bound(1 << 16)  # int8 inputs still allow it
    b = fp.quantize_bias(np.array([1e6]), 1e-3, np.array([1e-6], np.float32), 9, x_dtype="uint8")
    assert b[0] == 2 ** 31 - 1 - 9 * 2 ** 15
    # the bias-safe weight-scale floor uses the same bound
    floor = fp.bias_scale_floor(np.array([100.0]), 1e-3, 9, x_dtype="uint8")
    need = Fraction(100.0) / (Fraction(1e-3) * fp.bias_bound(9, x_dtype="uint8"))
    assert Fraction(float(floor[0])) >= need > Fraction(float(np.nextafter(floor[0],
                                                                            np.float32(0))))


def test_uint8_input_quantization_saturates_at_0_and_255():
    x = np.array([-5.0, -0.5, 0.49999997, 0.5, 254.5, 300.0, np.inf, -np.inf], np.float32)
    q = fp.quantize_input(x, 1.0, "uint8")
    assert q.dtype == np.uint8
    assert q.tolist() == [0, 0, 1, 1, 255, 255, 255, 0]


def test_lut_with_uint8_input_and_output():
    assert fp.lut_offset("int8") == 128 and fp.lut_offset(np.uint8) == 0
    t = fp.build_lut("Sigmoid", 8 / 255, 1 / 255, in_dtype="uint8", out_dtype="uint8")
    assert t.dtype == np.uint8 and t.shape == (256,)
    assert t[0] == 128 and t[64] == 225  # sigmoid(0)·255 = 127.5 -> 128 (ties up)
    assert t[64] == math.floor(255 / (1 + math.exp(-64 * 8 / 255)) + 0.5)
    x = np.array([0, 64], np.uint8)
    assert fp.apply_lut(x, t, fp.lut_offset(x.dtype)).tolist() == [128, 225]
    neg = fp.build_lut("Neg", 0.1, 0.1, in_dtype="uint8")
    assert neg.dtype == np.int8 and neg[:129].tolist() == [-i for i in range(129)]
    assert np.all(neg[129:] == -128)
    with pytest.raises(GraphError):
        fp.lut_offset("float32")


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16"])
@pytest.mark.parametrize("inv", [fp.inverse_scale(0.1), 25.079370498657227, 1e-6, 3e5, 1.0])
def test_quantize_barrier_changes_no_result(dtype, inv):
    """The emitted QQuantize clamps x to (c_lo, c_hi) first (an onnxruntime fusion barrier,
    fixed-point.md §4): the same integers for every float32, ties and saturation included."""
    lo, hi = fp.qrange(dtype)
    c_lo, c_hi = fp.quantize_barrier(inv, lo, hi)
    i32 = np.float32(inv)
    levels = np.arange(lo - 3, hi + 4, dtype=np.float64)
    ties = ((levels + 0.5) / float(i32)).astype(np.float32)  # around every rounding edge
    near = np.concatenate([np.nextafter(ties, np.float32(d) * np.inf) for d in (-1, 1)])
    rng = np.random.default_rng(3)
    wide = (rng.standard_normal(20000) * (hi - lo) / float(i32)).astype(np.float32)
    edges = np.array([c_lo, c_hi, np.nextafter(c_lo, -np.inf), np.nextafter(c_hi, np.inf),
                      np.inf, -np.inf, 3e38, -3e38, 0.0, -0.0], np.float32)
    x = np.concatenate([ties, near, wide, edges])
    clamped = np.clip(x, c_lo, c_hi)
    np.testing.assert_array_equal(fp.quantize_input(clamped, inv, dtype),
                                  fp.quantize_input(x, inv, dtype))
    assert float(c_hi * i32) >= hi + 1 and float(c_lo * i32) <= lo - 1


@pytest.mark.parametrize("inv", [0.0, -1.0, float("nan"), float("inf")])
def test_quantize_barrier_rejects_a_degenerate_scale(inv):
    with pytest.raises(GraphError, match="inverse scale"):
        fp.quantize_barrier(inv, -128, 127)
