"""`npuc sensitivity`: ranked table, JSON, plot, and one-line errors on bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from compiler.cli import main
from tests.exporter_graphs import residual_classifier


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(residual_classifier(), model)
    rng = np.random.default_rng(0)
    calib = tmp_path / "calib.npy"
    np.save(calib, rng.uniform(0, 1, (16, 3, 8, 8)).astype(np.float32))
    labelled = tmp_path / "eval.npz"
    np.savez(labelled, images=rng.uniform(0, 1, (12, 3, 8, 8)).astype(np.float32),
             labels=np.arange(12) % 10)
    return model, calib, labelled


def test_table_json_file_and_plot(files, tmp_path, capsys):
    model, calib, _ = files
    out_json, plot = tmp_path / "s.json", tmp_path / "s.png"
    code, out, err = _run(["sensitivity", model, "--calib", calib, "--top", "3",
                           "-o", out_json, "--plot", plot], capsys)
    assert code == 0, err
    assert "16 samples; each layer quantized alone; ranked by cosine, worst first" in out
    assert "layers, worst first (3 of 7)" in out and "all layers int8: cosine" in out
    doc = json.loads(out_json.read_text())
    assert doc["mode"] == "quantize" and len(doc["layers"]) == 7
    assert {r["name"] for r in doc["layers"]} == {"stem", "conv_a", "conv_b", "add", "dw",
                                                  "gap", "fc"}
    cosines = [r["cosine"] for r in doc["layers"]]
    assert cosines == sorted(cosines)
    assert out.splitlines()[6].startswith(doc["layers"][0]["name"])  # the worst row first
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, _ = _run(["sensitivity", model, "--calib", calib, "--json"], capsys)
    assert code == 0 and json.loads(out)["layers"] == doc["layers"]


def test_labelled_data_adds_accuracy(files, capsys):
    model, calib, labelled = files
    code, out, err = _run(["sensitivity", model, "--calib", calib, "--data", labelled,
                           "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["rank_by"] == "accuracy" and doc["samples"] == 12
    assert doc["float_accuracy"] is not None
    assert all(0 <= r["accuracy"] <= 1 for r in doc["layers"])


def test_prune_mode_lists_groups(files, capsys):
    model, calib, _ = files
    code, out, err = _run(["sensitivity", model, "--calib", calib, "--mode", "prune",
                           "--ratio", "0.5"], capsys)
    assert code == 0, err
    assert "each group pruned alone at ratio 0.5" in out
    assert "group 1 (stem.out)" in out and "group 2 (conv_a.out)" in out
    code, out, _ = _run(["sensitivity", model, "--calib", calib, "--mode", "prune",
                         "--ratio", "0", "--json"], capsys)
    assert code == 0
    assert [r["cosine"] for r in json.loads(out)["layers"]] == [1.0, 1.0]


@pytest.mark.parametrize("argv, match", [
    (["{tmp}/missing.onnx", "--calib", "{calib}"], "missing.onnx"),
    (["{model}", "--calib", "{tmp}/bad.npy"], "bad.npy"),
    (["{model}"], "--calib"),
    (["{model}", "--calib", "{calib}", "--mode", "bisect"], "--mode"),
    (["{model}", "--calib", "{calib}", "--mode", "prune", "--ratio", "1.5"], "--ratio"),
    (["{tmp}/transpose.onnx", "--calib", "{tmp}/t.npy"], "no quantizable layer"),
    (["{model}", "--calib", "{calib}", "-o", "{calib}"], "refusing to overwrite an input"),
    (["{model}", "--calib", "{calib}", "--plot", "{model}"], "refusing to overwrite"),
])
def test_bad_input_is_one_line_exit_2(files, tmp_path, capsys, argv, match):
    model, calib, _ = files
    np.save(tmp_path / "bad.npy", np.zeros((4, 5), np.float32))  # wrong shape
    node = helper.make_node("Transpose", ["x"], ["y"], perm=[0, 1, 3, 2])
    graph = helper.make_graph([node], "t", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 3, 4, 4])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, [1, 3, 4, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "transpose.onnx")
    np.save(tmp_path / "t.npy", np.zeros((2, 3, 4, 4), np.float32))
    args = [a.format(tmp=tmp_path, model=model, calib=calib) for a in argv]
    code, out, err = _run(["sensitivity", *args], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("npuc: error:") and match in lines[0]
