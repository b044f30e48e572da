"""Progress bars: shown on a terminal, never under --json or into a pipe."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from tests.compiler.cli.test_eval_folder import colour_classifier
from tests.compiler.core.test_imagefolder import make_folder

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow  # three fresh interpreters


def _stderr(argv, tty: bool) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not tty:
        done = subprocess.run([sys.executable, "-m", "compiler.cli", *argv], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stderr
    main_fd, child_fd = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "compiler.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=child_fd)
    os.close(child_fd)
    chunks = []
    while True:
        try:
            data = os.read(main_fd, 4096)
        except OSError:  # the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=120) == 0
    os.close(main_fd)
    return b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("progress")
    data = str(make_folder(tmp / "val", (4, 4, 4)))
    return ["eval", colour_classifier(tmp / "m.onnx"), "--data", data, "--batch", "1"]


def test_bar_on_a_terminal(case):
    err = _stderr(case, tty=True)
    assert "eval m.onnx:" in err and "/12 [" in err


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_no_bar_into_a_pipe_or_under_json(case, extra):
    assert _stderr(case + extra, tty=extra == ["--json"]) == ""
