"""Model sources: a file, or a bundled model name, on every command that loads a model."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest

from compiler.cli import main
from compiler.core.errors import ModelLoadError
from compiler.driver.sources import is_bundled, resolve_model
from models.registry import model_path


def test_bundled_name_resolves_to_its_proto():
    proto = resolve_model("fmnist_resnet")
    assert isinstance(proto, onnx.ModelProto)
    assert len(proto.graph.node) == len(onnx.load(str(model_path("fmnist_resnet"))).graph.node)


def test_existing_file_wins_over_a_bundled_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(model_path("fmnist_mobilenetv2"), tmp_path / "fmnist_resnet")
    assert not is_bundled("fmnist_resnet")
    assert resolve_model("fmnist_resnet") == "fmnist_resnet"


def test_missing_name_lists_the_bundled_models(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=r"^nosuch: no such file, and not a bundled model "
                                             r"\(.*fmnist_resnet"):
        resolve_model("nosuch")
    assert resolve_model("nosuch.onnx") == "nosuch.onnx"  # load_model says "no such file"


@pytest.mark.parametrize("command", [["inspect"], ["groups"]])
def test_step_commands_take_bundled_names(command, capsys):
    assert main([*command, "fmnist_resnet", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    if command == ["inspect"]:
        assert out["totals"]["macs"] == 44_218_560
    else:
        assert len(out["groups"]) == 12


def test_missing_model_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", "nosuch"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("npuc: error: nosuch: no such file, and not a bundled model")
    assert "\n" not in err
