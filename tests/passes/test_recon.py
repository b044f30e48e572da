"""Layer reconstruction: row collection matches the layer, ridge fits recover weights."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.core.builder import GraphBuilder, he_normal
from compiler.core.errors import GraphError
from compiler.core.io import load_model
from compiler.core.numerics import run
from passes.recon import (
    collect_layer_io,
    fit_layer,
    ridge_fit,
    set_layer_weights,
    weight_matrix,
)


def _model(group: int = 1, stride: int = 1, dilation: int = 1, auto_pad: str | None = None):
    b = GraphBuilder("recon", seed=1)
    x = b.input("x", ["N", 4, 9, 9])
    w1 = he_normal(b.rng, (8, 4, 3, 3))
    h = b.relu(b.conv(x, w1, b.rng.standard_normal(8), name="c1"))
    w2 = he_normal(b.rng, (6, 8 // group, 3, 3))
    if auto_pad:
        h = b.node("Conv", [h, b.const(w2, "c2.weight"), b.const(np.ones(6, np.float32))],
                   name="c2", kernel_shape=[3, 3], strides=[stride, stride], auto_pad=auto_pad,
                   group=group)
    else:
        h = b.conv(h, w2, np.ones(6), stride=stride, group=group, dilation=dilation, name="c2")
    h = b.flatten(b.node("GlobalAveragePool", [h]))
    b.output(b.gemm(h, he_normal(b.rng, (5, 6)), np.zeros(5), name="fc"))
    return load_model(b.build())


def _feeds(n=8, seed=0):
    return {"x": np.random.default_rng(seed).standard_normal((n, 4, 9, 9)).astype(np.float32)}


@pytest.mark.parametrize("kw", [{}, {"group": 2}, {"stride": 2}, {"dilation": 2},
                                {"auto_pad": "SAME_UPPER", "stride": 2}])
def test_rows_reproduce_conv_output(kw):
    # x @ W + b must equal the layer's own sampled outputs: checks patch geometry exactly.
    model = _model(**kw)
    io = collect_layer_io(model, ["c2"], _feeds(), max_rows=500)["c2"]
    node = next(n for n in model.nodes if n.name == "c2")
    w = weight_matrix(node)
    pred = np.einsum("gnk,gkm->gnm", io.x, w) + 1.0
    assert io.x.shape[0] == kw.get("group", 1)
    positions = 8 * (5 * 5 if kw.get("stride") == 2 else 9 * 9)
    assert io.x.shape[1] == min(500, positions)
    np.testing.assert_allclose(pred, io.y, atol=1e-4)


def test_refit_recovers_weights_and_bias():
    model = _model(group=2)
    io = collect_layer_io(model, ["c2", "fc"], _feeds(16), max_rows=2000)
    w, b = fit_layer(io["c2"], lam=1e-9)
    node = next(n for n in model.nodes if n.name == "c2")
    np.testing.assert_allclose(w, weight_matrix(node), atol=1e-3)
    np.testing.assert_allclose(b, np.ones(6), atol=1e-3)
    wf, bf = fit_layer(io["fc"], lam=1e-9)
    assert wf.shape == (1, 6, 5)
    assert np.abs(bf).max() < 1e-3


def test_set_layer_weights_round_trip():
    model = _model()
    feeds = _feeds(4)
    ref = run(model, feeds)["fc"]
    io = collect_layer_io(model, ["c2"], _feeds(16), max_rows=4000)
    w, b = fit_layer(io["c2"], lam=1e-9)
    set_layer_weights(model, "c2", w, b)
    np.testing.assert_allclose(run(model, feeds)["fc"], ref, atol=1e-3)


def test_ridge_mask_keeps_zeros_and_beats_zeroing():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 12))
    x[:, 6:] = x[:, :6] + 0.1 * x[:, 6:]  # correlated regressors: the kept ones can compensate
    w_true = rng.standard_normal((12, 8))
    y = x @ w_true
    mask = np.ones((12, 8), bool)
    mask[6:, :4] = False  # a 1xN-like pattern: 4 outputs share one zero block
    w, _ = ridge_fit(x, y, lam=1e-8, mask=mask)
    assert np.all(w[~mask] == 0)
    zeroed = np.where(mask, w_true, 0)
    assert np.linalg.norm(x @ w - y) < 0.5 * np.linalg.norm(x @ zeroed - y)
    # unmasked columns are solved exactly
    np.testing.assert_allclose(w[:, 4:], w_true[:, 4:], atol=1e-5)


def test_ridge_intercept():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 5))
    y = x @ rng.standard_normal((5, 3)) + np.array([1.0, -2.0, 0.5])
    w, b = ridge_fit(x, y, lam=1e-10, fit_intercept=True)
    np.testing.assert_allclose(b, [1.0, -2.0, 0.5], atol=1e-5)


def test_unknown_layer_is_a_graph_error():
    with pytest.raises(GraphError, match="not in the model"):
        collect_layer_io(_model(), ["nope"], _feeds())
    with pytest.raises(GraphError, match="cannot be re-fitted"):
        collect_layer_io(_model(), [_model().nodes[1].name], _feeds())


def test_censored_targets_free_only_entries_clamped_on_both_sides():
    from passes.recon import Bounds, censored_targets

    y = np.array([[-2.0, -1.0, 1.0, 7.0, 8.0]], np.float32)
    pred = np.array([[-3.0, 0.5, 2.0, 9.0, 5.0]], np.float32)
    out = censored_targets(y, pred, 0.0, Bounds("t", 0.0, 6.0))
    # -2/-3 both below 0 and 7/9 both above 6: freed; the others keep the teacher's value.
    np.testing.assert_array_equal(out, [[-3.0, -1.0, 1.0, 9.0, 8.0]])
    shifted = censored_targets(y, pred, np.full_like(y, 4.0), Bounds("t", 0.0))
    np.testing.assert_array_equal(shifted, y)  # + shortcut 4: nothing is clamped at 0


def test_activation_bounds_relu_relu6_residual_and_raw_use():
    from passes.recon import activation_bounds

    b = GraphBuilder("acts", seed=0)
    r = b.rng
    x = b.input("x", ["N", 4, 6, 6])
    a = b.relu6(b.conv(x, he_normal(r, (4, 4, 3, 3)), None, name="a"))
    c = b.conv(a, he_normal(r, (4, 4, 3, 3)), None, name="c")
    s = b.relu(b.add(c, a))
    d = b.conv(s, he_normal(r, (4, 4, 1, 1)), None, name="d")
    b.output(b.add(d, b.relu(d)))  # d is also used raw: no bounds
    model = load_model(b.build())
    nodes = {n.name: n for n in model.graph.nodes}
    got = {k: activation_bounds(nodes[k], model.graph) for k in ("a", "c", "d")}
    assert (got["a"].tensor, got["a"].lo, got["a"].hi) == (nodes["a"].outputs[0].name, 0.0,
                                                           float("inf"))  # lower clamp only
    add = nodes["c"].outputs[0].outputs[0]
    assert got["c"].tensor == add.outputs[0].name and got["c"].lo == 0.0
    assert got["d"] is None
