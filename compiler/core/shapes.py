"""Input shapes given by the user: `--input-shape` / config `input.shape`.

A spec binds the symbolic dims of a model's inputs once, at load
(`compiler.core.io.load_model(..., input_shapes=..., bind=True)`). Accepted forms:

* a string `NAME:1x3x224x224`, or a bare `1x3x224x224` for a single-input model
  (several specs in one string are separated by commas);
* a list of such strings (the repeated CLI flag), or a list of ints for a single input;
* a mapping `{NAME: [1, 3, 224, 224]}` (dims as a list or as a `1x3x224x224` string).

Parsed, every form becomes `{name: dims}` with `""` as the name of the bare form.
Stdlib only: this module is part of the foundation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from compiler.core.errors import ConfigError
from compiler.core.options import option

FLAG = "--input-shape"
KEY = "input.shape"
ShapeSpec = dict[str, tuple[int, ...]]

MAX_DIM = 2**31 - 1  # ONNX dims are int64, onnxruntime's int32 in places; no CNN needs more


class DataShapes(dict):
    """Shapes of the user's data arrays (array name -> dims), used when no spec is given.

    Binding takes from them only the dims the model leaves symbolic past the batch, for the
    inputs they name (or the single input, from a bare `.npy` or a lone array): data of
    shape [N, 3, 640, 640] binds an input [batch, 3, H, W] to [1, 3, 640, 640]. They never
    override a fixed dim; data that does not fit is reported when it is read.
    """


def parse_input_shapes(value: Any) -> ShapeSpec:
    """`{input name: dims}` from any accepted form ("" names the only input).

    Raises:
        ConfigError: A malformed spec, non-positive dims or an input given twice.
    """
    if value is None:
        return {}
    if isinstance(value, DataShapes):
        return value
    if isinstance(value, Mapping):
        return _merge((str(k), _dims(v, str(k))) for k, v in value.items())
    if isinstance(value, str):
        return _merge(_one(s) for s in value.split(",") if s.strip())
    if isinstance(value, (list, tuple)) and value and all(_is_int(v) for v in value):
        return {"": _dims(list(value), "")}
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return _merge(pair for text in value for pair in parse_input_shapes(text).items())
    raise ConfigError(f"{_show(value)}: expected NAME:1x3x224x224, a list of dims or "
                      f"a mapping {{NAME: [dims]}}")


def shape_problem(value: Any) -> str | None:
    """The option check: why `value` is not an input-shape spec, or None."""
    try:
        parse_input_shapes(value)
    except ConfigError as e:
        return f"is not an input shape ({e})"
    return None


def format_dims(dims: Any) -> str:
    """(1, 3, 224, 224) -> "1x3x224x224"."""
    return "x".join(str(d) for d in dims)


def _one(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.strip().rpartition(":")
    return name.strip(), _dims(dims, text.strip())


def _dims(value: Any, label: str) -> tuple[int, ...]:
    if isinstance(value, str):
        parts = [p.strip() for p in value.strip().lower().split("x")]
        if not all(p.lstrip("-").isdigit() for p in parts):
            raise ConfigError(f"{label or value!r}: dims must be integers like 1x3x224x224")
        value = [int(p) for p in parts]
    if not isinstance(value, (list, tuple)) or not value or not all(_is_int(v) for v in value):
        raise ConfigError(f"{_show(label or value)}: dims must be a list of integers")
    if any(v <= 0 for v in value):
        raise ConfigError(f"{_show(label or value)}: every dim must be positive")
    if any(v > MAX_DIM for v in value):
        raise ConfigError(f"{_show(label or value)}: a dim above {MAX_DIM:,} is not an image "
                          "size")
    return tuple(int(v) for v in value)


def _merge(pairs: Any) -> ShapeSpec:
    spec: ShapeSpec = {}
    for name, dims in pairs:
        if name in spec:
            raise ConfigError(f"input {name or '(unnamed)'!r} is given twice")
        spec[name] = dims
    if "" in spec and len(spec) > 1:
        raise ConfigError("a bare shape (no NAME:) is only for a single-input model")
    return spec


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _show(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


@dataclass(frozen=True)
class InputShapes:
    """The user's input shapes (config key `input.shape`, flag `--input-shape`)."""

    shape: Any = option(
        None, "input shapes binding symbolic dims at load: NAME:1x3x224x224, one per input "
        "(bare 1x3x224x224 for a single input); in YAML also a list of those, a list of dims "
        "or {NAME: [dims]}; unset: a symbolic batch becomes 1",
        types=(str, list, dict), key="shape", flag=FLAG, repeat=True,
        metavar="[NAME:]1x3x224x224", check=shape_problem)

    @property
    def spec(self) -> ShapeSpec:
        """The parsed `{input name: dims}` ("" for the bare form; empty when not given)."""
        return parse_input_shapes(self.shape)


__all__ = ["FLAG", "KEY", "DataShapes", "InputShapes", "ShapeSpec", "format_dims",
           "parse_input_shapes", "shape_problem"]
