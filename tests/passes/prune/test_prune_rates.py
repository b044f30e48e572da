"""Pruning rates: HRankPlus ResNet-50 widths, rate parsing, round_to, global MACs targets."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.core.errors import ConfigError
from compiler.core.io import load_model
from passes.canonicalize import canonicalize
from passes.prune import analyze, prune_model
from passes.prune.costmodel import CostModel, counts_for_target
from passes.prune.criteria import score_groups
from passes.prune.pipeline import group_widths
from passes.prune.rates import keep_count, parse_rates, rates_from_spec, round_keep

HRANKPLUS = "[0.0]+[0.24]*3+[0.7]*7+[0.45]*9"


@pytest.fixture(scope="module")
def resnet50():
    from models.zoo import resnet50 as build

    proto, _ = build()
    return canonicalize(load_model(proto)).model


def test_hrankplus_resnet50_widths(resnet50):
    pruned, report = prune_model(resnet50, rates=HRANKPLUS, reconstruct=False, round_to=1)
    groups = report["groups"]
    residual = [r["after"] for r in groups if r["kind"] == "residual"]
    assert residual == [194, 389, 778, 2048]
    stem = next(r for r in groups if "conv1.out" in r["members"])
    assert stem["after"] == 64
    mids = {}
    for r in groups:
        for m in r["members"]:
            if m.endswith((".conv1.out", ".conv2.out")) and m.startswith("layer"):
                mids[m] = r["after"]
    expect = [19] * 3 + [38] * 4 + [140] * 6 + [281] * 3
    blocks = [f"layer{s}.{b}" for s, n in zip(range(1, 5), (3, 4, 6, 3), strict=True)
              for b in range(n)]
    assert [mids[f"{blk}.conv1.out"] for blk in blocks] == expect
    assert [mids[f"{blk}.conv2.out"] for blk in blocks] == expect
    # per block the conv3 output = its stage's residual width [64,194x3,389x4,778x6,2048x3]
    outs = {n.name: n.inputs[1].values.shape[0] for n in pruned.nodes if n.op == "Conv"}
    assert [outs[f"{blk}.conv3"] for blk in blocks] == [194] * 3 + [389] * 4 + [778] * 6 + \
        [2048] * 3
    assert outs["conv1"] == 64


def test_rates_list_wrong_length_names_order(resnet50):
    groups = analyze(resnet50).groups
    with pytest.raises(ConfigError) as e:
        rates_from_spec(groups, "[0.1, 0.2, 0.3]")
    msg = str(e.value)
    assert "got 3 rates, expected 37" in msg and "1:conv1.out" in msg and "or 20" in msg


def test_rates_per_group_list_and_map(resnet50):
    groups = analyze(resnet50).groups
    rates = rates_from_spec(groups, [0.5] * 37)
    assert len(rates) == 37 and set(rates.values()) == {0.5}
    rates = rates_from_spec(groups, "{conv1.out: 0.25, 2: 0.5}")
    assert rates == {1: 0.25, 2: 0.5}
    with pytest.raises(ConfigError, match="not prunable"):
        rates_from_spec(groups, {0: 0.5})
    with pytest.raises(ConfigError, match="outside"):
        rates_from_spec(groups, {1: 1.0})
    with pytest.raises(ConfigError, match="no group"):
        rates_from_spec(groups, {"nope.out": 0.1})


def test_parse_rates_forms(tmp_path):
    assert parse_rates(HRANKPLUS)[:5] == [0.0, 0.24, 0.24, 0.24, 0.7]
    assert len(parse_rates(HRANKPLUS)) == 20
    assert parse_rates("[0.1, 0.2]") == [0.1, 0.2]
    f = tmp_path / "r.yaml"
    f.write_text("conv1.out: 0.5\n3: 0.25\n")
    assert parse_rates(str(f)) == {"conv1.out": 0.5, 3: 0.25}
    with pytest.raises(ConfigError, match="cannot read"):
        parse_rates("[0.1]+__import__('os')")


def test_keep_count_and_round_to():
    assert keep_count(64, 0.7) == 19 and keep_count(256, 0.24) == 194
    assert keep_count(64, 0.3, round_to=8) == 48  # 44.8 -> 44 -> nearest multiple of 8
    assert keep_count(100, 0.99, round_to=16) == 16  # never below one multiple
    assert round_keep(6, 3, 8) == 3  # a group narrower than the multiple is left alone
    assert keep_count(10, 0.0) == 10
    # a group kept whole is not rounded (PP-OCRv4 det's 42-channel group lost 2 at ratio 0)
    assert keep_count(42, 0.0, round_to=8) == 42 and keep_count(18, 0.0, round_to=8) == 18
    assert keep_count(42, 0.02, round_to=8) == 40


def test_uniform_ratio_round_to(resnet50):
    _, report = prune_model(resnet50, ratio=0.3, round_to=16, reconstruct=False)
    for before, after in group_widths(report):
        assert after % 16 == 0 and after <= before


@pytest.mark.parametrize("target", [0.7, 0.5])
def test_target_macs(resnet50, target):
    a = analyze(resnet50)
    cost = CostModel(a)
    scores = score_groups(a, "l1")
    counts = counts_for_target(cost, a.groups, scores, target)
    assert cost.macs(counts) <= target * cost.total_macs
    assert cost.macs(counts) >= (target - 0.03) * cost.total_macs
    _, report = prune_model(resnet50, target_macs=target, reconstruct=False, round_to=1)
    assert abs(report["macs"]["ratio"] - cost.macs(counts) / cost.total_macs) < 1e-6


@pytest.mark.parametrize("target", [0.9, 0.6, 0.45])
def test_target_macs_lands_within_one_step(resnet50, target):
    """With round_to 8 the budget is met to within one 8-channel step of any group."""
    a = analyze(resnet50)
    cost = CostModel(a)
    counts = counts_for_target(cost, a.groups, score_groups(a, "l1"), target, round_to=8)
    got = cost.macs(counts)
    assert got <= target * cost.total_macs
    for g in a.groups:  # no group can take one more step without breaking the budget
        kept = counts.get(g.id, g.channels)
        if g.prunable and kept < g.channels:
            assert cost.macs({**counts, g.id: min(g.channels, kept + 8)}) > target * \
                cost.total_macs
    _, report = prune_model(resnet50, target_macs=target, reconstruct=False, round_to=8)
    assert report["target"]["missed"] is None
    assert target - 0.01 < report["target"]["reached"] <= target


def test_unreachable_target_warns_or_fails_under_strict(resnet50, caplog):
    _, report = prune_model(resnet50, target_macs=0.02, reconstruct=False, max_rate=0.5)
    outcome = report["target"]
    assert outcome["reached"] > 0.2 and abs(outcome["reached"] - outcome["floor"]) < 0.02
    assert "out of reach" in outcome["missed"] and "out of reach" in caplog.text
    with pytest.raises(ConfigError, match=r"target_macs 0.02 is out of reach.*--max-rate"):
        prune_model(resnet50, target_macs=0.02, reconstruct=False, max_rate=0.5, strict=True)


def test_cost_model_matches_real_cost(resnet50):
    a = analyze(resnet50)
    cost = CostModel(a)
    rng = np.random.default_rng(0)
    counts = {g.id: int(rng.integers(1, g.channels + 1)) for g in a.groups if g.prunable}
    rates = {gid: 1 - n / a.groups[gid].channels for gid, n in counts.items()}
    _, report = prune_model(resnet50, rates={k: min(v, 0.999) for k, v in rates.items()},
                            reconstruct=False, round_to=1)
    got = {r["id"]: r["after"] for r in report["groups"]}
    real = cost.macs(got)
    assert abs(report["macs"]["after"] - real) / real < 1e-9
    assert abs(report["params"]["after"] - cost.params(got)) / report["params"]["after"] < 0.01
