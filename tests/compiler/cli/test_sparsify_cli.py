"""`npuc sparsify`: output model, report, JSON, and one-line errors with exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compiler.cli import main
from compiler.core.io import load_model, save_model
from compiler.core.numerics import random_feeds, run
from passes.sparsify import check_masks, read_sparsity_metadata
from tests.passes.sparsify.test_sparsify_blocks import tiny_net


@pytest.fixture
def model_path(tmp_path):
    return str(save_model(tiny_net(batch="N"), tmp_path / "tiny.onnx"))


def test_sparsify_writes_model_and_json_report(model_path, tmp_path, capsys):
    out = tmp_path / "sparse.onnx"
    code = main(["sparsify", model_path, "-o", str(out), "--block", "4", "--sparsity", "0.5",
                 "--criterion", "l1", "--no-reconstruct", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["zero_block_fraction"] == pytest.approx(0.5)
    assert [r["node"] for r in report["layers"]] == ["a", "b", "c", "pw", "fc1"]
    assert report["skipped"]["dw"].startswith("depthwise")
    sparse = load_model(out)
    check_masks(sparse)
    assert set(read_sparsity_metadata(sparse)) == {"a", "b", "c", "pw", "fc1"}
    feeds = random_feeds(sparse, seed=0, batch=3)
    assert run(sparse, feeds)["fc2"].shape == (3, 10)


def test_sparsify_text_report_with_reconstruction(model_path, tmp_path, capsys):
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((32, 3, 12, 12)).astype(np.float32))
    out = tmp_path / "sparse.onnx"
    code = main(["sparsify", model_path, "-o", str(out), "--block", "2", "--sparsity", "0.3",
                 "--calib", str(calib), "--reconstruct", "--criterion", "l2"])
    text = capsys.readouterr().out
    assert code == 0 and out.exists()
    assert "left dense:" in text and "stem: first layer" in text
    assert "->" in text.splitlines()[2]  # the recon error column of the first layer
    assert "dense layers re-fitted after the sparse ones" in text
    assert "  fc2: " in text  # the last layer follows sparsified ones


@pytest.mark.parametrize("args, message", [
    (["--block", "3", "--sparsity", "0.5"], "--block 3: N must be one of 2, 4, 8, 16, 32"),
    (["--block", "32", "--sparsity", "0.5", "--exclude", "c"],
     "--block 32: N divides the output channels of no eligible layer"),
    (["--block", "4", "--sparsity", "1.0"], "--sparsity 1.0: must be in [0, 1)"),
    (["--block", "4", "--sparsity", "-0.2"], "--sparsity -0.2: must be in [0, 1)"),
    (["--block", "4", "--sparsity", "0.5", "--criterion", "hrank"],
     "--criterion 'hrank': unknown criterion (choose from l1, l2, act, obs, css)"),
    (["--block", "4", "--sparsity", "0.5", "--reconstruct"], "--reconstruct needs calibration"),
])
def test_bad_input_is_one_line_exit_2(model_path, tmp_path, capsys, args, message):
    out = tmp_path / "never.onnx"
    code = main(["sparsify", model_path, "-o", str(out), "--criterion", "l1", "--no-reconstruct",
                 *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("npuc: error: ") and message in err
    assert not out.exists()
