"""Semantic validation of a decoded `Program`: references, dtypes, shapes, value ranges.

Run on every load (after the structural decode) and after lowering, so the simulator and
the perf model only ever see programs whose every index, shape and shift is in range: a
corrupt binary fails here with a one-line `TargetError` instead of an IndexError, a huge
allocation or a numpy overflow later.
"""

from __future__ import annotations

from collections.abc import Callable

from compiler.core.errors import TargetError
from targets.npusim import isa
from targets.npusim.cpu import check_partition
from targets.npusim.shapes import SHAPE_RULES

MAX_ARENA = 1 << 30
QUANTIZED = ("int8", "uint8", "int16")  # activation types (docs/fixed-point.md §15, §16)


def check_program(p: isa.Program) -> None:
    """Raise `TargetError` on the first inconsistency."""
    if p.arena_size > MAX_ARENA:
        raise TargetError(f"binary: arena size {p.arena_size} exceeds {MAX_ARENA} bytes")
    for i, t in enumerate(p.tensors):
        _check_tensor(p, i, t)
    _check_interface(p)
    for i, blob in enumerate(p.blobs):
        if blob.kind == "onnx":
            check_partition(blob.raw, f"binary: blob {i} (CPU partition)")
    written = set(p.inputs) | {i for i, t in enumerate(p.tensors) if t.region == "const"}
    for i, ins in enumerate(p.code):
        where = f"instruction {i} ({ins.kind} {ins.name!r})"
        _check_refs(p, ins, where)
        _check_host(p, ins, where)
        for t in ins.reads():
            if t not in written:
                raise TargetError(f"binary: {where}: reads tensor {t} before it is written")
        for t in ins.writes():
            if t in written:
                raise TargetError(f"binary: {where}: tensor {t} is written twice or is an "
                                  "input/constant")
            written.add(t)
        SHAPE_RULES[type(ins)](p, ins, _fail(where))
    missing = [o for o in p.outputs if o not in written]
    if missing:
        raise TargetError(f"binary: outputs {missing} are never written")


def _fail(where: str) -> Callable[[bool, str], None]:
    def require(ok: bool, what: str) -> None:
        if not ok:
            raise TargetError(f"binary: {where}: {what}")
    return require


def _check_tensor(p: isa.Program, i: int, t: isa.Tensor) -> None:
    where = f"tensor {i} ({t.name!r})"
    if t.runtime and (t.offset or t.region not in ("arena", "output") or t.dtype in QUANTIZED):
        raise TargetError(f"binary: {where}: a run-time-shaped (host) tensor must be a float "
                          f"or index tensor at offset 0, not an input or constant")
    if t.offset % 16 or t.offset + t.nbytes > p.arena_size:
        raise TargetError(f"binary: {where}: offset {t.offset} + {t.nbytes} bytes is outside "
                          f"the {p.arena_size}-byte arena or misaligned")
    if t.dtype in QUANTIZED and not t.scale > 0:
        raise TargetError(f"binary: {where}: {t.dtype} tensor without a positive scale")
    if (t.region == "const") != (t.blob != -1):
        raise TargetError(f"binary: {where}: blob {t.blob} inconsistent with region {t.region}")
    if t.region == "const":
        if not 0 <= t.blob < len(p.blobs) or p.blobs[t.blob].kind != "const" or \
                p.blobs[t.blob].array.shape != t.shape or t.dtype != "int8":
            raise TargetError(f"binary: {where}: constant blob {t.blob} missing or of the "
                              "wrong kind/shape")


def _check_interface(p: isa.Program) -> None:
    for label, ids, region in (("input", p.inputs, "input"), ("output", p.outputs, "output")):
        if len(set(ids)) != len(ids):
            raise TargetError(f"binary: duplicate {label} tensor ids {list(ids)}")
        for t in ids:
            if not 0 <= t < len(p.tensors) or p.tensors[t].region != region:
                raise TargetError(f"binary: {label} id {t} is not a tensor of region {region}")
    marked = sum(t.region in ("input", "output") for t in p.tensors)
    if marked != len(p.inputs) + len(p.outputs):
        raise TargetError("binary: tensor regions disagree with the input/output lists")


def _check_host(p: isa.Program, ins: isa.Instr, where: str) -> None:
    """Only CPU partitions touch host tensors (run-time shapes, no arena bytes)."""
    if isinstance(ins, isa.CpuCall):
        return
    for t in ins.reads() + ins.writes():
        if 0 <= t < len(p.tensors) and p.tensors[t].runtime:
            raise TargetError(f"binary: {where}: tensor {t} has a run-time shape; only a "
                              "cpu_call may use it")


def _check_refs(p: isa.Program, ins: isa.Instr, where: str) -> None:
    for t in ins.refs(ins.TENSORS):
        if not 0 <= t < len(p.tensors):
            raise TargetError(f"binary: {where}: tensor id {t} out of range")
    for b in ins.refs(ins.BLOBS):
        if not 0 <= b < len(p.blobs):
            raise TargetError(f"binary: {where}: blob id {b} out of range")

