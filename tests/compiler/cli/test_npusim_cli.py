"""`npuc build / verify / run / perf / inspect model.bin`: output, exit codes, bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from compiler.cli import main
from compiler.core.io import save_model
from passes.quantize.api import quantize_model
from targets.npusim import native
from targets.npusim.intgemm import exact
from targets.npusim.testing import op_zoo_model, random_inputs
from tests.conftest import conv_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("npusim_cli")
    proto = op_zoo_model()
    quant = quantize_model(proto, random_inputs(proto, 4, 0))
    qpath = save_model(quant.quant_model, root / "model.quant.onnx")
    onnx.save(proto, root / "float.onnx")
    np.savez(root / "inputs.npz", x=random_inputs(proto, 3, 7)["x"])
    assert main(["build", str(qpath), "-o", str(root / "model.bin")]) == 0
    return root


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def test_build_prints_placement_and_partitions(files, capsys):
    assert main(["build", str(files / "model.quant.onnx"), "-o", str(files / "b2.bin")]) == 0
    out = capsys.readouterr().out
    assert "big_kernel" in out and "kernel (13, 13) exceeds 11x11" in out
    assert "2 CPU partition(s)" in out
    assert (files / "b2.bin").read_bytes() == (files / "model.bin").read_bytes()


def test_build_json(files, capsys):
    assert main(["build", str(files / "model.quant.onnx"), "-o", str(files / "b3.bin"),
                 "--json"]) == 0
    data = _json(capsys)
    assert data["cpu_partitions"] == 2
    assert {p["unit"] for p in data["placement"]} == {"NPU", "CPU"}


def test_verify_consistent_with_inputs(files, capsys):
    assert main(["verify", str(files / "model.quant.onnx"), str(files / "model.bin"),
                 "--inputs", str(files / "inputs.npz"), "--json"]) == 0
    data = _json(capsys)
    assert data["consistent"] and data["samples"] == 3
    assert data["outputs"][0]["mismatched"] == 0 and data["outputs"][0]["elements"] == 30


def test_verify_mismatch_exits_1(files, tmp_path, capsys):
    # A binary of another quantization (different calibration) of the same graph.
    proto = op_zoo_model()
    other = quantize_model(proto, random_inputs(proto, 4, 99)).quant_model
    qpath = save_model(other, tmp_path / "other.quant.onnx")
    assert main(["verify", str(qpath), str(files / "model.bin")]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "different model" in out


def test_run_writes_npz(files, capsys):
    out = files / "out.npz"
    assert main(["run", str(files / "model.bin"), "--inputs", str(files / "inputs.npz"),
                 "-o", str(out)]) == 0
    with np.load(out) as data:
        assert data["softmax"].shape == (3, 10)
        np.testing.assert_allclose(data["softmax"].sum(axis=1), 1.0, rtol=1e-5)


def test_perf_table_and_json(files, capsys):
    assert main(["perf", str(files / "model.bin"), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "latency" in out and "FPS" in out and "utilisation" in out
    assert main(["perf", str(files / "model.bin"), "--cores", "2", "--threads", "8",
                 "--json"]) == 0
    data = _json(capsys)
    assert data["cores"] == 2 and data["fps"] > 0 and len(data["layers"]) > 20


def test_inspect_disassembles(files, capsys):
    assert main(["inspect", str(files / "model.bin")]) == 0
    out = capsys.readouterr().out
    assert "dwconv" in out and "cpu_call" in out and "section" in out
    assert main(["inspect", str(files / "model.bin"), "--json"]) == 0
    assert len(_json(capsys)["instructions"]) > 20


@pytest.mark.parametrize("argv, message", [
    (["build", "{root}/float.onnx", "-o", "{root}/x.bin"], "not a quantized model"),
    (["build", "{root}/model.quant.onnx", "--arch", "nope", "-o", "{root}/x.bin"],
     "unknown architecture preset"),
    (["perf", "{root}/model.bin", "--arch", "nope"], "unknown architecture preset"),
    (["perf", "{root}/float.onnx"], "bad magic"),
    (["run", "{root}/truncated.bin"], "file_size"),
    (["perf", "{root}/truncated.bin"], "file_size"),
    (["verify", "{root}/model.quant.onnx", "{root}/truncated.bin"], "file_size"),
])
def test_bad_input_one_line_exit_2(files, capsys, argv, message):
    data = (files / "model.bin").read_bytes()
    (files / "truncated.bin").write_bytes(data[:len(data) // 2])
    assert main([a.format(root=files) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0
    assert not (files / "x.bin").exists()


def test_build_conv_model_default_output_next_to_model(tmp_path, capsys):
    proto = conv_model()
    quant = quantize_model(proto, random_inputs(proto, 2, 0)).quant_model
    qpath = save_model(quant, tmp_path / "model.quant.onnx")
    assert main(["build", str(qpath)]) == 0
    assert (tmp_path / "model.bin").read_bytes()[:4] == b"NPUB"


def test_run_profile_table_and_json(files, capsys):
    argv = ["run", str(files / "model.bin"), "--inputs", str(files / "inputs.npz")]
    assert main([*argv, "--profile", "4", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert "simulator profile:" in out and "over 3 frame(s), 2 thread(s), int8 GEMM" in out
    table = out[out.index("instruction"):].splitlines()
    assert len(table) == 2 + 4 and "conv" in out and "%" in table[2]
    assert main([*argv, "--profile", "--json"]) == 0
    data = _json(capsys)["profile"]
    slowest = data["slowest"]
    assert data["frames"] == 3 and len(slowest) == 10
    assert data["int8_gemm"] is exact()  # the probe's verdict on this machine
    assert data["native_kernels"] is native.available()
    assert [r["ms"] for r in slowest] == sorted((r["ms"] for r in slowest), reverse=True)
    assert {r["unit"] for r in slowest} <= {"NPU", "CPU"} and slowest[0]["ms"] > 0
    assert sum(data["by_op_ms"].values()) <= data["ms_per_frame"] * 1.01
    assert main([*argv, "--profile", "0", "--json"]) == 0
    everything = _json(capsys)["profile"]["slowest"]
    assert sum(r["share"] for r in everything) == pytest.approx(1.0, abs=1e-3)
    assert len({r["index"] for r in everything}) == len(everything) > 20


def test_int16_layers_through_quantize_build_verify_run_perf(files, tmp_path, capsys):
    """`npuc quantize --int16` then build, verify (0 mismatches), run and perf on the binary."""
    calib = tmp_path / "calib.npy"
    np.save(calib, random_inputs(op_zoo_model(), 4, 0)["x"])
    q = tmp_path / "q"
    assert main(["quantize", str(files / "float.onnx"), "-o", str(q), "--calib", str(calib),
                 "--int16", "c1,dw,pw,grouped"]) == 0
    binary = tmp_path / "m16.bin"
    assert main(["build", str(q / "model.quant.onnx"), "-o", str(binary)]) == 0
    capsys.readouterr()
    assert main(["verify", str(q / "model.quant.onnx"), str(binary), "--inputs",
                 str(files / "inputs.npz"), "--json"]) == 0
    data = _json(capsys)
    assert data["consistent"] and data["outputs"][0]["mismatched"] == 0
    assert main(["run", str(binary), "--inputs", str(files / "inputs.npz"), "-o",
                 str(tmp_path / "out.npz")]) == 0
    assert np.load(tmp_path / "out.npz")["softmax"].shape == (3, 10)
    capsys.readouterr()
    layers = {}
    for label, path in (("int8", files / "model.bin"), ("int16", binary)):
        assert main(["perf", str(path), "--json"]) == 0
        layers[label] = {lay["name"]: lay for lay in _json(capsys)["layers"]}
    assert layers["int16"]["c1"]["cycles"] > layers["int8"]["c1"]["cycles"]
