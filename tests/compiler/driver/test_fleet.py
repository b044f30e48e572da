"""Fleet compile: many models, one config, parallel on the executor, one index page."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from compiler.cli import main
from compiler.core.errors import ConfigError
from compiler.core.executor import ExecutorOptions
from compiler.driver.config import load_config
from compiler.driver.fleet import compile_fleet, folder_names, read_model_list


def test_folder_names_are_unique_and_safe():
    names = folder_names(["a/m.onnx", "b/m.onnx", "B/M.onnx", "fmnist_resnet", "x/../we ird.onnx"])
    assert names == ["m", "m_2", "M_3", "fmnist_resnet", "we_ird"]


def test_model_list_skips_comments(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("# fleet\na.onnx\n\n  b.onnx  # second\n")
    assert read_model_list(path) == ["a.onnx", "b.onnx"]
    with pytest.raises(ConfigError, match="--model-list .*missing.txt: cannot be read"):
        read_model_list(tmp_path / "missing.txt")


def test_model_and_models_are_exclusive(tmp_path, capsys):
    assert main(["compile", "m.onnx", "--models", "a.onnx", "-o", str(tmp_path / "o")]) == 2
    assert "either MODEL or --models" in capsys.readouterr().err


@pytest.fixture(scope="module")
def fleet_inputs(tmp_path_factory):
    from models.zoo import mobilenetv2

    folder = tmp_path_factory.mktemp("fleet")
    for i in range(2):
        proto, _ = mobilenetv2(image_size=32, seed=i)
        onnx.save(proto, folder / f"net{i}.onnx")
    images = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    np.savez(folder / "calib.npz", images=images)
    return folder


def _config(folder):
    return load_config(overrides={"calibration.data": str(folder / "calib.npz"),
                                  "target.frames": 10, "target.verify_samples": 2})


@pytest.mark.slow
def test_fleet_compiles_each_model_and_reports_failures(fleet_inputs, tmp_path):
    models = [str(fleet_inputs / "net0.onnx"), str(fleet_inputs / "missing.onnx")]
    entries = compile_fleet(models, _config(fleet_inputs), tmp_path / "out",
                            ExecutorOptions(workers=2))
    assert [e.ok for e in entries] == [True, False]
    assert "missing.onnx: no such file" in entries[1].error
    ok = entries[0]
    assert (tmp_path / "out" / "net0" / "model.bin").stat().st_size > 0
    assert ok.figures["binary vs model.quant.onnx"]["after"] == "bit-exact"
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["models"] == 2 and index["compiled"] == 1
    page = (tmp_path / "out" / "index.html").read_text()
    assert "1 of 2 models compiled" in page and "href='net0/report.html'" in page


@pytest.mark.slow
def test_fleet_same_figures_local_and_ray(fleet_inputs, tmp_path, ray_cluster):
    models = [str(fleet_inputs / "net0.onnx"), str(fleet_inputs / "net1.onnx")]
    config = _config(fleet_inputs)
    local = compile_fleet(models, config, tmp_path / "local", ExecutorOptions(workers=1))
    ray = compile_fleet(models, config, tmp_path / "ray", ExecutorOptions(kind="ray",
                                                                          workers=2))
    assert all(e.ok for e in local + ray)
    assert [e.figures for e in ray] == [e.figures for e in local]
    for name in ("net0", "net1"):  # the binaries themselves are identical
        assert (tmp_path / "ray" / name / "model.bin").read_bytes() == \
            (tmp_path / "local" / name / "model.bin").read_bytes()
