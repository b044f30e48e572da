"""Filter reordering: function unchanged at sparsity 0, residual groups skipped, blocks sorted."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.core.io import load_model
from compiler.core.numerics import random_feeds, relative_error, run
from passes.canonicalize import canonicalize
from passes.sparsify import read_sparsity_metadata, sparsify_model
from passes.sparsify.layers import weight_layers
from passes.sparsify.reorder import filter_order
from tests.conftest import light_path
from tests.passes.sparsify.test_sparsify_blocks import tiny_net


def _weights(model):
    return {x.name: x.logical() for x in weight_layers(model)}


def test_reorder_at_sparsity_zero_equals_original():
    model = tiny_net()
    out, report = sparsify_model(model, 4, 0.0, reorder=True, criterion="l1", reconstruct=False)
    feeds = random_feeds(model, seed=1, batch=2)
    assert relative_error(run(model, feeds)["fc2"], run(out, feeds)["fc2"]) <= 1e-5
    status = {r["node"]: r["reorder"] for r in report["layers"]}
    assert status["a"] == "reordered" and status["c"] == "reordered"
    assert status["pw"] == "reordered" and status["fc1"] == "reordered"
    assert status["b"].startswith("residual/shared group (2 producing layers)")
    w = _weights(out)
    l1 = np.abs(w["c"]).reshape(32, -1).sum(axis=1)
    assert np.all(np.diff(l1) <= 0)  # filters now in descending L1 order
    before = _weights(model)
    perm = filter_order(before["c"])
    assert np.array_equal(w["c"], before["c"][perm])
    # the depthwise consumer follows the permutation (it is not a producer of its own group)
    assert np.array_equal(w["dw"], before["dw"][perm])


def test_reorder_then_sparsify_keeps_masks_consistent():
    model = tiny_net()
    out, report = sparsify_model(model, 4, 0.5, reorder=True, criterion="l1", reconstruct=False)
    masks = read_sparsity_metadata(out)
    for layer in weight_layers(out):
        if layer.name in masks:
            zero = ~masks[layer.name].mask
            w = layer.logical().reshape(-1, 4, layer.cin, int(np.prod(layer.logical().shape[2:])))
            assert not w.transpose(0, 2, 1, 3)[zero].any()
    assert report["reordered"] == 4


def test_reorder_lowers_pruned_l1_mass():
    """Sorting filters by norm groups big filters together, so the zeroed blocks are lighter."""
    model = tiny_net(seed=3)
    plain = sparsify_model(model, 8, 0.5, criterion="l1", reconstruct=False)[0]
    sorted_ = sparsify_model(model, 8, 0.5, reorder=True, criterion="l1", reconstruct=False)[0]
    orig = sum(np.abs(w).sum() for w in _weights(model).values())
    kept_plain = sum(np.abs(w).sum() for w in _weights(plain).values())
    kept_sorted = sum(np.abs(w).sum() for w in _weights(sorted_).values())
    assert kept_sorted >= kept_plain
    assert kept_sorted < orig


@pytest.mark.parametrize("name", ["resnet50", "squeezenet", "inception_v1"])
def test_reorder_light_zoo_is_function_preserving(name):
    model = canonicalize(load_model(light_path(name))).model
    out, report = sparsify_model(model, 4, 0.0, reorder=True, criterion="l1", reconstruct=False)
    assert report["reordered"] > 0
    feeds = random_feeds(model, seed=0)
    ref, got = run(model, feeds), run(out, feeds)
    assert all(relative_error(ref[k], got[k]) <= 1e-5 for k in ref)
