"""Encode a `Program` into container sections and decode them back, bounds-checked.

Each section has a fixed little-endian layout (docs/binary-format.md). Decoding reads
through `container.Reader`, so a truncated or lying length becomes a one-line `TargetError`
naming the section and field; value-level consistency (shapes, references, ranges) is
checked afterwards by `check.check_program`.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from compiler.core.errors import TargetError
from targets.npusim import weights
from targets.npusim.container import Reader, Section, alignment
from targets.npusim.isa import (
    BY_OPCODE,
    DTYPE_CODES,
    DTYPES,
    REGIONS,
    RUNTIME_DIM,
    Blob,
    Instr,
    Lut,
    Program,
    Tensor,
    field_specs,
)

MAX_RANK = 6
MAX_ELEMENTS = 1 << 28
MAX_COUNT = 1 << 20
MAX_TUPLE = 4096
KINDS = {1: "weight", 2: "bias", 3: "mult", 4: "shift", 5: "lut", 6: "index", 7: "const",
         8: "onnx", 9: "weight16"}
KIND_CODES = {v: k for k, v in KINDS.items()}
KIND_DTYPE = {"weight": "int8", "bias": "int32", "mult": "int32", "shift": "uint8",
              "lut": "int8", "index": "int64", "const": "int8", "onnx": "uint8",
              "weight16": "int16"}
KIND_SECTION = {"lut": Section.LUTS, "onnx": Section.CPU}
BLOB_ENTRY = struct.Struct("<BBBBBBHQQ")
REGION_CODES = {v: k for k, v in REGIONS.items()}
RUNTIME_DIM_CODE = 0xFFFFFFFF  # a dimension known only at run time (format 2.0)


def format_minor(program: Program) -> int:
    """The oldest 2.x minor that reads `program`: 3, 2, 1 or 0.

    3 with int16 weights (blob kind 9) or an interpolated table (a `lut` reading int16), 2
    with float16, 1 with int16 tensors. An all-8-bit
    binary stays a 2.0 file, byte for byte, so older readers keep reading it.
    """
    if any(b.kind == "weight16" for b in program.blobs) or any(
            isinstance(i, Lut) and program.tensors[i.ifm].dtype == "int16" for i in program.code):
        return 3
    dtypes = {t.dtype for t in program.tensors}
    return 2 if "float16" in dtypes else 1 if "int16" in dtypes else 0


def encode(program: Program, blob_blocks: dict[int, int]) -> dict[Section, bytes]:
    """All sections of a program; `blob_blocks` gives the 1xN block chosen per weight blob."""
    directory, data = _encode_blobs(program.blobs, blob_blocks)
    meta = json.dumps(program.metadata, sort_keys=True, default=str).encode("utf-8")
    return {Section.META: meta, Section.TENSORS: _encode_tensors(program),
            Section.BLOBS: directory, Section.CODE: _encode_code(program.code), **data}


def decode(sections: dict[Section, memoryview]) -> Program:
    """Rebuild a `Program` from validated container sections (structure only)."""
    metadata = _decode_meta(sections[Section.META])
    tensors, inputs, outputs, arena = _decode_tensors(Reader(sections[Section.TENSORS],
                                                             "section TENSORS"))
    blobs = _decode_blobs(Reader(sections[Section.BLOBS], "section BLOBS"), sections)
    code = _decode_code(Reader(sections[Section.CODE], "section CODE"))
    return Program(tensors, blobs, code, inputs, outputs, arena, metadata)


# --- tensors --------------------------------------------------------------------------------

def _encode_tensors(program: Program) -> bytes:
    out = bytearray(struct.pack("<IQHH", len(program.tensors), program.arena_size,
                                len(program.inputs), len(program.outputs)))
    out += struct.pack(f"<{len(program.inputs)}I", *program.inputs)
    out += struct.pack(f"<{len(program.outputs)}I", *program.outputs)
    for t in program.tensors:
        name = t.name.encode("utf-8")
        out += struct.pack("<H", len(name)) + name
        out += struct.pack("<BBB", DTYPE_CODES[t.dtype], REGION_CODES[t.region], len(t.shape))
        out += struct.pack(f"<{len(t.shape)}I", *(RUNTIME_DIM_CODE if d == RUNTIME_DIM else d
                                                   for d in t.shape))
        out += struct.pack("<dQi", t.scale, t.offset, t.blob)
    return bytes(out)


def _decode_tensors(r: Reader) -> tuple[tuple[Tensor, ...], tuple[int, ...], tuple[int, ...],
                                         int]:
    count, arena, n_in, n_out = r.unpack("IQHH", "table header")
    if count > MAX_COUNT:
        raise TargetError(f"binary: section TENSORS: tensor count {count} exceeds {MAX_COUNT}")
    inputs = r.unpack(f"{n_in}I", "input ids")
    outputs = r.unpack(f"{n_out}I", "output ids")
    tensors = tuple(_decode_tensor(r, i) for i in range(count))
    r.done()
    return tensors, inputs, outputs, arena


def _decode_tensor(r: Reader, i: int) -> Tensor:
    name = r.text(f"tensor {i} name")
    dtype, region, rank = r.unpack("BBB", f"tensor {i} ({name}) dtype/region/rank")
    where = f"tensor {i} ({name})"
    if dtype not in DTYPES or region not in REGIONS or rank > MAX_RANK:
        raise TargetError(f"binary: section TENSORS: {where}: bad dtype code {dtype}, region "
                          f"{region} or rank {rank}")
    shape = tuple(RUNTIME_DIM if d == RUNTIME_DIM_CODE else d
                  for d in r.unpack(f"{rank}I", f"{where} shape"))
    _check_elements(shape, f"section TENSORS: {where}")
    scale, offset, blob = r.unpack("dQi", f"{where} scale/offset/blob")
    if not np.isfinite(scale) or scale < 0:
        raise TargetError(f"binary: section TENSORS: {where}: invalid scale {scale}")
    return Tensor(name, tuple(shape), DTYPES[dtype], scale, offset, REGIONS[region], blob)


def _check_elements(shape: tuple[int, ...], where: str) -> int:
    count = 1
    for d in shape:
        count *= max(d, 1) if d == RUNTIME_DIM else d
    if count > MAX_ELEMENTS:
        raise TargetError(f"binary: {where}: {count} elements exceeds the {MAX_ELEMENTS} limit")
    return count


# --- blobs ------------------------------------------------------------------------------------

def _encode_blobs(blobs: tuple[Blob, ...], blocks: dict[int, int]
                  ) -> tuple[bytes, dict[Section, bytes]]:
    data = {s: bytearray() for s in (Section.WEIGHTS, Section.LUTS, Section.CPU)}
    directory = bytearray(struct.pack("<I", len(blobs)))
    for i, blob in enumerate(blobs):
        section = KIND_SECTION.get(blob.kind, Section.WEIGHTS)
        buf = data[section]
        buf += bytes(-len(buf) % alignment(section))
        block = blocks.get(i, 0)
        payload = _blob_bytes(blob, block)
        shape = (len(blob.raw),) if blob.kind == "onnx" else blob.array.shape
        directory += BLOB_ENTRY.pack(KIND_CODES[blob.kind], DTYPE_CODES[KIND_DTYPE[blob.kind]],
                                     1 if block else 0, block, section, len(shape), 0,
                                     len(buf), len(payload))
        directory += struct.pack(f"<{len(shape)}I", *shape)
        buf += payload
    return bytes(directory), {s: bytes(b) for s, b in data.items()}


def _blob_bytes(blob: Blob, block: int) -> bytes:
    if blob.kind == "onnx":
        return blob.raw
    if blob.kind == "weight":
        return weights.encode(blob.array, block).data
    dtype = np.dtype(KIND_DTYPE[blob.kind]).newbyteorder("<")
    return np.ascontiguousarray(blob.array, dtype).tobytes()


def _decode_blobs(r: Reader, sections: dict[Section, memoryview]) -> tuple[Blob, ...]:
    count = r.u("I", "blob count", MAX_COUNT)
    blobs = tuple(_decode_blob(r, i, sections) for i in range(count))
    r.done()
    return blobs


def _decode_blob(r: Reader, i: int, sections: dict[Section, memoryview]) -> Blob:
    kind, dtype, enc, block, section, rank, reserved, offset, length = \
        r.unpack(BLOB_ENTRY.format[1:], f"blob {i} entry")
    where = f"blob {i}"
    if kind not in KINDS or rank > MAX_RANK or reserved or enc not in (0, 1):
        raise TargetError(f"binary: section BLOBS: {where}: bad kind {kind}, rank {rank}, "
                          f"encoding {enc} or reserved field")
    name = KINDS[kind]
    expect = KIND_SECTION.get(name, Section.WEIGHTS)
    if section != expect or dtype != DTYPE_CODES[KIND_DTYPE[name]]:
        raise TargetError(f"binary: section BLOBS: {where} ({name}): section {section} or "
                          f"dtype code {dtype} does not match its kind")
    if (enc == 1) != (block > 0) or (block and (name != "weight" or block not in
                                                 weights.BLOCK_CHOICES)):
        raise TargetError(f"binary: section BLOBS: {where} ({name}): invalid sparse encoding "
                          f"(encoding {enc}, block {block})")
    shape = r.unpack(f"{rank}I", f"{where} shape")
    count = _check_elements(shape, f"section BLOBS: {where}")
    area = sections[expect]
    if offset % alignment(expect) or offset > len(area) or length > len(area) - offset:
        raise TargetError(f"binary: section BLOBS: {where} ({name}): offset {offset} / length "
                          f"{length} outside section {expect.name} ({len(area)} bytes) or "
                          "misaligned")
    return _blob(name, shape, count, block, area[offset:offset + length], f"{where} ({name})")


def _blob(kind: str, shape: tuple[int, ...], count: int, block: int, data: memoryview,
          where: str) -> Blob:
    if kind == "onnx":
        if len(shape) != 1 or shape[0] != len(data):
            raise TargetError(f"binary: {where}: length {len(data)} != shape {shape}")
        return Blob(kind, None, raw=bytes(data), stored_bytes=len(data))
    if kind == "weight":
        array, stored, total = weights.decode(data, shape, block, where)
        return Blob(kind, array, block=block, nonzero_blocks=stored, total_blocks=total,
                    stored_bytes=len(data))
    dtype = np.dtype(KIND_DTYPE[kind]).newbyteorder("<")
    if len(data) != count * dtype.itemsize:
        raise TargetError(f"binary: {where}: length {len(data)} != {count} x {dtype.itemsize}")
    array = np.frombuffer(data, dtype).reshape(shape).astype(dtype.newbyteorder("="))
    return Blob(kind, array, stored_bytes=len(data))


# --- code ------------------------------------------------------------------------------------

def _encode_code(code: tuple[Instr, ...]) -> bytes:
    out = bytearray(struct.pack("<I", len(code)))
    for ins in code:
        payload = bytearray()
        name = ins.name.encode("utf-8")[:4096]
        payload += struct.pack("<H", len(name)) + name
        for fname, ftype in field_specs(type(ins)):
            payload += _encode_field(getattr(ins, fname), ftype)
        out += struct.pack("<BBHI", ins.OPCODE, ins.unit, 0, len(payload)) + payload
    return bytes(out)


def _encode_field(value: Any, ftype: str) -> bytes:
    if ftype == "float":
        return struct.pack("<d", value)
    if ftype == "int":
        return struct.pack("<q", value)
    return struct.pack(f"<H{len(value)}q", len(value), *value)


def _decode_code(r: Reader) -> tuple[Instr, ...]:
    count = r.u("I", "instruction count", MAX_COUNT)
    code = tuple(_decode_instr(r, i) for i in range(count))
    r.done()
    return code


def _decode_instr(r: Reader, i: int) -> Instr:
    opcode, unit, reserved, length = r.unpack("BBHI", f"instruction {i} header")
    if opcode not in BY_OPCODE or unit > 1 or reserved:
        raise TargetError(f"binary: section CODE: instruction {i}: unknown opcode {opcode}, "
                          f"unit {unit} or non-zero reserved field")
    cls = BY_OPCODE[opcode]
    body = Reader(r.take(length, f"instruction {i} payload"), f"section CODE instruction {i}")
    values: dict[str, Any] = {"name": body.text("name"), "unit": unit}
    for fname, ftype in field_specs(cls):
        values[fname] = _decode_field(body, ftype, fname)
    body.done()
    return cls(**values)


def _decode_field(r: Reader, ftype: str, fname: str) -> Any:
    if ftype == "float":
        value = r.unpack("d", fname)[0]
        if not np.isfinite(value):
            raise TargetError(f"binary: {r.where}: field {fname} is not finite")
        return value
    if ftype == "int":
        return r.unpack("q", fname)[0]
    n = r.u("H", f"{fname} length", MAX_TUPLE)
    return tuple(r.unpack(f"{n}q", fname))


def _decode_meta(data: memoryview) -> dict[str, Any]:
    try:
        meta = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise TargetError(f"binary: section META: not valid UTF-8 JSON ({type(e).__name__})") \
            from e
    if not isinstance(meta, dict):
        raise TargetError("binary: section META: not a JSON object")
    return meta
