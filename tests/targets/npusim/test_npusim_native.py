"""The simulator's native kernels (`native.c`) against the numpy formulas they replace.

Each kernel must give exactly the numpy path's bytes: the §3 requantization on extreme
accumulators, every shift and output type (and column counts past one tile), the
channels-last fill with its zero-point border, the window matrix with strides, dilation
and channel blocks, and the pair-table lookup. Bad calls raise instead of touching memory.
"""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

from compiler.core.errors import TargetError
from targets.npusim import native
from targets.npusim import plans as P
from tests.targets.npusim.engines import needs_native

pytestmark = needs_native


def _requant_case(rng, rows, n, dtype, ld=None):
    info = np.iinfo(dtype)
    acc_full = rng.integers(-(1 << 31), 1 << 31, (rows, ld or n), dtype=np.int64)
    acc_full = acc_full.astype(np.int32)
    acc_full[0, :n] = np.iinfo(np.int32).max  # extremes: |a| up to 2^32 with the bias
    acc_full[-1, :n] = np.iinfo(np.int32).min
    acc = acc_full[:, :n]
    bias = rng.integers(-(1 << 31), 1 << 31, n)
    m0 = rng.integers(1, 1 << 31, n)
    shift = rng.integers(1, 63, n)
    shift[: n // 2] = rng.integers(20, 40, n // 2)  # the usual range, results off the clamp
    return acc, P.Requant.make(bias, m0, shift, int(info.min), int(info.max), 0)


@pytest.mark.parametrize("rows,n,dtype,ld", [
    (97, 24, np.int8, None), (6, 3, np.uint8, None), (300, 64, np.int16, None),
    (33, 40, np.int8, 57), (3, 20000, np.int8, None), (1, 1, np.uint8, None)])
def test_requant_columns_equal_the_int64_formula(rows, n, dtype, ld):
    rng = np.random.default_rng(rows * n)
    acc, rq = _requant_case(rng, rows, n, dtype, ld)
    want = np.empty((rows, n), dtype)
    rq.apply(acc.astype(np.int64), want, 0, n)
    out = np.full((n + 5, rows), 7, dtype)  # channels n0 = 2.. of a wider output
    shifted = native.NativeRequant(np.r_[[0, 0], rq.bias, [0] * 3],
                                    np.r_[[1, 1], rq.m0, [1] * 3],
                                    np.r_[[1, 1], rq.shift, [1] * 3], rq.lo, rq.hi)
    shifted.columns(acc, out[2:2 + n], 2)  # the same constants two channels in
    np.testing.assert_array_equal(out[2:2 + n], want.T)
    assert (out[:2] == 7).all() and (out[2 + n:] == 7).all()  # nothing outside is written
    assert len(np.unique(want)) >= min(3, n)


def test_requant_rejects_bad_calls():
    kernel = native.NativeRequant(np.zeros(4), np.ones(4), np.full(4, 3), -128, 127)
    acc = np.zeros((5, 4), np.int32)
    with pytest.raises(TargetError):
        kernel.columns(acc, np.empty((4, 6), np.int8), 0)  # wrong output shape
    with pytest.raises(TargetError):
        kernel.columns(acc, np.empty((4, 5), np.int32), 0)  # no int32 output kind
    with pytest.raises(TargetError):
        kernel.columns(acc[:, :3], np.empty((3, 5), np.int8), 2)  # past the constants
    with pytest.raises(TargetError):
        kernel.columns(acc.astype(np.int64), np.empty((4, 5), np.int8), 0)
    with pytest.raises(TargetError):
        kernel.rows(acc.astype(np.int32), np.empty((5, 4), np.int8), 0)  # not float
    with pytest.raises(TargetError):
        kernel.rows(np.zeros((5, 4), np.float32), np.empty((5, 4), np.int8), 0)  # 5 rows
    with pytest.raises(TargetError):
        native.NativeRequant(np.zeros(2), np.ones(2), np.array([0, 3]), -128, 127)


@pytest.mark.parametrize("src_dtype,dtype", [(np.float32, np.int8), (np.float32, np.int16),
                                               (np.float64, np.uint8), (np.float64, np.int16)])
def test_requant_rows_equal_the_int64_formula(src_dtype, dtype):
    rng = np.random.default_rng(7)
    n, m = 19, 61
    limit = (1 << 24) if src_dtype == np.float32 else (1 << 36)  # exact; float64 past int32
    acc = rng.integers(-limit, limit, (n, m + 3))
    acc[0, :5] = [limit - 1, -limit, 0, 1, -1]
    info = np.iinfo(dtype)
    bits = limit.bit_length() - 1
    shift = np.full(n, bits + 30 - (7 if dtype != np.int16 else 15))  # results span the type
    shift[:4] = rng.integers(1, 63, 4)  # and a few rows of anything, mostly clamped
    rq = P.Requant.make(rng.integers(-(limit >> 3), limit >> 3, n),
                        rng.integers(1 << 30, 1 << 31, n), shift, int(info.min),
                        int(info.max), 0)
    want = np.empty((n, m), dtype)
    for r in range(n):  # one channel per row
        rq.apply(acc[r:r + 1, :m].copy(), want[r:r + 1], r, r + 1)
    out = np.full((n + 2, m + 1), 5, dtype)
    kernel = native.NativeRequant(np.r_[[0, 0], rq.bias], np.r_[[1, 1], rq.m0],
                                  np.r_[[1, 1], rq.shift], rq.lo, rq.hi)
    kernel.rows(acc.astype(src_dtype)[:, :m], out[2:, :m], 2)  # strided src and out
    np.testing.assert_array_equal(out[2:, :m], want)
    assert (out[:2] == 5).all() and (out[:, m] == 5).all()
    assert len(np.unique(want)) > 30


@pytest.mark.parametrize("pads,dtype", [((1, 2, 0, 3), np.int8), ((0, 0, 0, 0), np.uint8),
                                        ((3, 3, 3, 3), np.int8)])
def test_fill_hwc_equals_the_numpy_copy(pads, dtype):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (5, 7, 9)).astype(np.uint8).view(dtype)
    zp = 128 if dtype == np.int8 else 0
    top, left, bottom, right = pads
    buf = np.full((7 + top + bottom, 9 + left + right, 5), 99, np.uint8)
    native.fill_hwc(x, buf, pads, zp)
    want = np.full_like(buf, zp)
    want[top:top + 7, left:left + 9] = x.transpose(1, 2, 0).view(np.uint8) ^ (zp & 0x80)
    np.testing.assert_array_equal(buf, want)
    if zp:
        np.testing.assert_array_equal(
            buf[top:top + 7, left:left + 9].astype(np.int16) - 128, x.transpose(1, 2, 0))


@pytest.mark.parametrize("kernel,stride,dilation,blocks", [
    ((3, 3), (1, 1), (1, 1), 1), ((3, 3), (2, 1), (1, 1), 4), ((2, 3), (1, 2), (2, 2), 1),
    ((1, 1), (2, 2), (1, 1), 1), ((5, 5), (2, 2), (1, 3), 2)])
def test_patches_equal_the_strided_windows(kernel, stride, dilation, blocks):
    rng = np.random.default_rng(4)
    hp, wp, c = 15, 17, 8
    buf = rng.integers(0, 256, (hp, wp, c)).astype(np.uint8)
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    oh, ow = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    cb = c // blocks
    view = as_strided(buf, (blocks, oh, ow, kh, kw, cb),
                      (cb, sh * wp * c, sw * c, dh * wp * c, dw * c, 1))
    for block in range(blocks):
        out = np.empty((oh * ow, kh * kw * cb), np.uint8)
        native.patches(buf, (oh, ow), kernel, stride, dilation, block * cb, cb, out)
        np.testing.assert_array_equal(out, view[block].reshape(oh * ow, -1))
    with pytest.raises(TargetError):  # one output row more than the buffer holds
        native.patches(buf, (oh + 1, ow), kernel, stride, dilation, 0, cb,
                       np.empty(((oh + 1) * ow, kh * kw * cb), np.uint8))


@pytest.mark.parametrize("out_dtype", [np.int8, np.uint8, np.int16])
def test_lookup2_equals_take(out_dtype):
    rng = np.random.default_rng(5)
    a = rng.integers(-128, 128, (3, 50, 7)).astype(np.int8)
    b = rng.integers(0, 256, (3, 50, 7)).astype(np.uint8)
    table = rng.integers(np.iinfo(out_dtype).min, np.iinfo(out_dtype).max, 65536,
                         endpoint=True).astype(out_dtype)
    y = np.empty(a.shape, out_dtype)
    native.lookup2(a, b, table, y)
    index = (a.view(np.uint8).astype(np.int64) << 8) | b
    np.testing.assert_array_equal(y, table[index])
    with pytest.raises(TargetError):
        native.lookup2(a, b[:, :10], table, y)
