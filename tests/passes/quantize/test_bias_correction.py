"""Empirical bias correction: the mean output shift of weight quantization is removed."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.core.builder import GraphBuilder, he_normal
from compiler.core.errors import GraphError
from compiler.core.io import load_model, to_proto
from compiler.core.numerics import run
from passes.quantize.bias_correction import (
    correct_bias,
    correct_bias_with_report,
    fake_quant_weight,
)


def net(seed: int = 0):
    """conv(bias)→relu→depthwise(no bias)→relu→conv→relu→GAP→flatten→gemm(transB=0)."""
    b = GraphBuilder("bc", seed)
    rng = b.rng
    x = b.input("x", ["N", 3, 12, 12])
    h = b.relu(b.conv(x, he_normal(rng, (16, 3, 3, 3)), rng.standard_normal(16) * 0.1,
                      name="c1"))
    h = b.relu(b.conv(h, he_normal(rng, (16, 1, 3, 3)), None, group=16, name="dw"))
    h = b.relu(b.conv(h, he_normal(rng, (24, 16, 1, 1)), rng.standard_normal(24) * 0.1,
                      name="c2"))
    h = b.flatten(b.global_avgpool(h))
    w = b.const(he_normal(rng, (10, 24)).T.copy(), "fc.weight")
    y = b.node("Gemm", [h, w, b.const(np.zeros(10, np.float32), "fc.bias")], name="fc",
               beta=0.5)
    b.output(y)
    return load_model(b.build())


def fake_quant4(w: np.ndarray) -> np.ndarray:
    """4-bit per-channel symmetric: a coarse quantizer makes the bias shift obvious."""
    peak = np.abs(w.reshape(len(w), -1)).max(axis=1).reshape((-1,) + (1,) * (w.ndim - 1)) / 7
    return (np.clip(np.round(w / peak), -7, 7) * peak).astype(w.dtype)


def with_quantized_weights(model, quantize):
    q = model.copy()
    for node in q.nodes:
        if node.op in ("Conv", "Gemm"):
            w = np.asarray(node.inputs[1].values)
            t = node.op == "Gemm" and not node.attrs.get("transB", 0)
            node.inputs[1].values = quantize(w.T.copy()).T.copy() if t else quantize(w)
    return q


def data(seed: int, n: int = 48) -> np.ndarray:
    # Positive-mean inputs: E[x] != 0 is what makes the quantization error biased.
    return (np.random.default_rng(seed).uniform(0, 1, (n, 3, 12, 12)) + 0.5).astype(np.float32)


def output_mse(model, reference, x) -> float:
    return float(np.mean((run(model, {"x": x})["fc"] - run(reference, {"x": x})["fc"]) ** 2))


@pytest.mark.parametrize("quantize, gain", [(fake_quant_weight, 5.0), (fake_quant4, 5.0)])
def test_correction_reduces_output_error_on_held_out_data(quantize, gain):
    m = net()
    corrected = correct_bias(m, quantize, data(1))
    held_out = data(2)
    plain = output_mse(with_quantized_weights(m, quantize), m, held_out)
    fixed = output_mse(with_quantized_weights(corrected, quantize), m, held_out)
    assert fixed * gain < plain


def test_shift_equals_mean_error_and_weights_unchanged():
    m = net()
    calib = data(3, 16)
    corrected, report = correct_bias_with_report(m, fake_quant4, calib)
    assert sorted(report["corrected"]) == ["c1", "c2", "dw", "fc"]
    # The float model's output on the calibration data minus the last layer's own weight
    # error: after correction the mean error of fc alone (float inputs) is zero.
    only_fc = m.copy()
    fc = next(n for n in only_fc.nodes if n.name == "fc")
    fc.inputs[1].values = fake_quant4(np.asarray(fc.inputs[1].values).T.copy()).T.copy()
    fc_c = next(n for n in corrected.nodes if n.name == "fc")
    fc.inputs[2].values, fc.attrs["beta"] = fc_c.inputs[2].values, fc_c.attrs["beta"]
    err = run(only_fc, {"x": calib})["fc"] - run(m, {"x": calib})["fc"]
    assert np.abs(err.mean(axis=0)).max() < 1e-5
    assert np.abs(err).max() > 1e-3  # the weights really are quantized
    for a, b in zip(m.nodes, corrected.nodes, strict=True):
        if a.op in ("Conv", "Gemm"):
            assert np.array_equal(a.inputs[1].values, b.inputs[1].values)


def test_bias_created_when_absent_and_model_valid():
    m = net()
    corrected = correct_bias(m, fake_quant4, data(4, 8))
    dw = next(n for n in corrected.nodes if n.name == "dw")
    assert len(dw.inputs) == 3 and dw.inputs[2].values.shape == (16,)
    assert np.abs(dw.inputs[2].values).max() > 0
    assert not any("__bias_error" in t for t in corrected.graph.tensors())
    load_model(to_proto(corrected))  # passes the ONNX checker
    assert len(next(n for n in m.nodes if n.name == "dw").inputs) == 2  # input untouched


def test_fake_quant_weight_follows_the_spec():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w[2] = 0.0
    w[1, 0, 0, 0] = 2.5 * (np.abs(w[1]).max() / 127)  # exactly halfway: rounds up
    q = fake_quant_weight(w)
    scale = (np.abs(w.reshape(4, -1)).max(axis=1) / 127).astype(np.float32)
    assert np.all(q[2] == 0)
    for c in (0, 1, 3):
        levels = q[c].astype(np.float64) / scale[c]
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
        assert np.abs(levels).max() == pytest.approx(127, abs=1e-3)
    assert q[1, 0, 0, 0] / scale[1] == pytest.approx(3.0, abs=1e-4)
    with pytest.raises(GraphError, match="NaN"):
        fake_quant_weight(np.array([[np.nan]], np.float32))


def test_fake_quant_matches_fixedpoint_module_when_present():
    fixedpoint = pytest.importorskip("compiler.core.fixedpoint")
    w = np.random.default_rng(6).standard_normal((8, 4, 3, 3)).astype(np.float32)
    q, s = fixedpoint.quantize_weights(w)
    want = (q.astype(np.float64) * s.astype(np.float64).reshape(-1, 1, 1, 1)).astype(np.float32)
    np.testing.assert_array_equal(fake_quant_weight(w), want)


def test_requires_data_and_rejects_bad_quantizer():
    m = net()
    with pytest.raises(GraphError, match="calibration data"):
        correct_bias(m, fake_quant_weight)
    with pytest.raises(GraphError, match="returned shape"):
        correct_bias(m, lambda w: w.ravel(), data(7, 4))


def geometry_net():
    """Convs of every geometry the tap means must follow, and both Gemm layouts."""
    b = GraphBuilder("bc_geometry", 9)
    rng = b.rng
    x = b.input("x", ["N", 4, 13, 11])
    h = b.relu(b.node("Conv", [x, b.const(he_normal(rng, (8, 4, 3, 3)), "s2.w")], name="s2",
                      strides=[2, 1], pads=[0, 1, 2, 2]))
    h = b.relu(b.node("Conv", [h, b.const(he_normal(rng, (8, 2, 3, 3)), "g4.w")], name="g4",
                      group=4, dilations=[2, 2], pads=[2, 2, 2, 2]))
    h = b.relu(b.node("Conv", [h, b.const(he_normal(rng, (6, 8, 4, 2)), "same.w")],
                      name="same", auto_pad="SAME_UPPER", strides=[2, 2]))
    h = b.relu(b.node("Conv", [h, b.const(he_normal(rng, (6, 6, 2, 2)), "lower.w")],
                      name="lower", auto_pad="SAME_LOWER", strides=[3, 1]))
    flat = b.flatten(b.global_avgpool(h))
    g1 = b.node("Gemm", [flat, b.const(he_normal(rng, (5, 6)), "t.w")], name="t", transB=1,
                alpha=0.5)
    b.output(b.node("Gemm", [g1, b.const(he_normal(rng, (5, 3)), "n.w"),
                             b.const(np.ones(3, np.float32), "n.b")], name="n"))
    return load_model(b.build())


def conv1d_net():
    """A 1-D conv (stride 2, asymmetric pads) then a dilated one: the first axis alone."""
    b = GraphBuilder("bc_conv1d", 4)
    rng = b.rng
    x = b.input("x", ["N", 4, 13, 11])
    seq = b.reshape(x, [-1, 4, 143])
    h = b.relu(b.node("Conv", [seq, b.const(he_normal(rng, (6, 4, 5)), "a.w")], name="a",
                      strides=[2], pads=[1, 3]))
    b.output(b.node("Conv", [h, b.const(he_normal(rng, (5, 6, 3)), "b.w")], name="b",
                    dilations=[3], pads=[2, 2]))
    return load_model(b.build())


@pytest.mark.parametrize("make", [geometry_net, conv1d_net])
def test_tap_means_equal_the_error_branch_in_onnxruntime(make):
    """The shift equals onnxruntime running each layer on its float input with W_q - W."""
    from onnx import helper

    from passes.quantize.calibrate import tap_outputs

    m = make()
    x = (np.random.default_rng(3).uniform(0, 1, (6, 4, 13, 11)) + 0.3).astype(np.float32)
    _, report = correct_bias_with_report(m, fake_quant4, x)
    layers = {n.name: n for n in m.nodes if n.op in ("Conv", "Gemm")}
    assert sorted(report["corrected"]) == sorted(layers)
    inputs = run(tap_outputs(m, [n.inputs[0].name for n in layers.values()]), {"x": x})
    for name, node in layers.items():
        w = np.asarray(node.inputs[1].values)
        t = node.op == "Gemm" and not node.attrs.get("transB", 0)
        delta = (fake_quant4(w.T.copy()).T if t else fake_quant4(w)) - w
        attrs = {k: v for k, v in node.attrs.items() if k != "beta"}
        one = helper.make_model(helper.make_graph(
            [helper.make_node(node.op, ["a", "d"], ["y"], **attrs)], "one",
            [helper.make_tensor_value_info("a", 1, None)],
            [helper.make_tensor_value_info("y", 1, None)],
            [helper.make_tensor("d", 1, delta.shape, delta.astype(np.float32).ravel())]),
            opset_imports=[helper.make_opsetid("", 13)])
        y = run(one, {"a": inputs[node.inputs[0].name]})["y"].astype(np.float64)
        want = y.mean(axis=tuple(a for a in range(y.ndim) if a != 1))  # all but channels
        np.testing.assert_allclose(report["shifts"][name], want, rtol=1e-5, atol=1e-6)
        assert np.abs(want).max() > 1e-4
