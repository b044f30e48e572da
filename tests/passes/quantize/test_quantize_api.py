"""quantize_model / `npuc quantize`: outputs, calibration tables, QDQ agreement, bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import helper

from compiler.cli import main
from compiler.core.errors import ConfigError, DataError, GraphError
from compiler.core.io import load_model
from compiler.core.numerics import run, session
from compiler.core.pass_manager import PassManager
from compiler.core.qgraph import QGraph
from passes.quantize.api import quantize_model
from passes.quantize.calibrate import CalibrationTable
from passes.quantize.quantize_pass import Quantize
from passes.quantize.reference import execute
from tests.conftest import conv_model
from tests.quant_helpers import feeds_for, make_model

CALIB = {"x": np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)}


def lsb_diff_fraction(result, feeds) -> float:
    """Fraction of output elements where QDQ and integer models differ by > 1 output LSB.

    The QDQ model runs as written (fusion off): onnxruntime's fused u8 kernels saturate on
    x86 without VNNI (docs/fixed-point.md §11), which is its arithmetic, not the grid's.
    """
    qg = result.qgraph
    a = run(result.quant_model, feeds)
    b = run(session(result.qdq_model, fuse_qdq=False), feeds)
    worst = []
    for name in qg.outputs:
        scale = qg.tensor(f"{name}__q").scale
        worst.append(np.abs(a[name] - b[name]) / scale > 1.0 + 1e-6)
    return float(np.mean(np.concatenate([w.ravel() for w in worst])))


def test_quantize_model_outputs_and_qdq_agreement():
    result = quantize_model(conv_model(batch="N"), CALIB)
    feeds = feeds_for(conv_model(), 16, seed=5)
    assert result.table.method == "mse" and set(result.table.thresholds) >= {"x", "r", "y"}
    assert lsb_diff_fraction(result, feeds) <= 0.01
    qdq_ops = {n.op for n in result.qdq_model.graph.nodes}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= qdq_ops
    ref = execute(result.qgraph, feeds)["y"]
    assert np.array_equal(ref, run(result.quant_model, feeds)["y"])


def test_calibration_table_reuse(tmp_path):
    first = quantize_model(conv_model(), CALIB)
    path = first.table.save(tmp_path / "calibration.json")
    # bias correction is on by default; its shifts travel in the table, so reusing the table
    # without data reproduces the corrected build exactly
    assert first.qgraph.info["bias_correction"] and first.table.bias_shifts
    assert first.report["bias_correction"]["layers"] == len(first.table.bias_shifts) >= 2
    again = quantize_model(conv_model(), None, table=path)
    assert again.qgraph == first.qgraph and again.report["bias_correction"]["from_table"]
    other = {"x": CALIB["x"][::-1] * 2 + 1}  # other data: the table still decides
    assert quantize_model(conv_model(), other, table=path).qgraph == first.qgraph
    assert quantize_model(conv_model(), other).qgraph != first.qgraph
    other = make_model([helper.make_node("Relu", ["x"], ["z"])], {"x": [1, 3, 8, 8]}, ["z"])
    with pytest.raises(ConfigError, match="lacks"):
        quantize_model(other, None, table=path)


def test_table_saved_without_bias_correction_reproduces_that_build(tmp_path):
    plain = quantize_model(conv_model(), CALIB, bias_correction=False)
    corrected = quantize_model(conv_model(), CALIB)
    assert not plain.table.bias_shifts and "bias_correction" not in plain.table.to_dict()
    path = plain.table.save(tmp_path / "calibration.json")
    again = quantize_model(conv_model(), None, table=path)  # bias correction asked, no data
    assert again.qgraph == plain.qgraph and not again.qgraph.info["bias_correction"]
    assert corrected.qgraph != plain.qgraph  # the correction changed the integer model


def test_table_shifts_from_gptq_are_not_applied_to_nearest_weights(tmp_path, caplog):
    gptq = quantize_model(conv_model(), CALIB, rounding="gptq")
    assert gptq.table.bias_rounding == "gptq"
    path = gptq.table.save(tmp_path / "calibration.json")
    again = quantize_model(conv_model(), None, table=path)
    assert not again.qgraph.info["bias_correction"] and "measured with --rounding gptq" in \
        caplog.text


@pytest.mark.parametrize("entry,match", [
    ([1.0], "must be an object with 'shifts'"),
    ({"rounding": "nearest", "shifts": {"c": []}}, "non-empty list"),
    ({"rounding": "nearest", "shifts": {"c": [1.0, float("nan")]}}, "finite numbers"),
    ({"rounding": "nearest", "shifts": {"c": [True]}}, "finite numbers"),
    ({"rounding": "ties", "shifts": {}}, "rounding must be one of"),
])
def test_bad_bias_shift_entries_are_config_errors(entry, match):
    doc = quantize_model(conv_model(), CALIB).table.to_dict() | {"bias_correction": entry}
    with pytest.raises(ConfigError, match=match):
        CalibrationTable.from_dict(doc)


def test_bias_shifts_of_the_wrong_length_are_a_config_error(tmp_path):
    doc = quantize_model(conv_model(), CALIB).table.to_dict()
    layer = next(iter(doc["bias_correction"]["shifts"]))
    doc["bias_correction"]["shifts"][layer].append(0.0)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=f"shifts for layer {layer!r}: .* expected"):
        quantize_model(conv_model(), None, table=path)


def test_quantize_pass_in_pass_manager():
    result = PassManager([Quantize(CALIB)])(load_model(conv_model()))
    assert "npuc.qgraph" in result.model.metadata
    assert result.info["Quantize"]["int8_nodes"] == 5


@pytest.mark.parametrize("calib,match", [
    ({"x": np.zeros((4, 3, 7, 7), np.float32)}, "shape"),
    ({"x": np.zeros((4, 3, 8, 8), np.int64)}, "dtype"),
    ({"x": np.zeros((0, 3, 8, 8), np.float32)}, "empty"),
    ({"x": np.full((2, 3, 8, 8), np.nan, np.float32)}, "NaN"),
    ({"y": np.zeros((2, 3, 8, 8), np.float32)}, "no data"),
])
def test_bad_calibration_data(calib, match):
    with pytest.raises(DataError, match=match):
        quantize_model(conv_model(), calib)


def test_bad_options():
    with pytest.raises(ConfigError, match="unknown calibrator"):
        quantize_model(conv_model(), CALIB, "minmax")
    with pytest.raises(ConfigError, match="percentile"):
        quantize_model(conv_model(), CALIB, "max", percentile=99.0)
    with pytest.raises(ConfigError, match="calibration data"):
        quantize_model(conv_model(), None)


def test_nan_weights_are_rejected():
    w = np.ones((4, 3, 1, 1), np.float32)
    w[1, 0, 0, 0] = np.nan
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"])], {"x": [1, 3, 8, 8]}, ["y"],
                       {"w": w})
    with pytest.raises((GraphError, DataError), match="NaN"):
        quantize_model(model, CALIB)


def test_zero_range_tensor_gets_safe_scale():
    # Relu(-x²) is identically zero: its calibrated range is 0
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Neg", ["sq"], ["n"]),
             helper.make_node("Relu", ["n"], ["z"]), helper.make_node("Add", ["z", "x"], ["y"])]
    model = make_model(nodes, {"x": [1, 3, 8, 8]}, ["y"])
    result = quantize_model(model, CALIB)
    scales = [t.scale for t in result.qgraph.tensors.values() if t.is_quantized]
    assert all(np.isfinite(s) and s > 0 for s in scales)
    out = run(result.quant_model, {"x": CALIB["x"][:1]})["y"]
    assert np.all(np.isfinite(out)) and np.abs(out - CALIB["x"][:1]).max() < 0.05


def test_cli_writes_three_files(tmp_path, capsys):
    model, calib, out = tmp_path / "m.onnx", tmp_path / "c.npy", tmp_path / "out"
    onnx.save(conv_model(batch="N"), model)
    np.save(calib, CALIB["x"])
    assert main(["quantize", str(model), "-o", str(out), "--calib", str(calib), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cpu_nodes"] == 0 and report["op_counts"]["QConv"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["calibration.json", "model.qdq.onnx",
                                                     "model.quant.onnx"]
    qg = QGraph.from_model(load_model(out / "model.quant.onnx"))
    assert qg.ops[1].kind == "QConv"
    assert CalibrationTable.load(out / "calibration.json").method == "mse"  # the default
    assert main(["quantize", str(model), "-o", str(tmp_path / "o2"),
                 "--calib-table", str(out / "calibration.json")]) == 0
    assert "wrote" in capsys.readouterr().out


def test_cli_failure_leaves_nothing(tmp_path, capsys):
    model, calib, out = tmp_path / "m.onnx", tmp_path / "c.npy", tmp_path / "out"
    onnx.save(conv_model(), model)
    np.save(calib, np.zeros((2, 3, 5, 5), np.float32))
    assert main(["quantize", str(model), "-o", str(out), "--calib", str(calib)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("npuc: error:") and "Traceback" not in err
    assert not out.exists() or list(out.iterdir()) == []
    assert main(["quantize", str(model), "-o", str(out), "--calib", str(calib),
                 "--calibrator", "nope"]) == 2
    assert "unknown calibrator" in capsys.readouterr().err


def test_lean_load_session_and_absmax_match_stock_paths(tmp_path):
    from compiler.core.qonnx import load_lean, shared_weight_session
    from passes.quantize.absmax import abs_max_ranges
    from passes.quantize.calibrate import collect_ranges

    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Conv", ["r", "w2"], ["y"])]
    model = make_model(nodes, {"x": ["N", 3, 8, 8]}, ["y"],
                       {"w": rng.standard_normal((64, 3, 3, 3)).astype(np.float32),
                        "w2": rng.standard_normal((32, 64, 3, 3)).astype(np.float32)})
    path = tmp_path / "big.onnx"
    onnx.save(model, path)
    lean, stock = load_lean(path), load_model(path)
    assert lean.source == stock.source and [t.name for t in lean.graph.inputs] == ["x"]
    feeds = {"x": CALIB["x"]}
    want = run(stock, feeds)["y"]
    assert np.array_equal(run(lean, feeds)["y"], want)
    # no NCHWc layout in the lean session: same math, other float summation order
    np.testing.assert_allclose(shared_weight_session(lean).run(["y"], feeds)[0], want,
                               rtol=1e-5, atol=1e-4)
    names = ["x", "r", "y"]
    fast, slow = abs_max_ranges(lean, feeds, names), collect_ranges(stock, feeds, names, "max")
    assert fast.keys() == slow.keys() and fast["x"] == slow["x"]
    assert all(abs(fast[k] - slow[k]) <= 1e-5 * slow[k] for k in names)


def test_prepare_float_types_an_untyped_model_without_copying_its_weights():
    # The Loop output stays untyped after canonicalization; re-inferring its shapes used to
    # export, infer and re-import the whole model (three copies of the weights).
    import tests.exporter_graphs as eg
    from passes.quantize.api import prepare_float

    model = load_model(eg.nested_control_flow_model())
    weights = {t.name: t.values for t in model.graph.tensors().values()
               if isinstance(t, gs.Constant) and t.values.size >= 64}
    prepared = prepare_float(model)
    kept = {t.name: t.values for t in prepared.graph.tensors().values()
            if isinstance(t, gs.Constant) and t.name in weights}
    assert kept and all(np.shares_memory(kept[n], weights[n]) for n in kept)
    after = prepared.graph.tensors()["acc_final"]
    assert after.dtype == np.float32 and after.shape is None  # still a run-time shape
