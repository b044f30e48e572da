"""The report explains the latency: every binary step timed, the host share, the partition map.

Two models: a small graph with an Einsum CPU partition (the host decides the latency) and
the bundled default model, pruned (NPU-bound, with before/after per step).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from compiler.cli import main
from compiler.driver.pipeline import compile_model
from tests import exporter_graphs as eg
from tests.compiler.driver.chromium import dom_text, render, table_text

TRAINED = Path(__file__).resolve().parents[3] / "models" / "trained"
BOUNDS = {"compute", "memory", "overhead", "free", "host"}


@pytest.fixture(scope="module")
def einsum(tmp_path_factory):
    """Backbone on the NPU, an Einsum CPU partition, a tail on the NPU."""
    folder = tmp_path_factory.mktemp("latency")
    onnx.save(eg.missing_op_model("einsum"), folder / "einsum.onnx")
    np.save(folder / "calib.npy",
            np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32))
    config = {"calibration.data": str(folder / "calib.npy"), "target.frames": 10}
    return compile_model(str(folder / "einsum.onnx"), config, folder / "out")


@pytest.fixture(scope="module")
def default(tmp_path_factory):
    """The bundled default model, 25% of its channels pruned."""
    if not (TRAINED / "fmnist_resnet.onnx").exists():
        pytest.skip("models/trained/fmnist_resnet.onnx not committed")
    config = {"prune.enabled": True, "prune.ratio": 0.25, "prune.reconstruct": False,
              "eval.limit": 100, "target.frames": 20, "target.verify_samples": 2}
    return compile_model(None, config, tmp_path_factory.mktemp("default"))


def _json(result) -> dict:
    return json.loads((result.out_dir / "report.json").read_text())


def _assert_steps_add_up(report: dict) -> None:
    """The rows are the perf model's rows, and they add up to its latency."""
    perf = report["perf"]["single"]
    steps, totals = report["steps"], perf["totals"]
    assert [s["step"] for s in steps] == [lay["name"] for lay in perf["layers"]]
    assert {s["bound"] for s in steps} <= BOUNDS
    npu = [s for s in steps if s["unit"] == "NPU"]
    assert sum(s["cycles"] for s in npu) == totals["cycles"]
    assert sum(s["us"] for s in npu) == pytest.approx(totals["npu_ms"] * 1e3, abs=0.1)
    lat = report["latency"]
    frame = totals["frame_overhead_ms"] * 1e3 + totals["weight_load_ms"] * 1e3
    timed = sum(s["us"] + s["switch_us"] for s in steps) + frame
    assert timed == pytest.approx(lat["latency_ms"] * 1e3, abs=0.5)
    assert lat["latency_ms"] == perf["latency_ms"]
    assert sum(p["share"] for p in lat["parts"]) == pytest.approx(1.0, abs=2e-3)


def test_partition_model_steps_carry_the_cpu_partition(einsum):
    report = _json(einsum)
    _assert_steps_add_up(report)
    steps = report["steps"]
    cpu = [s for s in steps if s["unit"] == "CPU"]
    assert [(s["step"], s["op"], s["nodes"]) for s in cpu] == \
        [("cpu_partition_0", "cpu_call", ["einsum"])]
    assert cpu[0]["macs"] == 4096 and cpu[0]["bound"] == "host"  # 4,096 Einsum MACs
    assert cpu[0]["switch_us"] == 80.0 and cpu[0]["us"] > 0
    assert {s["op"] for s in steps} >= {"quantize", "conv", "dequantize", "cpu_call"}
    convs = [s for s in steps if s["op"] == "conv"]
    assert all(0 < s["utilisation"] <= 1 and s["macs"] > 0 for s in convs)
    assert "macs_before" not in steps[0]  # nothing compressed: no before columns


def test_partition_model_host_share_and_note(einsum):
    lat = _json(einsum)["latency"]
    parts = {p["part"]: p for p in lat["parts"]}
    assert parts["partition switches"]["ms"] == pytest.approx(0.08)
    assert parts["per-frame driver overhead"]["ms"] == pytest.approx(0.04)
    host = sum(parts[k]["ms"] for k in ("CPU partitions and fallbacks", "partition switches",
                                        "per-frame driver overhead"))
    assert lat["host_share"] == pytest.approx(host / lat["latency_ms"], abs=1e-4)
    assert lat["host_share"] > 0.95 and lat["partition_switches"] == 1
    assert lat["fps"]["limit"] == "host"
    assert lat["note"].startswith(f"{lat['host_share']:.0%} of the latency is on the host (")
    assert "1 partition switch 80 µs" in lat["note"]
    assert "pruning the NPU layers cannot move latency" in lat["note"]


def test_partition_map_says_where_and_why(einsum):
    pmap = _json(einsum)["partition_map"]
    segments = pmap["segments"]
    assert [s["unit"] for s in segments] == ["NPU", "CPU", "NPU"]
    cpu = segments[1]
    assert cpu["nodes"] == ["einsum"] and cpu["ops"] == ["Einsum"]
    assert cpu["reasons"] == ["Einsum has no int8 implementation"]
    assert cpu["switch_us"] == 80.0 and cpu["share"] > 0.6
    assert sum(len(s["nodes"]) for s in segments) == len(pmap["nodes"]) == 9
    assert [p["node"] for p in pmap["nodes"] if p["unit"] == "CPU"] == ["einsum"]


def test_partition_model_html_has_the_tables(einsum):
    page = (einsum.out_dir / "report.html").read_text()
    for cls in ("latency", "partition-map", "cpu-nodes", "steps"):
        assert f"<table class='{cls}'>" in page, cls
    assert "CPU partition: einsum" in page and "Einsum has no int8 implementation" in page
    assert "<p class='note'>" in page and "of the latency is on the host" in page


def test_cli_compile_prints_the_host_note(einsum, tmp_path, capsys):
    model, calib = einsum.out_dir.parent / "einsum.onnx", einsum.out_dir.parent / "calib.npy"
    assert main(["compile", str(model), "-o", str(tmp_path / "o"), "--calib", str(calib),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "of the latency is on the host (CPU partitions 3 µs, 1 partition switch 80 µs, " \
           "per-frame driver 40 µs)" in out


@pytest.mark.slow
def test_default_model_steps_before_and_after(default):
    report = _json(default)
    _assert_steps_add_up(report)
    steps = report["steps"]
    assert all(s["unit"] == "NPU" and s["switch_us"] == 0 for s in steps)
    assert {s["op"] for s in steps} >= {"quantize", "conv", "add", "gavgpool", "fc",
                                        "dequantize"}
    assert all(s["us_before"] is not None for s in steps)  # pruning keeps every step
    convs = [s for s in steps if s["op"] == "conv"]
    assert any(s["macs"] < s["macs_before"] and s["us"] < s["us_before"] for s in convs)
    assert sum(s["us"] for s in steps) < sum(s["us_before"] for s in steps)
    assert any(s["bound"] == "compute" for s in convs)
    assert all(0 < s["utilisation"] <= 1 for s in convs)
    lat = report["latency"]
    assert lat["partition_switches"] == 0 and lat["fps"]["limit"] == "npu"
    # the 40 µs driver overhead is the whole host share; pruning raised it
    assert lat["host_share"] == pytest.approx(0.04 / lat["latency_ms"], abs=1e-3)
    assert lat["before"]["host_share"] < lat["host_share"]
    assert "per-frame driver 40 µs" in lat["note"] and "NPU-bound" in lat["note"]
    assert [s["unit"] for s in report["partition_map"]["segments"]] == ["NPU"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["einsum", "default"])
def test_report_renders_tables_and_partition_map_in_chromium(name, request, tmp_path):
    result = request.getfixturevalue(name)
    report = _json(result)
    dom, pixels = render(result.out_dir / "report.html", tmp_path, (1200, 3000))
    assert pixels.shape[:2] == (3000, 1200)
    text = dom_text(dom)
    for heading in ("Where the latency goes", "Partition map", "Per-step table"):
        assert heading in text
    steps = table_text(dom, "steps")
    assert all(s["step"] in steps for s in report["steps"])  # one row per executed step
    pmap = table_text(dom, "partition-map")
    assert pmap.startswith("# unit nodes ops µs") and " NPU " in pmap
    assert f"{report['latency']['host_share']:.1%}" in text
    if name == "einsum":
        assert "CPU partition: einsum" in steps and "Einsum has no int8 implementation" in pmap
        assert report["latency"]["note"] in text
    else:
        rows = pmap.split("why on the CPU", 1)[1]
        assert "µs before" in steps and "CPU" not in rows
        assert f"NPU {len(report['steps'])} nodes: input__quantize" in rows
    # the per-step plot draws NPU bars in the report's blue
    blue = np.all(np.abs(pixels - np.array([59, 110, 168])) < 12, axis=-1)
    assert blue.sum() > 500
