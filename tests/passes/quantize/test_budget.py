"""The accuracy budget loop (passes/quantize/budget.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compiler.core.errors import ConfigError
from compiler.core.feeds import Feeds
from compiler.core.numerics import run, session
from passes.quantize.budget import Budget, quantize_within_budget
from passes.quantize.budget16 import flagged_first
from passes.quantize.fidelity import Metrics
from passes.quantize.sensitivity import quantize_sensitivity
from tests.exporter_graphs import residual_classifier


def images(n: int, seed: int, hw: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 3, hw, hw)).astype(np.float32)


def outputs(model, x: np.ndarray, **kw) -> np.ndarray:
    """fc_out of a batch-1 model, sample by sample."""
    sess = session(model, **kw)
    return np.concatenate([run(sess, {"x": x[i:i + 1]})["fc_out"] for i in range(len(x))])


def test_budget_check_names_the_first_constraint_missed():
    m = Metrics(cosine=0.99, agreement=0.95, flips=5, accuracy=0.90)
    assert Budget(max_drop=0.5).check(m, 0.905) == (True, "within budget")
    ok, reason = Budget(max_drop=0.5).check(m, 0.91)
    assert not ok and reason == "accuracy drop 1.00 pt > 0.5 pt"
    assert Budget(min_cosine=0.995).check(m, None) == (False, "cosine 0.990000 < 0.995")
    assert Budget(min_agreement=0.96).check(m, None) == (False, "agreement 0.9500 < 0.96")
    assert Budget(min_cosine=0.98, min_agreement=0.95).check(m, None)[0]
    assert not Budget().active and Budget(min_cosine=0.9).active
    assert Budget(max_drop=1).rank_by == "accuracy"
    assert Budget(min_agreement=0.9, min_cosine=0.9).rank_by == "agreement"
    assert Budget(min_cosine=0.9).rank_by == "cosine"


@pytest.fixture(scope="module")
def data():
    return images(32, 0), images(48, 1)


@pytest.fixture(scope="module")
def all_int8(data):
    calib, evals = data
    return quantize_within_budget(residual_classifier(), calib, Budget(min_cosine=0.5), evals)


def test_a_met_budget_changes_nothing_in_one_evaluation(all_int8):
    r = all_int8.report
    assert r["met"] and r["raised"] == [] and all_int8.result is all_int8.baseline
    assert r["evaluations"] == {"total": 1, "ranking": 0, "search": 1, "confirm": 0}
    assert r["before"] == r["after"] and r["samples"] == 48
    assert all_int8.result.report["cpu_nodes"] == 0


@pytest.fixture(scope="module")
def tight(data, all_int8):
    """A cosine budget halfway between all-int8 and float: int16 layers meet it."""
    calib, evals = data
    before = all_int8.report["before"]["cosine"]
    goal = before + (1 - before) / 2
    return goal, quantize_within_budget(residual_classifier(), calib, Budget(min_cosine=goal),
                                        evals, rank_samples=16, rounding="gptq")


@pytest.fixture(scope="module")
def beyond_int16(data, tight):
    """A cosine budget above what int16 activations reach: layers must go to float."""
    calib, evals = data
    ceiling = tight[1].report["int16"]["ceiling"]["cosine"]
    goal = ceiling + (1 - ceiling) / 2
    return goal, quantize_within_budget(residual_classifier(), calib, Budget(min_cosine=goal),
                                        evals, rank_samples=16, rounding="gptq")


def test_gptq_rounding_is_tried_before_any_layer_moves(data, all_int8):
    """With default weights (nearest rounding, bias correction), a missed budget first
    tries GPTQ rounding with bias correction, then without bias correction."""
    calib, evals = data
    before = all_int8.report["before"]["cosine"]
    out = quantize_within_budget(residual_classifier(), calib,
                                 Budget(min_cosine=before + (1 - before) / 2), evals,
                                 rank_samples=16)
    r = out.report
    w = r["rounding"]
    assert w["tried"] == ["gptq+bias_correction", "no_bias_correction", "gptq"][
        :len(w["tried"])] and w["tried"]
    best = max(w["results"].values(), key=lambda m: m["cosine"])
    assert (w["adopted"] is not None) == (best["cosine"] > before)
    base = out.baseline.qgraph.info
    assert r["met"] and base["rounding"] == "nearest" and base["bias_correction"]
    if w["met"]:  # the last one tried met the budget: nothing else moved
        assert r["raised"] == [] and w["adopted"] == w["tried"][-1]
        info = out.result.qgraph.info
        assert info["rounding"] == ("nearest" if w["adopted"] == "no_bias_correction"
                                    else "gptq")
        assert info["bias_correction"] == (w["adopted"] == "gptq+bias_correction")


def test_a_missed_budget_raises_layers_to_int16_first(data, tight):
    goal, out = tight
    r = out.report
    assert r["rounding"] == {"tried": []}  # gptq asked for: weights are the user's choice
    assert r["met"] and r["after"]["cosine"] >= goal > r["before"]["cosine"]
    assert r["int16"]["tried"] and r["int16"]["met"]
    assert r["int16"]["ceiling"]["cosine"] >= goal
    assert 1 <= len(r["raised"]) <= r["layers"]
    assert {row["to"] for row in r["raised"]} == {"int16"}
    res = out.result
    assert res.report["cpu_nodes"] == 0  # int16 layers stay on the NPU
    dtypes = {t.dtype for t in res.qgraph.tensors.values() if t.is_quantized}
    assert "int16" in dtypes
    assert sorted(res.qgraph.info["int16"]) == sorted(row["nodes"][0] for row in r["raised"])
    from tests.quant_helpers import mismatches
    assert mismatches(res.qgraph, {"x": evals_one(data)}) == {}


def evals_one(data) -> np.ndarray:
    return data[1][:1]


def test_int16_ranking_costs_one_evaluation_per_capable_layer(tight):
    _, out = tight
    r = out.report
    ev = r["evaluations"]
    n16 = r["int16"]["capable"]
    # both 16-bit precisions meet at their ceilings: each is ranked and bisected, the one
    # adding fewer MAC passes is confirmed
    plans = r["int16"]["plans"]
    assert sorted(p["precision"] for p in plans) == ["A16W16", "A16W8"]
    assert plans[0]["extra_passes"] <= plans[1]["extra_passes"]
    assert r["int16"]["precision"] == plans[0]["precision"]
    assert len(r["raised"]) >= plans[0]["layers"]  # confirmation may widen the bisected k
    assert ev["ranking"] == 2 * n16 == r["ranking"]["evaluations"]
    assert r["ranking"]["samples"] == 16
    # all-int8, the two int16 ceilings, then a bisection per precision
    assert 4 <= ev["search"] <= 3 + 2 * math.ceil(math.log2(n16))
    assert 1 <= ev["confirm"] <= 6
    assert ev["total"] == ev["ranking"] + ev["search"] + ev["confirm"]
    assert r["sample_runs"] == 2 * n16 * 16 + (ev["search"] + ev["confirm"]) * 48
    rows = r["ranking"]["layers"]
    # the order the loop raises them: flagged layers first, then the most error alone per
    # MAC pass added (budget.error_per_pass)
    weights = 3 if r["int16"]["precision"] == "A16W16" else 1
    total = sum(x["macs"] for x in r["ranking"]["layers"])
    density = [(not x["flags"], -(1 - x["cosine"]) / (x["macs"] * weights + total / 1000 + 1))
               for x in rows]
    assert density == sorted(density)
    assert r["raised"][0]["name"] == rows[0]["name"]


def test_flagged_layers_are_raised_to_int16_first(tight):
    """The classifier's logits reach the output through non-MAC ops only: a decoding head."""
    _, out = tight
    r = out.report
    assert r["flagged"] == {"fc": ["feeds_decoding"]}
    assert r["raised"][0]["name"] == "fc" and r["raised"][0]["flags"] == ["feeds_decoding"]
    assert all(not row["flags"] for row in r["raised"][1:])
    assert r["ranking"]["layers"][0]["name"] == "fc"


def test_flagged_layers_go_first_whatever_their_cost():
    from types import SimpleNamespace

    def layer(name):
        return SimpleNamespace(unit=SimpleNamespace(anchor=SimpleNamespace(name=name)))

    costs = {"a": 0.90, "head": 0.999, "b": 0.95, "outlier": 0.99}
    pairs = [(layer(n), Metrics(cosine=c, agreement=1.0, flips=0)) for n, c in costs.items()]
    order = flagged_first(pairs, {"head": ["feeds_decoding"], "outlier": ["outlier_range"]},
                          lambda lm: lm[1].cosine)
    assert [lm[0].unit.anchor.name for lm in order] == ["outlier", "head", "a", "b"]
    assert [lm[0].unit.anchor.name for lm in flagged_first(pairs, {}, lambda lm: lm[1].cosine)] \
        == ["a", "b", "outlier", "head"]


def test_beyond_int16_layers_go_to_float(beyond_int16):
    goal, out = beyond_int16
    r = out.report
    assert r["met"] and r["after"]["cosine"] >= goal
    assert r["int16"]["tried"] and not r["int16"].get("met")
    assert r["int16"]["ceiling"]["cosine"] < goal
    assert 1 <= len(r["raised"]) <= r["layers"]
    assert {row["to"] for row in r["raised"]} == {"float"}
    assert out.result.qgraph.info["rounding"] == "gptq"  # as asked
    cpu = out.result.report["cpu_reasons"]
    for row in r["raised"]:  # every node of a raised layer runs in float on the CPU
        assert all(n in cpu for n in row["nodes"])
    assert 0 < r["macs_raised"] and 0 < r["macs_raised_share"] <= 1
    assert out.baseline.report["cpu_nodes"] == 0


def test_the_float_loop_costs_a_ranking_on_few_samples_and_a_binary_search(beyond_int16):
    _, out = beyond_int16
    r = out.report
    n, n16 = r["layers"], r["int16"]["capable"]
    ev = r["evaluations"]
    # every layer is int16-capable, so the A16W16 stand-in (weights and activations
    # unquantized) promises any budget; its re-quantized models miss this one, then the
    # float ranking, bisection and confirmation follow
    assert r["int16"]["precision"] == "A16W16" and not r["int16"]["met"]
    assert ev["ranking"] == n16 + n and r["ranking"]["samples"] == 16
    # all-int8, the two int16 ceilings, the int16 bisection, then the float bisection
    assert 4 <= ev["search"] <= 3 + math.ceil(math.log2(n16)) + math.ceil(math.log2(n))
    assert 2 <= ev["confirm"] <= 12 and n16 <= n
    assert ev["total"] == ev["ranking"] + ev["search"] + ev["confirm"]
    assert r["sample_runs"] == (n16 + n) * 16 + (ev["search"] + ev["confirm"]) * 48
    assert r["full_sweep_sample_runs"] == n * 48


def test_the_float_ranking_is_the_single_layer_sweep(data, tight):
    """The first layer raised to float is the costliest alone (the sweep's, same rounding)."""
    calib, evals = data
    ceiling = tight[1].report["int16"]["ceiling"]["cosine"]
    out = quantize_within_budget(residual_classifier(), calib,
                                 Budget(min_cosine=ceiling + (1 - ceiling) / 2), evals,
                                 rank_samples=16, rounding="gptq")
    sweep = quantize_sensitivity(residual_classifier(), calib, evals[:16], rounding="gptq")
    assert out.report["raised"][0]["name"] == sweep.layers[0].name
    assert out.report["raised"][0]["alone"]["cosine"] == pytest.approx(
        sweep.layers[0].metrics.cosine, abs=1e-9)


@pytest.mark.parametrize("case", ["tight", "beyond_int16"])
def test_the_budget_metric_is_that_of_the_written_model(data, case, request):
    """The fake-quant measurement matches model.qdq.onnx run in onnxruntime."""
    _, evals = data
    _, out = request.getfixturevalue(case)
    res = out.result
    ref = outputs(res.float_model, evals).ravel()
    qdq = outputs(res.qdq_model, evals, fuse_qdq=False).ravel()
    cos = float(ref @ qdq / np.linalg.norm(ref) / np.linalg.norm(qdq))
    assert cos == pytest.approx(out.report["after"]["cosine"], abs=2e-4)


def test_max_drop_needs_labels(data):
    calib, evals = data
    with pytest.raises(ConfigError, match="--max-drop needs labelled data"):
        quantize_within_budget(residual_classifier(), calib, Budget(max_drop=0.5), evals)


def test_no_budget_is_an_error(data):
    with pytest.raises(ConfigError, match="no budget stated"):
        quantize_within_budget(residual_classifier(), data[0], Budget())


def test_labelled_budget_is_measured_in_accuracy_points(data):
    """Labels from the float model's own predictions: float accuracy 1.0 exactly."""
    calib, evals = data
    model = residual_classifier()
    from compiler.core.io import load_model
    labels = outputs(load_model(model), evals).argmax(axis=1)
    out = quantize_within_budget(model, calib, Budget(max_drop=0.0),
                                 Feeds({"x": evals}, "evals", labels), rank_samples=16)
    r = out.report
    assert r["float_accuracy"] == 1.0
    assert r["met"] and r["after"]["accuracy"] == 1.0 and r["after"]["flips"] == 0


def test_gptq_rounded_models_are_measured_against_the_float_weights(data):
    """`result.float_model` holds GPTQ's rounded weights; the budget compares with float."""
    from compiler.core.feeds import load_feeds
    from passes.quantize.api import pristine_float, quantize_model
    from passes.quantize.budget import _Scorer
    from passes.quantize.fidelity import Reference
    calib, evals = data
    res = quantize_model(residual_classifier(), calib, rounding="gptq")
    fm = pristine_float(residual_classifier(), res)
    assert fm is not res.float_model
    ref = Reference(fm, load_feeds(evals, fm), 8, None)
    sc = _Scorer(res, ref, (), fm)
    assert sc.score(np.zeros(sc.count, np.bool_)).cosine == pytest.approx(1.0, abs=1e-9)
    stale = _Scorer(res, ref, ())  # the rounded weights as "float": not the float model
    assert stale.score(np.zeros(stale.count, np.bool_)).cosine < 1 - 1e-7


def test_the_int16_stand_in_keeps_the_points_of_int8_only_layers():
    """A per-channel table (PRelu) reads and writes int8 whatever its neighbours'
    precision, so the switch model's int16 stand-in keeps its points quantized
    (EfficientNet-B0's SiLU tables, before they read int16: the stand-in promised cosine
    0.996 with every int16-capable layer widened; the int16 model scored 0.944, and the
    stand-in then said 0.946)."""
    from passes.quantize.api import quantize_model
    from passes.quantize.budget import _Scorer
    from passes.quantize.budget16 import int16_capable
    from passes.quantize.fidelity import Reference
    from tests.passes.quantize.test_int16 import _net
    from tests.quant_helpers import feeds_for

    model = _net("PRelu")
    base = quantize_model(model, feeds_for(model, 8, seed=0), calibrator="mse")
    ref = Reference(base.float_model, Feeds(feeds_for(model, 2, seed=3), "t"), 1)
    sc = _Scorer(base, ref, ())
    capable = [layer for layer in sc.layers if int16_capable(layer)]
    tables = [layer for layer in sc.layers if not int16_capable(layer)]
    assert [layer.unit.anchor.name for layer in tables] == ["sig"]
    on = sc.widened(capable)
    shared = {i for layer in tables for i in layer.activations}
    assert shared and on[sorted(shared)].all()  # the Sigmoid's input (add) and output
    alone = [i for layer in capable for i in layer.activations if i not in shared]
    assert alone and not on[alone].any()
    assert on.sum() == len(shared) + (sc.count - len(set(alone) | shared))


def test_unraised_mac_layers_keep_an_int8_edge_in_the_stand_in():
    """An unnamed conv reads an int8 copy of an int16 tensor (build.QGraphBuilder), so the
    switch model gives each MAC layer's input an edge point on the tensor's own grid: with
    the tensor's point off and every edge on, the convs see exactly the all-int8 values."""
    from passes.quantize.api import quantize_model
    from passes.quantize.budget import _Scorer
    from passes.quantize.fidelity import Reference
    from tests.passes.quantize.test_int16 import _net
    from tests.quant_helpers import feeds_for

    model = _net()
    base = quantize_model(model, feeds_for(model, 8, seed=0), calibrator="mse")
    ref = Reference(base.float_model, Feeds(feeds_for(model, 2, seed=3), "t"), 1)
    sc = _Scorer(base, ref, ())
    by_name = {layer.unit.anchor.name: layer for layer in sc.layers}
    conv2, conv3 = by_name["conv2"], by_name["conv3"]
    assert len(conv2.inputs) == len(conv3.inputs) == 2  # the tensor's point and the edge
    edges = [conv2.inputs[1], conv3.inputs[1]]
    wide = by_name["conv1"].outputs  # x (its entry), r and its moves p (MaxPool), p1 (Pad)
    assert {conv2.inputs[0], conv3.inputs[0]} <= set(wide)
    on = np.ones(sc.count, np.bool_)
    all_int8 = sc.score(on)
    on[wide] = False
    # max pooling and zero padding commute with rounding: the edges re-create the int8 grid
    assert sc.score(on).cosine == all_int8.cosine
    on[edges] = False
    assert sc.score(on).cosine != all_int8.cosine  # the convs now read unrounded values
    widened = sc.widened([by_name["conv1"]])  # conv1 raised: its outputs off, edges stay on
    assert widened[edges].all() and not widened[wide].any()
