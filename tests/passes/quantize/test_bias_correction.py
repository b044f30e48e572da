"""Empirical bias correction: the mean output shift of weight quantization is removed."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.core.builder import GraphBuilder, he_normal
from compiler.core.errors import ConfigError, GraphError
from compiler.core.io import load_model, to_proto
from compiler.core.numerics import run
from passes.quantize.api import quantize_model
from passes.quantize.bias_correction import (
    ChannelMoments,
    FloatLayer,
    correct_bias,
    measure_shifts,
)
from passes.quantize.calibrate import CalibrationTable
from passes.recon import NOT_INT8


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


def data(seed: int, n: int = 48) -> np.ndarray:
    # Positive-mean inputs: E[x] != 0 is what makes the quantization error biased.
    return (np.random.default_rng(seed).uniform(0, 1, (n, 3, 12, 12)) + 0.5).astype(np.float32)


def output_mse(model, reference, x) -> float:
    return float(np.mean((run(model, {"x": x})["fc"] - run(reference, {"x": x})["fc"]) ** 2))


LAYERS = ["c1", "c2", "dw", "fc"]  # sorted


def own_shifts(result, pristine, calib):
    """Each int8 layer's own mean error in `result`'s QDQ model, against `pristine`."""
    ref = {n.name: FloatLayer.of(n) for n in pristine.graph.nodes if n.name in LAYERS}
    return measure_shifts(result.qdq_model, ref, {"x": calib}, pristine)


@pytest.fixture(scope="module")
def results():
    m = net()
    calib = data(1)
    return m, calib, {bc: quantize_model(m, {"x": calib}, "max", bias_correction=bc)
                      for bc in (False, True)}


def test_each_layer_own_mean_error_is_removed(results):
    m, calib, r = results
    pristine = r[False].float_model
    before, after = own_shifts(r[False], pristine, calib), own_shifts(r[True], pristine, calib)
    assert sorted(before) == LAYERS
    for layer in LAYERS:
        # after: what is left is shrinkage of noisy channels, int32 rounding of the bias
        # and the small change of the layer's input once the layers above are corrected
        assert np.abs(before[layer]).max() > 0, layer
        assert np.linalg.norm(after[layer]) < 0.1 * np.linalg.norm(before[layer]), layer
    assert r[True].report["bias_correction"] == {"corrected": 4, "skipped": 0}
    assert r[True].qgraph.info["bias_correction"] is True


def test_correction_lowers_the_int8_output_error_on_held_out_data(results):
    m, _, r = results
    held_out = {"x": data(2)}
    ref = run(m, held_out)["fc"]
    mse = {bc: float(np.mean((run(res.quant_model, held_out)["fc"] - ref) ** 2))
           for bc, res in r.items()}
    assert mse[True] < 0.3 * mse[False]  # measured 0.21


def test_weights_and_scales_unchanged_only_biases_move(results):
    _, _, r = results
    plain, fixed = r[False], r[True]
    for a, b in zip(plain.qgraph.ops, fixed.qgraph.ops, strict=True):
        assert a.kind == b.kind and a.name == b.name
        if a.kind in ("QConv", "QGemm"):
            np.testing.assert_array_equal(a.weight, b.weight)
            assert not np.array_equal(a.bias, b.bias)
    for name, t in plain.qgraph.tensors.items():
        assert fixed.qgraph.tensors[name].scale == t.scale, name


def test_shrinking_leaves_noise_out_and_keeps_a_clear_shift():
    rng = np.random.default_rng(0)
    noise = ChannelMoments()
    noise.add(rng.standard_normal((16, 1000)))
    plain = noise.total / noise.count
    # positive-part plug-in: about a third of the squared error of the plain mean is left
    assert np.sum(noise.shrunk_mean() ** 2) < 0.45 * np.sum(plain ** 2)
    clear = ChannelMoments()
    for part in np.split(5 + 0.1 * rng.standard_normal((16, 8)), 4):  # streamed in 4 batches
        clear.add(part)
    np.testing.assert_allclose(clear.shrunk_mean(), clear.total / 16, rtol=1e-3)
    one = ChannelMoments()
    one.add(np.array([[0.5, -2.0]]))
    np.testing.assert_array_equal(one.shrunk_mean(), [0.5, -2.0])


def test_bias_created_when_absent_and_model_valid(results):
    m, calib, r = results
    qdq = r[False].qdq_model
    fm = r[False].float_model
    corrected, report = correct_bias(fm, qdq, {"x": calib})
    dw = next(n for n in corrected.nodes if n.name == "dw")
    assert len(dw.inputs) == 3 and dw.inputs[2].values.shape == (16,)
    assert np.abs(dw.inputs[2].values).max() > 0
    assert not any("__bias_shift" in t for t in corrected.graph.tensors())
    load_model(to_proto(corrected))  # passes the ONNX checker
    assert len(next(n for n in fm.nodes if n.name == "dw").inputs) == 2  # input untouched
    assert sorted(report["corrected"]) == LAYERS


def test_only_the_int8_layers_are_corrected(results):
    m, calib, r = results
    _, report = correct_bias(r[False].float_model, r[False].qdq_model, {"x": calib},
                             only={"c1", "c2"})
    assert sorted(report["corrected"]) == ["c1", "c2"]
    assert report["skipped"] == {"dw": NOT_INT8, "fc": NOT_INT8}


def test_requires_data_or_a_table_saved_with_the_shifts(results, tmp_path, caplog):
    m, calib, r = results
    with pytest.raises(GraphError, match="calibration data"):
        correct_bias(r[False].float_model, r[False].qdq_model, None)
    # a saved table carries the shifts: no data needed to reproduce the corrected build
    path = r[True].table.save(tmp_path / "calibration.json")
    assert sorted(CalibrationTable.load(path).bias_shifts) == LAYERS
    again = quantize_model(m, None, table=path)
    assert again.qgraph == r[True].qgraph
    # other data with that table: the table's shifts, as for its thresholds
    assert quantize_model(m, {"x": data(7)}, table=path).qgraph == r[True].qgraph
    # a table saved without bias correction and no data: skipped, with a warning
    plain = quantize_model(m, None, table=r[False].table.save(tmp_path / "plain.json"))
    assert plain.qgraph.info["bias_correction"] is False
    assert plain.qgraph == quantize_model(m, {"x": calib}, "max", bias_correction=False).qgraph
    assert "bias correction skipped" in caplog.text


@pytest.mark.parametrize("shifts, match", [
    ([], "non-empty list"), ("x", "non-empty list"), ([1.0, float("nan")], "finite"),
    ([True], "finite"),
])
def test_a_bad_saved_shift_is_a_config_error(results, tmp_path, shifts, match):
    import json

    doc = results[2][True].table.to_dict()
    doc["bias_shifts"]["c1"] = shifts
    (tmp_path / "t.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=rf"bias_shifts 'c1' must .*{match}"):
        CalibrationTable.load(tmp_path / "t.json")


def test_a_saved_shift_of_the_wrong_length_is_a_config_error(results, tmp_path):
    m, _, r = results
    table = r[True].table.to_dict()
    table["bias_shifts"]["c2"] = [0.0, 1.0]
    with pytest.raises(ConfigError, match="layer 'c2' has 2 values, the layer 24"):
        quantize_model(m, None, table=CalibrationTable.from_dict(table))
