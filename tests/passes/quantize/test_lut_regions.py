"""Elementwise regions tabulated as one 256-entry table, with exporter-shaped constants."""

import json

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.cli import main


def test_region_with_rank4_scalar_constant_gives_a_flat_table(tmp_path, capsys):
    # PaddleOCR's DB head: Conv -> Add([1, 1, 1, 1] constant) -> Sigmoid. The region's
    # table was built as [1, 1, 1, 256], which broke shape inference of model.quant.onnx.
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.full((1, 1, 1, 1), 0.25, np.float32), "k")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Add", ["c", "k"], ["a"], name="add"),
             helper.make_node("Sigmoid", ["a"], ["y"], name="sig")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", 1, [1, 4, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", rng.standard_normal((8, 3, 8, 8)).astype(np.float32))
    q, b = tmp_path / "q", tmp_path / "m.bin"
    assert main(["quantize", str(tmp_path / "m.onnx"), "-o", str(q), "--calib",
                 str(tmp_path / "c.npy")]) == 0
    tables = [t for t in onnx.load(q / "model.quant.onnx").graph.initializer
              if t.name.endswith("::table")]
    assert [list(t.dims) for t in tables] == [[256]]
    assert main(["build", str(q / "model.quant.onnx"), "-o", str(b)]) == 0
    capsys.readouterr()
    assert main(["verify", str(q / "model.quant.onnx"), str(b), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["consistent"] is True
