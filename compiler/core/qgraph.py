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
import dataclasses
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx

from compiler.core.errors import GraphError
from compiler.core.ir import Model
from compiler.core.qops import OPS
from compiler.core.qops.boundary import QDequantize, QQuantize
from compiler.core.qops.concat import QConcat
from compiler.core.qops.conv import QConv
from compiler.core.qops.cpu_partition import QCpuPartition
from compiler.core.qops.eltwise import QAdd, QMul
from compiler.core.qops.gemm import QGemm, QMatMul
from compiler.core.qops.lut import QLut
from compiler.core.qops.move import MOVE_OPS, QMove
from compiler.core.qops.pool import QAvgPool, QGlobalAvgPool, QMaxPool
from compiler.core.qops.record import (
    INT8_MAX,
    INT8_MIN,
    FloatNode,
    QOp,
    QTensor,
    Record,
    values_equal,
)
from compiler.core.qops.resize import QResizeNearest
from compiler.core.safe_yaml import load_json

__all__ = ["QGraph", "QTensor", "QOp", "FloatNode", "OP_TYPES", "QConv", "QGemm", "QMatMul",
           "QAdd", "QMul", "QConcat", "QAvgPool", "QGlobalAvgPool", "QMaxPool", "QResizeNearest",
           "QMove", "QLut", "QQuantize", "QDequantize", "QCpuPartition", "MOVE_OPS", "INT8_MIN",
           "INT8_MAX", "SIGNED_SUFFIX", "NARROW_SUFFIX", "values_equal"]

SIGNED_SUFFIX = "__s8"
"""Name suffix of the int8 copy of a uint8 tensor made for an op that needs a signed input
(docs/fixed-point.md §13, §15)."""
NARROW_SUFFIX = "__n8"
"""Name suffix of the int8 copy of an int16 tensor made for an op without int16 inputs
(docs/fixed-point.md §16)."""
FORMAT = "npuc.qgraph"
VERSION = 4
"""2: quantized tensors may be uint8 (docs/fixed-point.md §15); 3: or int16 (§16); 4: the
weights of a conv/FC layer may be int16 (§17). Files of earlier versions load too."""
VERSIONS = (1, 2, 3, 4)
METADATA_KEY = "npuc.qgraph"


OP_TYPES: Mapping[str, type[QOp]] = MappingProxyType({kind: d.cls for kind, d in OPS.items()})


@dataclass(frozen=True, eq=False)
class QGraph(Record):
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
        """Check names, topological order and quantized scales; raise GraphError when broken."""
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
        doc = load_json(text, "QGraph", GraphError)
        try:
            return cls.from_json(doc["graph"], {k: _uninline(v) for k, v in
                                                doc["arrays"].items()})
        except (KeyError, TypeError, AttributeError) as e:
            raise GraphError(f"corrupt {FORMAT} text ({_why(e)})") from e

    @classmethod
    def from_json(cls, desc: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> QGraph:
        """Rebuild a QGraph from `to_json()` output (GraphError on a foreign description)."""
        if not isinstance(desc, Mapping) or desc.get("format") != FORMAT or \
                desc.get("version") not in VERSIONS:
            desc = desc if isinstance(desc, Mapping) else {}
            raise GraphError(f"not an {FORMAT} v{VERSION} description "
                             f"(format={desc.get('format')!r}, version={desc.get('version')!r})")
        try:
            tensors = [QTensor(**_decode(t, arrays)) for t in desc["tensors"]]
            for t in tensors:
                _check_dtype(t)
            ops = tuple(_decode_op(o, arrays) for o in desc["ops"])
            return cls({t.name: t for t in tensors}, ops, tuple(desc["inputs"]),
                       tuple(desc["outputs"]), dict(desc.get("info", {})))
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            raise GraphError(f"corrupt {FORMAT} description ({_why(e)})") from e

    @classmethod
    def from_model(cls, model: Model) -> QGraph:
        """Recover the QGraph embedded in a `model.quant.onnx` (metadata + initializers)."""
        if METADATA_KEY not in model.metadata:
            raise GraphError(f"model has no {METADATA_KEY!r} metadata: not an npuc "
                             "model.quant.onnx")
        desc = load_json(model.metadata[METADATA_KEY], f"{METADATA_KEY} metadata", GraphError)
        arrays = {name: np.asarray(t.values) for name, t in model.graph.tensors().items()
                  if hasattr(t, "values")}
        return cls.from_json(desc, arrays)

    def iter_arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        """(key, array) pairs exactly as `to_json` names them."""
        return iter(self.to_json()[1].items())


def _why(error: Exception) -> str:
    return f"missing field {error}" if isinstance(error, KeyError) else str(error)


def _check_dtype(t: QTensor) -> None:
    # A foreign dtype string would otherwise surface later as numpy's TypeError.
    try:
        kind = np.dtype(t.dtype).kind
    except TypeError:
        kind = ""
    if not isinstance(t.dtype, str) or kind not in "biuf" or not kind:
        raise GraphError(f"qgraph: tensor {t.name!r} has dtype {t.dtype!r} "
                         "(expected a numeric numpy dtype name)")


def _check_tensor(t: QTensor, op: QOp) -> None:
    if t.is_quantized and not (t.scale is not None and np.isfinite(t.scale) and t.scale > 0):
        raise GraphError(f"qgraph: {t.dtype} tensor {t.name!r} (written by {op.name!r}) has "
                         f"invalid scale {t.scale!r}")


# --- JSON encoding ------------------------------------------------------------------------

INLINE_FIELDS = frozenset({"weight_scale"})
"""Small arrays no integer op reads (kept in the metadata JSON, not as initializers)."""

def _encode_record(rec: Record, prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
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
    # Float-node attributes (e.g. ConstantOfShape's value) are small: inline them;
    # subgraphs (If/Loop/Scan bodies) as serialized GraphProto bytes.
    if isinstance(value, np.ndarray):
        return {"$inline": _inline(value)}
    if isinstance(value, onnx.GraphProto):
        return {"$graph": base64.b64encode(value.SerializeToString()).decode("ascii")}
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
    if "$graph" in value:
        return _graph(value["$graph"])
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
    op = OP_TYPES[kind](**{k: _decode(v, arrays) for k, v in desc.items() if k != "kind"})
    _check_field_types(op)
    return op


_SCALARS = {"int": (int, np.integer), "float": (int, float, np.integer, np.floating),
            "bool": (bool, np.bool_), "str": (str,)}


def _check_field_types(op: QOp) -> None:
    """Scalar and int-tuple fields of a decoded op must have their declared types.

    The JSON comes from a file: a string where an int belongs must not reach numpy.
    """
    for f in dataclasses.fields(op):
        declared, value = str(f.type), getattr(op, f.name)
        if declared in _SCALARS:
            ok = isinstance(value, _SCALARS[declared]) and (
                declared == "bool" or not isinstance(value, (bool, np.bool_)))
        elif declared == "tuple[int, ...]":
            ok = isinstance(value, tuple) and all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
        else:
            continue
        if not ok or (declared == "float" and not np.isfinite(value)):
            raise ValueError(f"op {op.name!r}: field {f.name} must be {declared}, got "
                             f"{value!r:.60}")


def _inline(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape),
            "data": base64.b64encode(a.tobytes()).decode("ascii")}


def _graph(text: str) -> onnx.GraphProto:
    graph = onnx.GraphProto()
    try:
        graph.ParseFromString(base64.b64decode(text))
    except Exception as e:  # protobuf's DecodeError and binascii errors
        raise ValueError(f"bad subgraph: {e}") from e
    return graph


def _uninline(d: Mapping[str, Any]) -> np.ndarray:
    dtype = np.dtype(d["dtype"])
    if dtype.kind not in "biuf":
        raise ValueError(f"inline array of dtype {dtype} (only numbers)")
    raw = base64.b64decode(d["data"], validate=True)
    return np.frombuffer(raw, dtype=dtype).reshape(d["shape"]).copy()
