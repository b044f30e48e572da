"""Models with external data through every step command, outputs saved as external data."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from compiler.cli import main
from compiler.core import onnxfile
from compiler.core.builder import GraphBuilder, he_normal
from compiler.core.io import load_model
from compiler.core.numerics import run
from compiler.driver.outputs import QUANT_OUTPUTS, write_quantized
from passes.quantize.api import quantize_model


def small_cnn(seed: int = 0) -> onnx.ModelProto:
    """Two conv-BN-ReLU layers on 16 channels and an FC head (weights of 9 kB and more)."""
    b = GraphBuilder("small_cnn", seed=seed)
    r = b.rng
    h, cin = b.input("x", ["N", 3, 8, 8]), 3
    for i in range(2):
        h = b.conv(h, he_normal(r, (16, cin, 3, 3)), r.normal(0, 0.1, 16), name=f"c{i}")
        h = b.relu(b.batchnorm(h, r.uniform(0.5, 1.5, 16), r.normal(0, 0.1, 16),
                               r.normal(0, 0.1, 16), r.uniform(0.5, 1.5, 16)))
        cin = 16
    b.output(b.gemm(b.flatten(b.global_avgpool(h)), he_normal(r, (100, 16)), None, name="fc"))
    return b.build()


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


def _ort(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _location(path) -> set[str]:
    proto = onnx.load(path, load_external_data=False)
    return {e.value for t in proto.graph.initializer for e in t.external_data
            if e.key == "location"}


@pytest.fixture
def external_model(tmp_path):
    src = tmp_path / "in" / "m.onnx"
    src.parent.mkdir()
    onnx.save(small_cnn(), src, save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.weights", size_threshold=0)
    calib = tmp_path / "calib.npy"
    np.save(calib, _images(8))
    return src, calib


def test_external_data_model_through_prune_quantize_build_verify(tmp_path, monkeypatch,
                                                                 external_model, capsys):
    monkeypatch.setattr(onnxfile, "MAX_INLINE_BYTES", 4096)  # outputs > 4 kB go external
    src, calib = external_model
    pruned, q, binary = tmp_path / "p.onnx", tmp_path / "q", tmp_path / "m.bin"
    steps = [["prune", str(src), "-o", str(pruned), "--ratio", "0.25", "--calib", str(calib)],
             ["quantize", str(pruned), "-o", str(q), "--calib", str(calib)],
             ["build", str(q / "model.quant.onnx"), "-o", str(binary)]]
    for argv in steps:
        assert main(argv) == 0, argv
    capsys.readouterr()
    assert _location(pruned) == {"p.onnx.data"}
    assert _location(q / "model.quant.onnx") == {"model.quant.onnx.data"}
    assert _location(q / "model.qdq.onnx") == {"model.qdq.onnx.data"}
    assert sorted(p.name for p in q.iterdir()) == sorted(
        list(QUANT_OUTPUTS) + ["model.qdq.onnx.data", "model.quant.onnx.data"])
    assert main(["verify", str(q / "model.quant.onnx"), str(binary), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["consistent"] and report["samples"] >= 1
    assert all(o["mismatched"] == 0 for o in report["outputs"])
    x = _images(2, seed=5)
    np.testing.assert_allclose(_ort(pruned, x), run(load_model(pruned), {"x": x})["fc"],
                               rtol=1e-5, atol=1e-5)
    quant = load_model(q / "model.quant.onnx", input_shapes="1x3x8x8")
    assert np.array_equal(_ort(q / "model.quant.onnx", x[:1]), run(quant, {"x": x[:1]})["fc"])


def test_external_data_model_inspects_like_the_inline_one(tmp_path, external_model, capsys):
    src, _ = external_model
    inline = tmp_path / "inline.onnx"
    onnx.save(small_cnn(), inline)
    tables = []
    for path in (src, inline):
        assert main(["inspect", str(path), "--json"]) == 0
        tables.append(json.loads(capsys.readouterr().out))
    assert tables[0]["totals"] == tables[1]["totals"]
    assert tables[0]["totals"]["params"] == 16 * 3 * 9 + 16 * 16 * 9 + 32 + 1600
    assert tables[0]["totals"]["macs"] == 64 * (16 * 3 * 9 + 16 * 16 * 9) + 1600


def test_write_quantized_forced_external_loads_in_onnxruntime(tmp_path, monkeypatch):
    monkeypatch.setattr(onnxfile, "MAX_INLINE_BYTES", 4096)
    result = quantize_model(small_cnn(), {"x": _images(4)})
    written = write_quantized(tmp_path / "q", result)
    assert [p.name for p in written] == list(QUANT_OUTPUTS)
    assert not [p for p in (tmp_path / "q").iterdir() if p.name.startswith(".")]
    x = _images(1, seed=3)
    for path, model in ((written[0], result.quant_model), (written[1], result.qdq_model)):
        assert _location(path) == {path.name + ".data"}
        assert np.array_equal(_ort(path, x), run(model, {"x": x})["fc"])


def test_write_quantized_refuses_a_directory_in_the_way(tmp_path):
    result = quantize_model(small_cnn(), {"x": _images(4)})
    (tmp_path / "q" / "model.qdq.onnx").mkdir(parents=True)
    with pytest.raises(Exception, match="model.qdq.onnx: exists and is a directory"):
        write_quantized(tmp_path / "q", result)
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["model.qdq.onnx"]
