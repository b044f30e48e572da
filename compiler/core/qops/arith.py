"""Numpy helpers shared by the reference kernels of several op families.

Integer convolutions run as im2col GEMMs in float64, which is exact: every product is
below 2^14 and every sum below 2^31 < 2^53.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

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
    """Σ|w| per output channel (axis 0) of an integer weight, int64.

    Times the input's largest |x| it bounds every partial sum of that channel's dot product
    (the float32 path of model.quant.onnx, docs/fixed-point.md §11).
    """
    w = np.abs(np.asarray(weight, np.int64))
    return w.reshape(len(w), -1).sum(axis=1)
