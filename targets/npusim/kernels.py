"""Exact integer kernels of the simulator (docs/fixed-point.md), written from the spec.

Integer GEMMs run through float BLAS, which is exact as long as every partial sum is an
integer the float type holds exactly: ≤ 2^24 in float32, ≤ 2^53 in float64 (all such
integers are numbers of the type, so no addition order — blocked, FMA or not — ever
rounds). `k_splits` proves that per weight matrix: with `|x| ≤ X` (X = 128 for int8
activations, 255 for uint8, 32768 for int16), any partial sum over a K-range is bounded by
`X·max_n Σ_k |W[n, k]|`, so K is cut into ranges whose bound stays within the limit and the
exact results of the ranges are summed in float64 or int64. 8-bit activations use float32
(one range almost always suffices); int16 activations (A16W8, §16) use float64, since a
product below 2^22 would leave float32 ranges of a handful of terms, while float64 holds any
sum of fewer than 2^31 such products (`gemm_dtype`). Requantization is the int64 formula of
§3; results are stored in the output tensor's type (int8, uint8 or int16).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

EXACT_F32 = 1 << 24
EXACT_F64 = 1 << 53
EXACT = {np.dtype(np.float32): EXACT_F32, np.dtype(np.float64): EXACT_F64}
"""Largest integer magnitude below which every integer is a number of the float type."""
X_MAX = 128  # |int8| bound of an activation


def x_max(dtype: np.dtype | str) -> int:
    """The largest |x| of an activation type: 128 (int8), 255 (uint8), 32768 (int16)."""
    info = np.iinfo(np.dtype(dtype))
    return max(-int(info.min), int(info.max))


def gemm_dtype(x_dtype: np.dtype | str, w_dtype: np.dtype | str = np.int8) -> np.dtype:
    """The BLAS type of an exact GEMM over activations of `x_dtype` and weights of `w_dtype`.

    float32 for 8-bit activations and weights (|x·w| < 2^15: thousands of terms per exact
    range); float64 for int16 activations (|x·w| < 2^22, so float32 ranges would hold as
    few as 4 terms while float64 holds fewer than 2^31 of them exactly: one range for every
    real layer) or int16 weights (|x·w| < 2^30, §17: fewer than 2^23 terms per range).
    """
    wide = x_max(x_dtype) > 255 or np.dtype(w_dtype).itemsize > 1
    return np.dtype(np.float64) if wide else np.dtype(np.float32)


def k_splits(w: np.ndarray, x_bound: int = X_MAX,
             dtype: np.dtype | type = np.float32) -> list[tuple[int, int]]:
    """K ranges `[k0, k1)` of a `[N, K]` int weight whose `dtype` products sum exactly.

    Exact for activations with |x| ≤ `x_bound` and a float32 or float64 `dtype`.
    """
    n, k = w.shape
    limit = EXACT[np.dtype(dtype)] // x_bound
    splits, k0 = [], 0
    while k0 < k:
        k1 = _reach(w, k0, limit)
        splits.append((k0, k1))
        k0 = k1
    return splits


def _reach(w: np.ndarray, k0: int, limit: int, step: int = 512) -> int:
    """The largest k1 > k0 with max_n Σ_{k0 ≤ k < k1} |W[n, k]| ≤ limit (block-wise scan)."""
    carry = np.zeros(w.shape[0], np.int64)
    for start in range(k0, w.shape[1], step):
        part = np.cumsum(np.abs(w[:, start:start + step].astype(np.int64)), axis=1)
        part += carry[:, None]
        reach = part.max(axis=0) if w.shape[0] else np.zeros(part.shape[1], np.int64)
        fits = int(np.searchsorted(reach, limit, side="right"))
        if fits < part.shape[1]:
            return max(start + fits, k0 + 1)
        carry = part[:, -1]
    return w.shape[1]


def exact_matmul(wf: np.ndarray, xf: np.ndarray, splits: list[tuple[int, int]]) -> np.ndarray:
    """`w @ x` for integer-valued float operands, exact per `k_splits`, as int64.

    ([N, K] @ [K, M]; float32 or float64 operands of one type.)
    """
    if len(splits) == 1:
        return (wf @ xf).astype(np.int64)
    acc = np.zeros((wf.shape[0], xf.shape[1]), np.int64)
    for k0, k1 in splits:
        acc += (wf[:, k0:k1] @ xf[k0:k1]).astype(np.int64)
    return acc


def requant(acc: np.ndarray, m0: np.ndarray | int, shift: np.ndarray | int, lo: int,
            hi: int, dtype: np.dtype | type = np.int8) -> np.ndarray:
    """§3: `clamp((acc·M0 + 2^(s-1)) >> s, lo, hi)` in int64 with an arithmetic shift.

    The result is of `dtype` (the output's type; `[lo, hi]` lies within it).
    """
    m0 = np.asarray(m0, np.int64)
    shift = np.asarray(shift, np.int64)
    v = acc.astype(np.int64, copy=False) * m0
    v += np.left_shift(np.int64(1), shift - 1)
    v >>= shift
    return np.clip(v, lo, hi).astype(dtype)


def pad_spatial(x: np.ndarray, pads: tuple[int, ...], value: float, dtype: type) -> np.ndarray:
    """[C, H, W] padded by (top, left, bottom, right) with `value`, converted to `dtype`."""
    c, h, w = x.shape
    top, left, bottom, right = pads
    if not any(pads):
        return x.astype(dtype, copy=False)
    out = np.full((c, h + top + bottom, w + left + right), value, dtype)
    out[:, top:top + h, left:left + w] = x
    return out


def windows(xp: np.ndarray, kernel: tuple[int, ...], stride: tuple[int, ...],
            dilation: tuple[int, ...], out_hw: tuple[int, int]) -> np.ndarray:
    """A read-only [C, kh, kw, OH, OW] strided view of a padded [C, Hp, Wp] array."""
    sc, sh, sw = xp.strides
    shape = (xp.shape[0], kernel[0], kernel[1], out_hw[0], out_hw[1])
    strides = (sc, dilation[0] * sh, dilation[1] * sw, stride[0] * sh, stride[1] * sw)
    return as_strided(xp, shape, strides, writeable=False)


def im2col(x: np.ndarray, kernel: tuple[int, ...], stride: tuple[int, ...],
           pads: tuple[int, ...], dilation: tuple[int, ...],
           out_hw: tuple[int, int]) -> np.ndarray:
    """[C·kh·kw, OH·OW] float32 patch matrix of an int8/uint8 [C, H, W] input (zero padding)."""
    c = x.shape[0]
    if kernel == (1, 1) and stride == (1, 1) and not any(pads):
        return x.reshape(c, -1).astype(np.float32)
    xp = pad_spatial(x, pads, 0, np.float32)
    cols = windows(xp, kernel, stride, dilation, out_hw)
    return cols.reshape(c * kernel[0] * kernel[1], out_hw[0] * out_hw[1])


def depthwise(x: np.ndarray, w: np.ndarray, stride: tuple[int, ...], pads: tuple[int, ...],
              dilation: tuple[int, ...], out_hw: tuple[int, int]) -> np.ndarray:
    """Per-channel window dot products of int8/uint8 [C, H, W] with [C, 1, kh, kw], as int64."""
    kh, kw = w.shape[2:]
    dtype = depthwise_dtype((kh, kw), x.dtype, w.dtype)
    xp = pad_spatial(x, pads, 0, dtype)
    view = windows(xp, (kh, kw), stride, dilation, out_hw)
    wf = w[:, 0].astype(dtype)
    acc = np.zeros((x.shape[0],) + tuple(out_hw), dtype)
    for i in range(kh):
        for j in range(kw):
            acc += view[:, i, j] * wf[:, i, j, None, None]
    return acc.astype(np.int64)


def depthwise_dtype(kernel: tuple[int, ...], x_dtype: np.dtype,
                    w_dtype: np.dtype | str = np.int8) -> type:
    """float32 where a depthwise window sum is exact in it, else float64.

    Each product is ≤ X·Wmax (Wmax 128 for int8 weights: < 2^15 for int8 x, < 2^16 for
    uint8, ≤ 2^22 for int16; 32768 for int16 weights, §17): float32 sums stay exact up to
    2^24 / (X·Wmax) taps (4 for int16 x), float64 sums up to 2^23 taps of any kind.
    """
    w_max = 128 if np.dtype(w_dtype).itemsize == 1 else 1 << 15
    return np.float32 if kernel[0] * kernel[1] * x_max(x_dtype) * w_max <= EXACT_F32 \
        else np.float64


def window_sum(x: np.ndarray, kernel: tuple[int, ...], stride: tuple[int, ...],
               pads: tuple[int, ...], out_hw: tuple[int, int]) -> np.ndarray:
    """Zero-padded window sums of int8/uint8 [C, H, W] as int64 (average pooling numerator)."""
    xp = pad_spatial(x, pads, 0, np.int32)
    view = windows(xp, kernel, stride, (1, 1), out_hw)
    return view.sum(axis=(1, 2), dtype=np.int64)


def window_max(x: np.ndarray, kernel: tuple[int, ...], stride: tuple[int, ...],
               pads: tuple[int, ...], dilation: tuple[int, ...],
               out_hw: tuple[int, int]) -> np.ndarray:
    """Window max of int8/uint8 [C, H, W].

    Padding with the type's minimum (-128, 0) never changes a max: each window holds at
    least one input element (checked on load).
    """
    xp = pad_spatial(x, pads, np.iinfo(x.dtype).min, x.dtype)
    view = windows(xp, kernel, stride, dilation, out_hw)
    return view.max(axis=(1, 2))


def quantize(x: np.ndarray, inv_scale: float, dtype: np.dtype | type = np.int8) -> np.ndarray:
    """§4 in float32: `clamp(floor(x ⊗ inv ⊕ 0.5), qmin, qmax)` (separate ufuncs: no FMA)."""
    info = np.iinfo(np.dtype(dtype))
    v = np.multiply(x.astype(np.float32, copy=False), np.float32(inv_scale), dtype=np.float32)
    v = np.add(v, np.float32(0.5), dtype=np.float32)
    return np.clip(np.floor(v), info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float) -> np.ndarray:
    """§5: `float32(q) ⊗ S`."""
    return np.multiply(q.astype(np.float32), np.float32(scale), dtype=np.float32)


def add(a: np.ndarray, b: np.ndarray, mult_a: int, mult_b: int, shift: int, lo: int,
        hi: int, dtype: np.dtype | type = np.int8) -> np.ndarray:
    """§6: one rounding of `xa·A + xb·B` at a common shift."""
    acc = a.astype(np.int64) * mult_a + b.astype(np.int64) * mult_b
    return requant(acc, 1, shift, lo, hi, dtype)


def lut_index(x: np.ndarray) -> np.ndarray:
    """§10 table index: `x + 128` for int8, `x` for uint8.

    For int8, x + 128 is the bit pattern with the sign bit flipped.
    """
    if x.dtype == np.uint8:
        return x
    return x.view(np.uint8) ^ np.uint8(0x80)


def lut(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """§10: `table[x + offset]`; §18 for an int16 `x`: 513 knots, linear interpolation."""
    if x.dtype == np.int16:
        u = x.astype(np.int32) + 32768  # [0, 65535]
        i, f = u >> 7, u & 127
        t0 = table[i].astype(np.int32)
        t1 = table[i + 1].astype(np.int32)
        return ((t0 * 128 + (t1 - t0) * f + 64) >> 7).astype(table.dtype)
    return table[lut_index(x)]


def channel_lut(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """`table[c, x + offset]` for x [N, C, ...] and table [C, 256]."""
    channel = np.arange(table.shape[0]).reshape((1, -1) + (1,) * (x.ndim - 2))
    return table[channel, lut_index(x)]
