"""Per-layer quantization sensitivity (passes/quantize/sensitivity.py)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from compiler.core.errors import ConfigError
from compiler.core.io import load_model
from compiler.core.numerics import run, session
from passes.quantize.api import pristine_float, quantize_model
from passes.quantize.compare import Accumulator
from passes.quantize.patterns import partition
from passes.quantize.sensitivity import decoding_heads, quantize_sensitivity
from passes.quantize.switch import ENABLE, build_switch_model
from tests.exporter_graphs import c2f_detect, residual_classifier


def images(n: int, seed: int, hw: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 3, hw, hw)).astype(np.float32)


@pytest.fixture(scope="module")
def sweep():
    return quantize_sensitivity(residual_classifier(), images(24, 0), images(24, 1))


def test_every_weighted_layer_once_with_bounded_metrics_worst_first(sweep):
    names = [r.name for r in sweep.layers]
    assert len(names) == len(set(names))
    assert {"stem", "conv_a", "conv_b", "dw", "fc"} <= set(names)  # every Conv and the Gemm
    assert "add" in names and "gap" in names  # arithmetic units count too
    for r in sweep.layers:
        m = r.metrics
        assert -1.0 <= m.cosine <= 1.0 and 0.0 <= m.agreement <= 1.0
        assert m.flips == round((1 - m.agreement) * sweep.samples)
        assert m.accuracy is None
    cosines = [r.metrics.cosine for r in sweep.layers]
    assert cosines == sorted(cosines) and sweep.rank_by == "cosine"
    assert sweep.samples == 24
    stem = next(r for r in sweep.layers if r.name == "stem")
    assert stem.macs == 8 * 3 * 9 * 64 and stem.op == "Conv" and stem.kind == "conv"


def test_all_layers_int8_is_worse_than_the_best_single_layer(sweep):
    best = max(r.metrics.cosine for r in sweep.layers)
    assert sweep.baseline.cosine < best
    assert sweep.baseline.cosine > 0.9  # int8 still works on this net


def test_only_the_classifier_feeds_decoding_here(sweep):
    assert [r.name for r in sweep.layers if r.feeds_decoding] == ["fc"]


def inflated_table(tensor: str, factor: float = 1000.0):
    """The calibration table of `residual_classifier` with one threshold `factor` x too wide."""
    table = quantize_model(residual_classifier(), images(24, 0)).table
    table.thresholds[tensor] *= factor
    return table


def test_an_outlier_dominated_range_ranks_its_layers_first_and_flags_them():
    # conv_a's output threshold 1000x its data's range: conv_a writes it, conv_b reads it
    report = quantize_sensitivity(residual_classifier(), images(24, 0), images(24, 1),
                                  table=inflated_table("relu_6_out"))
    first, second = report.layers[:2]
    assert {first.name, second.name} == {"conv_a", "conv_b"}
    assert first.outlier_range and second.outlier_range
    assert first.outlier_tensor == second.outlier_tensor == "relu_6_out"
    assert first.outlier_ratio > 100
    assert max(r.metrics.cosine for r in report.layers[:2]) < 0.9
    assert min(r.metrics.cosine for r in report.layers[2:]) > 0.99
    assert [r.name for r in report.layers if r.outlier_range] == [first.name, second.name]
    assert all(r.outlier_ratio < 8 for r in report.layers[2:])


def test_leave_one_out_recovers_with_the_outlier_layer_kept_float():
    report = quantize_sensitivity(residual_classifier(), images(24, 0), images(24, 1),
                                  table=inflated_table("relu_6_out"), method="leave-one-out")
    assert report.method == "leave-one-out"
    assert report.layers[-1].name == "conv_a"  # owns the inflated output: the best model
    assert report.layers[-1].metrics.cosine > 0.99 > 0.9 > report.baseline.cosine
    assert all(r.metrics.cosine < 0.9 for r in report.layers[:-1])


def test_switch_model_matches_the_baked_models_and_the_float_model():
    res = quantize_model(residual_classifier(), images(16, 0))
    fm = res.float_model
    units = partition(fm.graph)
    switch, layers, count = build_switch_model(fm, res.qgraph, units)
    baked, _, same = build_switch_model(fm, res.qgraph, units, np.ones(count, np.bool_))
    assert same == count and ENABLE not in {t.name for t in baked.graph.inputs}
    x = {"x": images(1, 5)}
    off = run(switch, {**x, ENABLE: np.zeros(count, np.bool_)})["fc_out"]
    on = run(switch, {**x, ENABLE: np.ones(count, np.bool_)})["fc_out"]
    ref = run(fm, x)["fc_out"]
    # switches off: the float model (the Where-fed weights take other kernels: 1 ulp)
    np.testing.assert_allclose(off, ref, rtol=1e-5, atol=1e-6)
    nothing = build_switch_model(fm, res.qgraph, units, np.zeros(count, np.bool_))[0]
    np.testing.assert_array_equal(run(nothing, x)["fc_out"], ref)  # baked: exactly float
    # baked, in a session without onnxruntime's QDQ fusions (its QLinear kernels round
    # their own way): the switch model's all-on output
    np.testing.assert_allclose(on, run(session(baked, fuse_qdq=False), x)["fc_out"],
                               rtol=1e-5, atol=1e-6)
    acc = Accumulator()  # all on: the QDQ model's grid (up to int32 bias rounding), run as
    # written (onnxruntime's fused u8 kernels saturate on x86 without VNNI)
    acc.update(run(session(res.qdq_model, fuse_qdq=False), x)["fc_out"], on)
    assert acc.row("y", "output").cosine > 0.9999
    assert not np.array_equal(on, off)


def test_switch_model_adds_the_integer_layers_biases():
    """All on, the switch model built on the float model *as given* is the integer model:
    each int8 layer's bias (bias correction and int32 rounding included) switches with its
    weights. Without that, the budget loop scored int16 stand-ins without the correction."""
    model = residual_classifier()
    res = quantize_model(model, images(16, 0))
    assert res.table.bias_shifts  # bias correction moved the biases (on by default)
    fm = pristine_float(model, res)
    units = partition(fm.graph)
    count = build_switch_model(fm, res.qgraph, units)[2]
    x = {"x": images(1, 5)}
    on = build_switch_model(fm, res.qgraph, units, np.ones(count, np.bool_))[0]
    step = res.qgraph.tensor("fc_out__q").scale
    diff = np.abs(run(session(on, fuse_qdq=False), x)["fc_out"] -
                  run(res.quant_model, x)["fc_out"]).max()
    assert diff <= step / 2  # with the float biases: one output step off (0.0082)
    off = build_switch_model(fm, res.qgraph, units, np.zeros(count, np.bool_))[0]
    np.testing.assert_array_equal(run(off, x)["fc_out"], run(fm, x)["fc_out"])


def test_heads_of_a_detector_include_box_regression_and_dfl():
    fm = quantize_model(c2f_detect(), np.random.default_rng(0).uniform(
        0, 1, (4, 3, 16, 16)).astype(np.float32))
    units = partition(fm.float_model.graph)
    _, layers, _ = build_switch_model(fm.float_model, fm.qgraph, units)
    heads = decoding_heads(fm.float_model, layers)
    assert {"box1", "cls1", "dfl"} <= heads
    assert not heads & {"stem", "cv1", "cv2", "box0", "cls0", "m0_cv1"}


def test_labels_rank_by_accuracy():
    x = images(24, 1)
    from compiler.core.feeds import Feeds

    labels = np.arange(24) % 10
    report = quantize_sensitivity(residual_classifier(), images(16, 0),
                                  Feeds({"x": x}, "eval", labels))
    assert report.rank_by == "accuracy" and report.float_accuracy is not None
    acc = [r.metrics.accuracy for r in report.layers]
    assert acc == sorted(acc) and all(0.0 <= a <= 1.0 for a in acc)


def test_model_without_int8_layer_is_a_clear_error():
    node = helper.make_node("Transpose", ["x"], ["y"], perm=[0, 1, 3, 2])
    graph = helper.make_graph([node], "t", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 4, 4])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 3, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ConfigError, match="no quantizable layer"):
        quantize_sensitivity(model, np.zeros((2, 3, 4, 4), np.float32))


def test_unknown_method_and_ranking_are_errors():
    with pytest.raises(ConfigError, match="unknown sensitivity method"):
        quantize_sensitivity(residual_classifier(), images(2, 0), method="bisect")
    with pytest.raises(ConfigError, match="accuracy needs"):
        quantize_sensitivity(residual_classifier(), images(2, 0), rank_by="accuracy")


def test_the_model_is_not_modified():
    proto = residual_classifier()
    before = proto.SerializeToString()
    m = load_model(proto)
    quantize_sensitivity(m, images(4, 0))
    quantize_sensitivity(proto, images(4, 0))
    assert [n.op for n in m.graph.nodes][:3] == ["Conv", "Relu", "Conv"]  # BN/Relu not fused
    assert proto.SerializeToString() == before


@pytest.mark.slow
def test_trained_resnet_every_conv_and_gemm_once():
    from compiler.core.feeds import Feeds
    from models.datasets import load_dataset
    from models.registry import get_model

    proto, _ = get_model("fmnist_resnet")
    name = proto.graph.input[0].name
    calib = load_dataset("fmnist-calib", limit=32).inputs
    ds = load_dataset("fmnist-eval", limit=64)
    report = quantize_sensitivity(proto, {name: calib}, Feeds({name: ds.inputs}, "eval",
                                                             ds.labels))
    weighted = [n.name for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    rows = [r.name for r in report.layers if r.op in ("Conv", "Gemm")]
    assert sorted(rows) == sorted(weighted)
    assert report.rank_by == "accuracy" and report.float_accuracy > 0.8
    best = max(r.metrics.cosine for r in report.layers)
    assert report.baseline.cosine < best <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "ray"])
def test_sweep_on_workers_is_identical(sweep, kind, request):
    """The same ranking and the same metrics, bit for bit, on 2 workers (issue #21)."""
    from compiler.core.executor import ExecutorOptions

    if kind == "ray":
        request.getfixturevalue("ray_cluster")
    there = quantize_sensitivity(residual_classifier(), images(24, 0), images(24, 1),
                                 executor=ExecutorOptions(kind=kind, workers=2))
    assert [r.name for r in there.layers] == [r.name for r in sweep.layers]
    assert [r.metrics for r in there.layers] == [r.metrics for r in sweep.layers]
