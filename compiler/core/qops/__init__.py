"""Every int8 op, each defined in one family module: `OPS` maps the op kind to its `OpDef`.

The family modules of this package (conv, gemm, eltwise, ...) each list their ops in `DEFS`;
they are discovered here, so adding an op means adding (or extending) one module
(docs/architecture.md, "Adding an int8 op"). `OPS` is built once and read-only; ops are
ordered by their docs/fixed-point.md section.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from compiler.core.errors import GraphError
from compiler.core.fixedpoint import lut_offset
from compiler.core.qops.base import OpDef, OpWork, Unit, UnitIO
from compiler.core.qops.record import FloatNode, QOp, QTensor

__all__ = ["OPS", "OpDef", "OpWork", "Unit", "UnitIO", "FloatNode", "QOp", "QTensor", "op_def",
           "by_unit_kind", "matchers", "channel_tables"]


def _section(d: OpDef) -> int:
    return int(d.section.lstrip("§"))


def _discover() -> tuple[OpDef, ...]:
    """The `DEFS` of every module of this package, in spec-section order."""
    defs: list[OpDef] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        defs.extend(getattr(module, "DEFS", ()))
    return tuple(sorted(defs, key=_section))


def _index(defs: tuple[OpDef, ...]) -> Mapping[str, OpDef]:
    table: dict[str, OpDef] = {}
    for d in defs:
        if d.kind in table:
            raise GraphError(f"op kind {d.kind} is defined twice")
        table[d.kind] = d
    return MappingProxyType(table)


OPS: Mapping[str, OpDef] = _index(_discover())


def op_def(kind: str) -> OpDef:
    """The definition of op kind `kind` (GraphError when unknown)."""
    if kind not in OPS:
        raise GraphError(f"unknown quantized op kind {kind!r}")
    return OPS[kind]


def by_unit_kind(kind: str) -> OpDef:
    """The op a matched unit of kind `kind` lowers to."""
    for d in OPS.values():
        if kind in d.unit_kinds:
            return d
    raise GraphError(f"no quantized op lowers units of kind {kind!r}")


def matchers() -> dict:
    """Float ONNX op type -> matcher, over all ops."""
    return {op: m for d in OPS.values() for op, m in d.matchers.items()}


def channel_tables(op: QOp, channels: int, in_dtype: str = "int8") -> np.ndarray:
    """A channelwise op's reference on every value of its input type, per channel.

    The result is [channels, 256] of the output's type; `in_dtype` is int8 or uint8.

    Row c, entry x + offset (`fixedpoint.lut_offset`: 128 for int8, 0 for uint8) is the
    op's output for input x in channel c, so a target may run any `OpDef.channelwise` op as
    one table lookup per channel, bit-exact by construction.
    """
    d = op_def(op.kind)
    if not d.channelwise:
        raise GraphError(f"{op.kind} is not channelwise: it cannot be tabulated per channel")
    lo = -lut_offset(in_dtype)
    ramp = np.arange(lo, lo + 256).astype(np.dtype(in_dtype))
    x = np.ascontiguousarray(np.broadcast_to(ramp, (1, channels, 256)))
    (y,) = d.reference(op, [x], None)
    return np.ascontiguousarray(y[0])
