"""Loading exporter-written graphs: IR v3 initializer inputs, old opsets, odd attributes."""

import json

import numpy as np
import onnx
import pytest

from compiler.cli import main
from compiler.core.io import load_model
from compiler.core.numerics import run
from compiler.core.qonnx import detach_weights, load_lean
from tests.exporter_graphs import caffe2_resnet_block


def _ort_reference(proto: onnx.ModelProto, feeds: dict) -> dict:
    return run(proto, feeds)


def _feeds(model, seed=0):
    rng = np.random.default_rng(seed)
    return {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in model.graph.inputs}


@pytest.mark.parametrize("loader", [load_model, "lean"])
def test_ir3_initializer_inputs_load_with_the_function_kept(tmp_path, loader):
    proto = caffe2_resnet_block()
    path = tmp_path / "c2.onnx"
    onnx.save(proto, path)
    model = load_lean(path) if loader == "lean" else loader(path)
    assert [t.name for t in model.graph.inputs] == ["gpu_0/data_0"]
    feeds = _feeds(model)
    want = _ort_reference(proto, feeds)["gpu_0/softmax_1"]
    np.testing.assert_allclose(run(model, feeds)["gpu_0/softmax_1"], want, rtol=1e-5, atol=1e-5)


def test_detach_weights_does_not_list_an_initializer_input_twice():
    light, arrays = detach_weights(caffe2_resnet_block())
    names = [i.name for i in light.graph.input]
    assert len(names) == len(set(names))
    assert "gpu_0/res0_w_0" in arrays and "gpu_0/res0_w_0" in names
    onnx.checker.check_model(light)


def test_ir3_model_goes_through_every_command(tmp_path, capsys):
    src, calib = tmp_path / "c2.onnx", tmp_path / "calib.npy"
    onnx.save(caffe2_resnet_block(), src)
    rng = np.random.default_rng(0)
    np.save(calib, rng.standard_normal((8, 3, 8, 8)).astype(np.float32))
    p, s, q, b = (str(tmp_path / n) for n in ("p.onnx", "s.onnx", "q", "m.bin"))
    steps = [["inspect", str(src)], ["groups", str(src)],
             ["quantize", str(src), "-o", str(tmp_path / "q0"), "--calib", str(calib)],
             ["prune", str(src), "-o", p, "--ratio", "0.3", "--calib", str(calib)],
             ["sparsify", p, "-o", s, "--block", "4", "--sparsity", "0.5", "--calib", str(calib)],
             ["quantize", s, "-o", q, "--calib", str(calib)],
             ["build", f"{q}/model.quant.onnx", "-o", b]]
    for argv in steps:
        assert main(argv) == 0, argv
    capsys.readouterr()
    assert main(["verify", f"{q}/model.quant.onnx", b, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["consistent"] is True
