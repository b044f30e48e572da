"""int8 accuracy on real data beyond Fashion-MNIST: the PP-OCRv4 recogniser."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_ppocr_rec_int8_with_bias_correction_within_two_points():
    pytest.importorskip("rapidocr_onnxruntime", reason="zoo extra not installed")
    from compiler.evaluate import evaluate
    from compiler.io import to_proto
    from models.datasets import Dataset, load_dataset
    from models.registry import get_model
    from passes.quantize.api import quantize_model

    lines = load_dataset("text-lines")
    held_out = Dataset(lines.inputs[::4], lines.labels[::4], lines.name, lines.kind)
    calib = lines.inputs[1::4][:32]  # calibration lines are not evaluated
    proto, _ = get_model("ppocr_rec")
    result = quantize_model(proto, {proto.graph.input[0].name: calib}, "mse",
                            bias_correction=True)
    flt = evaluate(proto, held_out).metrics["exact_match"]
    int8 = evaluate(to_proto(result.quant_model), held_out).metrics["exact_match"]
    assert len(held_out.inputs) == 50
    assert flt >= 0.98
    assert flt - int8 <= 0.02 + 1e-9
