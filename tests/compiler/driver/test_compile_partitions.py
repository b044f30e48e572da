"""`npuc compile` on graphs that keep post-processing, control flow or ops the NPU lacks:
every stage passes, verify is bit-exact and the report says where the MACs run."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from compiler.cli import main
from compiler.driver.pipeline import compile_model
from tests import exporter_graphs as eg

EINSUM_FRACTION = 131072 / 135168  # backbone + tail on the NPU, 4,096 Einsum MACs on the host


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("partitions")
    onnx.save(eg.ssd_nms_model(), path / "ssd.onnx")
    onnx.save(eg.missing_op_model("einsum"), path / "einsum.onnx")
    onnx.save(eg.control_flow_model(), path / "control_flow.onnx")
    images = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    np.save(path / "calib.npy", images)
    return path


@pytest.mark.parametrize("name, fraction, ops", [
    ("ssd", 1.0, [["NonMaxSuppression", "Gather", "GatherND"]]),
    ("einsum", EINSUM_FRACTION, [["Einsum"]]),
    ("control_flow", 1.0, [["ReduceMean", "Greater", "If"], ["Loop"]]),
])
def test_compile_reports_npu_mac_fraction(folder, name, fraction, ops):
    config = {"calibration.data": str(folder / "calib.npy"), "target.frames": 10}
    result = compile_model(str(folder / f"{name}.onnx"), config, folder / f"out_{name}")
    report = json.loads((result.out_dir / "report.json").read_text())
    assert [s["status"] for s in report["stages"]] == ["ok"] * len(report["stages"])
    assert report["verify"]["consistent"] is True
    assert sum(o["mismatched"] for o in report["verify"]["outputs"]) == 0
    assert report["npu_mac_fraction"] == pytest.approx(fraction, abs=1e-6)
    assert report["build"]["npu_mac_fraction"] == report["npu_mac_fraction"]
    assert report["build"]["cpu_partition_ops"] == ops
    assert report["perf"]["single"]["npu_mac_fraction"] == report["npu_mac_fraction"]
    assert report["summary"]["MACs on NPU"]["after"] == f"{fraction:.1%}"
    cpu = report["quantize"]["cpu_reasons"]
    assert all(reason for reason in cpu.values())


def test_cli_compile_prints_the_mac_line(folder, capsys):
    code = main(["compile", str(folder / "einsum.onnx"), "-o", str(folder / "cli_einsum"),
                 "--calib", str(folder / "calib.npy"), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "MACs on NPU: 97.0% (1 CPU partition: Einsum)" in out


def test_cli_build_and_perf_json_carry_the_fraction(folder, capsys):
    out = folder / "cli_ssd"
    assert main(["quantize", str(folder / "ssd.onnx"), "-o", str(out),
                 "--calib", str(folder / "calib.npy")]) == 0
    assert main(["build", str(out / "model.quant.onnx"), "-o", str(out / "model.bin"),
                 "--json"]) == 0
    capsys.readouterr()
    assert main(["build", str(out / "model.quant.onnx"), "-o", str(out / "model.bin")]) == 0
    text = capsys.readouterr().out
    assert "MACs on NPU: 100.0% (1 CPU partition: NonMaxSuppression, Gather, GatherND)" in text
    assert "post-processing (NonMaxSuppression): output size depends on the data" in text
    assert main(["perf", str(out / "model.bin"), "--json"]) == 0
    perf = json.loads(capsys.readouterr().out)
    assert perf["npu_mac_fraction"] == 1.0 and perf["cpu_macs"] == 0
    assert main(["run", str(out / "model.bin"), "--samples", "3", "--json"]) == 0
    shapes = {o["name"]: o["shape"] for o in json.loads(capsys.readouterr().out)["outputs"]}
    assert shapes["det_boxes"][1] == 4 and shapes["det_scores"] == shapes["det_boxes"][:1]
    assert main(["verify", str(out / "model.quant.onnx"), str(out / "model.bin")]) == 0
