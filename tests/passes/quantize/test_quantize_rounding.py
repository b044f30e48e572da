"""GPTQ weight rounding: on the int8 grid of round-to-nearest, lower layer output error."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.core.errors import ConfigError
from compiler.core.fixedpoint import fake_quant_weights, quantize_weights
from compiler.core.io import load_model
from compiler.core.numerics import cosine, run
from passes.quantize.api import quantize_model
from passes.quantize.bias_correction import correct_bias
from passes.quantize.rounding import (
    apply_weights,
    gptq_round,
    nearest_round,
    output_error,
    round_weights,
    rounding_reason,
)
from tests.passes.quantize.test_bias_correction import data, net
from tests.quant_helpers import mismatches


def correlated_rows(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Inputs sharing a strong common (DC) component, like patches of a smooth image."""
    base = rng.uniform(0, 6, (n, 1))
    return (base + 0.3 * rng.standard_normal((n, k))).astype(np.float32)


def edge_filters(rng: np.random.Generator, g: int, k: int, m: int) -> np.ndarray:
    """Large taps summing to ~0: the case where per-weight rounding errors add up."""
    w = rng.standard_normal((g, k, m)) * 10
    return (w - w.mean(axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("shape", [(8, 9, 1), (1, 48, 16)])
def test_gptq_lowers_output_error_and_stays_on_the_grid(shape):
    rng = np.random.default_rng(0)
    g, k, m = shape
    w = edge_filters(rng, g, k, m)
    x = np.stack([correlated_rows(rng, 512, k) for _ in range(g)])
    wq = gptq_round(w, x)
    held_out = np.stack([correlated_rows(rng, 512, k) for _ in range(g)])
    nearest = output_error(held_out, w, nearest_round(w))
    assert output_error(held_out, w, wq) < 0.3 * nearest
    for grp in range(g):  # every channel: same scale as nearest, exact int8 levels
        major = np.ascontiguousarray(wq[grp].T)
        q, scale = quantize_weights(major)
        _, scale_nearest = quantize_weights(np.ascontiguousarray(w[grp].T))
        np.testing.assert_array_equal(scale, scale_nearest)
        np.testing.assert_array_equal(fake_quant_weights(major), major)
        peak = np.abs(w[grp]).argmax(axis=0)
        np.testing.assert_array_equal(wq[grp][peak, np.arange(m)], w[grp][peak, np.arange(m)])
        assert np.abs(q).max() == 127


def test_gptq_equals_nearest_for_uncorrelated_unit_inputs():
    # With H = I (no damping effect on the order) error feedback has nothing to exploit
    # beyond each weight itself, so the result is round-to-nearest.
    rng = np.random.default_rng(1)
    w = rng.standard_normal((1, 6, 4)).astype(np.float32)
    x = np.eye(6, dtype=np.float32)[None].repeat(50, axis=1)
    np.testing.assert_array_equal(gptq_round(w, x), nearest_round(w))


def test_zero_channels_and_dead_inputs_are_kept_exact():
    rng = np.random.default_rng(2)
    w = edge_filters(rng, 1, 12, 3)
    w[0, :, 1] = 0.0
    x = correlated_rows(rng, 256, 12)[None]
    x[0, :, 5] = 0.0  # an input that never fires
    wq = gptq_round(w, x)
    np.testing.assert_array_equal(wq[0, :, 1], 0.0)
    assert np.all(np.isfinite(wq))


def test_round_weights_on_a_model_reports_lower_errors_per_layer():
    model = net(0)
    result = round_weights(model, {"x": data(0)}, rows=512)
    assert sorted(result.weights) == ["c1", "c2", "dw", "fc"]
    assert sum(result.error_rounded.values()) < 0.8 * sum(result.error_nearest.values())
    assert model.graph.nodes[0].inputs[1].name != "c1.weight_rounded"  # input untouched
    rounded = model.copy()
    apply_weights(rounded, result.weights)
    for node in rounded.graph.nodes:
        if node.name in result.weights:
            w = np.asarray(node.inputs[1].values)
            major = w.T.copy() if node.op == "Gemm" and not node.attrs.get("transB", 0) else w
            np.testing.assert_array_equal(fake_quant_weights(major), major)


def test_quantize_model_with_gptq_is_bit_exact_and_uses_the_rounded_levels():
    model = net(0)
    result = quantize_model(model, {"x": data(0)}, "max", rounding="gptq")
    assert mismatches(result.qgraph, {"x": data(3, 4)}) == {}
    assert result.qgraph.info["rounding"] == "gptq"
    assert set(result.report["weight_rounding"]) == {"c1", "c2", "dw", "fc"}
    conv = next(op for op in result.qgraph.ops if op.kind == "QConv" and op.group == 16)
    dw = next(n for n in result.float_model.graph.nodes if n.name == "dw")
    expected, _ = quantize_weights(np.asarray(dw.inputs[1].values))
    np.testing.assert_array_equal(conv.weight, expected)
    nearest, _ = quantize_weights(np.asarray(next(
        n for n in model.graph.nodes if n.name == "dw").inputs[1].values))
    assert not np.array_equal(conv.weight, nearest)  # the rounding really changed levels


def test_gptq_plus_bias_correction_removes_the_mean_shift_of_the_rounded_weights():
    model, x = net(0), data(0)
    rounded = round_weights(model, {"x": x}, rows=512)
    corrected = correct_bias(model, feeds={"x": x}, quantized=rounded.weights)
    apply_weights(corrected, rounded.weights)
    # Only the first layer sees float inputs in both models, so check it exactly.
    shift = run(_tap(corrected, "c1"), {"x": x})["c1_out"] - run(_tap(model, "c1"), {"x": x})[
        "c1_out"]
    assert np.max(np.abs(shift.mean(axis=(0, 2, 3)))) < 1e-4
    assert cosine(run(corrected, {"x": data(5)})["fc"], run(model, {"x": data(5)})["fc"]) > 0.999


def _tap(model, layer):
    tapped = model.copy()
    node = next(n for n in tapped.graph.nodes if n.name == layer)
    node.outputs[0].name = f"{layer}_out"
    node.outputs[0].dtype = np.float32
    tapped.graph.outputs = [node.outputs[0]]
    tapped.graph.cleanup()
    return tapped


def test_gptq_improves_held_out_cosine_of_the_int8_model():
    model = net(1)
    calib, test = {"x": data(0, 64)}, {"x": data(9, 32)}
    ref = run(model, test)["fc"]
    scores = {}
    for rounding in ("nearest", "gptq"):
        result = quantize_model(model, calib, "max", rounding=rounding)
        out = run(result.quant_model, test)
        scores[rounding] = float(np.mean((next(iter(out.values())) - ref) ** 2))
    assert scores["gptq"] < scores["nearest"]


def test_bad_options_and_ineligible_layers_have_reasons():
    model = net(0)
    with pytest.raises(ConfigError, match="unknown rounding 'adaround'"):
        quantize_model(model, {"x": data(0)}, rounding="adaround")
    with pytest.raises(ConfigError, match="--rounding gptq needs calibration data"):
        quantize_model(model, None, rounding="gptq", table=None)
    fc = next(n for n in load_model(model).graph.nodes if n.name == "fc")
    assert rounding_reason(fc) is None
    fc.attrs["alpha"] = 0.5
    assert rounding_reason(fc) == "Gemm with transA or alpha != 1"


def test_cli_rounding_flag_writes_outputs_and_reports_the_error_ratio(tmp_path, capsys):
    from compiler.cli import main
    from compiler.core.io import save_model

    model_path, calib = tmp_path / "net.onnx", tmp_path / "calib.npy"
    save_model(net(0), model_path)
    np.save(calib, data(0))
    assert main(["quantize", str(model_path), "-o", str(tmp_path / "out"), "--calib",
                 str(calib), "--rounding", "gptq"]) == 0
    out = capsys.readouterr().out
    assert "gptq rounding: 4 layers; layer output error vs round-to-nearest: median x0." in out
    assert (tmp_path / "out" / "model.quant.onnx").exists()
    # choices are checked against the declaration: one line naming the flag, exit 2
    assert main(["quantize", str(model_path), "-o", str(tmp_path / "o2"), "--calib", str(calib),
                 "--rounding", "up"]) == 2
    assert "--rounding 'up': unknown rounding (choose from nearest, gptq)" in \
        capsys.readouterr().err


def test_a_weight_shared_by_two_layers_gets_one_rounded_copy_per_layer():
    from compiler.core.builder import GraphBuilder

    gb = GraphBuilder("shared", 0)
    x = gb.input("x", ["N", 4, 6, 6])
    w = edge_filters(gb.rng, 1, 36, 4)[0].T.reshape(4, 4, 3, 3).copy()
    a = gb.relu(gb.conv(x, w, None, name="a"))
    b = gb.conv(a, w, None, name="b")
    gb.output(b)
    model = load_model(gb.build())
    conv_a, conv_b = (n for n in model.graph.nodes if n.op == "Conv")
    conv_b.inputs[1] = conv_a.inputs[1]  # tie the weights
    shared = {conv_a.inputs[1].name}
    feeds = {"x": np.random.default_rng(3).uniform(0, 2, (16, 4, 6, 6)).astype(np.float32)}
    result = round_weights(model, feeds, rows=256)
    assert not np.array_equal(result.weights["a"], result.weights["b"])  # own inputs, own rounding
    rounded = model.copy()
    apply_weights(rounded, result.weights)
    names = [n.inputs[1].name for n in rounded.graph.nodes if n.op == "Conv"]
    assert len(set(names)) == 2 and set(names).isdisjoint(shared)
    out = run(rounded, {"x": np.ones((1, 4, 6, 6), np.float32)})
    assert np.all(np.isfinite(next(iter(out.values()))))


def test_quadratic_error_from_the_hessian_equals_the_error_on_the_rows():
    from passes.quantize.rounding import hessians, quadratic_error

    rng = np.random.default_rng(4)
    w = edge_filters(rng, 3, 9, 2)
    x = np.stack([correlated_rows(rng, 200, 9) for _ in range(3)])
    wq = nearest_round(w)
    assert quadratic_error(hessians(x), w, wq) == pytest.approx(output_error(x, w, wq), rel=1e-9)
