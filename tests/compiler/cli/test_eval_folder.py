"""`npuc eval` and `npuc quantize` on a class-per-folder image set, with preprocessing."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper
from PIL import Image

from compiler.cli import main
from tests.compiler.core.test_imagefolder import make_folder


def colour_classifier(path, nhwc=False):
    """Logits = mean of each colour channel: class 0 red, 1 green, 2 blue."""
    shape = [1, 4, 6, 3] if nhwc else [1, 3, 4, 6]
    axes = [1, 2] if nhwc else [2, 3]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape[1:]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    node = helper.make_node("ReduceMean", ["x"], ["y"], axes=axes, keepdims=0)
    model = helper.make_model(helper.make_graph([node], "c", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, path)
    return str(path)


def _eval(capsys, *argv):
    assert main(["eval", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_reads_labels_from_class_folders(tmp_path, capsys):
    data = str(make_folder(tmp_path / "val", (4, 3, 5)))
    model = colour_classifier(tmp_path / "m.onnx")
    out = _eval(capsys, model, "--data", data)
    assert out["samples"] == 12 and out["metrics"]["top1"] == 1.0
    assert _eval(capsys, model, "--data", data, "--limit", "6")["samples"] == 6
    # BGR swaps red and blue: only green stays right
    assert abs(_eval(capsys, model, "--data", data, "--color", "BGR")["metrics"]["top1"]
               - 3 / 12) < 1e-9


def test_eval_nhwc_model_on_a_folder(tmp_path, capsys):
    data = str(make_folder(tmp_path / "val", (2, 2, 2)))
    model = colour_classifier(tmp_path / "m.onnx", nhwc=True)
    out = _eval(capsys, model, "--data", data, "--layout", "NHWC", "--resize", "4x6")
    assert out["metrics"]["top1"] == 1.0


def test_quantize_calibrates_on_every_class(tmp_path, capsys):
    """Two dim classes first, the bright one last: 3 samples must include the bright one."""
    calib = tmp_path / "calib"
    for name, value in (("a_dim", 40), ("b_dim", 40), ("c_bright", 255)):
        (calib / name).mkdir(parents=True)
        for i in range(30):
            Image.new("RGB", (6, 4), (value, value, value)).save(calib / name / f"{i}.png")
    model = colour_classifier(tmp_path / "m.onnx")
    assert main(["quantize", model, "-o", str(tmp_path / "q"), "--calib", str(calib),
                 "--calib-limit", "3", "--json"]) == 0
    table = json.loads((tmp_path / "q" / "calibration.json").read_text())["tensors"]
    assert np.isclose(table["y"]["threshold"], 1.0)  # 40/255 if only the dim classes were read


def test_compile_evaluates_on_a_class_folder(tmp_path, capsys):
    data = str(make_folder(tmp_path / "val", (3, 3, 3)))
    model = colour_classifier(tmp_path / "m.onnx")
    assert main(["compile", model, "-o", str(tmp_path / "out"), "--calib", data, "--data", data,
                 "--quiet"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {k: v["top1"] for k, v in report["eval"].items()} == {
        "float": 1.0, "compressed": 1.0, "int8": 1.0}


def test_run_applies_the_preprocessing_compile_recorded(tmp_path, capsys):
    data = str(make_folder(tmp_path / "val", (2, 2, 2)))
    model = colour_classifier(tmp_path / "m.onnx")
    assert main(["compile", model, "-o", str(tmp_path / "out"), "--calib", data, "--quiet",
                 "--set", "input.color=BGR"]) == 0
    assert main(["run", str(tmp_path / "out" / "model.bin"), "--inputs", data, "-o",
                 str(tmp_path / "y.npz")]) == 0
    y = np.load(tmp_path / "y.npz")["y"]
    assert y.argmax(axis=1).tolist() == [2, 2, 1, 1, 0, 0]  # red read as blue and back
