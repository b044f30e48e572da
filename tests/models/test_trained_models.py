"""The committed Fashion-MNIST models: accuracy, int8 accuracy, and the default compile."""

import json
from pathlib import Path

import pytest

from compiler.driver.data import resolve_source
from compiler.driver.evaluate import evaluate

TRAINED = Path(__file__).resolve().parents[2] / "models" / "trained"
NAMES = ["fmnist_resnet", "fmnist_mobilenetv2"]


def _require(name):
    path = TRAINED / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} not committed yet")
    return path


def _committed_accuracy(name):
    summary = TRAINED / "accuracy.json"
    if summary.exists():
        entry = json.loads(summary.read_text())
        entry = entry.get("models", {}).get(name.removeprefix("fmnist_"), {})
        for key in ("onnx_top1_eval2k", "top1_eval2k", "torch_top1_eval2k"):
            if key in entry:
                return entry[key]
    return json.loads((TRAINED / f"{name}.train.json").read_text())["torch_top1_eval2k"]


@pytest.mark.parametrize("name", NAMES)
def test_trained_model_reaches_committed_accuracy(name):
    path = _require(name)
    top1 = evaluate(str(path), "fmnist-eval").metrics["top1"]
    assert top1 == pytest.approx(_committed_accuracy(name), abs=0.005)
    assert path.stat().st_size < 2 * 1024 * 1024


@pytest.mark.slow
def test_default_compile_bundled_model(tmp_path):
    _require("fmnist_resnet")
    from compiler.driver.pipeline import compile_model

    result = compile_model(None, None, tmp_path)
    summary = result.report["summary"]
    assert summary["binary vs model.quant.onnx"]["after"] == "bit-exact"
    drop = summary["top1"]["before"] - summary["top1"]["after"]
    assert drop <= 0.003  # int8 loses at most 0.3 pt on the 2,000-image eval set
    assert (tmp_path / "report.html").exists() and (tmp_path / "model.bin").exists()


@pytest.mark.slow
def test_mobilenetv2_int8_accuracy_and_shape_1_clip_bounds(tmp_path):
    # The exported ReLU6 Clips carry [1]-shaped min/max (not scalars); they must still fuse.
    _require("fmnist_mobilenetv2")
    from passes.quantize.api import quantize_model

    result = quantize_model(str(TRAINED / "fmnist_mobilenetv2.onnx"),
                            resolve_source("fmnist-calib"))
    path = tmp_path / "q.onnx"
    from compiler.core.io import save_model

    save_model(result.quant_model, path)
    int8 = evaluate(str(path), "fmnist-eval").metrics["top1"]
    assert _committed_accuracy("fmnist_mobilenetv2") - int8 <= 0.005
