"""Per-group pruning sensitivity (passes/prune/sensitivity.py)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.core.errors import ConfigError
from compiler.core.io import load_model
from passes.canonicalize import canonicalize
from passes.prune.groups import analyze
from passes.prune.sensitivity import prune_sensitivity
from tests.exporter_graphs import residual_classifier


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 3, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    return load_model(residual_classifier())


def prunable_ids(model) -> list[int]:
    return [g.id for g in analyze(canonicalize(model).model).groups if g.prunable]


def test_every_prunable_group_once_worst_first(model):
    report = prune_sensitivity(model, images(16, 0), ratio=0.5)
    ids = [r.id for r in report.layers]
    assert sorted(ids) == prunable_ids(model) == [1, 2]
    cosines = [r.metrics.cosine for r in report.layers]
    assert cosines == sorted(cosines) and all(-1 <= c < 1 for c in cosines)
    for r in report.layers:
        assert r.kept == r.channels // 2 and r.macs_removed > 0 and r.members
    residual = next(r for r in report.layers if r.kind == "residual")
    assert {"stem.out", "conv_b.out", "dw.out"} <= set(residual.members)  # Add, depthwise
    assert report.method == "prune" and report.info["ratio"] == 0.5
    assert report.baseline.cosine < max(cosines)  # every group at once: worse than one


def test_ratio_zero_keeps_the_float_function_exactly(model):
    report = prune_sensitivity(model, images(8, 0), ratio=0.0)
    assert report.layers and all(r.metrics.cosine == 1.0 and r.metrics.flips == 0
                                 for r in report.layers)
    assert all(r.kept == r.channels and r.macs_removed == 0 for r in report.layers)
    assert report.baseline.cosine == 1.0


def test_bad_ratio_and_unprunable_model_are_errors(model):
    with pytest.raises(ConfigError, match="outside"):
        prune_sensitivity(model, images(2, 0), ratio=1.0)
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(  # the only group ends at the graph output: nothing prunable
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ConfigError, match="no prunable channel group"):
        prune_sensitivity(load_model(proto), images(2, 0))


@pytest.mark.slow
def test_trained_resnet_groups_with_labelled_accuracy():
    from compiler.core.feeds import Feeds
    from models.datasets import load_dataset
    from models.registry import get_model

    proto, _ = get_model("fmnist_resnet")
    m = load_model(proto)
    ds = load_dataset("fmnist-eval", limit=64)
    feeds = Feeds({m.graph.inputs[0].name: ds.inputs}, "fmnist-eval", ds.labels)
    report = prune_sensitivity(m, feeds, ratio=0.5)
    assert report.rank_by == "accuracy" and report.float_accuracy > 0.8
    acc = [r.metrics.accuracy for r in report.layers]
    assert acc == sorted(acc) and report.baseline.accuracy < max(acc)
    assert sorted(r.id for r in report.layers) == prunable_ids(m)
    assert any(r.kind == "residual" for r in report.layers)
