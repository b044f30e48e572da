"""The protobuf wire format of ONNX files, just enough to cut weights out before parsing.

`strip_weights` walks a serialized `ModelProto` (bytes or a memory map) and copies it
without the large `raw_data` payloads of the main graph's initializers (and, on request, of
its Constant nodes' values), recording where each payload is; `compiler.core.onnxfile` then
parses only that weightless skeleton and reads each payload straight into an array.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

# ONNX field numbers (onnx.proto): ModelProto.graph, GraphProto.initializer, TensorProto.raw_data
MODEL_GRAPH, GRAPH_INITIALIZER, TENSOR_RAW_DATA = 7, 5, 9
# GraphProto.node; NodeProto.op_type, .attribute, .domain; AttributeProto.name, .t
_GRAPH_NODE, _NODE_OP_TYPE, _NODE_ATTRIBUTE, _NODE_DOMAIN, _ATTR_NAME, _ATTR_T = 1, 4, 5, 7, 1, 5
LEN = 2  # the wire type of length-delimited fields


class WireError(ValueError):
    """The bytes are not the protobuf layout this module understands (callers fall back)."""


@dataclass(frozen=True)
class Field:
    """One field of a message: number, wire type and byte offsets in the buffer."""

    number: int
    wire: int
    head: int  # offset of the key
    start: int  # offset of the payload (after the length, for length-delimited fields)
    end: int


def _varint(buf, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise WireError("truncated or overlong varint")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def fields(buf, start: int, end: int) -> Iterator[Field]:
    """The fields of the message in `buf[start:end]`, in order."""
    i = start
    while i < end:
        head = i
        key, i = _varint(buf, i, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _varint(buf, i, end)
            body = i
        elif wire in (1, 5):
            body, i = i, i + (8 if wire == 1 else 4)
        elif wire == LEN:
            size, body = _varint(buf, i, end)
            i = body + size
        else:
            raise WireError(f"unsupported wire type {wire}")
        if i > end or number == 0:
            raise WireError("truncated message")
        yield Field(number, wire, head, body, i)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def len_key(number: int, size: int) -> bytes:
    """The key and length of a length-delimited field."""
    return _encode_varint(number << 3 | LEN) + _encode_varint(size)


def only_graph(buf, start: int, end: int) -> Iterator[tuple[Field, bool]]:
    """Top-level fields of a ModelProto, flagging the (single) graph field."""
    graphs = 0
    for f in fields(buf, start, end):
        is_graph = f.number == MODEL_GRAPH and f.wire == LEN
        graphs += is_graph
        if graphs > 1:
            raise WireError("graph field repeated")
        yield f, is_graph


def strip_weights(buf, min_bytes: int, constants: dict | None = None
                  ) -> tuple[bytes, dict[int, tuple[int, int]]]:
    """The model without its large initializer payloads, and where those payloads are.

    Args:
        buf: A serialized ModelProto (bytes, mmap, ...).
        min_bytes: Payloads larger than this are cut out.
        constants: When given, the large `value` payloads of the main graph's Constant nodes
            are cut out too, and recorded here as {node index: (offset in buf, length)}.

    Returns:
        (skeleton bytes, {initializer index: (offset in buf, length)}).

    Raises:
        WireError: The bytes are not a protobuf message of the expected layout.
    """
    out, cut = bytearray(), {}
    for f, is_graph in only_graph(buf, 0, len(buf)):
        if not is_graph:
            out += buf[f.head:f.end]
            continue
        body = _strip_graph(buf, f, min_bytes, cut, constants)
        out += len_key(MODEL_GRAPH, len(body)) + body
    return bytes(out), cut


def _strip_graph(buf, graph: Field, min_bytes: int, cut: dict,
                 constants: dict | None) -> bytearray:
    out, index, node_index = bytearray(), 0, 0
    for f in fields(buf, graph.start, graph.end):
        if f.number == _GRAPH_NODE and f.wire == LEN and constants is not None:
            body = _strip_constant(buf, f, min_bytes, node_index, constants)
            out += buf[f.head:f.end] if body is None else len_key(_GRAPH_NODE, len(body)) + body
            node_index += 1
            continue
        if f.number != GRAPH_INITIALIZER or f.wire != LEN:
            out += buf[f.head:f.end]
            continue
        body = bytearray()
        for t in fields(buf, f.start, f.end):
            if t.number == TENSOR_RAW_DATA and t.wire == LEN and t.end - t.start > min_bytes:
                if index in cut:
                    raise WireError("raw_data repeated")
                cut[index] = (t.start, t.end - t.start)
            else:
                body += buf[t.head:t.end]
        out += len_key(GRAPH_INITIALIZER, len(body)) + body
        index += 1
    return out


def _strip_constant(buf, node: Field, min_bytes: int, index: int,
                    constants: dict) -> bytearray | None:
    """The body of a Constant node without its large `value` payload, or None to keep it."""
    parts = list(fields(buf, node.start, node.end))
    text = {n: [bytes(buf[f.start:f.end]) for f in parts if f.number == n and f.wire == LEN]
            for n in (_NODE_OP_TYPE, _NODE_DOMAIN)}
    attrs = [f for f in parts if f.number == _NODE_ATTRIBUTE and f.wire == LEN]
    if text[_NODE_OP_TYPE] != [b"Constant"] or text[_NODE_DOMAIN] not in ([], [b""], [b"ai.onnx"]) \
            or len(attrs) != 1:
        return None
    parts = list(fields(buf, attrs[0].start, attrs[0].end))
    names = [bytes(buf[f.start:f.end]) for f in parts if f.number == _ATTR_NAME]
    tensors = [f for f in parts if f.number == _ATTR_T and f.wire == LEN]
    if names != [b"value"] or len(tensors) != 1:
        return None
    raw = [f for f in fields(buf, tensors[0].start, tensors[0].end)
           if f.number == TENSOR_RAW_DATA and f.wire == LEN]
    if len(raw) != 1 or raw[0].end - raw[0].start <= min_bytes:
        return None
    constants[index] = (raw[0].start, raw[0].end - raw[0].start)
    tensor = _without(buf, tensors[0], raw[0])
    return _without(buf, node, attrs[0], _without(buf, attrs[0], tensors[0], tensor))


def _without(buf, msg: Field, part: Field, replacement: bytearray | None = None) -> bytearray:
    """The body of `msg` without its field `part`, or with `replacement` as that field's body."""
    out = bytearray()
    for f in fields(buf, msg.start, msg.end):
        if f.head != part.head:
            out += buf[f.head:f.end]
        elif replacement is not None:
            out += len_key(f.number, len(replacement)) + replacement
    return out
