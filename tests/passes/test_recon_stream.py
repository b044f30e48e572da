"""Streaming normal equations: all patches reproduce the layer, solves recover the weights."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.core.numerics import run
from passes.recon import iter_tensors, weight_matrix
from passes.recon_stream import (
    HOLDOUT,
    all_patches,
    layer_stats,
    output_rows,
    refit,
    rel_error,
    solve,
)
from tests.passes.test_recon import _feeds, _model


def _node(model, name):
    return next(n for n in model.nodes if n.name == name)


@pytest.mark.parametrize("kw", [{}, {"group": 2}, {"stride": 2}, {"dilation": 2},
                                {"auto_pad": "SAME_UPPER", "stride": 2}])
def test_all_patches_reproduce_conv_output(kw):
    # Every output position, in (sample, h, w) order: x @ W + b is the conv output exactly.
    model = _model(**kw)
    node = _node(model, "c2")
    values = next(iter_tensors(model, [node.inputs[0].name, node.outputs[0].name], _feeds(),
                               8, only=True))
    x = all_patches(node, values[node.inputs[0].name])
    y = output_rows(node, values[node.outputs[0].name])
    side = 5 if kw.get("stride") == 2 else 9
    assert x.shape == (kw.get("group", 1), 8 * side * side, 8 // kw.get("group", 1) * 9)
    np.testing.assert_allclose(np.einsum("gnk,gkm->gnm", x, weight_matrix(node)) + 1.0, y,
                               atol=1e-4)


def test_stats_solve_recovers_weights_and_holds_out_samples():
    model = _model(group=2)
    node = _node(model, "c2")
    stats = layer_stats(model, model, node, _feeds(20), target=node.outputs[0].name)
    per_sample = 9 * 9
    assert stats.held.gram[0, -1, -1] == 20 // HOLDOUT * per_sample  # ones column counts rows
    assert stats.fit.gram[0, -1, -1] == (20 - 20 // HOLDOUT) * per_sample
    w, b = solve(stats.total, 1e-9)
    np.testing.assert_allclose(w, weight_matrix(node), atol=1e-3)
    np.testing.assert_allclose(b.reshape(-1), np.ones(6), atol=1e-3)
    assert rel_error(stats.held, w, b) < 1e-6
    assert rel_error(stats.held, np.zeros_like(w), None) == pytest.approx(1.0)


def test_masked_solve_keeps_zeros_and_refit_beats_zeroing():
    model = _model()
    node = _node(model, "c2")
    stats = layer_stats(model, model, node, _feeds(20), target=node.outputs[0].name)
    w_true = weight_matrix(node)
    keep = np.random.default_rng(0).random(w_true.shape) < 0.5
    w_zeroed = np.where(keep, w_true, 0)
    b_old = np.ones((1, 6), np.float32)
    w, b, info = refit(stats, w_zeroed, b_old, 1e-3, keep)
    assert np.all(w[~keep] == 0)
    assert info["error_after"] < 0.7 * info["error_before"]  # measured 0.19 vs 0.32
    assert info["error_before"] == pytest.approx(rel_error(stats.held, w_zeroed, b_old), 1e-4)


def test_refit_keeps_weights_that_cannot_be_improved():
    # Targets equal the layer's own output: the weights are already optimal.
    model = _model()
    node = _node(model, "c2")
    stats = layer_stats(model, model, node, _feeds(10), target=node.outputs[0].name)
    w_old, b_old = weight_matrix(node), np.ones((1, 6), np.float32)
    w, b, info = refit(stats, w_old, b_old, 1e-3)
    assert w is w_old and b is b_old
    assert info["error_before"] == info["error_after"] < 1e-6


def test_gemm_rows_and_pruned_output_positions():
    model = _model()
    node = _node(model, "fc")
    pos = np.array([0, 2, 4])
    feeds = _feeds(40)
    stats = layer_stats(model, model, node, feeds, target=node.outputs[0].name, out_pos=pos)
    assert stats.total.cross.shape == (1, 7, 3)  # 6 inputs + the ones column, 3 outputs
    assert stats.total.gram[0, -1, -1] == 40  # one row per sample
    w, b = solve(stats.total, 1e-9)
    np.testing.assert_allclose(w[0], weight_matrix(node)[0][:, pos], atol=1e-2)
    np.testing.assert_allclose(b[0], 0.0, atol=1e-2)
    assert run(model, feeds)["fc"].shape == (40, 5)
