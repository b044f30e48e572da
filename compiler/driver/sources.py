"""Where a model named on the command line comes from: a file, or a bundled model name.

Every command that loads a model accepts both (`npuc inspect fmnist_resnet` as well as
`npuc inspect model.onnx`). A path that exists, or any name ending in `.onnx`, is a file
(so a file called like a bundled model wins, and a missing `.onnx` gets "no such file");
any other name the registry knows is built or loaded from `models/`.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from compiler.core.errors import ModelLoadError


def is_bundled(name: str | Path) -> bool:
    """Whether `name` refers to a bundled model rather than a file."""
    from models.registry import MODELS

    text = str(name)
    return text in MODELS and not Path(text).exists() and not text.endswith(".onnx")


def resolve_model(name: str | Path) -> str | Path | onnx.ModelProto:
    """The model source for `compiler.core.io.load_model`: the path, or the bundled proto.

    Raises:
        ModelLoadError: Neither a file nor a bundled name (one line listing the bundled
            names), or a bundled model whose file is missing.
        NpucError: A bundled model that needs the `zoo` extra.
    """
    if not is_bundled(name):
        _check_exists(name)
        return name
    from models.registry import get_model

    return get_model(str(name))[0]


def _check_exists(name: str | Path) -> None:
    """A missing path without `.onnx` may be a misspelt bundled name: say both."""
    text = str(name)
    if text.endswith(".onnx") or os.path.lexists(text):
        return  # load_model gives the file's own error (missing, not regular, ...)
    from models.registry import MODELS

    raise ModelLoadError(f"{text}: no such file, and not a bundled model "
                         f"({', '.join(MODELS)})")
