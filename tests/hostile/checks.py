"""Checks of what a successful hostile case wrote, run inside a fork-server child.

Each function raises on a bad output; the child's exit code tells the harness.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import onnx

MAX_CHECK_BYTES = 64 << 20  # outputs of few-kB inputs are small; anything bigger is suspect


def _size_ok(path: Path) -> None:
    size = path.stat().st_size
    if size > MAX_CHECK_BYTES:
        raise ValueError(f"{path}: {size:,} bytes written from a tiny input")


def check_onnx(path: str) -> None:
    """A written model passes the full ONNX checker and loads in onnxruntime."""
    from compiler.core.numerics import ort_session

    p = Path(path)
    _size_ok(p)
    model = onnx.load(p)
    onnx.checker.check_model(model, full_check=True)
    ort_session(model.SerializeToString())


def check_quant_dir(path: str) -> None:
    """quantize's three outputs: both models load, calibration.json parses."""
    d = Path(path)
    check_onnx(str(d / "model.quant.onnx"))
    check_onnx(str(d / "model.qdq.onnx"))
    json.loads((d / "calibration.json").read_text())


def check_bin(path: str) -> None:
    """A written binary loads with every check of the loader."""
    from targets.npusim.binary import load_binary

    _size_ok(Path(path))
    load_binary(path)


def check_npz(path: str) -> None:
    """`run -o` wrote a numeric .npz (no pickles)."""
    p = Path(path)
    _size_ok(p)
    with zipfile.ZipFile(p) as zf:
        if zf.testzip() is not None:
            raise ValueError("corrupt npz")
    with np.load(p, allow_pickle=False) as data:
        for key in data.files:
            np.asarray(data[key])


def check_compile_dir(path: str) -> None:
    """compile's folder: a report, a loading binary and loading models."""
    d = Path(path)
    report = json.loads((d / "report.json").read_text())
    if not isinstance(report, dict):
        raise ValueError("report.json is not an object")
    if (d / "model.bin").exists() or report.get("config", {}).get("quantize.enabled", True):
        check_bin(str(d / "model.bin"))
    for model in sorted(d.glob("*.onnx")):
        check_onnx(str(model))
