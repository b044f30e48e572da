"""Numpy helpers shared by the reference kernels of several op families.

Integer convolutions run as im2col GEMMs in float64, which is exact: every product is
below 2^14 and every sum below 2^31 < 2^53.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from compiler.core import fixedpoint as fp

CHUNK_ELEMENTS = 1 << 22  # float64 elements per im2col / weight block (32 MiB)


def pad_nchw(x: np.ndarray, pads: tuple[int, ...], value: int = 0) -> np.ndarray:
    """[N, C, H, W] padded by (top, left, bottom, right) with `value`."""
    top, left, bottom, right = pads
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def windows(x: np.ndarray, kernel, strides, dilations, out_hw=None) -> np.ndarray:
    """[N, C, OH, OW, kh, kw] view of a padded input."""
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    win = sliding_window_view(x, span, axis=(2, 3))[..., ::dilations[0], ::dilations[1]]
    win = win[:, :, ::strides[0], ::strides[1]]
    if out_hw is not None:
        win = win[:, :, :out_hw[0], :out_hw[1]]
    return win


def gemm_exact(cols: np.ndarray, w: np.ndarray) -> np.ndarray:
    """int64 cols[M, K] @ w[N, K]ᵀ through float64 BLAS in bounded blocks (exact: < 2^53)."""
    out = np.empty((cols.shape[0], w.shape[0]), np.int64)
    rows = max(1, CHUNK_ELEMENTS // max(cols.shape[1], 1))
    wide = max(1, CHUNK_ELEMENTS // max(w.shape[1], 1))
    for j in range(0, w.shape[0], wide):
        wf = w[j:j + wide].astype(np.float64).T
        for i in range(0, cols.shape[0], rows):
            out[i:i + rows, j:j + wide] = cols[i:i + rows].astype(np.float64) @ wf
    return out


def nbytes(*arrays: np.ndarray | None) -> int:
    """Total bytes of the given constant arrays (None skipped)."""
    return sum(int(a.nbytes) for a in arrays if a is not None)




def channel_l1(weight: np.ndarray) -> np.ndarray:
    """Σ|w| per output channel (axis 0) of an integer weight, int64."""
    w = np.abs(np.asarray(weight, np.int64))
    return w.reshape(len(w), -1).sum(axis=1)


MAX_FLOAT_CHUNKS = 8
"""More input ranges than this and the integer op is the better exact form."""


def float_chunks(l1: np.ndarray, xmax: int) -> list[tuple[int, int]] | None:
    """Input ranges over which every partial sum of every output channel is float32-exact.

    Args:
        l1: [C_out, K] Σ|w| of output channel c over input index k (a Conv's input channel
            covers its kernel taps).
        xmax: The input type's largest |x| (128 int8, 255 uint8, 32768 int16).

    Returns:
        Consecutive `[k0, k1)` covering K, greedy, each with `max_c Σ_k l1[c, k] · xmax <
        2^24` (docs/fixed-point.md §11), or None when more than `MAX_FLOAT_CHUNKS` are
        needed.
    """
    limit = (fp.FLOAT32_EXACT - 1) // xmax
    l1 = np.asarray(l1, np.int64)
    if l1.size and l1.max() > limit:
        return None
    chunks, start, run = [], 0, np.zeros(len(l1), np.int64)
    for k in range(l1.shape[1]):
        if (run + l1[:, k] > limit).any():
            chunks.append((start, k))
            start, run = k, np.zeros(len(l1), np.int64)
        run += l1[:, k]
    chunks.append((start, l1.shape[1]))
    return chunks if len(chunks) <= MAX_FLOAT_CHUNKS else None
