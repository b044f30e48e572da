"""NPU eligibility constraints: each a small function returning `(ok, reason)`.

A `Constraint` pairs the user-facing text (generated into the supported-ops docs) with its
check; the limits are the NPU's data (`MAX_CHANNELS`, `MAX_DIM`, kernel/stride bounds).
`optable.py` says which constraints apply to which op kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from math import prod

from compiler.core import fixedpoint as fp
from compiler.core.qgraph import QGraph, QOp
from compiler.core.qops import OPS

Check = Callable[[QOp, QGraph], tuple[bool, str]]
MAX_CHANNELS = 4096
MAX_DIM = 65536


@dataclass(frozen=True)
class Constraint:
    """One eligibility rule: a description for docs and the check itself."""

    text: str
    check: Check


def _shape(graph: QGraph, name: str) -> tuple[int, ...]:
    return tuple(max(d, 1) for d in graph.tensor(name).shape)


def _rank(limit: int) -> Check:
    def check(op: QOp, graph: QGraph) -> tuple[bool, str]:
        for name in op.inputs + op.outputs:
            shape = _shape(graph, name)
            if len(shape) > limit:
                return False, f"tensor {name!r} has rank {len(shape)} (limit {limit}-D)"
            if any(d > MAX_DIM for d in shape):
                return False, f"tensor {name!r} has a dimension above {MAX_DIM}"
        return True, ""
    return check


def _kernel(limit: int) -> Check:
    def check(op: QOp, graph: QGraph) -> tuple[bool, str]:
        kernel = op.weight.shape[2:] if hasattr(op, "weight") else op.kernel
        ok = all(1 <= k <= limit for k in kernel)
        return ok, "" if ok else f"kernel {tuple(kernel)} exceeds {limit}x{limit}"
    return check


def _stride(limit: int) -> Check:
    def check(op: QOp, graph: QGraph) -> tuple[bool, str]:
        ok = all(1 <= s <= limit for s in op.strides)
        return ok, "" if ok else f"stride {tuple(op.strides)} exceeds {limit}"
    return check


def _dilation(limit: int) -> Check:
    def check(op: QOp, graph: QGraph) -> tuple[bool, str]:
        ok = all(1 <= d <= limit for d in getattr(op, "dilations", (1, 1)))
        return ok, "" if ok else f"dilation {tuple(op.dilations)} exceeds {limit}"
    return check


def _dilated_window(extent: int, area: int) -> Check:
    """The dilated kernel's extent d·(k-1)+1 per axis and their product.

    Arm's Ethos-U85 limits its window the same way, not its dilation factor (Vela's
    supported-ops list: dilated kernel height 1..64, product 1..4096).
    """
    def check(op: QOp, graph: QGraph) -> tuple[bool, str]:
        dil = getattr(op, "dilations", (1, 1))
        window = [d * (k - 1) + 1 for k, d in zip(op.weight.shape[2:], dil, strict=True)]
        ok = all(1 <= w <= extent for w in window) and prod(window) <= area
        return ok, "" if ok else (f"dilated kernel {'x'.join(map(str, window))} exceeds "
                                  f"{extent} per axis or {area} in all")
    return check


def _pads_within_kernel(op: QOp, graph: QGraph) -> tuple[bool, str]:
    kernel = op.weight.shape[2:] if hasattr(op, "weight") else op.kernel
    dil = getattr(op, "dilations", (1, 1))
    limits = [d * (k - 1) for k, d in zip(kernel, dil, strict=True)] * 2
    ok = all(p <= max(lim, 0) for p, lim in zip(op.pads, limits, strict=True))
    return ok, "" if ok else f"padding {tuple(op.pads)} exceeds the (dilated) kernel extent - 1"


def _conv_channels(op: QOp, graph: QGraph) -> tuple[bool, str]:
    cout, cin_g = op.weight.shape[:2]
    ok = cout <= MAX_CHANNELS and cin_g * op.group <= MAX_CHANNELS
    return ok, "" if ok else f"{cin_g * op.group} -> {cout} channels exceed {MAX_CHANNELS}"


def _fc_size(op: QOp, graph: QGraph) -> tuple[bool, str]:
    n, k = op.weight.shape
    ok = k <= MAX_DIM and n <= 2 * MAX_CHANNELS
    return ok, "" if ok else f"weight {n}x{k} exceeds {2 * MAX_CHANNELS}x{MAX_DIM}"


def _one_side_broadcast(op: QOp, graph: QGraph) -> tuple[bool, str]:
    out = _shape(graph, op.outputs[0])
    shapes = [_shape(graph, n) for n in op.inputs]
    ok = any(s == out for s in shapes)
    return ok, "" if ok else f"both operands {shapes} broadcast (one must have the output shape)"


def _channels(op: QOp, graph: QGraph) -> tuple[bool, str]:
    shape = _shape(graph, op.inputs[0])
    ok = 2 <= len(shape) and shape[1] <= MAX_CHANNELS
    return ok, "" if ok else f"input {shape} has no channel axis or > {MAX_CHANNELS} channels"


def _concat_inputs(op: QOp, graph: QGraph) -> tuple[bool, str]:
    ok = len(op.inputs) <= 64
    return ok, "" if ok else f"{len(op.inputs)} inputs exceed 64"


def _pad_mode(op: QOp, graph: QGraph) -> tuple[bool, str]:
    ok = op.op != "Pad" or op.attrs.get("mode", "constant") in ("constant", "edge", "reflect")
    return ok, "" if ok else f"pad mode {op.attrs.get('mode')!r} is not supported"


def _resize_spatial(op: QOp, graph: QGraph) -> tuple[bool, str]:
    axes = [a for a, idx in enumerate(op.indices) if idx is not None]
    ok = all(a >= len(op.indices) - 2 for a in axes)
    return ok, "" if ok else f"resize along non-spatial axes {axes}"


def reads_int16(kind: str) -> bool:
    """Whether op kind `kind` has a 16-bit input path (A16W8, docs/fixed-point.md §16)."""
    d = OPS.get(kind)
    return d is not None and d.int16_input


def writes_int16(kind: str) -> bool:
    """Whether op kind `kind` may write an int16 output."""
    d = OPS.get(kind)
    return d is not None and (d.int16_output or d.scale_preserving)


def _activation_types(op: QOp, graph: QGraph) -> tuple[bool, str]:
    """int16 only in and out of ops with a 16-bit datapath."""
    for name in op.inputs:
        if fp.is_wide(graph.tensor(name).dtype) and not reads_int16(op.kind):
            return False, f"int16 input {name!r}: {op.kind} has no 16-bit datapath"
    for name in op.outputs:
        if fp.is_wide(graph.tensor(name).dtype) and not writes_int16(op.kind):
            return False, f"int16 output {name!r}: {op.kind} cannot write 16 bits"
    return True, ""


def activation_types(kind: str, mac: bool = False) -> Constraint:
    """The activation-type rule of op kind `kind`, its text naming the types it takes."""
    if kind == "QQuantize":  # the float boundary: no integer input
        text = "float32 input, int8/uint8/int16 output"
    elif not reads_int16(kind):
        text = "8-bit input (int8/uint8)" + ("; int16 output" if writes_int16(kind) else "")
    elif mac:
        text = "int8/uint8 input, or int16 (A16W8: two passes over the 8-bit MAC array)"
    else:
        text = "int8/uint8/int16 input"
    return Constraint(text, _activation_types)


RANK = Constraint("every tensor at most 4-D, each dimension <= 65536", _rank(4))
