"""Channel importance criteria: l1/l2 norms, CSS leverage scores, HRank feature-map ranks."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.core.builder import GraphBuilder, he_normal
from compiler.core.errors import ConfigError, DataError
from compiler.core.io import load_model
from passes.prune import analyze
from passes.prune.criteria import (
    feature_map_ranks,
    leverage_scores,
    score_groups,
    select,
)


def _model(weak: list[int], flat: list[int]):
    """conv(8) -> relu -> conv -> gap -> fc; filters in `weak` tiny, in `flat` constant maps."""
    b = GraphBuilder("crit", seed=0)
    x = b.input("x", ["N", 3, 12, 12])
    w1 = he_normal(b.rng, (8, 3, 3, 3))
    b1 = np.full(8, 0.1, np.float32)
    w1[weak] *= 0.01
    w1[flat] = 0.0
    b1[flat] = 1.0  # constant feature map: rank 1
    h = b.relu(b.conv(x, w1, b1, name="c1"))
    h = b.relu(b.conv(h, he_normal(b.rng, (6, 8, 3, 3)), None, name="c2"))
    b.output(b.gemm(b.flatten(b.global_avgpool(h)), he_normal(b.rng, (4, 6)), None, name="fc"))
    return load_model(b.build())


def _group(analysis, member):
    return next(g for g in analysis.groups if member in g.members)


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_norms_rank_weak_filters_last(criterion):
    a = analyze(_model(weak=[2, 5], flat=[]))
    g = _group(a, "c1.out")
    scores = score_groups(a, criterion)[g.id]
    assert set(np.argsort(scores)[:2]) == {2, 5}
    np.testing.assert_array_equal(select(scores, 6), [0, 1, 3, 4, 6, 7])


def test_hrank_ranks_constant_maps_last():
    a = analyze(_model(weak=[], flat=[1, 6]))
    g = _group(a, "c1.out")
    x = np.random.default_rng(0).standard_normal((6, 3, 12, 12)).astype(np.float32)
    scores = score_groups(a, "hrank", calib={"x": x})[g.id]
    assert set(np.argsort(scores)[:2]) == {1, 6}
    assert g.activations == [next(n for n in a.model.nodes if n.op == "Relu").outputs[0].name]


def test_hrank_needs_data():
    with pytest.raises(DataError, match="calibration"):
        score_groups(analyze(_model([], [])), "hrank")
    with pytest.raises(ConfigError, match="unknown"):
        score_groups(analyze(_model([], [])), "taylor")


def test_feature_map_ranks():
    x = np.zeros((2, 3, 5, 5), np.float32)
    x[0, 0] = np.eye(5)
    x[0, 1] = 1.0
    x[1, 2] = np.outer(np.arange(5), np.arange(5)) + np.eye(5)
    np.testing.assert_array_equal(feature_map_ranks(x), [[5, 1, 0], [0, 0, 5]])
    # channels last ([N, H, W, C]) and sequences ([N, L, C]: rank 1 unless all zero)
    np.testing.assert_array_equal(feature_map_ranks(np.moveaxis(x, 1, 3), 3),
                                  [[5, 1, 0], [0, 0, 5]])
    seq = x.reshape(2, 3, 25).transpose(0, 2, 1)
    np.testing.assert_array_equal(feature_map_ranks(seq, 2), [[1, 1, 0], [0, 0, 1]])


def test_leverage_scores_match_svd_definition():
    rows = np.random.default_rng(1).standard_normal((10, 40))
    rows[3] *= 1e-3  # a negligible filter has low leverage
    u, s, _ = np.linalg.svd(rows, full_matrices=False)
    k = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), 0.9) + 1)
    lev = leverage_scores(rows)
    np.testing.assert_allclose(lev, np.sum(u[:, :k] ** 2, axis=1), atol=1e-9)
    assert np.argmin(lev) == 3
    assert abs(lev.sum() - k) < 1e-9  # leverage scores sum to the subspace rank


def test_css_and_random_scores():
    a = analyze(_model(weak=[4], flat=[]))
    g = _group(a, "c1.out")
    assert np.argmin(score_groups(a, "css")[g.id]) == 4
    r1, r2 = score_groups(a, "random", seed=3), score_groups(a, "random", seed=3)
    np.testing.assert_array_equal(r1[g.id], r2[g.id])
