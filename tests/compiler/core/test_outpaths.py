"""Output paths: never an input (by inode), never a non-regular file, folders checked too."""

from __future__ import annotations

import os
import stat

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from compiler.core.errors import ConfigError
from compiler.core.outpaths import check_output, check_output_dir, input_files
from tests.conftest import conv_model


@pytest.fixture
def files(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(conv_model(), model)
    return tmp_path, model


def test_regular_new_and_old_outputs_pass(files):
    folder, model = files
    assert check_output(folder / "new.onnx", [model]) == folder / "new.onnx"
    (folder / "old.onnx").write_bytes(b"previous run")
    assert check_output(folder / "old.onnx", [model]) == folder / "old.onnx"
    assert check_output(folder / "a" / "b" / "new.onnx", [model])  # parents made on write


@pytest.mark.parametrize("spelling", ["m.onnx", "./m.onnx", "sub/../m.onnx", "hard.onnx",
                                      "soft.onnx"])
def test_an_input_under_any_name_is_refused(files, spelling, monkeypatch):
    folder, model = files
    (folder / "sub").mkdir()
    os.link(model, folder / "hard.onnx")
    os.symlink("m.onnx", folder / "soft.onnx")
    monkeypatch.chdir(folder)
    with pytest.raises(ConfigError, match=r"-o .*(is the input|symbolic link)"):
        check_output(spelling, input_files("m.onnx"))
    assert model.read_bytes() == conv_model().SerializeToString()


def test_non_regular_files_are_never_replaced(files):
    folder, model = files
    os.mkfifo(folder / "fifo")
    os.symlink("/etc/hostname", folder / "link")
    (folder / "dir").mkdir()
    for name, kind in (("fifo", "a FIFO"), ("link", "a symbolic link"), ("dir", "a directory")):
        with pytest.raises(ConfigError, match=f"exists and is {kind}; refusing"):
            check_output(folder / name, [model])
    assert stat.S_ISFIFO(os.lstat(folder / "fifo").st_mode)


def test_bad_paths_are_one_line_errors(files):
    folder, model = files
    with pytest.raises(ConfigError, match="empty path"):
        check_output("", [model])
    with pytest.raises(ConfigError, match="is not a folder|cannot be written"):
        check_output(model / "out.onnx", [model])
    with pytest.raises(ConfigError, match="cannot be written"):
        check_output(folder / ("n" * 300), [model])


def test_output_folder_checks_every_file_it_writes(files):
    folder, model = files
    (folder / "out").mkdir()
    os.mkfifo(folder / "out" / "model.quant.onnx")
    with pytest.raises(ConfigError, match="model.quant.onnx: exists and is a FIFO"):
        check_output_dir(folder / "out", ["model.quant.onnx"], [model])
    with pytest.raises(ConfigError, match="is the input"):
        check_output_dir(folder, ["m.onnx"], [model])
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        check_output_dir(model, ["x"], [])
    os.symlink("nowhere", folder / "dangling")
    with pytest.raises(ConfigError, match="symbolic link to nothing"):
        check_output_dir(folder / "dangling", ["x"], [])


def test_an_input_models_external_data_is_an_input(tmp_path):
    model = conv_model()
    w = next(t for t in model.graph.initializer if t.name == "w")
    (tmp_path / "w.bin").write_bytes(onnx.numpy_helper.to_array(w).astype(np.float32).tobytes())
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="w.bin")
    onnx.save(model, tmp_path / "m.onnx")
    inputs = input_files(tmp_path / "m.onnx", None, "fmnist-calib")
    assert [p.name for p in inputs] == ["m.onnx", "w.bin"]
    with pytest.raises(ConfigError, match="is the input .*w.bin"):
        check_output(tmp_path / "w.bin", inputs)
