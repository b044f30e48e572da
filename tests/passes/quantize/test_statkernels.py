"""The native calibration-statistics kernels give the numpy path's exact bits."""

from __future__ import annotations

import numpy as np
import pytest

from passes.quantize import statkernels

pytestmark = pytest.mark.skipif(statkernels.library() is None,
                                reason="the native kernels were not built (no C compiler)")


def _numpy(monkeypatch):
    monkeypatch.setattr(statkernels, "library", lambda: None)


@pytest.mark.parametrize("n", [1, 3, 4, 5, 1000, 100003])
def test_abs_bin_counts_equal_numpy(n, monkeypatch):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    x[: n // 3] = np.maximum(x[: n // 3], 0)  # runs of zeros, as after ReLU
    x[::7] = -0.0
    edge = float(np.abs(x).max()) or 1.0
    x[-1] = -edge  # |x| == edge: index == bins
    for bins in (256, 2048, 2049):
        scale = np.float32(bins / edge)
        native = statkernels.abs_bin_counts(x, scale, bins)
        with monkeypatch.context() as m:
            _numpy(m)
            want = statkernels.abs_bin_counts(x, scale, bins)
        assert native.dtype == np.int64 and native.sum() == n
        np.testing.assert_array_equal(native, want)
        assert native[bins] >= 1


@pytest.mark.parametrize("values", [
    np.array([3.5], np.float32), np.array([-0.0, 0.0, -2.0, 7.25, 1e-30], np.float32),
    np.array([1.0, np.inf, -3.0], np.float32), np.array([-np.inf, 2.0], np.float32),
    np.arange(-1000, 1002, dtype=np.float32).reshape(7, 11, 26)[::-1].copy()])
def test_min_max_equal_numpy(values):
    assert statkernels.min_max(values) == (float(values.min()), float(values.max()))


def test_min_max_reports_nan_like_numpy(monkeypatch):
    x = np.array([1.0, np.nan, -5.0, 2.0], np.float32)
    lo, hi = statkernels.min_max(x)
    assert np.isnan(lo) and np.isnan(hi)
    _numpy(monkeypatch)
    lo, hi = statkernels.min_max(x)
    assert np.isnan(lo) and np.isnan(hi)
