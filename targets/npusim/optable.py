"""The npusim op table: for each quantized op kind, its lowering and its NPU constraints.

This is the one place that says what the target supports (data, not if-chains): the
capability view (`capability.py`), the lowering loop (`lower.py`) and the generated
supported-ops docs read it. Op kinds are those of `compiler.core.qops.OPS`; an op kind
absent from the table runs nowhere (`tests/passes/quantize/test_op_registry.py` fails), an
op failing a constraint runs on the host CPU with the same integer kernel, bit-exact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from compiler.core.qops import OPS
from targets.npusim import lowerings as lw
from targets.npusim.constraints import (
    RANK,
    Constraint,
    _channels,
    _concat_inputs,
    _conv_channels,
    _dilated_window,
    _dilation,
    _fc_size,
    _kernel,
    _one_side_broadcast,
    _pad_mode,
    _pads_within_kernel,
    _rank,
    _resize_spatial,
    _stride,
    activation_types,
)

Lower = Callable[[lw.Ctx, Any, int], None]


@dataclass(frozen=True)
class OpSupport:
    """How npusim runs one op kind.

    Attributes:
        lower: Appends the op's instructions to the lowering context.
        constraints: All must hold for the op to run on the NPU (else: host CPU).
        cpu_reason: Non-empty: the op always runs on the host, for this reason.
    """

    lower: Lower
    constraints: tuple[Constraint, ...] = ()
    cpu_reason: str = ""


# Data movement runs on the DMA engine, whose descriptors address up to 6-D (channel shuffle).
MOVE_RANK = Constraint("every tensor at most 6-D, each dimension <= 65536", _rank(6))
FC_SIZE = Constraint("N <= 8192 outputs, K <= 65536 inputs", _fc_size)
ONE_SIDE = Constraint("one operand has the output shape", _one_side_broadcast)
POOL = (Constraint("kernel 1..16", _kernel(16)), Constraint("stride 1..4", _stride(4)))
POOL_PADS = Constraint("padding <= kernel - 1", _pads_within_kernel)

OP_TABLE: Mapping[str, OpSupport] = MappingProxyType({
    "QConv": OpSupport(lw.conv, (
        RANK, activation_types("QConv", mac=True),
        Constraint("kernel height and width 1..11", _kernel(11)),
        Constraint("stride 1..4", _stride(4)),
        Constraint("dilated kernel extent 1..64 per axis, 4096 in all", _dilated_window(64, 4096)),
        Constraint("padding <= dilated kernel extent - 1", _pads_within_kernel),
        Constraint("input and output channels <= 4096", _conv_channels))),
    "QGemm": OpSupport(lw.gemm, (RANK, activation_types("QGemm", mac=True), FC_SIZE)),
    "QMatMul": OpSupport(lw.gemm, (RANK, activation_types("QMatMul", mac=True), FC_SIZE)),
    "QAdd": OpSupport(lw.binary, (RANK, activation_types("QAdd"), ONE_SIDE)),
    "QMul": OpSupport(lw.binary, (RANK, activation_types("QMul"), ONE_SIDE)),
    "QConcat": OpSupport(lw.concat, (RANK, activation_types("QConcat"),
                                     Constraint("at most 64 inputs", _concat_inputs))),
    "QAvgPool": OpSupport(lw.avgpool, (RANK, activation_types("QAvgPool"), *POOL, POOL_PADS)),
    "QGlobalAvgPool": OpSupport(lw.global_avgpool, (RANK, activation_types("QGlobalAvgPool"))),
    "QMaxPool": OpSupport(lw.maxpool, (RANK, activation_types("QMaxPool"), *POOL,
                                       Constraint("dilation 1", _dilation(1)), POOL_PADS)),
    "QResizeNearest": OpSupport(lw.resize, (
        RANK, activation_types("QResizeNearest"),
        Constraint("resize only the two spatial axes", _resize_spatial))),
    "QMove": OpSupport(lw.move, (MOVE_RANK, activation_types("QMove"),
                                 Constraint("Pad mode constant, edge or reflect", _pad_mode))),
    "QLut": OpSupport(lw.lut, (RANK, activation_types("QLut"))),
    "QQuantize": OpSupport(lw.quantize, (RANK, activation_types("QQuantize"))),
    "QDequantize": OpSupport(lw.dequantize, (RANK, activation_types("QDequantize"))),
    "QCpuPartition": OpSupport(lw.cpu_partition,
                               cpu_reason="float CPU partition (not quantizable)"),
})


# Generic rule: any channelwise op without an entry runs as per-channel tables, so a new
# elementwise op (e.g. PRelu) needs no change here (docs/architecture.md, "Adding an int8 op").
CHANNELWISE = OpSupport(lw.channel_table, (
    RANK, activation_types(""),
    Constraint("channel axis 1 with <= 4096 channels (one table per channel)", _channels)))


def support(kind: str) -> OpSupport | None:
    """How npusim runs op kind `kind` (None: not at all)."""
    if kind in OP_TABLE:
        return OP_TABLE[kind]
    d = OPS.get(kind)
    return CHANNELWISE if d is not None and d.channelwise else None


def supported() -> dict[str, OpSupport | None]:
    """Every op kind of `OPS` (spec order) -> its support (None: unsupported)."""
    return {kind: support(kind) for kind in OPS}
