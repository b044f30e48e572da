"""Native calibration-statistics kernels (`histogram.c`), with their numpy equivalents.

Loaded as `compiler.core.native` describes. Both paths give the same bits (the tests
compare them), so which one runs never changes a threshold; the native one reads each batch
once per statistic instead of four to six times.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np

from compiler.core.native import address, load_library

_NAME = "_histogram_native"
_WAYS = 4  # the kernel's interleaved count arrays (HIST_WAYS)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The kernels, or None where they were not built."""
    lib = load_library(Path(__file__).parent, _NAME, "histogram.c")
    if lib is not None:
        lib.npq_minmax.restype = ctypes.c_int
        lib.npq_minmax.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                                   ctypes.c_void_p]
        lib.npq_abs_hist.restype = None
        lib.npq_abs_hist.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_float,
                                     ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    return lib


def _flat32(values: np.ndarray) -> np.ndarray | None:
    """`values` as a contiguous float32 vector without a copy, or None."""
    a = np.asarray(values)
    if a.dtype != np.float32 or not a.flags.c_contiguous:
        return None
    return a.reshape(-1)


def min_max(values: np.ndarray) -> tuple[float, float]:
    """(min, max) of a non-empty array, as numpy's `min` and `max` give them."""
    lib, x = library(), _flat32(values)
    if lib is not None and x is not None:
        out = np.empty(2, np.float32)
        if not lib.npq_minmax(address(x), x.size, address(out), address(out) + 4):
            return float(out[0]), float(out[1])
    return float(np.min(values)), float(np.max(values))  # (or a NaN or Inf in the batch)


def abs_bin_counts(x: np.ndarray, scale: np.float32, bins: int) -> np.ndarray:
    """int64 counts, `bins + 1` long, of the indices `int32(|x| · scale)` of float32 `x`."""
    lib, flat = library(), _flat32(x)
    if lib is None or flat is None:
        a = np.abs(np.asarray(x, np.float32).reshape(-1))
        np.multiply(a, scale, out=a)
        # float32 -> int32 is vectorised, float32 -> int64 is not (AVX2): truncate to int32,
        # then widen for bincount
        return np.bincount(a.astype(np.int32).astype(np.intp), minlength=bins + 1)
    counts = np.zeros(bins + 1, np.int64)
    scratch = np.empty(_WAYS * (bins + 1), np.uint32)
    lib.npq_abs_hist(address(flat), flat.size, float(scale), bins, address(counts),
                     address(scratch))
    return counts
