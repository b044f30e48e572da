import json
import subprocess
import sys

import onnx
import pytest

from compiler.cli import main
from tests.conftest import conv_model


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_version_and_help():
    result = subprocess.run([sys.executable, "-m", "compiler.cli", "--version"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.startswith("npuc ")
    helped = subprocess.run([sys.executable, "-m", "compiler.cli", "--help"],
                            capture_output=True, text=True, check=True)
    assert "inspect" in helped.stdout


def test_closed_stdout_is_not_an_internal_error(tmp_path):
    # `npuc inspect m.onnx | head -1`: the reader leaves before npuc writes.
    path = tmp_path / "m.onnx"
    onnx.save(conv_model(), path)
    proc = subprocess.Popen([sys.executable, "-m", "compiler.cli", "inspect", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert "internal error" not in err and "Traceback" not in err, err


def test_inspect_table_and_json(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(conv_model(), path)
    code, out, _ = _run(["inspect", str(path)], capsys)
    assert code == 0
    assert "Conv" in out and "total:" in out
    code, out, _ = _run(["inspect", str(path), "--json"], capsys)
    data = json.loads(out)
    assert data["totals"]["macs"] == 8 * 64 * 27 + 80
    assert [n["op"] for n in data["nodes"]] == ["Conv", "Relu", "GlobalAveragePool",
                                                "Flatten", "Gemm"]
    code, out, _ = _run(["inspect", str(path), "--json", "--raw"], capsys)
    assert "BatchNormalization" in [n["op"] for n in json.loads(out)["nodes"]]


def _truncated(tmp_path):
    data = conv_model().SerializeToString()
    return data[: len(data) // 2]


def _old_opset(tmp_path):
    proto = conv_model()
    proto.opset_import[0].version = 5
    return proto.SerializeToString()


@pytest.mark.parametrize("make", [
    None,
    lambda p: b"GIF89a not onnx",
    _truncated,
    _old_opset,
])
def test_bad_inputs_exit_2_with_one_line(tmp_path, make):
    path = tmp_path / "bad.onnx"
    if make is not None:
        path.write_bytes(make(tmp_path))
    result = subprocess.run([sys.executable, "-m", "compiler.cli", "inspect", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("npuc: error: ")
    assert "Traceback" not in result.stderr
    assert str(path) in lines[0]


def test_binary_commands_on_an_onnx_file_say_build_first(tmp_path, capsys):
    import logging

    path = tmp_path / "m.onnx"
    onnx.save(conv_model(), path)
    code, _, err = _run(["-v", "perf", str(path)], capsys)
    assert code == 2 and "looks like an ONNX model: build it first" in err
    assert logging.getLogger("PIL").getEffectiveLevel() == logging.WARNING


def test_quantize_int16_flag(tmp_path, capsys):
    """`--int16 NODES` makes the named layers' activations int16; a bad name is exit 2."""
    from compiler.core.io import load_model
    from compiler.core.qgraph import QGraph

    path = tmp_path / "m.onnx"
    onnx.save(conv_model(), path)
    model = onnx.load(path)
    conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    calib = tmp_path / "calib.npy"
    import numpy as np
    np.save(calib, np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32))
    out = tmp_path / "q"
    code, _, err = _run(["quantize", str(path), "-o", str(out), "--calib", str(calib),
                         "--int16", conv], capsys)
    assert code == 0, err
    qg = QGraph.from_model(load_model(out / "model.quant.onnx"))
    assert list(qg.info["int16"]) == [conv]
    assert {t.dtype for t in qg.tensors.values() if t.is_quantized} >= {"int16"}
    code, _, err = _run(["quantize", str(path), "-o", str(tmp_path / "r"), "--calib",
                         str(calib), "--int16", "nope"], capsys)
    assert code == 2 and err.strip() == "npuc: error: int16: no node named 'nope' in the model"
