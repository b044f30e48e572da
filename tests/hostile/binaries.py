"""Structured mutations of `model.bin`: header and section-table fields with the checksums
recomputed (so the mutation reaches the decoder), and program-level edits re-encoded through
the target's own encoder without its checks (so they reach the loader's checks and the
simulator). `MUTATIONS[name] = (base binary: conv or cpu, producer of the bytes)`.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.hostile.harness import Artefacts, Producer

HEADER = struct.Struct("<4sHHIIQQI24sI")
ENTRY = struct.Struct("<IIQQII")
MUTATIONS: dict[str, tuple[str, Producer]] = {}


def fix_checksums(data: bytes) -> bytes:
    """Recompute every section CRC the table can locate, then the header CRC."""
    raw = bytearray(data)
    if len(raw) < HEADER.size:
        return bytes(raw)
    fields = list(HEADER.unpack_from(raw, 0))
    count, table = fields[4], fields[5]
    count = min(count, 64)
    for i in range(count):
        pos = table + i * ENTRY.size
        if pos + ENTRY.size > len(raw):
            break
        kind, align, start, length, _, reserved = ENTRY.unpack_from(raw, pos)
        if start + length <= len(raw):
            crc = zlib.crc32(raw[start:start + length])
            ENTRY.pack_into(raw, pos, kind, align, start, length, crc, reserved)
    end = min(len(raw), table + count * ENTRY.size) if table < len(raw) else HEADER.size
    crc = zlib.crc32(bytes(raw[:HEADER.size - 4]) + bytes(raw[table:end]))
    struct.pack_into("<I", raw, HEADER.size - 4, crc)
    return bytes(raw)


def _header_edit(index: int, value) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        fields = list(HEADER.unpack_from(data, 0))
        fields[index] = value
        return fix_checksums(HEADER.pack(*fields) + data[HEADER.size:])
    return edit


def _entry_edit(section: int, index: int, value) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        raw = bytearray(data)
        pos = HEADER.size + section * ENTRY.size
        fields = list(ENTRY.unpack_from(raw, pos))
        fields[index] = value(fields[index]) if callable(value) else value
        ENTRY.pack_into(raw, pos, *fields)
        return fix_checksums(bytes(raw))
    return edit


def byte_edit(base: str, name: str, edit: Callable[[bytes], bytes]) -> None:
    """Register a mutation of the raw bytes of `bin/<base>.bin`."""
    MUTATIONS[name] = (base, lambda art: edit(art.read(f"bin/{base}.bin")))


byte_edit("conv", "magic_onnx", lambda d: b"\x08\x07\x12\x04" + d[4:])
byte_edit("conv", "magic_zero", lambda d: b"\0" * 4 + d[4:])
for _i, (_field, _values) in enumerate({
        "version_major": [0, 2, 65535], "version_minor": [65535],
        "header_size": [0, 65, 2 ** 32 - 1],
        "section_count": [0, 6, 8, 2 ** 32 - 1], "table_offset": [0, 2 ** 63],
        "file_size": [0, 2 ** 64 - 1], "flags": [1]}.items(), start=1):
    for _v in _values:
        byte_edit("conv", f"header_{_field}_{_v}", _header_edit(_i, _v))
byte_edit("conv", "header_reserved", _header_edit(8, b"\1" * 24))
byte_edit("conv", "truncated_header", lambda d: d[:40])
byte_edit("conv", "truncated_table", lambda d: fix_checksums(d[:100]))
byte_edit("conv", "truncated_half", lambda d: fix_checksums(d[:len(d) // 2]))
byte_edit("conv", "trailing_garbage", lambda d: fix_checksums(
    _header_edit(6, len(d) + 64)(d) + b"\x55" * 64))
byte_edit("conv", "empty", lambda d: b"")
byte_edit("conv", "doubled", lambda d: d + d)
for _s, _f, _v, _label in ((0, 0, 9, "kind"), (0, 1, 3, "align"), (1, 2, 2 ** 63, "offset_huge"),
                           (1, 3, 2 ** 63, "length_huge"), (2, 2, 1, "offset_misaligned"),
                           (3, 3, lambda v: v + 1, "length_plus_one"),
                           (4, 3, 0, "weights_empty"), (6, 3, 10, "cpu_length"),
                           (0, 5, 1, "reserved")):
    byte_edit("conv", f"entry_{_label}", _entry_edit(_s, _f, _v))


# -- program-level edits ---------------------------------------------------------------------

def _program_edit(base: str, name: str, edit: Callable) -> None:
    def produce(art: Artefacts) -> bytes:
        from targets.npusim import codec, container
        from targets.npusim.binary import load_binary

        program = load_binary(art.read(f"bin/{base}.bin"))
        program = edit(program)
        blocks = {i: b.block for i, b in enumerate(program.blobs) if b.block}
        return container.pack(codec.encode(program, blocks))
    MUTATIONS[name] = (base, produce)


def _instr(program, kind: str, **changes):
    code = list(program.code)
    i = next(j for j, ins in enumerate(code) if type(ins).__name__ == kind)
    code[i] = dataclasses.replace(code[i], **changes)
    return dataclasses.replace(program, code=tuple(code))


def _tensor(program, index: int, **changes):
    tensors = list(program.tensors)
    tensors[index] = dataclasses.replace(tensors[index], **changes)
    return dataclasses.replace(program, tensors=tuple(tensors))


def _meta(**changes):
    return lambda p: dataclasses.replace(p, metadata={**p.metadata, **changes})


PROGRAM_EDITS: dict[str, Callable] = {
    "arena_huge": lambda p: dataclasses.replace(p, arena_size=2 ** 40),
    "arena_zero": lambda p: dataclasses.replace(p, arena_size=0),
    "tensor_offset_huge": lambda p: _tensor(p, 2, offset=2 ** 40),
    "tensor_offset_overlap_end": lambda p: _tensor(p, 2, offset=p.arena_size - 1),
    "input_shape_large": lambda p: _tensor(p, 0, shape=(1, 3, 4096, 4096)),
    "input_shape_limit": lambda p: _tensor(p, 0, shape=(16, 1, 4096, 4096)),
    "input_shape_zero": lambda p: _tensor(p, 0, shape=(0, 3, 8, 8)),
    "input_rank_zero": lambda p: _tensor(p, 0, shape=()),
    "tensor_dtype_swap": lambda p: _tensor(p, 2, dtype="float32"),
    "tensor_region_swap": lambda p: _tensor(p, 2, region="output"),
    "tensor_blob_bad": lambda p: _tensor(p, 2, blob=999),
    "tensor_duplicate_names": lambda p: _tensor(p, 2, name="x"),
    "no_inputs": lambda p: dataclasses.replace(p, inputs=()),
    "no_outputs": lambda p: dataclasses.replace(p, outputs=()),
    "input_id_out_of_range": lambda p: dataclasses.replace(p, inputs=(9999,)),
    "output_is_input": lambda p: dataclasses.replace(p, outputs=p.inputs),
    "no_code": lambda p: dataclasses.replace(p, code=()),
    "code_reversed": lambda p: dataclasses.replace(p, code=p.code[::-1]),
    "code_repeated": lambda p: dataclasses.replace(p, code=p.code * 3000),
    "conv_stride_zero": lambda p: _instr(p, "Conv", stride=(0, 0)),
    "conv_stride_negative": lambda p: _instr(p, "Conv", stride=(-1, -1)),
    "conv_pads_huge": lambda p: _instr(p, "Conv", pads=(10 ** 6,) * 4),
    "conv_pads_negative": lambda p: _instr(p, "Conv", pads=(-3,) * 4),
    "conv_dilation_zero": lambda p: _instr(p, "Conv", dilation=(0, 0)),
    "conv_group_zero": lambda p: _instr(p, "Conv", group=0),
    "conv_group_mismatch": lambda p: _instr(p, "Conv", group=3),
    "conv_lo_above_hi": lambda p: _instr(p, "Conv", lo=100, hi=-100),
    "conv_weights_is_bias": lambda p: _instr(p, "Conv", weights=1),
    "conv_ifm_out_of_range": lambda p: _instr(p, "Conv", ifm=10 ** 6),
    "conv_ofm_is_input": lambda p: _instr(p, "Conv", ofm=0),
    "conv_weights_none": lambda p: _instr(p, "Conv", weights=-1),
    "conv_stride_tuple_long": lambda p: _instr(p, "Conv", stride=(1,) * 4000),
    "gap_shift_huge": lambda p: _instr(p, "GlobalAvgPool", shift=10 ** 6),
    "gap_shift_negative": lambda p: _instr(p, "GlobalAvgPool", shift=-1),
    "gap_mult_huge": lambda p: _instr(p, "GlobalAvgPool", mult=2 ** 62),
    "quantize_scale_zero": lambda p: _instr(p, "Quantize", inv_scale=0.0),
    "quantize_scale_huge": lambda p: _instr(p, "Quantize", inv_scale=1e300),
    "dequantize_scale_negative": lambda p: _instr(p, "Dequantize", scale=-1.0),
    "reshape_to_smaller": lambda p: _tensor(p, 4, shape=(1, 3)),
    "meta_arch_path": _meta(arch="/etc/passwd"),
    "meta_arch_relative": _meta(arch="arch.yaml"),
    "meta_arch_dev_zero": _meta(arch="/dev/zero"),
    "meta_arch_dict": _meta(arch={"clock_mhz": float("inf")}),
    "meta_arch_number": _meta(arch=7),
    "meta_options_garbage": _meta(options=[1, 2, 3]),
    "meta_placement_garbage": _meta(placement={"a": None}),
    "meta_source_escape": _meta(source="/etc/shadow", source_hash="0" * 64),
    "meta_huge_string": _meta(note="x" * 2_000_000),
    "meta_deep": _meta(deep=json.loads("[" * 900 + "]" * 900)),
}
for _name, _edit in PROGRAM_EDITS.items():
    _program_edit("conv", f"program_{_name}", _edit)


# -- CPU partitions: embedded ONNX must be self-contained --------------------------------------

def _partition_edit(name: str, make: Callable[[onnx.ModelProto], onnx.ModelProto | bytes]
                    ) -> None:
    def edit(program):
        i = next(j for j, b in enumerate(program.blobs) if b.kind == "onnx")
        model = onnx.load_from_string(program.blobs[i].raw)
        new = make(model)
        raw = new if isinstance(new, bytes) else new.SerializeToString()
        blobs = list(program.blobs)
        blobs[i] = dataclasses.replace(blobs[i], raw=raw, stored_bytes=len(raw))
        return dataclasses.replace(program, blobs=tuple(blobs))
    _program_edit("cpu", f"partition_{name}", edit)


def _with_external(location: str, offset: int | None = None, length: int | None = None):
    """Add a weight read from external data to the partition (Softmax input + weight)."""
    def make(m: onnx.ModelProto) -> onnx.ModelProto:
        size = next((d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim[1:]), 10)
        t = numpy_helper.from_array(np.zeros((size,), np.float32), "ext_w")
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", offset), ("length", length)):
            if v is not None:
                t.external_data.add(key=k, value=str(v))
        m.graph.initializer.append(t)
        first = m.graph.node[0]
        src = first.input[0]
        m.graph.node.insert(0, helper.make_node("Add", [src, "ext_w"], ["ext_sum"],
                                                name="ext_add"))
        for n in m.graph.node[1:]:
            n.input[:] = ["ext_sum" if x == src else x for x in n.input]
        return m
    return make


_partition_edit("external_relative", _with_external("weights.bin"))
_partition_edit("external_absolute", _with_external("/etc/passwd", 0, 40))
_partition_edit("external_parent", _with_external("../../../../etc/passwd", 0, 40))
_partition_edit("external_dev_zero", _with_external("/dev/zero", 0, 40))
_partition_edit("external_no_location", _with_external("", None, None))


def _data_location_only(m: onnx.ModelProto) -> onnx.ModelProto:
    make = _with_external("weights.bin")
    m = make(m)
    t = next(t for t in m.graph.initializer if t.name == "ext_w")
    del t.external_data[:]
    t.raw_data = np.zeros(10, np.float32).tobytes()  # inline bytes, yet marked EXTERNAL
    return m


_partition_edit("data_location_flag", _data_location_only)


def _partition_garbage(m: onnx.ModelProto) -> bytes:
    return b"\x08\x07garbage" * 10


def _partition_bomb(m: onnx.ModelProto) -> onnx.ModelProto:
    shape = numpy_helper.from_array(np.array([100000, 100000], np.int64), "bomb_shape")
    m.graph.initializer.append(shape)
    out = m.graph.output[0].name
    last = next(n for n in m.graph.node if out in n.output)
    last.output[:] = ["pre" if o == out else o for o in last.output]
    m.graph.node.extend([
        helper.make_node("ConstantOfShape", ["bomb_shape"], ["bomb"]),
        helper.make_node("ReduceMax", ["bomb"], ["bomb_max"], keepdims=0),
        helper.make_node("Add", ["pre", "bomb_max"], [out])])
    return m


def _partition_wrong_interface(m: onnx.ModelProto) -> onnx.ModelProto:
    m.graph.input[0].name = "renamed"
    for n in m.graph.node:
        n.input[:] = ["renamed" if x == m.graph.input[0].name else x for x in n.input]
    return m


def _partition_custom_op(m: onnx.ModelProto) -> onnx.ModelProto:
    m.graph.node[0].domain = "com.microsoft"
    m.graph.node[0].op_type = "Frobnicate"
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return m


def _partition_function(m: onnx.ModelProto) -> onnx.ModelProto:
    m.graph.node[0].op_type = "Undefined"
    return m


_partition_edit("garbage", _partition_garbage)
_partition_edit("bomb", _partition_bomb)
_partition_edit("wrong_interface", _partition_wrong_interface)
_partition_edit("custom_op", _partition_custom_op)
_partition_edit("unknown_op", _partition_function)
