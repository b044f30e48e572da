"""Every CLI failure is one printable `npuc: error:` line with exit 2 (issue #17)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from compiler.cli import main
from compiler.core.errors import one_line
from tests.conftest import conv_model

ROOT = Path(__file__).resolve().parents[3]


def _run(capsys, *argv: str) -> tuple[int, list[str]]:
    code = main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("argv,match", [
    ((), "no command given: one of inspect, groups"),
    (("bogus",), "argument COMMAND: invalid choice: 'bogus'"),
    (("prune", "m.onnx"), "prune: the following arguments are required: -o/--output "
                          "(see npuc prune -h)"),
    (("quantize", "m.onnx", "-o", "q", "--batch-size", "abc"),
     "quantize: argument --batch-size: invalid int value: 'abc'"),
])
def test_usage_errors_are_one_line(capsys, argv, match):
    code, err = _run(capsys, *argv)
    assert code == 2 and len(err) == 1 and err[0].startswith("npuc: error: ")
    assert match in err[0]


def test_hostile_names_cannot_forge_lines(capsys, tmp_path):
    model = conv_model()
    conv = next(n for n in model.graph.node if n.name == "conv")
    conv.name = "evil\nTraceback (most recent call last):\n\x1b[31mboom"
    del conv.attribute[:]
    conv.attribute.append(onnx.helper.make_attribute("group", 3))
    onnx.save(model, tmp_path / "m.onnx")
    code, err = _run(capsys, "inspect", str(tmp_path / "m.onnx"))
    assert code == 2 and len(err) == 1
    assert "node 'evil\\nTraceback (most recent call last):\\n\\x1b[31mboom' (Conv)" in err[0]
    assert "\x1b" not in err[0]


def test_one_line():
    assert one_line("a\n  b\r\nc\x00d") == "a b c\\x00d"
    assert one_line("x" * 5000, 10) == "x" * 9 + "…"


def test_onnxruntime_writes_nothing_under_home(tmp_path):
    """Importing npuc (then onnxruntime) turns telemetry off before onnxruntime loads."""
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / ".cache")}
    env.pop("ORT_DISABLE_TELEMETRY", None)
    code = ("import compiler.core, onnxruntime as ort;"
            "from compiler.core.numerics import ort_session;"
            "from tests.conftest import conv_model;"
            "ort_session(conv_model().SerializeToString())")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)
    assert list(tmp_path.iterdir()) == []
