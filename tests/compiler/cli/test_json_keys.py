"""--json: one key per figure across commands (the same MACs under the same name)."""

from __future__ import annotations

import json

import numpy as np
import onnx

from compiler.cli import main
from tests.conftest import conv_model


def _json(capsys, argv):
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_same_figure_has_the_same_key(tmp_path, capsys):
    model, calib = str(tmp_path / "m.onnx"), str(tmp_path / "calib.npy")
    onnx.save(conv_model(), model)
    np.save(calib, np.random.default_rng(0).standard_normal((8, 3, 8, 8), np.float32))
    q, binary = str(tmp_path / "q"), str(tmp_path / "q" / "model.bin")
    inspect = _json(capsys, ["inspect", model])
    prune = _json(capsys, ["prune", model, "-o", str(tmp_path / "p.onnx"), "--ratio", "0.5",
                           "--no-reconstruct"])
    quant = _json(capsys, ["quantize", model, "-o", q, "--calib", calib])
    build = _json(capsys, ["build", f"{q}/model.quant.onnx", "-o", binary])
    verify = _json(capsys, ["verify", f"{q}/model.quant.onnx", binary])
    perf = _json(capsys, ["perf", binary])
    shown = _json(capsys, ["inspect", binary])
    # every command names what it read
    assert {inspect["model"], prune["model"], quant["model"]} == {model}
    assert build["model"] == verify["model"] == f"{q}/model.quant.onnx"
    assert perf["model"] == shown["model"] == verify["binary"] == build["output"] == binary
    # MACs: `macs` wherever the figure is a count of this model's MACs
    assert inspect["totals"]["macs"] == prune["macs"]["before"] == perf["totals"]["macs"] \
        == build["npu_macs"] == perf["npu_macs"] > 0
    assert build["npu_mac_fraction"] == perf["npu_mac_fraction"] == 1.0
    # seconds: `time_s` with a `total`
    assert prune["time_s"]["total"] >= 0 and quant["time_s"]["total"] >= \
        quant["time_s"]["calibrate"]
    assert "timings" not in quant and "ops" not in quant
