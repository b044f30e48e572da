"""The npusim instruction set: typed, frozen instructions over a tensor table and a blob table.

Instructions name tensors and constant blobs (weights, biases, multipliers, tables, CPU
partitions) by index into the `Program`'s tables. Field types are limited to `int`, `float`
and `tuple[int, ...]` so the binary codec (`codec.py`) can encode every instruction from its
dataclass fields alone; `TENSORS`/`BLOBS` say which fields are references, so the loader can
bound-check them generically. Arithmetic follows docs/fixed-point.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

NPU, CPU = 0, 1  # execution units; CPU = the host runs the same integer kernel


@dataclass(frozen=True)
class Instr:
    """Base class: `unit` is NPU or CPU (a legalization fallback)."""

    OPCODE: ClassVar[int] = 0
    TENSORS: ClassVar[tuple[str, ...]] = ()  # fields holding tensor ids (int or tuple)
    BLOBS: ClassVar[tuple[str, ...]] = ()  # fields holding blob ids (-1 = none)
    OUTPUTS: ClassVar[tuple[str, ...]] = ("ofm",)
    name: str = field(default="", compare=False)
    unit: int = NPU

    @property
    def kind(self) -> str:
        """Mnemonic, e.g. 'conv'."""
        return MNEMONIC[type(self)]

    def refs(self, group: tuple[str, ...]) -> list[int]:
        """Every id in the named fields (tuples flattened, -1 skipped)."""
        out: list[int] = []
        for f in group:
            value = getattr(self, f)
            out.extend(value if isinstance(value, tuple) else (value,))
        return [v for v in out if v != -1]

    def reads(self) -> list[int]:
        """Tensor ids read."""
        return self.refs(tuple(f for f in self.TENSORS if f not in self.OUTPUTS))

    def writes(self) -> list[int]:
        """Tensor ids written."""
        return self.refs(self.OUTPUTS)


@dataclass(frozen=True)
class Quantize(Instr):
    """float32 → int8/uint8/int16 (the ofm's type), §4: `clamp(floor(x ⊗ inv ⊕ 0.5))` in float32."""

    OPCODE = 1
    TENSORS = ("ifm", "ofm")
    ifm: int = 0
    ofm: int = 0
    inv_scale: float = 1.0


@dataclass(frozen=True)
class Dequantize(Instr):
    """int8/uint8/int16 → float32, §5: `float32(q) ⊗ S`."""

    OPCODE = 2
    TENSORS = ("ifm", "ofm")
    ifm: int = 0
    ofm: int = 0
    scale: float = 1.0


@dataclass(frozen=True)
class Conv(Instr):
    """2-D convolution (dense or grouped), per-channel requant (§11).

    Accumulates in int32 for an 8-bit ifm, in int64 for an int16 ifm (A16W8, §16).
    """

    OPCODE = 3
    TENSORS = ("ifm", "ofm")
    BLOBS = ("weights", "bias", "mult", "shift")
    ifm: int = 0
    ofm: int = 0
    weights: int = 0
    bias: int = 0
    mult: int = 0
    shift: int = 0
    stride: tuple[int, ...] = (1, 1)
    pads: tuple[int, ...] = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple[int, ...] = (1, 1)
    group: int = 1
    lo: int = -128
    hi: int = 127


@dataclass(frozen=True)
class DepthwiseConv(Conv):
    """Depthwise convolution: group = channels, one filter per channel."""

    OPCODE = 4


@dataclass(frozen=True)
class FullyConnected(Instr):
    """`acc[..., n] = B[n] + Σ_k x[..., k]·W[n, k]`, requant along the last axis.

    int32 accumulator for an 8-bit ifm, int64 for an int16 ifm (A16W8, §16).
    """

    OPCODE = 5
    TENSORS = ("ifm", "ofm")
    BLOBS = ("weights", "bias", "mult", "shift")
    ifm: int = 0
    ofm: int = 0
    weights: int = 0
    bias: int = 0
    mult: int = 0
    shift: int = 0
    lo: int = -128
    hi: int = 127


@dataclass(frozen=True)
class Add(Instr):
    """`clamp((xa·A + xb·B + 2^(s-1)) >> s)`, broadcasting (§6)."""

    OPCODE = 6
    TENSORS = ("a", "b", "ofm")
    a: int = 0
    b: int = 0
    ofm: int = 0
    mult_a: int = 0
    mult_b: int = 0
    shift: int = 1
    lo: int = -128
    hi: int = 127


@dataclass(frozen=True)
class Mul(Instr):
    """`requant(xa·xb, M0, s)`, broadcasting (§7)."""

    OPCODE = 7
    TENSORS = ("a", "b", "ofm")
    a: int = 0
    b: int = 0
    ofm: int = 0
    mult: int = 0
    shift: int = 1
    lo: int = -128
    hi: int = 127


@dataclass(frozen=True)
class AvgPool(Instr):
    """Padded window sum, requant with per-position `M0[oh, ow]`, `s[oh, ow]` (§8)."""

    OPCODE = 8
    TENSORS = ("ifm", "ofm")
    BLOBS = ("mult", "shift")
    ifm: int = 0
    ofm: int = 0
    mult: int = 0
    shift: int = 0
    kernel: tuple[int, ...] = (1, 1)
    stride: tuple[int, ...] = (1, 1)
    pads: tuple[int, ...] = (0, 0, 0, 0)
    lo: int = -128
    hi: int = 127


@dataclass(frozen=True)
class GlobalAvgPool(Instr):
    """Sum over the two spatial axes, scalar requant (§8)."""

    OPCODE = 9
    TENSORS = ("ifm", "ofm")
    ifm: int = 0
    ofm: int = 0
    mult: int = 0
    shift: int = 1
    lo: int = -128
    hi: int = 127


@dataclass(frozen=True)
class MaxPool(Instr):
    """Window max; padding (the type's minimum) never wins; ifm and ofm of one type."""

    OPCODE = 10
    TENSORS = ("ifm", "ofm")
    ifm: int = 0
    ofm: int = 0
    kernel: tuple[int, ...] = (1, 1)
    stride: tuple[int, ...] = (1, 1)
    pads: tuple[int, ...] = (0, 0, 0, 0)
    dilation: tuple[int, ...] = (1, 1)


@dataclass(frozen=True)
class Lut(Instr):
    """`y = table[x + offset]`, offset 128 for an int8 ifm, 0 for uint8 (§10, §15).

    The blob holds the 256 entries' bytes; they are read as the ofm's type. An int16 ifm
    reads 513 knots, linearly interpolated (§18, format 2.3).
    """

    OPCODE = 11
    TENSORS = ("ifm", "ofm")
    BLOBS = ("table",)
    ifm: int = 0
    ofm: int = 0
    table: int = 0


@dataclass(frozen=True)
class Concat(Instr):
    """Each input requantized to the output scale and type, then joined along `axis` (§7)."""

    OPCODE = 12
    TENSORS = ("inputs", "ofm")
    inputs: tuple[int, ...] = ()
    ofm: int = 0
    axis: int = 1
    mults: tuple[int, ...] = ()
    shifts: tuple[int, ...] = ()


@dataclass(frozen=True)
class Gather(Instr):
    """Nearest resize: index each listed axis with a stored int64 index blob (§9)."""

    OPCODE = 13
    TENSORS = ("ifm", "ofm")
    BLOBS = ("indices",)
    ifm: int = 0
    ofm: int = 0
    axes: tuple[int, ...] = ()
    indices: tuple[int, ...] = ()


@dataclass(frozen=True)
class Reshape(Instr):
    """Row-major reinterpretation (Reshape, Flatten, Squeeze, Unsqueeze)."""

    OPCODE = 14
    TENSORS = ("ifm", "ofm")
    ifm: int = 0
    ofm: int = 0


@dataclass(frozen=True)
class Transpose(Instr):
    """Axis permutation."""

    OPCODE = 15
    TENSORS = ("ifm", "ofm")
    ifm: int = 0
    ofm: int = 0
    perm: tuple[int, ...] = ()


@dataclass(frozen=True)
class Slice(Instr):
    """Strided slice with per-axis start and step (normalized; the stop is the ofm shape)."""

    OPCODE = 16
    TENSORS = ("ifm", "ofm")
    ifm: int = 0
    ofm: int = 0
    starts: tuple[int, ...] = ()
    steps: tuple[int, ...] = ()


@dataclass(frozen=True)
class Pad(Instr):
    """Pad with `pads` = (begin..., end...) per axis; mode 0 constant, 1 edge, 2 reflect."""

    OPCODE = 17
    TENSORS = ("ifm", "ofm")
    ifm: int = 0
    ofm: int = 0
    pads: tuple[int, ...] = ()
    mode: int = 0
    value: int = 0


@dataclass(frozen=True)
class ChannelLut(Instr):
    """`y[:, c, ...] = table[c, x[:, c, ...] + offset]`: one 256-entry table per channel (§10).

    Runs every channelwise int8 op (`OpDef.channelwise`, e.g. PRelu) the target has no
    dedicated instruction for; the tables are the op's reference on all 256 inputs.
    """

    OPCODE = 19
    TENSORS = ("ifm", "ofm")
    BLOBS = ("table",)
    ifm: int = 0
    ofm: int = 0
    table: int = 0


@dataclass(frozen=True)
class CpuCall(Instr):
    """Run an embedded float ONNX partition on the host (onnxruntime)."""

    OPCODE = 18
    TENSORS = ("inputs", "outputs")
    BLOBS = ("partition",)
    OUTPUTS = ("outputs",)
    partition: int = 0
    inputs: tuple[int, ...] = ()
    outputs: tuple[int, ...] = ()
    unit: int = CPU


INSTRUCTIONS: tuple[type[Instr], ...] = (
    Quantize, Dequantize, Conv, DepthwiseConv, FullyConnected, Add, Mul, AvgPool, GlobalAvgPool,
    MaxPool, Lut, Concat, Gather, Reshape, Transpose, Slice, Pad, CpuCall, ChannelLut)
BY_OPCODE = {cls.OPCODE: cls for cls in INSTRUCTIONS}
MNEMONIC = {
    Quantize: "quantize", Dequantize: "dequantize", Conv: "conv", DepthwiseConv: "dwconv",
    FullyConnected: "fc", Add: "add", Mul: "mul", AvgPool: "avgpool", GlobalAvgPool: "gavgpool",
    MaxPool: "maxpool", Lut: "lut", Concat: "concat", Gather: "resize", Reshape: "reshape",
    Transpose: "transpose", Slice: "slice", Pad: "pad", CpuCall: "cpu_call",
    ChannelLut: "channel_lut"}

DTYPES = {1: "int8", 2: "int32", 3: "float32", 4: "int64", 5: "uint8", 6: "bool", 7: "int16",
          8: "float16"}
"""Tensor dtype codes; 7 (int16, A16W8 activations, docs/fixed-point.md §16) is new in 2.1,
8 (float16, host tensors at the interface of a half-precision model) in 2.2."""
DTYPE_CODES = {v: k for k, v in DTYPES.items()}
REGIONS = {0: "arena", 1: "input", 2: "output", 3: "const"}


RUNTIME_DIM = -1
"""A dimension known only at run time (data-dependent: NonMaxSuppression, NonZero, ...)."""


@dataclass(frozen=True)
class Tensor:
    """An entry of the tensor table: every tensor lives at `offset` in one flat arena.

    A tensor with a `RUNTIME_DIM` is a host tensor instead: only CPU partitions read and
    write it, it has no arena bytes (offset 0) and its value lives in host memory.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float  # 0.0 for float tensors
    offset: int
    region: str = "arena"  # "input"/"output": program interface; "const": preloaded blob
    blob: int = -1  # blob holding a constant tensor's value

    @property
    def runtime(self) -> bool:
        """True for a host tensor whose shape is only known at run time."""
        return any(d == RUNTIME_DIM for d in self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes occupied in the arena (0 for a host tensor)."""
        if self.runtime:
            return 0
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True, eq=False)
class Blob:
    """A constant: dense array (weights decoded from their encoding) or raw ONNX bytes.

    `block` > 0 means the weights were stored 1xN block-sparse with N = block;
    `nonzero_blocks`/`total_blocks` feed the perf model; `stored_bytes` is the encoded size.
    """

    kind: str  # weight, bias, mult, shift, lut, index, param, onnx
    array: np.ndarray | None
    raw: bytes = b""
    block: int = 0
    nonzero_blocks: int = 0
    total_blocks: int = 0
    stored_bytes: int = 0


@dataclass(frozen=True, eq=False)
class Program:
    """A lowered model: tensor table, blob table, instruction list, interface, metadata."""

    tensors: tuple[Tensor, ...]
    blobs: tuple[Blob, ...]
    code: tuple[Instr, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    arena_size: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def tensor(self, name: str) -> Tensor:
        """Look a tensor up by name."""
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def frame_batch(self) -> int:
        """Samples per frame (one execution): the first input's fixed batch, else 1."""
        for i in self.inputs:
            shape = self.tensors[i].shape
            return max(int(shape[0]), 1) if shape else 1
        return 1


def field_specs(cls: type[Instr]) -> list[tuple[str, str]]:
    """(name, type) of each payload field, in declaration order (name and unit excluded)."""
    return [(f.name, str(f.type)) for f in fields(cls) if f.name not in ("name", "unit")]
