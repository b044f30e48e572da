"""The accuracy budget through `npuc compile` and `npuc quantize` (compiler/driver/budget.py)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from compiler.cli import main
from compiler.driver.pipeline import compile_model
from tests.exporter_graphs import residual_classifier


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("budget")
    onnx.save(residual_classifier(), d / "m.onnx")
    rng = np.random.default_rng(0)
    np.savez(d / "calib.npz", x=rng.uniform(0, 1, (32, 3, 8, 8)).astype(np.float32))
    np.savez(d / "val.npz", x=rng.uniform(0, 1, (40, 3, 8, 8)).astype(np.float32),
             labels=rng.integers(0, 10, 40))
    return d


@pytest.fixture(scope="module")
def compiled(folder, tmp_path_factory):
    """A cosine budget the all-int8 model misses (its cosine is ~0.99996 here)."""
    config = {"calibration.data": str(folder / "calib.npz"), "quantize.min_cosine": 0.99999,
              "target.frames": 20, "target.verify_samples": 2}
    return compile_model(str(folder / "m.onnx"), config, tmp_path_factory.mktemp("out"))


def test_compile_reports_the_budget_and_prices_it(compiled):
    report = compiled.report
    b = report["budget"]
    assert b["met"] and b["after"]["cosine"] >= 0.99999 > b["before"]["cosine"]
    assert b["raised"] and {r["name"] for r in b["raised"]} <= {
        r["name"] for r in b["ranking"]["layers"]}
    assert len(b["ranking"]["layers"]) == b["layers"]
    lat = b["costs"]["latency_ms"]
    assert lat["after"] > lat["before"] > 0  # float layers run on the host: slower
    # the summary's "before" is the all-int8 model, its "after" what was built
    row = report["summary"]["latency ms (1 core, 1 thread)"]
    assert row["before"] == pytest.approx(lat["before"])
    assert row["after"] == pytest.approx(lat["after"])
    assert report["verify"]["consistent"]
    html = (compiled.out_dir / "report.html").read_text()
    assert "id='budget'" in html and "alt='ranking'" in html


def test_quantize_cli_budget_json_and_text(folder, tmp_path, capsys):
    args = ["quantize", str(folder / "m.onnx"), "-o", str(tmp_path / "q"), "--calib",
            str(folder / "calib.npz"), "--min-agreement", "1.0", "--min-cosine", "0.99999",
            "--budget-data", str(folder / "val.npz")]
    assert main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    b = doc["budget"]
    assert b["samples"] == 40 and b["budget"] == {"min_cosine": 0.99999, "min_agreement": 1.0}
    assert b["met"] and b["after"]["agreement"] == 1.0
    # beyond what int16 activations reach: 16-bit weights too (A16W16), still on the NPU
    assert b["int16"]["precision"] == "A16W16" and doc["cpu_nodes"] == 0
    assert b["int16"]["ceiling"]["cosine"] < 0.99999 <= b["int16"]["ceiling_w16"]["cosine"]
    raised = b["raised"]
    assert raised and {r["to"] for r in raised} == {"int16"}
    assert {r["weights"] for r in raised if r["op"] in ("Conv", "Gemm")} == {"int16"}
    assert main([*args[:3], str(tmp_path / "q2"), *args[4:]]) == 0
    out = capsys.readouterr().out
    assert "accuracy budget (min-cosine 0.99999, min-agreement 1) on 40 samples: met" in out
    assert "with int16 weights: A16W16" in out and "cost: latency" in out


def test_max_drop_without_labels_is_a_one_line_error(folder, tmp_path, capsys):
    code = main(["quantize", str(folder / "m.onnx"), "-o", str(tmp_path / "q"), "--calib",
                 str(folder / "calib.npz"), "--max-drop", "0.5"])
    err = capsys.readouterr().err
    assert code == 2 and "--max-drop needs labelled data" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("flag,value", [("--max-drop", "-1"), ("--min-cosine", "1.5"),
                                        ("--min-agreement", "x")])
def test_bad_budget_values_exit_2(folder, tmp_path, flag, value, capsys):
    code = main(["quantize", str(folder / "m.onnx"), "-o", str(tmp_path / "q"), "--calib",
                 str(folder / "calib.npz"), flag, value])
    assert code == 2 and flag in capsys.readouterr().err


@pytest.mark.slow
def test_compile_budget_chooses_the_pruning_rate(tmp_path):
    """--target-macs is the floor; the budget picks the fraction; the report lists tries.

    (Random weights without reconstruction: pruning loses much here, so the floor may miss.)
    """
    from models.zoo import mobilenetv2

    proto, _ = mobilenetv2(image_size=32)
    onnx.save(proto, tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((16, 3, 32, 32)).astype(np.float32))
    config = {"calibration.data": str(tmp_path / "c.npz"), "prune.enabled": True,
              "prune.target_macs": 0.9, "prune.reconstruct": False,
              "quantize.min_cosine": 0.5, "target.frames": 20, "target.verify_samples": 2}
    report = compile_model(str(tmp_path / "m.onnx"), config, tmp_path / "o").report
    b = report["prune"]["budget"]
    tries = {t["fraction"]: t for t in b["tries"]}
    assert b["floor"] == 0.9 and tries[b["chosen"]]["met"] and len(tries) <= 3
    assert all(not t["met"] for f, t in tries.items() if f < b["chosen"])
    assert 0.9 in tries
    assert report["prune"]["macs"]["ratio"] == pytest.approx(tries[b["chosen"]]["macs"])
    assert report["budget"]["met"]  # the quantize loop then holds it on the chosen model
    assert report["verify"]["consistent"]
