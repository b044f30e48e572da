"""The simulator's native kernels (`native.c`), loaded through ctypes when they were built.

Built and loaded as `compiler.core.native` describes; without them the simulator keeps its
numpy path, which computes the same results (the tests run both).

Each wrapper checks the shapes, types and contiguity its kernel assumes and raises
`TargetError` otherwise, so a wrong call cannot read or write outside the arrays.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Any

import numpy as np

from compiler.core.errors import TargetError
from compiler.core.native import address as _ptr
from compiler.core.native import load_library

_NAME = "_npusim_native"
_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_KIND = {np.dtype(np.int8): 0, np.dtype(np.uint8): 1, np.dtype(np.int16): 2}
_FLOAT = {np.dtype(np.float32): 0, np.dtype(np.float64): 1}


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None where it was not built (or fails to load)."""
    lib = load_library(Path(__file__).parent, _NAME, "native.c")
    if lib is not None:
        _declare(lib)
    return lib


def available() -> bool:
    """Whether the native kernels are there."""
    return library() is not None


def _declare(lib: ctypes.CDLL) -> None:
    lib.npu_requant_t.restype = ctypes.c_int
    lib.npu_requant_t.argtypes = [_PTR, _I64, _I64, _I64, _PTR, _PTR, _PTR, _PTR, _I64, _I64,
                                  ctypes.c_int, _PTR, _I64]
    lib.npu_requant_rows.restype = ctypes.c_int
    lib.npu_requant_rows.argtypes = [_PTR, ctypes.c_int, _I64, _I64, _I64, _PTR, _PTR, _PTR,
                                     _PTR, _I64, _I64, ctypes.c_int, _PTR, _I64]
    lib.npu_fill_hwc.restype = None
    lib.npu_fill_hwc.argtypes = [_PTR, _I64, _I64, _I64, _PTR, _I64, _I64, _I64, _I64,
                                 ctypes.c_uint8, ctypes.c_uint8]
    lib.npu_patches.restype = None
    lib.npu_patches.argtypes = [_PTR] + [_I64] * 12 + [_PTR]
    lib.npu_depthwise.restype = ctypes.c_int
    lib.npu_depthwise.argtypes = ([_PTR] + [_I64] * 10 + [_PTR, ctypes.c_int32, _PTR]
                                  + [_PTR] * 4 + [_I64, _I64, ctypes.c_int, _PTR])
    lib.npu_lookup2.restype = None
    lib.npu_lookup2.argtypes = [_PTR, _PTR, _I64, _PTR, _I64, _PTR]


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise TargetError(f"npusim native kernel: {what}")


class NativeRequant:
    """§3 requantization of one instruction's sums, per channel, in one call per block.

    `columns`: the int8 engine's int32 `[rows, n]` sums into `[n, rows]` outputs;
    `rows`: the float GEMM's exact float32/float64 `[n, m]` sums into `[n, m]` outputs.

    The per-channel constants are held as contiguous int64 arrays (made once at load).

    Args:
        bias: int64 bias per channel.
        m0: int64 M0 per channel.
        shift: int64 s per channel (1..62).
        lo: Clamp minimum.
        hi: Clamp maximum.
    """

    def __init__(self, bias: np.ndarray, m0: np.ndarray, shift: np.ndarray, lo: int,
                 hi: int) -> None:
        def col(a: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(np.asarray(a, np.int64).reshape(-1))
        self.bias, self.m0, self.shift = col(bias), col(m0), col(shift)
        _need(self.bias.shape == self.m0.shape == self.shift.shape, "requant constants differ")
        _need(bool(((self.shift >= 1) & (self.shift <= 62)).all()), "shift outside 1..62")
        self.rnd = np.left_shift(np.int64(1), self.shift - 1)
        self.lo, self.hi = int(lo), int(hi)
        # the constants' addresses, once: reading `.ctypes.data` costs about a microsecond
        self._at = tuple(_ptr(a) for a in (self.bias, self.m0, self.rnd, self.shift))

    @classmethod
    def like(cls, requant: Any) -> NativeRequant:
        """From an instruction's `plans.Requant` (its bias, m0, shift, lo and hi)."""
        return cls(requant.bias, requant.m0, requant.shift, requant.lo, requant.hi)

    def columns(self, acc: np.ndarray, out: np.ndarray, n0: int) -> None:
        """`out[c, r] = requant(acc[r, c] + bias[n0 + c])` for every column of `acc`.

        Args:
            acc: int32 `[rows, n]`, rows contiguous (its row stride may be wider).
            out: `[n, rows]` of int8, uint8 or int16, rows contiguous.
            n0: The first column's channel.
        """
        rows, n = acc.shape
        kind = _KIND.get(out.dtype)
        _need(acc.dtype == np.int32 and acc.strides[1] == 4, "acc must be int32, rows packed")
        _need(kind is not None and out.shape == (n, rows) and out.strides[1] == out.itemsize,
              f"out {out.dtype}{out.shape} for acc {acc.shape}")
        _need(0 <= n0 and n0 + n <= len(self.bias), "channels out of range")
        bias, m0, rnd, shift = (p + 8 * n0 for p in self._at)
        library().npu_requant_t(_ptr(acc), rows, n, acc.strides[0] // 4, bias, m0, rnd, shift,
                                self.lo, self.hi, kind, _ptr(out),
                                out.strides[0] // out.itemsize)

    def rows(self, src: np.ndarray, out: np.ndarray, r0: int) -> None:
        """`out[r, j] = requant(src[r, j] + bias[r0 + r])`.

        Args:
            src: float32 or float64 `[n, m]` exact integer sums, rows contiguous.
            out: `[n, m]` of int8, uint8 or int16, rows contiguous.
            r0: The first row's channel.
        """
        n, m = src.shape
        kind, src_kind = _KIND.get(out.dtype), _FLOAT.get(src.dtype)
        _need(src_kind is not None and src.strides[1] == src.itemsize,
              "src must be float32/float64, rows packed")
        _need(kind is not None and out.shape == (n, m) and out.strides[1] == out.itemsize,
              f"out {out.dtype}{out.shape} for src {src.shape}")
        _need(0 <= r0 and r0 + n <= len(self.bias), "channels out of range")
        bias, m0, rnd, shift = (p + 8 * r0 for p in self._at)
        library().npu_requant_rows(_ptr(src), src_kind, n, m, src.strides[0] // src.itemsize,
                                   bias, m0, rnd, shift, self.lo, self.hi, kind, _ptr(out),
                                   out.strides[0] // out.itemsize)


class Depthwise:
    """A depthwise conv (one filter per channel), requantized row by row, in one call.

    Args:
        w: int8 weights `[C, 1, kh, kw]`.
        requant: The output channels' constants (`NativeRequant`).
        in_shape: The padded channels-last buffer's `[Hp, Wp, C]`.
        out_hw: (OH, OW).
        stride: (sh, sw).
        dilation: (dh, dw).
        zero_point: What the buffer adds to each value (128 for int8 input, else 0).
    """

    def __init__(self, w: np.ndarray, requant: NativeRequant, in_shape: tuple[int, int, int],
                 out_hw: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int], zero_point: int) -> None:
        c, kh, kw = w.shape[0], w.shape[2], w.shape[3]
        hp, wp, cb = in_shape
        (oh, ow), (sh, sw), (dh, dw) = out_hw, stride, dilation
        _need(w.dtype == np.int8 and w.shape[1] == 1 and cb == c and len(requant.bias) == c,
              "depthwise: weights")
        _need((oh - 1) * sh + (kh - 1) * dh < hp and (ow - 1) * sw + (kw - 1) * dw < wp,
              "depthwise: windows leave the buffer")
        self.taps = np.ascontiguousarray(w.reshape(c, kh * kw).T.astype(np.int16))
        self.acc = np.empty((ow, c), np.int32)
        self.requant, self.shape = requant, (in_shape, (oh, ow))
        self._args = (wp, c, oh, ow, kh, kw, sh, sw, dh, dw, _ptr(self.taps), zero_point,
                      _ptr(self.acc), *requant._at, requant.lo, requant.hi)

    def __call__(self, buf: np.ndarray, out: np.ndarray) -> None:
        """`out` `[C, OH·OW]` (int8, uint8 or int16) from the buffer `buf`."""
        (in_shape, (oh, ow)), kind = self.shape, _KIND.get(out.dtype)
        _need(buf.dtype == np.uint8 and buf.flags.c_contiguous and buf.shape == in_shape,
              "depthwise: buffer")
        _need(kind is not None and out.flags.c_contiguous
              and out.shape == (in_shape[2], oh * ow), "depthwise: output")
        library().npu_depthwise(_ptr(buf), *self._args, kind, _ptr(out))


def fill_hwc(x: np.ndarray, buf: np.ndarray, pads: tuple[int, int, int, int],
             zero_point: int) -> None:
    """`buf[top + i, left + j, c] = x[c, i, j] ^ flip`, the border at `zero_point`.

    `flip` is 0x80 for a nonzero zero point (int8 `x` as the uint8 `x + 128`).

    Args:
        x: C-contiguous 8-bit `[C, H, W]`.
        buf: C-contiguous uint8 `[H + top + bottom, W + left + right, C]`.
        pads: (top, left, bottom, right).
        zero_point: 128 or 0.
    """
    c, h, w = x.shape
    top, left, bottom, right = pads
    _need(x.itemsize == 1 and x.flags.c_contiguous, "fill: x must be contiguous 8-bit")
    _need(buf.dtype == np.uint8 and buf.flags.c_contiguous
          and buf.shape == (h + top + bottom, w + left + right, c), "fill: buffer shape")
    library().npu_fill_hwc(_ptr(x), c, h, w, _ptr(buf), buf.shape[0], buf.shape[1], top,
                           left, zero_point, 0x80 if zero_point else 0)


def patches(buf: np.ndarray, out_hw: tuple[int, int], kernel: tuple[int, int],
            stride: tuple[int, int], dilation: tuple[int, int], c0: int, cb: int,
            out: np.ndarray) -> None:
    """The `[OH·OW, kh·kw·cb]` windows of channels `[c0, c0 + cb)` of `buf` into `out`.

    Args:
        buf: C-contiguous uint8 channels-last `[Hp, Wp, C]` (padding included).
        out_hw: (OH, OW).
        kernel: (kh, kw).
        stride: (sh, sw).
        dilation: (dh, dw).
        c0: First channel.
        cb: Channels per window tap.
        out: C-contiguous uint8 `[OH·OW, kh·kw·cb]`.
    """
    hp, wp, c = buf.shape
    (oh, ow), (kh, kw), (sh, sw), (dh, dw) = out_hw, kernel, stride, dilation
    _need(buf.dtype == np.uint8 and buf.flags.c_contiguous and 0 <= c0 and c0 + cb <= c,
          "patches: buffer")
    _need((oh - 1) * sh + (kh - 1) * dh < hp and (ow - 1) * sw + (kw - 1) * dw < wp,
          "patches: windows leave the buffer")
    _need(out.dtype == np.uint8 and out.flags.c_contiguous
          and out.shape == (oh * ow, kh * kw * cb), "patches: out shape")
    library().npu_patches(_ptr(buf), wp, c, oh, ow, kh, kw, sh, sw, dh, dw, c0, cb, _ptr(out))


def lookup2(a: np.ndarray, b: np.ndarray, table: np.ndarray, y: np.ndarray) -> None:
    """`y = table[(a << 8) | b]` over the raw bytes of same-shape contiguous 8-bit `a`, `b`.

    Args:
        a: First operand (8-bit).
        b: Second operand (8-bit, `a`'s shape).
        table: 65,536 entries of `y`'s type (1 or 2 bytes).
        y: The output, `a`'s shape.
    """
    _need(a.shape == b.shape == y.shape and a.itemsize == b.itemsize == 1
          and all(t.flags.c_contiguous for t in (a, b, y, table)), "lookup: operands")
    _need(table.size == 65536 and table.dtype == y.dtype and y.itemsize in (1, 2),
          "lookup: table")
    library().npu_lookup2(_ptr(a), _ptr(b), a.size, _ptr(table), y.itemsize, _ptr(y))
