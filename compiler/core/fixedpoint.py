"""Fixed-point primitives of docs/fixed-point.md: scales, multipliers, requantization, LUTs.

Build-time helpers (turning float scales into integers) and the run-time integer kernels
share this module; `reference.py` executes a QGraph with the run-time ones only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np

from compiler.core.errors import DataError, GraphError

log = logging.getLogger(__name__)

INT8_MIN, INT8_MAX = -128, 127
FLOAT32_EXACT = 1 << 24
"""Every integer of smaller magnitude is exact in float32 (24-bit significand)."""
FLOAT64_EXACT = 1 << 53
"""Every integer of smaller magnitude is exact in float64 (53-bit significand)."""
FLOAT64_PRODUCT_EXACT = 1 << 52
"""|a·M0| below this: §3's float64 product and rounding add are exact (`requant_float_ok`)."""
QRANGE: dict[str, tuple[int, int]] = {"int8": (INT8_MIN, INT8_MAX), "uint8": (0, 255),
                                      "int16": (-(1 << 15), (1 << 15) - 1)}
"""Precisions of quantized activation tensors (zero point 0): dtype name -> (qmin, qmax).

The one place that defines them (docs/fixed-point.md §1, §15, §16)."""
WIDE_DTYPES = frozenset({"int16"})
"""Precisions whose products need the 64-bit accumulator of an A16W8 layer (§16)."""
LUT_DTYPES = frozenset({"int8", "uint8"})
"""Input dtypes a 256-entry table (§10) can index."""
LUT16_SHIFT = 7
"""An int16 input reads an interpolated table (§18): knots every 2^7 input steps."""
LUT16_ENTRIES = (1 << (16 - LUT16_SHIFT)) + 1
"""513 knots: x = -32768, -32640, ..., 32768 (the last one past the int16 range)."""
WEIGHT_MAX = 127
WEIGHT16_MAX = 127 * 256
"""|w| bound of a 16-bit weight (W16, §17): 32512 = 255·127 + 127, so every weight splits
exactly into two int8 digits `w = 255·hi + lo`, hi, lo ∈ [-127, 127] (`split_weight16`), the
range in which onnxruntime's s8×s8 integer kernels are exact (§11). Its step is 1/256 of
int8's."""
WEIGHT16_RADIX = 255
WEIGHT_DTYPES = {"int8": WEIGHT_MAX, "int16": WEIGHT16_MAX}
"""Weight precisions: dtype name -> largest |w| (symmetric, zero point 0)."""
MAX_SHIFT = 62
M0_MIN, M0_LIMIT = 1 << 30, 1 << 31
PRODUCT_BOUND = 1 << 14          # |x·w| ≤ 128·127 < 2^14
ACC_MAX = (1 << 31) - 1
A16_MAX_K = 1 << 16  # the low-byte int32 sum K·255·127 of the byte split stays < 2^31 (§16)
INT64_HEADROOM = 62  # |acc·M0| < 2^62 leaves room for the rounding term 2^(s-1) ≤ 2^61
T_MIN = 1e-6


def qrange(dtype: str | np.dtype) -> tuple[int, int]:
    """(qmin, qmax) of a quantized activation dtype (GraphError for any other dtype)."""
    name = np.dtype(dtype).name
    if name not in QRANGE:
        raise GraphError(f"{name} is not a quantized activation type "
                         f"({', '.join(QRANGE)})")
    return QRANGE[name]


def is_quantized_dtype(dtype: str | np.dtype) -> bool:
    """True for the dtypes of `QRANGE`."""
    return np.dtype(dtype).name in QRANGE


def weight_max(dtype: str | np.dtype = "int8") -> int:
    """Largest |w| of a weight precision: 127 (int8) or 32512 (int16, §17)."""
    name = np.dtype(dtype).name
    if name not in WEIGHT_DTYPES:
        raise GraphError(f"{name} is not a weight type ({', '.join(WEIGHT_DTYPES)})")
    return WEIGHT_DTYPES[name]


def product_bound(x_dtype: str | np.dtype) -> int:
    """A power of two P > max|x·w| for inputs of `x_dtype` and weights |w| ≤ 127 (§1).

    int8: 128·127 < 2^14; uint8: 255·127 < 2^15; int16: 32768·127 < 2^22.
    """
    lo, hi = qrange(x_dtype)
    return 1 << (max(-lo, hi) * WEIGHT_MAX).bit_length()


def split_weight16(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 digits (hi, lo) of 16-bit weights, `w = 255·hi + lo` exactly (§17).

    `lo = ((w + 127) mod 255) - 127 ∈ [-127, 127]`, `hi = (w - lo) / 255`, which lies in
    [-127, 127] for |w| ≤ 32512. Raises GraphError for a weight outside that range.
    """
    w = np.asarray(w, np.int64)
    if w.size and int(np.abs(w).max()) > WEIGHT16_MAX:
        raise GraphError(f"16-bit weight {int(np.abs(w).max())} outside ±{WEIGHT16_MAX}")
    lo = np.mod(w + 127, WEIGHT16_RADIX) - 127
    return ((w - lo) // WEIGHT16_RADIX).astype(np.int8), lo.astype(np.int8)


def wide_weight_acc_bound(weight: np.ndarray, x_dtype: str | np.dtype) -> int:
    """Largest |acc| of a 16-bit-weight layer: max_c Σ|w[c]|·max|x| + (2^31 - 1) (§17).

    The layer's own weights bound it (K·32512·32768 would leave too few multiplier bits).
    """
    lo, hi = qrange(x_dtype)
    w = np.abs(np.asarray(weight, np.int64)).reshape(len(weight), -1)
    l1 = int(w.sum(axis=1).max()) if w.size else 0
    return l1 * max(-lo, hi) + ACC_MAX


def is_wide(dtype: str | np.dtype) -> bool:
    """True for a 16-bit activation precision (A16W8 arithmetic, §16)."""
    return np.dtype(dtype).name in WIDE_DTYPES


def multiplier_bits(acc_bound: int) -> int:
    """Bits of M0 such that |acc|·M0 < 2^62 for every |acc| ≤ `acc_bound` (§2, §16).

    31 (M0 < 2^31) whenever the accumulator fits int32, as for every 8-bit layer; an A16W8
    layer's 64-bit accumulator gets a narrower multiplier, never below 16 bits.
    """
    bits = min(31, INT64_HEADROOM - int(acc_bound).bit_length())
    if bits < 16:
        raise GraphError(f"accumulator bound {acc_bound} leaves {bits} multiplier bits (< 16)")
    return bits


def mac_acc_bound(k: int, x_dtype: str | np.dtype) -> int:
    """Largest |acc| of a K-term product sum plus its bias (§1, §16).

    8-bit inputs: the int32 limit (the bias bound keeps acc within it); int16 inputs:
    K·P + (2^31 - 1), the int32 bias on top of K products below P = 2^22.
    """
    if not is_wide(x_dtype):
        return ACC_MAX
    return k * product_bound(x_dtype) + ACC_MAX


def layer_multiplier_bits(weight: np.ndarray, x_dtype: str | np.dtype) -> int:
    """Multiplier bits of a conv/FC layer with integer `weight` [Cout, ...] (§2, §16, §17).

    8-bit weights: from `mac_acc_bound` (31 for 8-bit inputs); 16-bit weights: from the
    layer's own bound `wide_weight_acc_bound`.
    """
    if np.asarray(weight).dtype == np.int16:
        return multiplier_bits(wide_weight_acc_bound(weight, x_dtype))
    return multiplier_bits(mac_acc_bound(int(np.prod(np.shape(weight)[1:])), x_dtype))


def qround(v: np.ndarray | float) -> np.ndarray | float:
    """Round half up in float64: floor(v + 0.5) (build time only)."""
    return np.floor(np.asarray(v, np.float64) + 0.5)


# --- scales ---------------------------------------------------------------------------------

def activation_scale(threshold: float, name: str = "<tensor>", dtype: str = "int8") -> float:
    """S = f32(T/qmax) with the §1 fallbacks: non-finite T -> DataError, T < T_MIN -> T_MIN.

    qmax = 127 for int8, 255 for uint8 (§15).
    """
    t = float(threshold)
    if not math.isfinite(t):
        raise DataError(f"tensor {name!r}: calibrated range is {t} (NaN/Inf in activations?)")
    if t < T_MIN:
        log.warning("tensor %r: calibrated range %g below %g, using %g", name, t, T_MIN, T_MIN)
        t = T_MIN
    return float(np.float32(t / float(qrange(dtype)[1])))


def inverse_scale(scale: float) -> float:
    """f32(1 / S), the multiplier of input quantization (§4)."""
    return float(np.float32(1.0 / float(scale)))


def constant_scale(values: np.ndarray) -> float:
    """Per-tensor scale of a constant operand: f32(max|c|/127), 1.0 when all zero."""
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    return float(np.float32(peak / WEIGHT_MAX)) if peak > 0 else 1.0


BLOCK = 1 << 20  # elements per float64 temporary when quantizing large weights


def weight_scales(peak: np.ndarray, wmax: int = WEIGHT_MAX) -> np.ndarray:
    """`Sw[c] = f32(max|W[c]| / wmax)` from per-channel peaks (§1; wmax 127, §17: 32512).

    An all-zero channel gets the layer's largest scale (1.0 if every channel is zero).
    """
    scale = (np.asarray(peak, np.float64) / wmax).astype(np.float32)
    fallback = float(scale.max()) if scale.size and scale.max() > 0 else 1.0
    return np.where(scale > 0, scale, np.float32(fallback)).astype(np.float32)


def quantize_weights(w: np.ndarray, name: str = "<node>",
                     min_scale: np.ndarray | None = None,
                     dtype: str = "int8") -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel (axis 0) symmetric int8 (or int16, §17) weights and float32 scales.

    `min_scale` (per channel, from `bias_scale_floor`) raises a channel's scale so its bias
    fits the int32 accumulator. Works in blocks of output channels so float64 temporaries
    stay small.
    """
    wmax = weight_max(dtype)
    w = np.asarray(w)
    flat = w.reshape(w.shape[0], -1) if w.size else w.reshape(len(w), 0)
    rows = max(1, BLOCK // max(flat.shape[1], 1))
    peak = np.zeros(len(flat), np.float64)
    for i in range(0, len(flat), rows):
        block = flat[i:i + rows].astype(np.float64)
        if not np.all(np.isfinite(block)):
            raise GraphError(f"node {name!r}: weights contain NaN or Inf")
        peak[i:i + rows] = np.max(np.abs(block), axis=1) if block.shape[1] else 0.0
    scale = weight_scales(peak, wmax)
    if min_scale is not None:
        scale = np.maximum(scale, np.asarray(min_scale, np.float32))
    q = np.empty(flat.shape, np.dtype(dtype))
    s64 = scale.astype(np.float64).reshape(-1, 1)
    for i in range(0, len(flat), rows):
        v = qround(flat[i:i + rows].astype(np.float64) / s64[i:i + rows])
        q[i:i + rows] = np.clip(v, -wmax, wmax)
    return q.reshape(w.shape), scale


def fake_quant_weights(w: np.ndarray) -> np.ndarray:
    """Wq·Sw in the weight's dtype: what the integer model computes with (bias correction)."""
    q, scale = quantize_weights(w)
    bshape = (-1,) + (1,) * (np.ndim(w) - 1)
    return (q.astype(np.float64) * scale.astype(np.float64).reshape(bshape)).astype(
        np.asarray(w).dtype)


def quantize_constant(values: np.ndarray, scale: float, dtype: str = "int8") -> np.ndarray:
    """Constant values as `dtype` (int8 by default) with a given per-tensor scale."""
    lo, hi = qrange(dtype)
    q = np.clip(qround(np.asarray(values, np.float64) / scale), lo, hi)
    return np.asarray(q, np.dtype(dtype))


def wide_layer(x_dtype: str | np.dtype = "int8", w_dtype: str | np.dtype = "int8") -> bool:
    """True when a MAC layer accumulates in 64 bits: int16 inputs (§16) or weights (§17)."""
    return is_wide(x_dtype) or np.dtype(w_dtype).name == "int16"


def bias_bound(k: int, name: str = "<node>", x_dtype: str = "int8",
               w_dtype: str = "int8") -> int:
    """B = 2^31 - 1 - K·P: a bias within ±B keeps the int32 accumulator from overflowing.

    P = `product_bound(x_dtype)`: 2^14 for int8 inputs, 2^15 for uint8. A layer with int16
    inputs or weights accumulates in 64 bits (§16, §17): B = 2^31 - 1, the int32 bias's own
    range, and K is limited by the byte split's int32 partial sums.
    """
    if wide_layer(x_dtype, w_dtype):
        if k >= A16_MAX_K:
            raise GraphError(f"node {name!r}: reduction length {k} too large for int16 "
                             f"activations or weights (at most {A16_MAX_K - 1}, §16)")
        return ACC_MAX
    bound = ACC_MAX - k * product_bound(x_dtype)
    if bound <= 0:
        raise GraphError(f"node {name!r}: reduction length {k} too large for an int32 accumulator")
    return bound


def bias_scale_floor(b: np.ndarray | None, x_scale: float, k: int,
                     name: str = "<node>", x_dtype: str = "int8",
                     w_dtype: str = "int8") -> np.ndarray | None:
    """Smallest float32 `Sw[c]` with `|b[c]| / (Sx·Sw[c]) ≤ B` (§1), or None without bias.

    A channel whose weights are (nearly) zero but whose bias is not would otherwise get a
    weight scale so fine that its bias saturates the int32 range and the channel outputs
    ~0 instead of its bias.
    """
    if b is None:
        return None
    b64 = np.abs(np.asarray(b, np.float64).reshape(-1))
    if not np.all(np.isfinite(b64)):
        raise GraphError(f"node {name!r}: bias contains NaN or Inf")
    need = b64 / (np.float64(x_scale) * bias_bound(k, name, x_dtype, w_dtype))
    floor = need.astype(np.float32)
    return np.where(floor.astype(np.float64) < need, np.nextafter(floor, np.float32(np.inf)),
                    floor).astype(np.float32)


def quantize_bias(b: np.ndarray | None, x_scale: float, w_scale: np.ndarray, k: int,
                  name: str = "<node>", x_dtype: str = "int8",
                  w_dtype: str = "int8") -> np.ndarray:
    """int32 bias round(b / (Sx·Sw[c])), saturated to ±bias_bound(K, ...) (§1)."""
    bound = bias_bound(k, name, x_dtype, w_dtype)
    if b is None:
        return np.zeros(len(w_scale), np.int32)
    b64 = np.asarray(b, np.float64).reshape(-1)
    if not np.all(np.isfinite(b64)):
        raise GraphError(f"node {name!r}: bias contains NaN or Inf")
    denom = np.float64(x_scale) * w_scale.astype(np.float64)
    return np.clip(qround(b64 / denom), -bound, bound).astype(np.int32)


def clamp_bounds(lo: float | None, hi: float | None, scale: float,
                 dtype: str = "int8") -> tuple[int, int]:
    """Integer clamp bounds for a fused ReLU/Clip with real bounds lo/hi (None: unbounded).

    Both lie within the range of the output `dtype` (§3).
    """
    tmin, tmax = qrange(dtype)
    qlo = tmin if lo is None or not math.isfinite(lo) else int(qround(lo / scale))
    qhi = tmax if hi is None or not math.isfinite(hi) else int(qround(hi / scale))
    qlo, qhi = min(max(qlo, tmin), tmax), min(max(qhi, tmin), tmax)
    return qlo, max(qlo, qhi)


# --- multipliers ----------------------------------------------------------------------------

def quantize_multiplier(m: float, bits: int = 31) -> tuple[int, int]:
    """M -> (M0, s) with M ≈ M0·2^-s, M0 in [2^(b-1), 2^b), s in [1, 62] (§2; b = `bits`).

    b = 31 for every 8-bit layer; an A16W8 layer uses `multiplier_bits` (§16). Tiny M
    (< 2^(b-63)) flushes to (0, 62), M ≥ 2^(b-1) saturates to (2^b-1, 1); both give the
    ideal result for any |acc| ≤ 2^(62-b).
    """
    m = float(m)
    if not math.isfinite(m) or m < 0:
        raise GraphError(f"requantization multiplier {m} is not a finite non-negative number")
    if m == 0:
        return 0, MAX_SHIFT
    limit = 1 << bits
    f, e = math.frexp(m)
    m0 = math.floor(f * limit + 0.5)
    if m0 == limit:
        m0, e = limit >> 1, e + 1
    s = bits - e
    if s > MAX_SHIFT:
        return 0, MAX_SHIFT
    if s < 1:
        return limit - 1, 1
    return m0, s


def quantize_multipliers(ms: np.ndarray, bits: int = 31) -> tuple[np.ndarray, np.ndarray]:
    """Elementwise `quantize_multiplier` -> (m0 int64, shift int64) of the same shape."""
    flat = np.asarray(ms, np.float64).reshape(-1)
    pairs = [quantize_multiplier(m, bits) for m in flat]
    m0 = np.array([p[0] for p in pairs], np.int64).reshape(np.shape(ms))
    shift = np.array([p[1] for p in pairs], np.int64).reshape(np.shape(ms))
    return m0, shift


def add_multipliers(ma: float, mb: float) -> tuple[int, int, int]:
    """Signed multipliers (A_a, A_b) sharing one shift s for QAdd (§6)."""
    big = max(abs(ma), abs(mb))
    m0, s = quantize_multiplier(big)

    def scaled(m: float) -> int:
        if abs(m) == big:
            mag = m0
        else:
            mag = min(math.floor(math.ldexp(abs(m), s) + 0.5), M0_LIMIT - 1)
        return -mag if m < 0 else mag

    return scaled(ma), scaled(mb), s


# --- run-time integer kernels -------------------------------------------------------------

def requantize(acc: np.ndarray, m0: np.ndarray | int, shift: np.ndarray | int,
               lo: int = INT8_MIN, hi: int = INT8_MAX, dtype: type = np.int8) -> np.ndarray:
    """clamp((acc·M0 + 2^(s-1)) >> s, lo, hi) in int64 with an arithmetic shift (§3).

    The result is cast to `dtype` (the output tensor's type, int8 or uint8; tests use
    int64 with wider bounds). `lo`/`hi` must lie within `dtype`.
    """
    shift = np.asarray(shift, np.int64)
    v = np.asarray(acc, np.int64) * np.asarray(m0, np.int64)
    v = v + np.left_shift(np.int64(1), shift - 1)
    return np.clip(np.right_shift(v, shift), lo, hi).astype(dtype)


def max_abs(dtype: str | np.dtype) -> int:
    """The largest |q| of a quantized type (128 for int8, 255 for uint8, 32768 for int16)."""
    lo, hi = qrange(np.dtype(dtype).name)
    return max(-lo, hi)


def requant_float_ok(m0: np.ndarray | int, shift: np.ndarray | int, lo: int, hi: int,
                     bound: np.ndarray | None = None) -> np.ndarray:
    """Per channel: whether float64 `clamp(floor(a·M + 1/2), lo, hi)`, `M = M0·2^-s`, is §3.

    Scaling by 2^-s commutes with rounding, so `fl(a·M) + 1/2` is `(fl(a·M0) + 2^(s-1))·2^-s`
    rounded once more, and both roundings are exact while `|a·M0| < 2^52` (a itself exact
    in float64, |a| < 2^53). Larger products must saturate, and do exactly when
    `2^(52-s) ≥ 2^e ≥ max(-lo, hi + 1)`: then `|a·M| ≥ 2^e`, and float rounding is
    monotone, so the float result saturates alike. A channel also qualifies when `bound`
    (its largest |a| over every input, bias included) keeps `|a·M0| < 2^52`. Used by the
    simulator and by model.quant.onnx (docs/binary-format.md §7, docs/fixed-point.md §3).
    """
    m0, shift = np.broadcast_arrays(np.asarray(m0, np.int64), np.asarray(shift, np.int64))
    e = int(np.ceil(np.log2(max(-lo, hi + 1, 1))))
    ok = (shift + e <= 52).reshape(-1)
    if bound is not None:
        worst = np.broadcast_to(np.asarray(bound, np.float64).reshape(-1), ok.shape) \
            * m0.reshape(-1).astype(np.float64)
        ok |= worst < FLOAT64_PRODUCT_EXACT
    return ok


def shift_round(acc: np.ndarray, shift: int, lo: int = INT8_MIN, hi: int = INT8_MAX) -> np.ndarray:
    """clamp((acc + 2^(s-1)) >> s, lo, hi): requantize with M0 = 1 (QAdd's final step)."""
    return requantize(acc, 1, shift, lo, hi)


def quantize_input(x: np.ndarray, inv_scale: float, dtype: str = "int8") -> np.ndarray:
    """float32 -> `dtype`: clamp(floor(x ⊗ inv ⊕ 0.5), qmin, qmax), all in float32 (§4)."""
    lo, hi = qrange(dtype)
    with np.errstate(over="ignore"):  # beyond float32: ±inf, which saturates (§4)
        v = np.asarray(x, np.float32) * np.float32(inv_scale)
    v = np.floor(v + np.float32(0.5))
    return np.clip(v, np.float32(lo), np.float32(hi)).astype(np.dtype(dtype))


def quantize_barrier(inv_scale: float, lo: int, hi: int) -> tuple[np.float32, np.float32]:
    """float32 bounds (c_lo, c_hi) with clamp(x, c_lo, c_hi) leaving `quantize_input` unchanged.

    Inside the bounds the clamp is the identity; beyond them `quantize_input` saturates (§4):
    `c_hi ⊗ inv ≥ hi + 1` and `c_lo ⊗ inv ≤ lo - 1` in float32, and ⊗ is monotonic.
    """
    inv = np.float32(inv_scale)
    if not (np.isfinite(inv) and inv > 0):
        raise GraphError(f"quantize: inverse scale {inv_scale!r} is not a positive finite "
                         "number")

    def bound(level: int, direction: float) -> np.float32:
        c = np.float32(level / float(inv))
        for _ in range(64):  # float32(level / inv) ⊗ inv is within a few ulps of level
            if direction * float(c * inv) >= direction * level:
                return c
            c = np.nextafter(c, np.float32(direction * np.inf))
        return np.float32(direction * np.inf)  # unreachable for a finite positive inv

    return bound(lo - 1, -1.0), bound(hi + 1, 1.0)


def dequantize(q: np.ndarray, scale: float) -> np.ndarray:
    """int8/uint8 -> float32: float32(q) ⊗ S (§5)."""
    return np.asarray(q).astype(np.float32) * np.float32(scale)


# --- lookup tables --------------------------------------------------------------------------

def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * v))  # overflow-free form of 1/(1+e^-v)


def _hardsigmoid(v: np.ndarray, alpha: float = 0.2, beta: float = 0.5) -> np.ndarray:
    return np.clip(alpha * v + beta, 0.0, 1.0)


LUT_FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "Sigmoid": _sigmoid,
    "Tanh": np.tanh,
    "HardSigmoid": _hardsigmoid,
    "HardSwish": lambda v: v * np.clip(v / 6.0 + 0.5, 0.0, 1.0),
    "SiLU": lambda v: v * _sigmoid(v),
    "HardSigmoidMul": lambda v, alpha=0.2, beta=0.5: v * _hardsigmoid(v, alpha, beta),
    "LeakyRelu": lambda v, alpha=0.01: np.where(v >= 0, v, alpha * v),
    "Relu": lambda v: np.maximum(v, 0.0),
    "Clip": lambda v, lo=-np.inf, hi=np.inf: np.clip(v, lo, hi),
    "Elu": lambda v, alpha=1.0: np.where(v >= 0, v, alpha * np.expm1(np.minimum(v, 0.0))),
    "Softplus": lambda v: np.logaddexp(0.0, v),
    "Softsign": lambda v: v / (1.0 + np.abs(v)),
    "Abs": np.abs,
    "Neg": np.negative,
}


def lut_offset(dtype: str | np.dtype) -> int:
    """Index offset of a table read by a `dtype` input: -qmin (128 for int8, 0 for uint8)."""
    if np.dtype(dtype).name not in LUT_DTYPES:
        raise GraphError(f"a 256-entry table cannot be indexed by {np.dtype(dtype).name}")
    return -qrange(dtype)[0]


def lut_grid(x_scale: float, in_dtype: str = "int8") -> np.ndarray:
    """The real inputs a table holds, float64 (§10, §18).

    8-bit inputs: the 256 values (i - offset)·Sx; int16: the 513 knots (128·j - 32768)·Sx.
    """
    if is_wide(in_dtype):
        knots = np.arange(LUT16_ENTRIES, dtype=np.float64) * (1 << LUT16_SHIFT) - 32768.0
        return knots * np.float64(x_scale)
    lo = -lut_offset(in_dtype)
    return np.arange(lo, lo + 256, dtype=np.float64) * np.float64(x_scale)


def lut_values(fn: str, x_scale: float, in_dtype: str = "int8", **params: float) -> np.ndarray:
    """F on the table's 256 real inputs, float64 (the table before scaling and rounding)."""
    if fn not in LUT_FUNCTIONS:
        raise GraphError(f"no lookup table for {fn!r}")
    return LUT_FUNCTIONS[fn](lut_grid(x_scale, in_dtype), **params)


def table_from(values: np.ndarray, y_scale: float, out_dtype: str = "int8") -> np.ndarray:
    """clamp(qround(f / Sy), qmin, qmax) as `out_dtype` (§10); NaN entries become 0."""
    lo, hi = qrange(out_dtype)
    y = np.asarray(values, np.float64) / np.float64(y_scale)
    y = np.where(np.isnan(y), 0.0, y)
    return np.clip(qround(y), lo, hi).astype(np.dtype(out_dtype))


def build_lut(fn: str, x_scale: float, y_scale: float, in_dtype: str = "int8",
              out_dtype: str = "int8", **params: float) -> np.ndarray:
    """table[i] = clamp(qround(f((i - offset)·Sx)/Sy), qmin, qmax), float64 (§10)."""
    return table_from(lut_values(fn, x_scale, in_dtype, **params), y_scale, out_dtype)


def apply_lut(x: np.ndarray, table: np.ndarray, offset: int = 128) -> np.ndarray:
    """Y = table[x + offset] (offset = `lut_offset` of the input dtype)."""
    return table[np.asarray(x, np.int64) + offset]


def apply_lut16(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """§18: the 513-knot table linearly interpolated at an int16 `x`, in `table`'s type.

    `u = x + 32768`, `i = u >> 7`, `f = u & 127`:
    `y = (128·T[i] + (T[i+1] - T[i])·f + 64) >> 7` (floor shift; |terms| < 2^23).
    """
    u = np.asarray(x, np.int64) + 32768
    i, f = u >> LUT16_SHIFT, u & ((1 << LUT16_SHIFT) - 1)
    t = np.asarray(table, np.int64)
    t0, t1 = t[i], t[i + 1]
    y = ((t0 << LUT16_SHIFT) + (t1 - t0) * f + (1 << (LUT16_SHIFT - 1))) >> LUT16_SHIFT
    return y.astype(table.dtype)


def lookup(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """A table read by `x`: direct for 8-bit inputs (§10), interpolated for int16 (§18)."""
    if is_wide(x.dtype):
        return apply_lut16(x, table)
    return apply_lut(x, table, lut_offset(x.dtype))
