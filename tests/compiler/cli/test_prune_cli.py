"""`npuc groups` and `npuc prune`: tables, JSON, and one-line errors on bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from compiler.cli import main
from compiler.core.builder import GraphBuilder, he_normal
from compiler.core.io import load_model
from compiler.core.numerics import random_feeds, run
from tests.passes.prune.test_prune_oracle import kitchen_sink
from tests.passes.prune.test_prune_recon import _images, small_resnet


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "sink.onnx"
    onnx.save(kitchen_sink(), path)
    return path


def test_groups_table_and_json(model_path, capsys):
    code, out, _ = _run(["groups", str(model_path)], capsys)
    assert code == 0
    assert "13 groups, 11 prunable, 2 not prunable" in out
    assert "graph output 'fc'" in out and "residual" in out
    code, out, _ = _run(["groups", str(model_path), "--json"], capsys)
    data = json.loads(out)
    assert data["prunable"] == 11 and len(data["groups"]) == 13
    assert data["groups"][0]["reason"] == "graph input 'x'"


def test_prune_writes_valid_model(model_path, tmp_path, capsys):
    out_path = tmp_path / "p.onnx"
    code, out, err = _run(["prune", str(model_path), "-o", str(out_path), "--ratio", "0.5",
                           "--no-reconstruct", "--round-to", "1", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["macs"]["after"] < 0.5 * report["macs"]["before"]
    onnx.checker.check_model(onnx.load(out_path))
    pruned, orig = load_model(out_path), load_model(model_path)
    feeds = random_feeds(orig, seed=0, batch=2)
    assert run(pruned, feeds)["fc"].shape == run(orig, feeds)["fc"].shape
    code, out, _ = _run(["prune", str(model_path), "-o", str(tmp_path / "q.onnx"),
                         "--target-macs", "0.6", "--criterion", "css", "--round-to", "2",
                         "--no-reconstruct"],
                        capsys)
    assert code == 0 and "MACs" in out and "group" in out


def _no_prunable(tmp_path):
    b = GraphBuilder("one", seed=0)
    x = b.input("x", [1, 3, 8, 8])
    b.output(b.conv(x, he_normal(b.rng, (4, 3, 3, 3)), None, name="only"))
    path = tmp_path / "one.onnx"
    onnx.save(b.build(), path)
    return path


@pytest.mark.parametrize("case", ["ratio_high", "ratio_negative", "rates_length", "no_group",
                                  "calib_shape", "calib_missing", "both_modes"])
def test_bad_input_one_line_exit_2_no_file(case, model_path, tmp_path, capsys):
    out_path = tmp_path / "out.onnx"
    base = ["prune", str(model_path), "-o", str(out_path), "--no-reconstruct", "--round-to", "1"]
    bad_calib = tmp_path / "bad.npy"
    np.save(bad_calib, np.zeros((4, 3, 9, 9), np.float32))
    argv, expect = {
        "ratio_high": (base + ["--ratio", "1.0"], "--ratio: 1 is outside [0, 1)"),
        "ratio_negative": (base + ["--ratio", "-0.1"], "outside [0, 1)"),
        "rates_length": (base + ["--rates", "[0.1, 0.2]"],
                         "got 2 rates, expected 11 (one per prunable group, in order 1:stem.out"),
        "no_group": (["prune", str(_no_prunable(tmp_path)), "-o", str(out_path),
                      "--no-reconstruct", "--ratio",
                      "0.3"], "no prunable channel group"),
        "calib_shape": (base + ["--ratio", "0.3", "--reconstruct", "--calib", str(bad_calib)],
                        "has shape 4x3x9x9, model expects ?x3x8x8"),
        "calib_missing": (base + ["--ratio", "0.3", "--reconstruct"], "needs calibration"),
        "both_modes": (base + ["--ratio", "0.3", "--target-macs", "0.5"], "exactly one"),
    }[case]
    code, out, err = _run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("npuc: error:"), err
    assert expect in lines[0]
    assert not out_path.exists()


def test_prune_reconstruct_cli(tmp_path, capsys):
    path, calib = tmp_path / "res.onnx", tmp_path / "calib.npy"
    from compiler.core.io import save_model

    save_model(small_resnet(), path)
    np.save(calib, _images(32, 0))
    code, out, err = _run(["prune", str(path), "-o", str(tmp_path / "p.onnx"), "--ratio", "0.5",
                           "--criterion", "hrank", "--calib", str(calib), "--reconstruct",
                           "--round-to", "1"], capsys)
    assert code == 0, err
    assert "reconstruction (block): 5 layers" in out
    # The whole small ResNet (5 convs) is one block (MAX_CONVS = 9).
    assert "block reconstruction: 1 of 1 blocks improved" in out


def test_groups_name_the_blocking_node_and_op(tmp_path, capsys):
    from tests.exporter_graphs import c2f_detect

    path = tmp_path / "c2f.onnx"
    onnx.save(c2f_detect(), path)
    code, out, _ = _run(["groups", str(path)], capsys)
    assert code == 0 and "12 groups, 7 prunable, 5 not prunable" in out
    assert "Softmax node 'dfl_softmax': normalizes across channels" in out
    code, out, _ = _run(["groups", str(path), "--json"], capsys)
    blocked = {g["id"]: g["blocked_by"] for g in json.loads(out)["groups"] if not g["prunable"]}
    assert sorted(map(str, blocked.values())) == sorted(map(str, [
        {"input": "x"}, {"node": "dfl_softmax", "op": "Softmax"},
        {"node": "dfl_softmax", "op": "Softmax"}, {"output": "y_out"}, {"output": "y_out"}]))
