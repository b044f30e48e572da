"""The typed quantized graph (`QGraph`): the contract between quantization and targets.

Every integer constant of `docs/fixed-point.md` lives here (int8 weights, int32 biases,
per-channel multipliers `m0`/`shift`, clamp bounds, lookup tables, index arrays), so the
numpy reference, the integer ONNX emitter and accelerator back ends all read the same
numbers and never rederive them.

Serialization is lossless: `QGraph.to_json()` returns a JSON-able description plus a dict of
numpy arrays referenced from it by key (`{"$array": key}`). `model.quant.onnx` stores the
description in the metadata property `npuc.qgraph` and each array as the initializer of the
same name, so `QGraph.from_model(load_model("model.quant.onnx"))` recovers the graph
exactly (`==` compares arrays by dtype, shape and value).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from compiler.core.errors import GraphError
from compiler.core.ir import Model

FORMAT = "npuc.qgraph"
VERSION = 1
METADATA_KEY = "npuc.qgraph"
INT8_MIN, INT8_MAX = -128, 127


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


class _Record:
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
class QTensor(_Record):
    """A tensor of the quantized graph.

    Attributes:
        name: Unique tensor name (naming rules: docs/fixed-point.md §13).
        shape: Dimensions; -1 for a dimension unknown at build time (a dynamic batch).
        dtype: numpy dtype name: "int8" for quantized tensors, "float32" at float
            boundaries (or the float model's dtype for non-float CPU-partition inputs).
        scale: float32 scale of an int8 tensor (r = scale·q), None for float tensors.
        data: Value of a constant int8 tensor (e.g. a constant Add operand), else None.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "int8"
    scale: float | None = None
    data: np.ndarray | None = None

    @property
    def is_quantized(self) -> bool:
        """True for int8 tensors."""
        return self.dtype == "int8"


@dataclass(frozen=True, eq=False)
class QOp(_Record):
    """Base of all quantized operations (name, input and output tensor names)."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def kind(self) -> str:
        """The op kind, e.g. "QConv" (the JSON `kind`)."""
        return type(self).__name__


@dataclass(frozen=True, eq=False)
class QConv(QOp):
    """2-D convolution (incl. grouped/depthwise) + bias + per-channel requant (§11).

    `weight` int8 [Cout, Cin/group, kh, kw]; `bias` int32 [Cout]; `m0`, `shift` int64 [Cout];
    `pads` in ONNX order (top, left, bottom, right); `weight_scale` float32 [Cout] (`Sw`,
    needed to export the QDQ model; None in QGraphs written before it was recorded).
    """

    weight: np.ndarray
    bias: np.ndarray
    m0: np.ndarray
    shift: np.ndarray
    lo: int
    hi: int
    strides: tuple[int, ...] = (1, 1)
    pads: tuple[int, ...] = (0, 0, 0, 0)
    dilations: tuple[int, ...] = (1, 1)
    group: int = 1
    weight_scale: np.ndarray | None = None

    @property
    def depthwise(self) -> bool:
        """True when every group has one input and one output channel."""
        return self.group > 1 and self.weight.shape[1] == 1 and self.weight.shape[0] == self.group


@dataclass(frozen=True, eq=False)
class QGemm(QOp):
    """x[..., K] · Wᵀ + bias with per-output-channel requant along the last axis (§11).

    `weight` int8 [N, K] (output-channel major); `bias` int32 [N]; `m0`, `shift` int64 [N];
    `weight_scale` float32 [N] (the `Sw` that `m0`/`shift` and the bias were derived from).
    """

    weight: np.ndarray
    bias: np.ndarray
    m0: np.ndarray
    shift: np.ndarray
    lo: int
    hi: int
    weight_scale: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class QMatMul(QGemm):
    """A MatMul with a constant right operand; same arithmetic as `QGemm`."""


@dataclass(frozen=True, eq=False)
class QAdd(QOp):
    """y = clamp((xa·a_mult + xb·b_mult + 2^(shift-1)) >> shift, lo, hi) (§6; Sub: b_mult<0)."""

    a_mult: int
    b_mult: int
    shift: int
    lo: int
    hi: int


@dataclass(frozen=True, eq=False)
class QMul(QOp):
    """y = requant(xa·xb, m0, shift, lo, hi), numpy broadcasting (§7)."""

    m0: int
    shift: int
    lo: int
    hi: int


@dataclass(frozen=True, eq=False)
class QConcat(QOp):
    """Each input requantized to the output scale with its own (m0, shift), then joined (§7)."""

    axis: int
    m0: tuple[int, ...]
    shift: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class QAvgPool(QOp):
    """Padded 2-D window sum, requantized per output position with m0/shift [OH, OW] (§8)."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    m0: np.ndarray
    shift: np.ndarray
    lo: int = INT8_MIN
    hi: int = INT8_MAX


@dataclass(frozen=True, eq=False)
class QGlobalAvgPool(QOp):
    """Sum over H·W, requantized with scalar m0/shift (§8)."""

    m0: int
    shift: int
    lo: int = INT8_MIN
    hi: int = INT8_MAX
    keepdims: bool = True


@dataclass(frozen=True, eq=False)
class QMaxPool(QOp):
    """2-D max pooling on int8 (ONNX semantics); output scale = input scale."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    dilations: tuple[int, ...] = (1, 1)
    ceil_mode: int = 0


@dataclass(frozen=True, eq=False)
class QResizeNearest(QOp):
    """y = x gathered along each axis by `indices[axis]` (None: axis unchanged) (§9)."""

    indices: tuple[np.ndarray | None, ...]


MOVE_OPS = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Split", "Pad")


@dataclass(frozen=True, eq=False)
class QMove(QOp):
    """Integer data movement with ONNX semantics; every operand is in `attrs` (§9).

    attrs by op: Reshape {shape}, Flatten {axis}, Transpose {perm}, Squeeze/Unsqueeze {axes},
    Slice {starts, ends, axes, steps}, Split {axis, split}, Pad {pads, mode, value (int8)}.
    """

    op: str
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class QLut(QOp):
    """y = table[x + 128]; `table` int8 [256]; `fn` names the function tabulated (§10)."""

    table: np.ndarray
    fn: str = ""


@dataclass(frozen=True, eq=False)
class QQuantize(QOp):
    """float32 -> int8: clamp(floor(x ⊗ inv_scale ⊕ 0.5), -128, 127) in float32 (§4)."""

    scale: float
    inv_scale: float


@dataclass(frozen=True, eq=False)
class QDequantize(QOp):
    """int8 -> float32: float32(q) ⊗ scale (§5)."""

    scale: float


@dataclass(frozen=True, eq=False)
class FloatNode(_Record):
    """One float ONNX node of a CPU partition (attribute tensors are numpy arrays)."""

    op: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""


@dataclass(frozen=True, eq=False)
class QCpuPartition(QOp):
    """Float nodes run on the CPU, float tensors in and out (§12).

    Attributes:
        nodes: The float nodes in topological order.
        constants: Float model initializers the nodes read, by their original names.
        reasons: Node name -> why it could not be quantized (user-facing).
    """

    nodes: tuple[FloatNode, ...] = ()
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)


OP_TYPES: dict[str, type[QOp]] = {cls.__name__: cls for cls in (
    QConv, QGemm, QMatMul, QAdd, QMul, QConcat, QAvgPool, QGlobalAvgPool, QMaxPool,
    QResizeNearest, QMove, QLut, QQuantize, QDequantize, QCpuPartition)}


@dataclass(frozen=True, eq=False)
class QGraph(_Record):
    """A quantized graph: tensors, topologically ordered ops, graph inputs and outputs.

    Attributes:
        tensors: Name -> QTensor for every tensor between ops (and constant int8 operands).
        ops: Operations in execution (topological) order.
        inputs: Graph input names (float tensors of the original model).
        outputs: Graph output names (float tensors, same names as the float model).
        info: JSON-able provenance (calibrator, source model hash, ...).
    """

    tensors: dict[str, QTensor]
    ops: tuple[QOp, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)

    def tensor(self, name: str) -> QTensor:
        """The tensor called `name` (GraphError when absent)."""
        if name not in self.tensors:
            raise GraphError(f"qgraph: no tensor {name!r}")
        return self.tensors[name]

    def producer(self, name: str) -> QOp | None:
        """The op writing tensor `name`, or None for inputs and constants."""
        return next((op for op in self.ops if name in op.outputs), None)

    def consumers(self, name: str) -> list[QOp]:
        """Ops reading tensor `name`."""
        return [op for op in self.ops if name in op.inputs]

    def op(self, name: str) -> QOp:
        """The op called `name`."""
        for op in self.ops:
            if op.name == name:
                return op
        raise GraphError(f"qgraph: no op {name!r}")

    def validate(self) -> None:
        """Check names, topological order and int8 scales; raise GraphError when broken."""
        ready = set(self.inputs) | {n for n, t in self.tensors.items() if t.data is not None}
        for name in list(self.inputs) + list(self.outputs):
            self.tensor(name)
        for op in self.ops:
            for name in op.inputs:
                if name and name not in ready:
                    raise GraphError(f"qgraph: op {op.name!r} reads {name!r} before it is written")
            for name in op.outputs:
                _check_tensor(self.tensor(name), op)
                ready.add(name)
        missing = [n for n in self.outputs if n not in ready]
        if missing:
            raise GraphError(f"qgraph: outputs never written: {missing}")

    def to_json(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """A JSON-able description plus the arrays it references by key."""
        arrays: dict[str, np.ndarray] = {}
        desc = {
            "format": FORMAT, "version": VERSION,
            "inputs": list(self.inputs), "outputs": list(self.outputs), "info": self.info,
            "tensors": [_encode_record(t, f"{t.name}::", arrays) for t in self.tensors.values()],
            "ops": [{"kind": op.kind, **_encode_record(op, f"{op.name}::", arrays)}
                    for op in self.ops],
        }
        return desc, arrays

    def dumps(self) -> str:
        """Standalone JSON text with every array inlined (base64)."""
        desc, arrays = self.to_json()
        return json.dumps({"graph": desc, "arrays": {k: _inline(v) for k, v in arrays.items()}})

    @classmethod
    def loads(cls, text: str) -> QGraph:
        """Inverse of `dumps`."""
        doc = json.loads(text)
        return cls.from_json(doc["graph"], {k: _uninline(v) for k, v in doc["arrays"].items()})

    @classmethod
    def from_json(cls, desc: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> QGraph:
        """Rebuild a QGraph from `to_json()` output (GraphError on a foreign description)."""
        if desc.get("format") != FORMAT or desc.get("version") != VERSION:
            raise GraphError(f"not an {FORMAT} v{VERSION} description "
                             f"(format={desc.get('format')!r}, version={desc.get('version')!r})")
        try:
            tensors = [QTensor(**_decode(t, arrays)) for t in desc["tensors"]]
            ops = tuple(_decode_op(o, arrays) for o in desc["ops"])
            return cls({t.name: t for t in tensors}, ops, tuple(desc["inputs"]),
                       tuple(desc["outputs"]), dict(desc.get("info", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise GraphError(f"corrupt {FORMAT} description: {e}") from e

    @classmethod
    def from_model(cls, model: Model) -> QGraph:
        """Recover the QGraph embedded in a `model.quant.onnx` (metadata + initializers)."""
        if METADATA_KEY not in model.metadata:
            raise GraphError(f"model has no {METADATA_KEY!r} metadata: not an npuc "
                             "model.quant.onnx")
        try:
            desc = json.loads(model.metadata[METADATA_KEY])
        except json.JSONDecodeError as e:
            raise GraphError(f"corrupt {METADATA_KEY} metadata: {e}") from e
        arrays = {name: np.asarray(t.values) for name, t in model.graph.tensors().items()
                  if hasattr(t, "values")}
        return cls.from_json(desc, arrays)

    def iter_arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        """(key, array) pairs exactly as `to_json` names them."""
        return iter(self.to_json()[1].items())


def _check_tensor(t: QTensor, op: QOp) -> None:
    if t.is_quantized and not (t.scale is not None and np.isfinite(t.scale) and t.scale > 0):
        raise GraphError(f"qgraph: int8 tensor {t.name!r} (written by {op.name!r}) has "
                         f"invalid scale {t.scale!r}")


# --- JSON encoding ------------------------------------------------------------------------

INLINE_FIELDS = frozenset({"weight_scale"})
"""Small arrays no integer op reads (kept in the metadata JSON, not as initializers)."""

def _encode_record(rec: _Record, prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    out = {}
    for f in fields(rec):
        value = getattr(rec, f.name)
        if isinstance(rec, QCpuPartition) and f.name == "constants":
            arrays.update(value)  # keep the float model's names: the float nodes read them
            out[f.name] = {"$constants": sorted(value)}
        elif f.name in INLINE_FIELDS:
            out[f.name] = _encode_inline(value)
        else:
            out[f.name] = _encode(value, prefix + f.name, arrays)
    return out


def _encode(value: Any, key: str, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, np.ndarray):
        if key in arrays:
            raise GraphError(f"qgraph: duplicate array key {key!r}")
        arrays[key] = value
        return {"$array": key}
    if isinstance(value, FloatNode):
        return {"$node": {f.name: _encode_inline(getattr(value, f.name)) for f in fields(value)}}
    if isinstance(value, tuple):
        return [_encode(v, f"{key}::{i}", arrays) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {"$map": {k: _encode(v, f"{key}::{k}", arrays) for k, v in value.items()}}
    return value


def _encode_inline(value: Any) -> Any:
    # Float-node attributes (e.g. ConstantOfShape's value) are small: inline them.
    if isinstance(value, np.ndarray):
        return {"$inline": _inline(value)}
    if isinstance(value, tuple):
        return [_encode_inline(v) for v in value]
    if isinstance(value, dict):
        return {"$map": {k: _encode_inline(v) for k, v in value.items()}}
    return value


def _decode(value: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(value, list):
        return tuple(_decode(v, arrays) for v in value)
    if not isinstance(value, dict):
        return value
    if "$array" in value:
        return np.asarray(arrays[value["$array"]])
    if "$inline" in value:
        return _uninline(value["$inline"])
    if "$constants" in value:
        return {k: np.asarray(arrays[k]) for k in value["$constants"]}
    if "$node" in value:
        return FloatNode(**{k: _decode(v, arrays) for k, v in value["$node"].items()})
    if "$map" in value:
        return {k: _decode(v, arrays) for k, v in value["$map"].items()}
    return {k: _decode(v, arrays) for k, v in value.items()}


def _decode_op(desc: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> QOp:
    kind = desc.get("kind")
    if kind not in OP_TYPES:
        raise GraphError(f"unknown qgraph op kind {kind!r}")
    return OP_TYPES[kind](**{k: _decode(v, arrays) for k, v in desc.items() if k != "kind"})


def _inline(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape),
            "data": base64.b64encode(a.tobytes()).decode("ascii")}


def _uninline(d: Mapping[str, Any]) -> np.ndarray:
    raw = base64.b64decode(d["data"])
    return np.frombuffer(raw, dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()
