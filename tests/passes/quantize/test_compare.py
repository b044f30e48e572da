"""`npuc compare`: metrics, streaming, tensor pairing (same names, QDQ, npuc QGraph), CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest

from compiler.cli import main
from compiler.core.builder import GraphBuilder, he_normal
from compiler.core.errors import DataError
from compiler.core.io import load_model, save_model
from passes.quantize.compare import (
    Accumulator,
    compare_models_on_data,
    compare_tensors,
    pair_tensors,
)


def float_net(batch="N"):
    b = GraphBuilder("f", 0)
    rng = b.rng
    x = b.input("x", [batch, 3, 10, 10])
    h = b.relu(b.conv(x, he_normal(rng, (8, 3, 3, 3)), rng.standard_normal(8) * 0.1, name="c1"))
    h = b.relu(b.conv(h, he_normal(rng, (8, 8, 3, 3)), None, name="c2"))
    b.output(b.gemm(b.flatten(b.global_avgpool(h)), he_normal(rng, (5, 8)), np.zeros(5),
                    name="fc"))
    return b.build()


def qdq_net(float_proto, path_dir, data):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": data[i:i + 8]} for i in range(0, len(data), 8)])

        def get_next(self):
            return next(self.it, None)

    src, dst = path_dir / "f.onnx", path_dir / "qdq.onnx"
    onnx.save(float_proto, src)
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    return src, dst


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(1).standard_normal((24, 3, 10, 10)).astype(np.float32)


def test_metrics_known_values():
    ref = np.array([3.0, 4.0, 0.0, 0.0])
    rows = {r.name: r for r in compare_tensors(
        {"same": ref, "noisy": ref, "flip": ref, "zero": np.zeros(3)},
        {"same": ref, "noisy": ref + np.array([0.3, 0.4, 0, 0]), "flip": -ref,
         "zero": np.zeros(3)})}
    same = rows["same"]
    assert same.cosine == 1.0 and same.max_abs == 0 and same.snr_db == math.inf
    assert rows["noisy"].cosine == pytest.approx(1.0)
    assert rows["noisy"].snr_db == pytest.approx(20.0)  # error is 10% of the signal's norm
    assert rows["noisy"].max_abs == pytest.approx(0.4)
    assert rows["flip"].cosine == pytest.approx(-1.0)
    assert rows["zero"].cosine == 1.0
    names = [r.name for r in compare_tensors({"a": ref, "b": ref}, {"a": ref, "b": -ref})]
    assert names == ["b", "a"]  # worst first
    assert rows["same"].to_dict()["snr_db"] is None  # JSON has no inf


def test_accumulator_streaming_equals_one_shot():
    rng = np.random.default_rng(2)
    ref, test = rng.standard_normal((10, 50)), rng.standard_normal((10, 50))
    acc = Accumulator()
    for i in range(0, 10, 3):
        acc.update(ref[i:i + 3], test[i:i + 3])
    one = compare_tensors({"t": ref}, {"t": test})[0]
    streamed = acc.row("t", "layer")
    assert streamed.cosine == pytest.approx(one.cosine, rel=1e-12)
    assert streamed.snr_db == pytest.approx(one.snr_db, rel=1e-12)
    assert streamed.max_abs == one.max_abs


def test_inf_and_nan_make_cosine_undefined_and_rank_worst():
    """An overflowing test model (inf/NaN outputs) is named, counted and ranked first."""
    ref = np.ones((2, 8), np.float32)
    test = ref.copy()
    test[0, :3] = [np.inf, -np.inf, np.nan]
    test[1, 0] = 4.0
    rows = compare_tensors({"bad": ref, "good": ref * 0.5}, {"bad": test, "good": ref * 0.5})
    assert [r.name for r in rows] == ["bad", "good"]
    bad = rows[0]
    assert math.isnan(bad.cosine) and math.isnan(bad.snr_db)
    assert (bad.ref_nonfinite, bad.test_nonfinite) == (0, 3)
    assert bad.max_abs == 3.0  # over the 13 finite pairs
    assert bad.to_dict()["cosine"] is None and bad.to_dict()["snr_db"] is None
    assert rows[1].cosine == pytest.approx(1.0) and not rows[1].nonfinite


def test_same_model_is_identical(data):
    m = load_model(float_net())
    report = compare_models_on_data(m, load_model(float_net()), data, batch_size=5)
    assert report.samples == 24
    assert [r.name for r in report.outputs] == ["fc"]
    assert {r.name for r in report.layers} >= {"c1", "relu", "c2", "relu_1"}
    assert all(r.cosine == pytest.approx(1.0) and r.max_abs == 0
               for r in report.outputs + report.layers)


def test_qdq_model_pairs_dequantize_outputs(tmp_path, data):
    src, dst = qdq_net(float_net(), tmp_path, data)
    f, q = load_model(src), load_model(dst)
    pairs = pair_tensors(f, q)
    layer_pairs = {p.ref: p.test for p in pairs if p.kind == "layer"}
    assert layer_pairs["relu"].endswith("DequantizeLinear_Output")
    report = compare_models_on_data(f, q, data)
    rows = report.outputs + report.layers
    assert all(0.99 < r.cosine < 1.0 and 20 < r.snr_db < 80 for r in rows)
    assert [r.cosine for r in report.layers] == sorted(r.cosine for r in report.layers)


def npuc_quant_net(scale: float):
    """A stand-in for model.quant.onnx: int8 tensor 'relu' + npuc.qgraph metadata."""
    from compiler.core.qgraph import METADATA_KEY, QGraph, QTensor

    b = GraphBuilder("q", 0)
    rng = b.rng
    x = b.input("x", ["N", 3, 10, 10])
    h = b.relu(b.conv(x, he_normal(rng, (8, 3, 3, 3)), rng.standard_normal(8) * 0.1, name="c1"))
    s, z = b.const(np.array(scale, np.float32), "s"), b.const(np.array(0, np.int8), "z")
    q = b.node("QuantizeLinear", [h, s, z], name="relu_q")
    y = b.node("DequantizeLinear", [q, s, z], name="deq")
    b.output(b.node("Neg", [y], name="out"))
    proto = b.build()
    # Rename so the int8 tensor carries the float tensor's name, as docs/fixed-point.md §13.
    for node in proto.graph.node:
        node.input[:] = ["relu" if n == q else ("relu_f" if n == h else n) for n in node.input]
        node.output[:] = ["relu" if n == q else ("relu_f" if n == h else n) for n in node.output]
    qgraph = QGraph({"relu": QTensor("relu", (-1, 8, 10, 10), "int8", scale)}, (), ("x",),
                    ("out",))
    desc, _ = qgraph.to_json()
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(desc))
    del proto.graph.value_info[:]
    return load_model(proto)


def float_relu_net():
    b = GraphBuilder("f", 0)
    rng = b.rng
    x = b.input("x", ["N", 3, 10, 10])
    h = b.relu(b.conv(x, he_normal(rng, (8, 3, 3, 3)), rng.standard_normal(8) * 0.1, name="c1"))
    b.output(b.node("Neg", [h], name="out"))
    return load_model(b.build())


def test_qgraph_int8_tensors_are_dequantized(data):
    f = float_relu_net()
    peak = float(np.maximum(data, 0).max())  # generous: relu outputs stay well inside
    q = npuc_quant_net(scale=4 * peak / 127)
    pairs = {p.ref: p for p in pair_tensors(f, q)}
    assert pairs["relu"].test == "relu" and pairs["relu"].scale == pytest.approx(4 * peak / 127)
    report = compare_models_on_data(f, q, data)
    layer = {r.name: r for r in report.layers}["relu"]
    out = report.outputs[0]
    # int8 values times the scale equal the dequantized graph output exactly
    assert layer.cosine == pytest.approx(out.cosine, abs=1e-9)
    assert layer.max_abs == pytest.approx(out.max_abs, rel=1e-6)
    assert 0.99 < layer.cosine < 1.0
    assert layer.max_abs <= 4 * peak / 127 / 2 * 1.001  # rounding: at most half an LSB


def test_cli_json_text_and_errors(tmp_path, data, capsys):
    src, dst = qdq_net(float_net(), tmp_path, data)
    npy = tmp_path / "d.npy"
    np.save(npy, data)
    assert main(["compare", str(src), str(dst), "--calib", str(npy), "--limit", "8",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["samples"] == 8 and doc["outputs"][0]["name"] == "fc"
    assert doc["layers"] and all(0.9 < r["cosine"] <= 1 for r in doc["layers"])
    assert main(["compare", str(src), str(dst), "--calib", str(npy), "--top", "2"]) == 0
    text = capsys.readouterr().out
    assert "layers, worst first (2 of" in text and "SNR dB" in text
    np.save(npy, data[:, :2])
    assert main(["compare", str(src), str(dst), "--calib", str(npy)]) == 2
    assert "shape" in capsys.readouterr().err


def test_fixed_batch_models(tmp_path, data):
    f = load_model(float_net(batch=1))
    save_model(f, tmp_path / "f1.onnx")
    report = compare_models_on_data(f, load_model(tmp_path / "f1.onnx"), data[:3])
    assert report.samples == 3 and report.outputs[0].cosine == pytest.approx(1.0)


def test_a_symbolic_batch_runs_at_the_other_models_fixed_batch(tmp_path, data):
    """A dynamic-batch export against its quantized model (batch bound to 1 at load)."""
    f = load_model(float_net(batch="N"))
    fixed = load_model(float_net(batch=1))
    report = compare_models_on_data(f, fixed, data[:3])
    assert report.samples == 3 and report.outputs[0].cosine == pytest.approx(1.0)
    with pytest.raises(DataError, match="different batch sizes"):
        compare_models_on_data(load_model(float_net(batch=2)), fixed, data[:4])


def bn_net():
    """conv→BN→relu→conv→BN→relu→GAP→gemm: BN folding reuses the conv output names."""
    b = GraphBuilder("bn", 4)
    rng = b.rng
    x = b.input("x", ["N", 3, 10, 10])
    h = x
    for i, (cin, cout) in enumerate(((3, 8), (8, 8))):
        h = b.conv(h, he_normal(rng, (cout, cin, 3, 3)), None, name=f"c{i}")
        h = b.relu(b.batchnorm(h, rng.uniform(0.5, 2, cout), rng.standard_normal(cout),
                               rng.standard_normal(cout), rng.uniform(0.5, 2, cout), name=f"bn{i}"))
    b.output(b.gemm(b.flatten(b.global_avgpool(h)), he_normal(rng, (5, 8)), np.zeros(5)))
    return b.build()


@pytest.mark.parametrize("cle", [False, True])
def test_npuc_quant_model_layers_pair_with_canonical_float(tmp_path, data, cle):
    api = pytest.importorskip("passes.quantize.api")
    proto = bn_net()
    result = api.quantize_model(proto, data, "max", cle=cle)
    f = load_model(proto)
    report = compare_models_on_data(f, result.quant_model, data)
    assert report.reference == "canonicalized float model" + (" + CLE" if cle else "")
    names = {r.name for r in report.layers}
    assert {"c0", "relu", "c1", "relu_1"} & names
    # Every paired int8 tensor is the quantized version of the same float values.
    assert all(r.cosine > 0.999 for r in report.layers + report.outputs)
