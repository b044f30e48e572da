"""Degenerate calibration statistics are named in one warning each (issue #17)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from compiler.core.io import load_model
from passes.quantize.absmax import abs_max_ranges
from passes.quantize.calibrate import collect_ranges
from passes.quantize.degenerate import Spread, problem
from tests.conftest import conv_model

SHAPE = (4, 3, 8, 8)


@pytest.mark.parametrize("lo,hi,why", [
    (0.0, 0.0, "is zero on all calibration data"), (5.0, 5.0, "takes one value (5)"),
    (-1e-42, 1e-42, "below 1e-08"), (-1e31, 1e31, "beyond what float32"),
    (-1.0, 2.0, None), (float("inf"), -float("inf"), None)])
def test_problem(lo, hi, why):
    got = problem(Spread(lo, hi))
    assert (got is None) if why is None else why in got


@pytest.mark.parametrize("ranges", [abs_max_ranges, collect_ranges])
@pytest.mark.parametrize("data,named", [
    (np.full(SHAPE, 5.0, np.float32), "tensor 'x' takes one value (5)"),
    (np.zeros(SHAPE, np.float32), "tensor 'x' is zero on all calibration data"),
    ((np.random.default_rng(1).standard_normal(SHAPE) * 1e-40).astype(np.float32),
     "tensor 'x' has range"),
])
def test_degenerate_data_is_named(ranges, data, named, caplog):
    model = load_model(conv_model())
    names = ["x", "r"]
    with caplog.at_level(logging.WARNING):
        got = ranges(model, data, names)
    assert named in caplog.text and "meaningless" in caplog.text
    assert all(np.isfinite(t) and t > 0 for t in got.values())


@pytest.mark.parametrize("ranges", [abs_max_ranges, collect_ranges])
def test_healthy_data_draws_no_warning(ranges, caplog):
    model = load_model(conv_model())
    data = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    with caplog.at_level(logging.WARNING):
        ranges(model, data, ["x", "r"])
    assert "calibration:" not in caplog.text
