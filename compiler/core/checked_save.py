"""Models are checked before they are written: a file npuc writes always loads.

A pass that produces an inconsistent graph (a Conv whose group no longer matches its
weights, a dangling edge) must fail the command, not leave a model that breaks the next
tool. `check_model_out` runs the ONNX checker on the weightless skeleton and opens that
skeleton in onnxruntime with the weights as typed inputs (no copy of them: the graph,
its types and its shapes are what can be broken); `save_checked` does that before the atomic
write, so nothing is replaced by a broken model.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from compiler.core.errors import GraphError
from compiler.core.io import save_model, to_proto
from compiler.core.ir import Model
from compiler.core.numerics import ort_message, ort_session, session_options


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
        ort_session(skeleton.SerializeToString(), session_options(threads=1, optimize=False))
    except Exception as e:  # onnxruntime raises its own exception types
        raise GraphError(f"{label}: the model to be written does not load in onnxruntime "
                         f"({ort_message(e)}); nothing was written") from e


def save_checked(model: Model, path: str | os.PathLike) -> Path:
    """`check_model_out`, then `compiler.core.io.save_model` (atomic)."""
    check_model_out(model, str(path))
    return save_model(model, path)
