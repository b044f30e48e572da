"""Cross-layer equalization: function preserved, ranges evened out, pairs and skip reasons."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.core.builder import GraphBuilder, he_normal
from compiler.core.io import load_model
from compiler.core.numerics import compare_models, random_feeds
from passes.canonicalize import canonicalize
from passes.quantize.equalize import (
    CrossLayerEqualization,
    equalize,
    equalize_with_report,
    find_pairs,
    in_ranges,
    out_ranges,
)
from tests.conftest import light_path


def skewed(rng, shape, spread=1e3):
    """He weights whose output channels span `spread` in range (what CLE fixes)."""
    w = he_normal(rng, shape)
    return (w * np.logspace(0, np.log10(spread), shape[0]).reshape((-1,) + (1,) * (len(shape) - 1))
            ).astype(np.float32)


def chain_model():
    """conv→relu→dw→relu→conv→relu→maxpool→conv(→relu6 branch)→... →flatten(4x4)→gemm."""
    b = GraphBuilder("chain", 0)
    rng = b.rng
    x = b.input("x", ["N", 3, 16, 16])
    h = b.relu(b.conv(x, skewed(rng, (8, 3, 3, 3)), rng.standard_normal(8), name="c1"))
    h = b.relu(b.conv(h, skewed(rng, (8, 1, 3, 3)), rng.standard_normal(8), group=8, name="dw"))
    h = b.relu(b.conv(h, skewed(rng, (16, 8, 1, 1)), rng.standard_normal(16), name="c2"))
    h = b.maxpool(h, 2, 2)
    h = b.relu6(b.conv(h, skewed(rng, (16, 16, 3, 3)), rng.standard_normal(16), name="c3"))
    h = b.relu(b.conv(h, skewed(rng, (4, 16, 3, 3)), rng.standard_normal(4), stride=2,
                      name="c4"))
    y = b.gemm(b.flatten(h), skewed(rng, (10, 64)), rng.standard_normal(10), name="fc")
    b.output(y)
    return load_model(b.build())


def test_chain_pairs_and_reasons():
    pairs, skipped = find_pairs(chain_model())
    assert [(p.first.name, p.second.name, p.expand) for p in pairs] == [
        ("c1", "dw", 1), ("dw", "c2", 1), ("c2", "c3", 1), ("c4", "fc", 16)]
    reasons = dict(skipped)
    assert "clip bound" in reasons["c3"]
    assert "fc" not in reasons  # the last layer leads nowhere: not a skip


def test_chain_function_preserved_and_spread_shrinks():
    m = chain_model()
    before = {n.name: np.array(n.inputs[1].values) for n in m.nodes if n.op in ("Conv", "Gemm")}
    out, report = equalize_with_report(m)
    feeds = random_feeds(m, seed=1, batch=4)
    err = compare_models(m, out, feeds)
    assert max(err.values()) < 1e-4
    assert report.spread_after < report.spread_before / 5
    assert len(report.pairs) == 4 and report.sweeps > 1
    for n in m.nodes:  # the input model is untouched
        if n.name in before:
            assert np.array_equal(n.inputs[1].values, before[n.name])


def test_single_pair_ranges_equal_after_one_step():
    b = GraphBuilder("pair", 1)
    x = b.input("x", ["N", 4, 8, 8])
    h = b.relu(b.conv(x, skewed(b.rng, (6, 4, 3, 3)), b.rng.standard_normal(6), name="a"))
    b.output(b.conv(h, he_normal(b.rng, (5, 6, 3, 3)), name="b"))
    m = load_model(b.build())
    out = equalize(m, iterations=1)
    a, c = (n for n in out.nodes if n.op == "Conv")
    r1, r2 = out_ranges(a), in_ranges(c)
    np.testing.assert_allclose(r1, r2, rtol=1e-5)
    r1_old, r2_old = out_ranges(m.nodes[0]), in_ranges(m.nodes[2])
    np.testing.assert_allclose(r1, np.sqrt(r1_old * r2_old), rtol=1e-5)
    assert max(compare_models(m, out).values()) < 1e-5


def test_gemm_chain_transb0_and_leaky_relu():
    b = GraphBuilder("mlp", 2)
    x = b.input("x", ["N", 12])
    w1 = skewed(b.rng, (20, 12)).T.copy()  # transB=0 layout [in, out]
    h = b.node("Gemm", [x, b.const(w1, "w1"), b.const(np.ones(20, np.float32), "b1")],
               name="g1")
    h = b.node("LeakyRelu", [h], alpha=0.1)
    b.output(b.gemm(h, he_normal(b.rng, (3, 20)), np.zeros(3), name="g2"))
    m = load_model(b.build())
    out, report = equalize_with_report(m)
    assert report.pairs == [("g1", "g2")]
    assert max(compare_models(m, out, random_feeds(m, batch=8)).values()) < 1e-4
    assert report.spread_after < report.spread_before / 10


def test_shared_output_and_residual_are_skipped():
    b = GraphBuilder("res", 3)
    x = b.input("x", ["N", 4, 8, 8])
    h = b.relu(b.conv(x, he_normal(b.rng, (4, 4, 3, 3)), name="a"))
    y = b.conv(h, he_normal(b.rng, (4, 4, 3, 3)), name="b")
    b.output(b.add(h, y))
    m = load_model(b.build())
    pairs, skipped = find_pairs(m)
    assert pairs == []
    assert dict(skipped)["a"] == "'relu' feeds 2 consumers"
    assert "Add" in dict(skipped)["b"]


def test_pass_wrapper_reports():
    result = CrossLayerEqualization()(chain_model())
    assert result.modified and len(result.info["pairs"]) == 4
    assert any("clip bound" in s["reason"] for s in result.info["skipped"])


@pytest.mark.parametrize("name", ["squeezenet", "shufflenet", "inception_v1"])
def test_light_zoo_function_preserved(name):
    m = canonicalize(load_model(light_path(name), fix_batch=True)).model
    out, report = equalize_with_report(m)
    assert report.pairs
    assert max(compare_models(m, out).values()) < 1e-4


@pytest.mark.slow
def test_zoo_resnet50_function_preserved_and_spread_shrinks():
    from models.zoo import resnet50

    m = canonicalize(load_model(resnet50(image_size=32)[0])).model
    out, report = equalize_with_report(m)
    assert len(report.pairs) >= 30
    assert report.spread_after < 0.7 * report.spread_before
    assert max(compare_models(m, out).values()) < 1e-4
