"""1xN blocks, criteria and selection: exact zero-block counts, masks, global budget, css."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.core.builder import GraphBuilder, he_normal
from compiler.core.errors import ConfigError
from compiler.core.io import load_model
from compiler.core.numerics import random_feeds, run
from passes.canonicalize import canonicalize
from passes.sparsify import plan_layers, read_sparsity_metadata, sparsify_model, zero_blocks
from passes.sparsify.criteria import (
    element_mask,
    leverage_scores,
    select_global,
    select_uniform,
    unit_scores,
)
from passes.sparsify.layers import weight_layers
from passes.sparsify.sparsify import SparsifyOptions


def tiny_net(seed: int = 0, batch: int | str = 2):
    """Stem, a residual block, a strided conv, depthwise + pointwise, GAP, Gemm, MatMul."""
    b = GraphBuilder("tiny", seed)
    r = b.rng
    x = b.input("x", [batch, 3, 12, 12])
    s = b.relu(b.conv(x, he_normal(r, (16, 3, 3, 3)), r.standard_normal(16) * 0.1, name="stem"))
    a = b.relu(b.conv(s, he_normal(r, (16, 16, 3, 3)), r.standard_normal(16) * 0.1, name="a"))
    a = b.conv(a, he_normal(r, (16, 16, 3, 3)), r.standard_normal(16) * 0.1, name="b")
    s = b.relu(b.add(a, s))
    c = b.relu(b.conv(s, he_normal(r, (32, 16, 3, 3)), r.standard_normal(32) * 0.1, stride=2,
                      name="c"))
    d = b.relu(b.conv(c, he_normal(r, (32, 1, 3, 3)), None, group=32, name="dw"))
    p = b.relu(b.conv(d, he_normal(r, (24, 32, 1, 1)), r.standard_normal(24) * 0.1, name="pw"))
    f = b.flatten(b.global_avgpool(p))
    h = b.relu(b.gemm(f, he_normal(r, (16, 24)), r.standard_normal(16) * 0.1, name="fc1"))
    w2 = b.const(he_normal(r, (16, 10)).T.copy().T, "fc2.weight")
    b.output(b.node("MatMul", [h, w2], name="fc2"))
    return canonicalize(load_model(b.build())).model


def test_block_scores_l1_l2_match_definition():
    w = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    l1 = unit_scores(w, 4, "l1")
    assert l1.shape == (2, 3)
    assert l1[1, 2] == pytest.approx(np.abs(w[4:8, 2]).sum(), rel=1e-6)
    l2 = unit_scores(w, 4, "l2")
    assert l2[0, 1] == pytest.approx(np.sqrt(np.square(w[0:4, 1]).sum()), rel=1e-6)


def test_select_uniform_zeroes_exact_count_of_lowest():
    scores = np.arange(20, dtype=float)[::-1].reshape(4, 5)
    keep = select_uniform(scores, 0.3)
    assert (~keep).sum() == 6
    assert set(scores[~keep]) == {0, 1, 2, 3, 4, 5}


def test_element_mask_covers_n_outputs_one_input_whole_kernel():
    mask = np.array([[True, False], [False, True]])
    em = element_mask(mask, 4, (8, 2, 3, 3))
    assert em.shape == (8, 2, 3, 3)
    assert not em[0:4, 1].any() and em[0:4, 0].all() and not em[4:8, 0].any()


def test_leverage_scores_rank_dominant_filters_high():
    rng = np.random.default_rng(1)
    rows = np.zeros((6, 10))
    rows[:3] = rng.standard_normal((3, 10)) * 10
    rows[3:] = rng.standard_normal((3, 10)) * 0.01
    lev = leverage_scores(rows, energy=0.9999)
    assert lev[:3].min() > lev[3:].max()
    assert lev.sum() == pytest.approx(3.0, abs=1e-6)  # the 3 big filters span 99.99 % of the energy


def test_select_global_meets_mac_budget_and_caps_layers():
    rng = np.random.default_rng(2)
    scores = [rng.uniform(1, 2, (4, 8)), rng.uniform(1, 2, (2, 16))]
    unit_macs = [100.0, 300.0]
    keeps = select_global(scores, unit_macs, 0.5)
    total = 100 * 32 + 300 * 32
    zeroed = sum(m * (~k).sum() for m, k in zip(unit_macs, keeps, strict=True))
    assert 0.5 * total <= zeroed < 0.5 * total + 300
    assert all((~k).mean() <= 0.95 for k in keeps)


@pytest.mark.parametrize("block", [2, 4, 8])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_exact_zero_blocks_per_layer(block, sparsity):
    model = tiny_net()
    sparse, report = sparsify_model(model, block, sparsity, criterion="l1", reconstruct=False)
    masks = read_sparsity_metadata(sparse)
    layers = {x.name: x for x in weight_layers(sparse)}
    assert set(masks) == {r["node"] for r in report["layers"]}
    for name, m in masks.items():
        n_blocks = m.mask.size
        expected = int(np.floor(sparsity * n_blocks + 0.5))
        zero = zero_blocks(layers[name].logical(), block)
        assert zero.sum() == expected == (~m.mask).sum()
        assert np.array_equal(zero, ~m.mask)  # no kept block happens to be all zero
    for name in masks:  # weights stay in their initializers, shapes unchanged
        assert layers[name].weight.shape == model.graph.tensors()[masks[name].weight].shape


def test_skipped_layers_have_reasons():
    plan = plan_layers(tiny_net(), SparsifyOptions(block=8, criterion="l1", reconstruct=False))
    assert plan.skipped["stem"].startswith("first layer")
    assert plan.skipped["fc2"].startswith("last layer")
    assert plan.skipped["dw"].startswith("depthwise conv (group=32)")
    assert [x.name for x in plan.layers] == ["a", "b", "c", "pw", "fc1"]
    plan16 = plan_layers(tiny_net(), SparsifyOptions(block=16, criterion="l1", reconstruct=False))
    assert plan16.skipped["pw"] == "Cout=24 is not a multiple of N=16"


def test_include_first_last_and_exclude():
    plan = plan_layers(tiny_net(), SparsifyOptions(block=2, include_first_last=True,
                                                   exclude=("f*",), criterion="l1",
                                                   reconstruct=False))
    names = [x.name for x in plan.layers]
    assert "stem" in names and "fc1" not in names and "fc2" not in names
    assert plan.skipped["fc2"] == "excluded by --exclude"


def test_sparsity_zero_keeps_function_and_output_shapes():
    model = tiny_net()
    sparse, report = sparsify_model(model, 4, 0.0, criterion="l1", reconstruct=False)
    assert report["zero_blocks"] == 0
    feeds = random_feeds(model, seed=3, batch=2)
    ref, out = run(model, feeds), run(sparse, feeds)
    assert np.array_equal(ref["fc2"], out["fc2"])


def test_sparse_model_runs_with_same_shapes_and_effective_macs():
    model = tiny_net()
    sparse, report = sparsify_model(model, 4, 0.5, criterion="l1", reconstruct=False)
    feeds = random_feeds(model, seed=3, batch=2)
    ref, out = run(model, feeds), run(sparse, feeds)
    assert out["fc2"].shape == ref["fc2"].shape
    assert not np.allclose(out["fc2"], ref["fc2"])
    saved = sum(r["macs"] - r["effective_macs"] for r in report["layers"])
    assert saved == pytest.approx(0.5 * sum(r["macs"] for r in report["layers"]), rel=1e-6)
    assert report["effective_macs"] == report["macs"] - saved


def test_matmul_weight_in_io_layout_is_blocked_on_output_axis():
    model = tiny_net()
    sparse, _ = sparsify_model(model, 2, 0.5, include_first_last=True, criterion="l1",
                               reconstruct=False)
    m = read_sparsity_metadata(sparse)["fc2"]
    assert m.layout == "IO" and m.mask.shape == (5, 16)
    w = np.asarray(sparse.graph.tensors()[m.weight].values)  # [in=16, out=10]
    g, c = np.argwhere(~m.mask)[0]
    assert not w[c, 2 * g:2 * g + 2].any()


def test_css_zeroes_whole_filters():
    model = tiny_net()
    sparse, report = sparsify_model(model, 4, 0.5, criterion="css", reconstruct=False)
    masks = read_sparsity_metadata(sparse)
    m = masks["c"]
    assert m.block == 1 and m.mask.shape == (32, 16)
    w = weight_layers(sparse)[3].logical()
    dead = ~m.mask.all(axis=1)
    assert dead.sum() == 16 and not w[dead].any() and np.abs(w[~dead]).sum(axis=(1, 2, 3)).min() > 0
    assert report["layers"][2]["sparsity"] == pytest.approx(0.5)


def test_global_budget_hits_mac_target():
    model = tiny_net()
    _, report = sparsify_model(model, 4, 0.5, global_budget=True, criterion="l1", reconstruct=False)
    eligible = sum(r["macs"] for r in report["layers"])
    saved = sum(r["macs"] - r["effective_macs"] for r in report["layers"])
    assert 0.5 <= saved / eligible < 0.55
    assert len({round(r["sparsity"], 3) for r in report["layers"]}) > 1


@pytest.mark.parametrize("kwargs, match", [
    ({"block": 3}, "N must be one of"),
    ({"sparsity": 1.0}, r"must be in \[0, 1\)"),
    ({"sparsity": -0.1}, r"must be in \[0, 1\)"),
    ({"criterion": "hrank"}, "unknown criterion"),
    ({"reconstruct": True}, "needs calibration data"),
    ({"criterion": "act"}, "--criterion act needs calibration data"),
    ({"criterion": "obs"}, "--criterion obs chooses blocks during the re-fit"),
    ({"criterion": "obs", "reconstruct": True, "global_budget": True}, "--global is not"),
    ({"block": 32, "exclude": ("c",)}, "N divides the output channels of no eligible layer"),
])
def test_bad_options_raise_config_error(kwargs, match):
    args = {"block": 4, "sparsity": 0.5, "criterion": "l1", "reconstruct": False, **kwargs}
    with pytest.raises(ConfigError, match=match):
        sparsify_model(tiny_net(), **args)


def test_input_model_is_not_modified():
    model = tiny_net()
    before = {x.weight.name: np.array(x.weight.values) for x in weight_layers(model)}
    sparsify_model(model, 4, 0.7, criterion="l1", reconstruct=False)
    for layer in weight_layers(model):
        assert np.array_equal(before[layer.weight.name], layer.weight.values)


def test_block_sparsify_pass_in_pass_manager():
    from compiler.core.pass_manager import PassManager
    from passes.sparsify import BlockSparsify

    model = tiny_net()
    result = PassManager([BlockSparsify(4, 0.5, reorder=True, criterion="l1", reconstruct=False)],
                         verify_each=True)(model)
    info = result.info["BlockSparsify"]
    assert result.modified and info["zero_blocks"] == info["blocks"] // 2
    assert set(read_sparsity_metadata(result.model)) == {r["node"] for r in info["layers"]}
    assert read_sparsity_metadata(model) == {}


def test_symbolic_batch_is_costed_per_image():
    _, fixed = sparsify_model(tiny_net(batch=2), 4, 0.5, criterion="l1", reconstruct=False)
    _, symbolic = sparsify_model(tiny_net(batch="N"), 4, 0.5, criterion="l1", reconstruct=False)
    assert symbolic["macs"] > 0 and 2 * symbolic["macs"] == fixed["macs"]
    assert 2 * symbolic["effective_macs"] == fixed["effective_macs"]
