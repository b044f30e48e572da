"""Pruning oracle: the pruned model equals the original with removed channels' consumer
weights zeroed; permutations preserve outputs; ratio 0 changes nothing."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.core.builder import GraphBuilder, he_normal
from compiler.core.io import load_model, to_proto
from compiler.core.ir import Model
from compiler.core.numerics import random_feeds, relative_error, run
from passes.canonicalize import canonicalize
from passes.prune import analyze, apply_keep, prune_model, zero_removed
from tests.conftest import LIGHT_MODELS, light_path

ZOO = ["resnet50", "mobilenetv2", "vgg16", "ssd_resnet50"]


def kitchen_sink() -> onnx.ModelProto:
    """Every supported channel relation in one small graph."""
    b = GraphBuilder("sink", seed=3)
    r = b.rng
    x = b.input("x", ["N", 3, 8, 8])
    a = b.relu(b.conv(x, he_normal(r, (16, 3, 3, 3)), r.standard_normal(16), name="stem"))
    # residual + projection shortcut
    y = b.relu(b.conv(a, he_normal(r, (8, 16, 1, 1)), None, name="mid"))
    y = b.conv(y, he_normal(r, (16, 8, 3, 3)), r.standard_normal(16), name="out")
    a = b.relu(b.add(y, b.conv(a, he_normal(r, (16, 16, 1, 1)), None, name="proj")))
    # squeeze-excite with a [N, C, 1, 1] gate and a per-channel constant
    s = b.relu(b.conv(b.global_avgpool(a), he_normal(r, (4, 16, 1, 1)), np.ones(4), name="se1"))
    s = b.sigmoid(b.conv(s, he_normal(r, (16, 4, 1, 1)), np.zeros(16), name="se2"))
    a = b.mul(b.mul(a, s), b.const(r.uniform(0.5, 1.5, (16, 1, 1)).astype(np.float32), "scale"))
    # depthwise (multiplier 2) + concat + split
    d = b.relu6(b.conv(a, he_normal(r, (32, 1, 3, 3)), r.standard_normal(32), group=16,
                       name="dw"))
    e = b.relu(b.conv(a, he_normal(r, (8, 16, 1, 1)), None, name="branch"))
    c = b.concat([d, e])
    s1, s2 = b.node("Split", [c, b.const(np.array([16, 24], np.int64), "sizes")], n_outputs=2,
                    axis=1)
    g = b.relu(b.conv(s1, he_normal(r, (12, 16, 1, 1)), None, name="pre"))
    g = b.conv(g, he_normal(r, (12, 3, 3, 3)), r.standard_normal(12), group=4, name="grouped")
    # channel shuffle (4 groups of 3) and a slice, Pad, Resize, pooling
    g = b.reshape(g, [0, 4, 3, 8, 8])
    g = b.reshape(b.transpose(g, [0, 2, 1, 3, 4]), [0, 12, 8, 8])
    h = b.conv(s2, he_normal(r, (12, 24, 1, 1)), None, name="side")
    h = b.node("Slice", [h, b.const(np.array([2], np.int64)), b.const(np.array([10], np.int64)),
                         b.const(np.array([1], np.int64))])
    h = b.node("Pad", [h, b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))])
    h = b.avgpool(h, 3, 1)
    m = b.concat([g, h])
    m = b.node("Resize", [m, "", b.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    t = b.node("ConvTranspose", [m, b.const(he_normal(r, (20, 6, 2, 2)), "ct.weight"),
                                 b.const(r.standard_normal(6).astype(np.float32))],
               strides=[2, 2], name="ct")
    t = b.maxpool(b.relu(t), 4, 4)
    f = b.gemm(b.flatten(t), he_normal(r, (10, 6 * 8 * 8)), r.standard_normal(10), name="fc")
    b.output(f)
    return b.build()


@pytest.fixture(scope="module")
def sink() -> Model:
    return canonicalize(load_model(kitchen_sink())).model


def randomize(model: Model, seed: int = 0) -> Model:
    """Seeded random weights by role, so outputs depend on every channel (the light models
    ship constant weights, which would make the oracle vacuous)."""
    out, rng = model.copy(), np.random.default_rng(seed)
    for node in out.graph.nodes:
        for i, t in enumerate(node.inputs):
            v = getattr(t, "values", None)
            if v is None or v.dtype != np.float32 or v.size < 2:
                continue
            if i == 1 and node.op in ("Conv", "Gemm", "MatMul", "ConvTranspose"):
                fan = v.shape[1] if node.op == "Gemm" and node.attrs.get("transB") else (
                    v.shape[0] if node.op in ("MatMul", "Gemm") else int(np.prod(v.shape[1:])))
                new = rng.standard_normal(v.shape) * np.sqrt(2.0 / max(fan, 1))
            elif node.op == "Mul" or (node.op == "BatchNormalization" and i in (1, 4)):
                new = rng.uniform(0.5, 1.5, v.shape)
            else:
                new = rng.standard_normal(v.shape) * 0.1
            t.values = new.astype(np.float32)
    return out


def random_keep(analysis, ratio: float, rng: np.random.Generator) -> dict:
    keep = {}
    for g in analysis.groups:
        if g.prunable:
            n = max(1, int(round(g.channels * (1 - ratio))))
            keep[g.id] = np.sort(rng.permutation(g.channels)[:n])
    return keep


def check_oracle(model: Model, keep: dict, analysis, feeds=None, tol: float = 1e-4,
                 atol: float = 0.0) -> None:
    pruned = apply_keep(model, keep, analysis=analysis)
    onnx.checker.check_model(to_proto(pruned))
    oracle = zero_removed(model, keep, analysis=analysis)
    feeds = feeds or random_feeds(model, seed=1, batch=2)
    got, want = run(pruned, feeds), run(oracle, feeds)
    for name in want:
        assert got[name].shape == want[name].shape
        close = float(np.max(np.abs(want[name] - got[name]))) <= atol
        assert close or relative_error(want[name], got[name]) <= tol, name


def test_kitchen_sink_groups(sink):
    groups = analyze(sink).groups
    by_member = {m: g for g in groups for m in g.members}
    assert sum(g.prunable for g in groups) == 11
    # the residual stage ties both producers, the SE gate and constant, the depthwise conv;
    # the Split cuts it into two groups (channels 0-7 reach `pre`, 8-15 reach `side`)
    first, second = [g for g in groups if "proj.out" in g.members]
    assert "pre.in" in first.members and "side.in" in second.members
    assert first.kind == second.kind == "residual"
    assert (first.channels, second.channels) == (8, 8)
    for member in ("proj.out", "out.out", "se2.out", "se1.in", "mul_1.const", "dw.in"):
        assert member in first.members and member in second.members
    assert by_member["pre.out"].channels == 3 and by_member["pre.out"].kind == "grouped"
    assert by_member["grouped.out"].kind == "shuffle"
    assert by_member["branch.out"].kind == "concat"
    assert "side.in" in by_member["branch.out"].members
    assert "reshape.shape" in by_member["grouped.out"].members
    assert "pad.const" not in by_member["side.out"].members
    blocked = [g for g in groups if not g.prunable]
    assert {g.reason for g in blocked} == {"graph input 'x'", "graph output 'fc'"}
    # positions: the flattened ct output holds each channel at 8*8 consecutive positions
    fc_in = by_member["fc.in"].positions(next(n for n in sink.nodes if n.op == "Flatten")
                                         .outputs[0].name)
    assert fc_in.shape == (6, 64) and fc_in[1, 0] == 64


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5])
def test_kitchen_sink_oracle(sink, ratio):
    a = analyze(sink)
    check_oracle(sink, random_keep(a, ratio, np.random.default_rng(7)), a, tol=1e-5)


def test_kitchen_sink_pruned_really_changes(sink):
    a = analyze(sink)
    keep = random_keep(a, 0.5, np.random.default_rng(0))
    pruned = apply_keep(sink, keep, analysis=a)
    feeds = random_feeds(sink, seed=1, batch=2)
    assert relative_error(run(sink, feeds)["fc"], run(pruned, feeds)["fc"]) > 1e-2
    nodes = {n.name: n for n in pruned.nodes}
    assert nodes["grouped"].inputs[1].values.shape[:2] == (8, 2)  # 4 groups x 2 kept, 2 in
    assert nodes["grouped"].attrs["group"] == 4
    assert nodes["dw"].attrs["group"] == 8  # 16 residual channels -> 8, multiplier 2 kept
    assert nodes["dw"].inputs[1].values.shape[0] == 16


def test_permutation_preserves_outputs(sink):
    a = analyze(sink)
    rng = np.random.default_rng(3)
    perm = {g.id: rng.permutation(g.channels) for g in a.groups if g.prunable}
    pruned = apply_keep(sink, perm, analysis=a)
    feeds = random_feeds(sink, seed=2, batch=2)
    assert relative_error(run(sink, feeds)["fc"], run(pruned, feeds)["fc"]) <= 1e-5
    w0 = next(n for n in sink.nodes if n.name == "stem").inputs[1].values
    w1 = next(n for n in pruned.nodes if n.name == "stem").inputs[1].values
    stem = next(g for g in a.groups if "stem.out" in g.members)
    np.testing.assert_array_equal(w1, w0[perm[stem.id]])  # np.take order, not sorted


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**31 - 1))
def test_random_rate_maps(sink, seed):
    a = analyze(sink)
    rng = np.random.default_rng(seed)
    keep = {}
    for g in a.groups:
        if g.prunable and rng.random() < 0.7:
            n = int(rng.integers(1, g.channels + 1))
            keep[g.id] = rng.permutation(g.channels)[:n]  # unsorted: order must not matter
    check_oracle(sink, keep, a, tol=1e-5)


# Smaller images than the defaults keep the suite fast; the graphs are the same.
ZOO_SIZES = {"resnet50": 96, "mobilenetv2": 96, "vgg16": 64, "ssd_resnet50": 300}


def zoo_canonical(name: str) -> Model:
    from models.zoo import ARCHITECTURES

    proto, _ = ARCHITECTURES[name](image_size=ZOO_SIZES[name])
    return canonicalize(load_model(proto)).model


@pytest.fixture(scope="module", params=ZOO)
def zoo_model(request):
    return request.param, slim(zoo_canonical(request.param))


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5])
def test_zoo_oracle(zoo_model, ratio):
    _, model = zoo_model
    a = analyze(model)
    check_oracle(model, random_keep(a, ratio, np.random.default_rng(1)), a)


def slim(model: Model, widest: int = 1024, keep: int = 64) -> Model:
    """Narrow very wide fully-connected groups (VGG/AlexNet's 4096-wide FC layers) so each
    test moves megabytes, not half a gigabyte; the graph structure is unchanged."""
    a = analyze(model)
    nodes = {n.name: n for n in model.nodes}
    wide = {g.id: np.arange(keep) for g in a.groups if g.prunable and g.channels >= widest
            and all(nodes[p].op == "Gemm" for p in g.producers)}
    return apply_keep(model, wide, analysis=a) if wide else model


@pytest.fixture(scope="module", params=LIGHT_MODELS)
def light_model(request):
    model = slim(canonicalize(load_model(light_path(request.param))).model)
    return request.param, randomize(model)


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5])
def test_light_oracle(light_model, ratio):
    _, model = light_model
    a = analyze(model)
    check_oracle(model, random_keep(a, ratio, np.random.default_rng(2)), a)


@pytest.mark.slow
def test_light_permutation(light_model):
    name, model = light_model
    a = analyze(model)
    rng = np.random.default_rng(5)
    perm = {g.id: rng.permutation(g.channels) for g in a.groups if g.prunable}
    pruned = apply_keep(model, perm, analysis=a)
    feeds = random_feeds(model, seed=1)
    ref, out = run(model, feeds), run(pruned, feeds)
    assert max(relative_error(ref[k], out[k]) for k in ref) <= 1e-5, name


def test_ratio_zero_is_unchanged(sink):
    pruned, report = prune_model(sink, ratio=0.0, reconstruct=False, round_to=1)
    feeds = random_feeds(sink, seed=4, batch=2)
    np.testing.assert_array_equal(run(sink, feeds)["fc"], run(pruned, feeds)["fc"])
    assert all(r["after"] == r["before"] for r in report["groups"])
    assert report["macs"]["after"] == report["macs"]["before"]


def test_channel_prune_pass_in_manager(sink):
    from compiler.core.pass_manager import PassManager
    from passes.prune import ChannelPrune

    result = PassManager([ChannelPrune(ratio=0.5, round_to=2, reconstruct=False)],
                         verify_each=True)(sink)
    assert result.modified
    report = result.info["ChannelPrune"]
    assert report["macs"]["after"] < report["macs"]["before"]
    assert all(r["after"] % 2 == 0 or r["before"] < 2 for r in report["groups"] if r["prunable"])
