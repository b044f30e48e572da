"""Records of the quantized graph: array-aware frozen dataclasses, tensors, the op base.

Every QOp subclass (one family module per op, `compiler.core.qops`) is a frozen dataclass
whose fields are canonicalised on construction (lists -> tuples, numpy scalars -> Python
numbers) and compared array-aware, so a QGraph round-trips through JSON exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from compiler.core.fixedpoint import INT8_MAX, INT8_MIN, QRANGE

__all__ = ["INT8_MAX", "INT8_MIN", "FloatNode", "QOp", "QTensor", "Record", "values_equal"]


def _freeze(value: Any) -> Any:
    """Canonical immutable form: lists -> tuples, numpy scalars -> Python numbers."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return {str(k): _freeze(v) for k, v in value.items()}
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def values_equal(a: Any, b: Any) -> bool:
    """Deep equality where arrays must match in dtype, shape and every element."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and bool(np.array_equal(a, b)))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k]) for k in a)
    if type(a) is not type(b) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
        return False
    return a == b


class Record:
    """Frozen-dataclass mixin: canonical field values and array-aware equality."""

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _freeze(getattr(self, f.name)))

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        return all(values_equal(getattr(self, f.name), getattr(other, f.name))
                   for f in fields(self))

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class QTensor(Record):
    """A tensor of the quantized graph.

    Attributes:
        name: Unique tensor name (naming rules: docs/fixed-point.md §13).
        shape: Dimensions; -1 for a dimension unknown at build time: a dynamic batch, or
            (when `runtime_shape`) a data-dependent size. An empty shape with
            `runtime_shape` means even the rank is unknown.
        dtype: numpy dtype name: a quantized precision of `fixedpoint.QRANGE` ("int8", or
            "uint8" for a tensor that is never negative, docs/fixed-point.md §15), "float32"
            at float boundaries (or the float model's dtype for non-float CPU-partition
            inputs).
        scale: float32 scale of a quantized tensor (r = scale·q), None for float tensors.
        data: Value of a constant int8 tensor (e.g. a constant Add operand), else None.
        runtime_shape: The shape is only known at run time (outputs of NonMaxSuppression,
            NonZero, TopK with a computed k, and what depends on them): such a tensor is
            a float CPU-partition tensor and stays on the host.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "int8"
    scale: float | None = None
    data: np.ndarray | None = None
    runtime_shape: bool = False

    @property
    def is_quantized(self) -> bool:
        """True for quantized tensors (any precision of `fixedpoint.QRANGE`)."""
        return self.dtype in QRANGE


@dataclass(frozen=True, eq=False)
class QOp(Record):
    """Base of all quantized operations (name, input and output tensor names)."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def kind(self) -> str:
        """The op kind, e.g. "QConv" (the JSON `kind`)."""
        return type(self).__name__


@dataclass(frozen=True, eq=False)
class FloatNode(Record):
    """One float ONNX node of a CPU partition (attribute tensors are numpy arrays)."""

    op: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""
