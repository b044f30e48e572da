"""Models are checked before they are written: a file npuc writes always loads.

A pass that produces an inconsistent graph (a Conv whose group no longer matches its
weights, a dangling edge) must fail the command, not leave a model that breaks the next
tool. `check_model_out` runs the ONNX checker on the weightless skeleton and opens the model
in onnxruntime (weights handed over in place, no copy); `save_checked` does that before the
atomic write, so nothing is replaced by a broken model.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from compiler.core.errors import GraphError
from compiler.core.io import save_model, to_proto
from compiler.core.ir import Model
from compiler.core.numerics import session


def check_model_out(model: Model | onnx.ModelProto, label: str) -> None:
    """Raise `GraphError` unless `model` passes the ONNX checker and loads in onnxruntime."""
    skeleton = model if isinstance(model, onnx.ModelProto) else to_proto(model, skeleton=True)
    try:
        onnx.checker.check_model(skeleton)
    except (onnx.checker.ValidationError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GraphError(f"{label}: the model to be written is not valid ONNX ({first}); "
                         "nothing was written") from e
    try:
        session(model, threads=1, optimize=False)
    except GraphError as e:
        raise GraphError(f"{label}: the model to be written does not load ({e}); nothing was "
                         "written") from e


def save_checked(model: Model, path: str | os.PathLike) -> Path:
    """`check_model_out`, then `compiler.core.io.save_model` (atomic)."""
    check_model_out(model, str(path))
    return save_model(model, path)
