"""Per-instruction consistency rules: dtypes, shapes derived from parameters, value ranges.

`SHAPE_RULES[cls](program, instr, require)` calls `require(ok, message)` for every fact the
simulator relies on (it never indexes or allocates from an unchecked number).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from compiler.core import fixedpoint as fp
from targets.npusim import isa

Require = Callable[[bool, str], None]
MAX_KERNEL = 64
MAX_STRIDE = 64
MAX_PAD = 1024
M0_LIMIT = (1 << 31) - 1

FLOAT32_MAX = float(np.finfo(np.float32).max)  # scales are applied in float32


def in_range(values: np.ndarray | int, lo: int, hi: int) -> bool:
    """All values within [lo, hi]."""
    arr = np.asarray(values)
    return arr.size == 0 or bool(arr.min() >= lo and arr.max() <= hi)


def requant_ok(mult: np.ndarray | int, shift: np.ndarray | int, signed: bool = False) -> bool:
    """Multipliers fit int32 (non-negative unless `signed`) and shifts are in [1, 62]."""
    return in_range(mult, -M0_LIMIT if signed else 0, M0_LIMIT) and in_range(shift, 1, 62)


def _t(p: isa.Program, i: int) -> isa.Tensor:
    return p.tensors[i]


def _blob(p: isa.Program, i: int, kind: str | tuple[str, ...], req: Require) -> np.ndarray:
    blob = p.blobs[i]
    kinds = (kind,) if isinstance(kind, str) else kind
    req(blob.kind in kinds and blob.array is not None,
        f"blob {i} is a {blob.kind}, not a {' or '.join(kinds)}")
    return blob.array


WEIGHTS = ("weight", "weight16")
"""Weight blob kinds: int8, int16 (W16, docs/fixed-point.md §17)."""
QUANT = "int8|uint8|int16"
"""Activation types of the quantized instructions (docs/fixed-point.md §15, §16)."""
NARROW = "int8|uint8"
"""Inputs a 256-entry table or the average-pooling datapath reads (int16 is converted first)."""


def _dtypes(p: isa.Program, ins: isa.Instr, req: Require, src: str, dst: str) -> None:
    """Inputs of type `src`, outputs of type `dst` ("a|b": any of them)."""
    for t in ins.reads():
        req(_t(p, t).dtype in src.split("|"), f"input {_t(p, t).name!r} must be {src}")
    for t in ins.writes():
        req(_t(p, t).dtype in dst.split("|"), f"output {_t(p, t).name!r} must be {dst}")


def qrange(dtype: str) -> tuple[int, int]:
    """(min, max) of an integer tensor type."""
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


def _bounds(p: isa.Program, ins: isa.Instr, req: Require) -> None:
    dtype = _t(p, ins.ofm).dtype
    lo, hi = qrange(dtype)
    req(lo <= ins.lo <= ins.hi <= hi, f"clamp bounds [{ins.lo}, {ins.hi}] outside {dtype}")


def _window(size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...],
            pads: tuple[int, ...], dilation: tuple[int, ...], req: Require) -> tuple[int, int]:
    req(len(kernel) == 2 and len(stride) == 2 and len(pads) == 4 and len(dilation) == 2,
        "window parameters must be 2-D")
    req(all(1 <= k <= MAX_KERNEL for k in kernel) and all(1 <= s <= MAX_STRIDE for s in stride)
        and all(0 <= q <= MAX_PAD for q in pads) and all(1 <= d <= MAX_STRIDE for d in dilation),
        f"kernel {kernel}, stride {stride}, pads {pads} or dilation {dilation} out of range")
    out = []
    for ax in range(2):
        span = size[ax] + pads[ax] + pads[ax + 2] - dilation[ax] * (kernel[ax] - 1)
        req(span >= 1, f"window larger than the padded input on axis {ax}")
        out.append((span - 1) // stride[ax] + 1)
    return out[0], out[1]


def conv(p: isa.Program, ins: isa.Conv, req: Require) -> None:
    """Conv and depthwise conv."""
    _dtypes(p, ins, req, QUANT, QUANT)
    _bounds(p, ins, req)
    x, y = _t(p, ins.ifm).shape, _t(p, ins.ofm).shape
    w = _blob(p, ins.weights, WEIGHTS, req)
    req(len(x) == 4 and len(y) == 4 and w.ndim == 4, "conv tensors must be 4-D (NCHW)")
    g = ins.group
    req(g >= 1 and x[1] % g == 0 and w.shape[0] % g == 0 and w.shape[1] * g == x[1],
        f"weight {w.shape} and group {g} do not match input channels {x[1]}")
    if isinstance(ins, isa.DepthwiseConv):
        req(g == x[1] == w.shape[0], "depthwise needs group = input = output channels")
    oh, ow = _window(x[2:], w.shape[2:], ins.stride, ins.pads, ins.dilation, req)
    req(y == (x[0], w.shape[0], oh, ow), f"output shape {y} != {(x[0], w.shape[0], oh, ow)}")
    _per_channel(p, ins, w, req)


def _per_channel(p: isa.Program, ins: isa.Instr, w: np.ndarray, req: Require) -> None:
    n = w.shape[0]
    bias = _blob(p, ins.bias, "bias", req)
    mult = _blob(p, ins.mult, "mult", req)
    shift = _blob(p, ins.shift, "shift", req)
    req(bias.shape == mult.shape == shift.shape == (n,), f"bias/mult/shift must have {n} values")
    req(requant_ok(mult, shift), "multiplier or shift out of range")
    x_dtype = _t(p, ins.ifm).dtype
    if fp.wide_layer(x_dtype, w.dtype):  # the 64-bit accumulator's narrow multipliers
        k = int(np.prod(w.shape[1:], dtype=np.int64))
        what = "int16-input" if fp.is_wide(x_dtype) else "16-bit-weight"
        req(k < fp.A16_MAX_K, f"{what} layer with K = {k} (at most {fp.A16_MAX_K - 1})")
        req(w.dtype != np.int16 or int(np.abs(w.astype(np.int64)).max(initial=0)) <=
            fp.WEIGHT16_MAX, f"16-bit weight outside ±{fp.WEIGHT16_MAX}")
        bits = fp.layer_multiplier_bits(w, x_dtype)  # (§16, §17)
        req(in_range(mult, 0, (1 << bits) - 1),
            f"multiplier of an {what} layer (K = {k}) needs M0 < 2^{bits}")


def fully_connected(p: isa.Program, ins: isa.FullyConnected, req: Require) -> None:
    """x[..., K] · W[N, K]ᵀ."""
    _dtypes(p, ins, req, QUANT, QUANT)
    _bounds(p, ins, req)
    x, y = _t(p, ins.ifm).shape, _t(p, ins.ofm).shape
    w = _blob(p, ins.weights, WEIGHTS, req)
    req(w.ndim == 2 and len(x) >= 1 and x[-1] == w.shape[1] and y == x[:-1] + (w.shape[0],),
        f"shapes x {x}, W {w.shape}, y {y} do not match")
    _per_channel(p, ins, w, req)


def binary(p: isa.Program, ins: isa.Add | isa.Mul, req: Require) -> None:
    """Broadcasting add/mul."""
    _dtypes(p, ins, req, QUANT, QUANT)
    _bounds(p, ins, req)
    a, b, y = _t(p, ins.a).shape, _t(p, ins.b).shape, _t(p, ins.ofm).shape
    try:
        req(np.broadcast_shapes(a, b) == y, f"broadcast of {a} and {b} is not {y}")
    except ValueError:
        req(False, f"shapes {a} and {b} do not broadcast")
    if isinstance(ins, isa.Add):
        req(requant_ok(np.array([ins.mult_a, ins.mult_b]), ins.shift, signed=True),
            "multiplier or shift out of range")
    else:
        req(requant_ok(ins.mult, ins.shift), "multiplier or shift out of range")


def avgpool(p: isa.Program, ins: isa.AvgPool, req: Require) -> None:
    """Window sum with per-position requant."""
    _dtypes(p, ins, req, NARROW, QUANT)
    _bounds(p, ins, req)
    x, y = _t(p, ins.ifm).shape, _t(p, ins.ofm).shape
    req(len(x) == 4, "pooling input must be 4-D")
    oh, ow = _window(x[2:], ins.kernel, ins.stride, ins.pads, (1, 1), req)
    req(y == (x[0], x[1], oh, ow), f"output shape {y} != {(x[0], x[1], oh, ow)}")
    mult, shift = _blob(p, ins.mult, "mult", req), _blob(p, ins.shift, "shift", req)
    req(mult.shape == shift.shape == (oh, ow) and requant_ok(mult, shift),
        "per-position multipliers have the wrong shape or range")


def global_avgpool(p: isa.Program, ins: isa.GlobalAvgPool, req: Require) -> None:
    """Spatial sum with scalar requant."""
    _dtypes(p, ins, req, QUANT, QUANT)
    _bounds(p, ins, req)
    x, y = _t(p, ins.ifm).shape, _t(p, ins.ofm).shape
    req(len(x) == 4 and y in (x[:2] + (1, 1), x[:2]), f"output shape {y} for input {x}")
    req(requant_ok(ins.mult, ins.shift), "multiplier or shift out of range")
    x_dtype = _t(p, ins.ifm).dtype
    if fp.is_wide(x_dtype):  # |Σ_hw x| ≤ HW·2^15: the multiplier keeps |sum·M0| < 2^62 (§16)
        bits = fp.multiplier_bits(x[2] * x[3] * -fp.qrange(x_dtype)[0])
        req(ins.mult < 1 << bits, f"multiplier of an int16 global pooling needs M0 < 2^{bits}")


def maxpool(p: isa.Program, ins: isa.MaxPool, req: Require) -> None:
    """Window max; every window must hold an input element."""
    _dtypes(p, ins, req, QUANT, QUANT)
    req(_t(p, ins.ifm).dtype == _t(p, ins.ofm).dtype, "max pooling keeps the type")
    x, y = _t(p, ins.ifm).shape, _t(p, ins.ofm).shape
    req(len(x) == 4, "pooling input must be 4-D")
    oh, ow = _window(x[2:], ins.kernel, ins.stride, ins.pads, ins.dilation, req)
    req(y == (x[0], x[1], oh, ow), f"output shape {y} != {(x[0], x[1], oh, ow)}")
    req(all(ins.pads[a] < x[2 + a] and ins.pads[a + 2] < x[2 + a] + ins.stride[a]
            for a in range(2)), "a pooling window lies entirely in the padding")


def lut(p: isa.Program, ins: isa.Lut, req: Require) -> None:
    """256-entry table of the ofm's type; 513 interpolated knots for an int16 ifm (§18)."""
    _dtypes(p, ins, req, QUANT, QUANT)
    x, y = _t(p, ins.ifm).dtype, _t(p, ins.ofm).dtype
    entries = fp.LUT16_ENTRIES if fp.is_wide(x) else 256
    size = entries * np.dtype(y).itemsize
    req(_blob(p, ins.table, "lut", req).shape == (size,),
        f"table must have {entries} {y} entries ({size} bytes)")
    req(_t(p, ins.ifm).shape == _t(p, ins.ofm).shape, "input and output shapes differ")


def channel_lut(p: isa.Program, ins: isa.ChannelLut, req: Require) -> None:
    """One 256-entry table per channel of an [N, C, ...] tensor."""
    _dtypes(p, ins, req, NARROW, NARROW)
    x = _t(p, ins.ifm).shape
    req(len(x) >= 2 and x == _t(p, ins.ofm).shape, "channel tables need equal [N, C, ...] shapes")
    req(_blob(p, ins.table, "lut", req).shape == (x[1], 256), "table must be [channels, 256]")


def concat(p: isa.Program, ins: isa.Concat, req: Require) -> None:
    """Requantize each input and join."""
    _dtypes(p, ins, req, QUANT, QUANT)
    shapes = [_t(p, i).shape for i in ins.inputs]
    y = _t(p, ins.ofm).shape
    req(len(shapes) >= 1 and len(ins.mults) == len(ins.shifts) == len(shapes),
        "one multiplier and shift per input")
    req(0 <= ins.axis < len(y), f"axis {ins.axis} out of range")
    req(all(len(s) == len(y) and s[:ins.axis] + s[ins.axis + 1:] == y[:ins.axis] +
            y[ins.axis + 1:] for s in shapes) and sum(s[ins.axis] for s in shapes) == y[ins.axis],
        f"input shapes {shapes} do not concatenate to {y}")
    req(requant_ok(np.array(ins.mults), np.array(ins.shifts)), "multiplier or shift range")


def gather(p: isa.Program, ins: isa.Gather, req: Require) -> None:
    """Per-axis index arrays."""
    _dtypes(p, ins, req, QUANT, QUANT)
    req(_t(p, ins.ifm).dtype == _t(p, ins.ofm).dtype, "a gather keeps the type")
    x, y = _t(p, ins.ifm).shape, _t(p, ins.ofm).shape
    req(len(ins.axes) == len(ins.indices) and len(set(ins.axes)) == len(ins.axes) and
        all(0 <= a < len(x) for a in ins.axes), "axes and index blobs must pair up")
    want = list(x)
    for axis, blob in zip(ins.axes, ins.indices, strict=True):
        idx = _blob(p, blob, "index", req)
        req(idx.ndim == 1 and (idx.size == 0 or (idx.min() >= 0 and idx.max() < x[axis])),
            f"index array for axis {axis} out of range")
        want[axis] = idx.size
    req(tuple(want) == y, f"output shape {y} != {tuple(want)}")


def reshape(p: isa.Program, ins: isa.Reshape, req: Require) -> None:
    """Same element count and dtype."""
    x, y = _t(p, ins.ifm), _t(p, ins.ofm)
    req(x.dtype == y.dtype and np.prod(x.shape) == np.prod(y.shape),
        f"cannot reshape {x.shape} {x.dtype} to {y.shape} {y.dtype}")


def transpose(p: isa.Program, ins: isa.Transpose, req: Require) -> None:
    """A permutation of the axes."""
    x, y = _t(p, ins.ifm), _t(p, ins.ofm)
    req(sorted(ins.perm) == list(range(len(x.shape))) and x.dtype == y.dtype and
        tuple(x.shape[a] for a in ins.perm) == y.shape, f"bad permutation {ins.perm}")


def slice_(p: isa.Program, ins: isa.Slice, req: Require) -> None:
    """Every selected index inside the input."""
    x, y = _t(p, ins.ifm), _t(p, ins.ofm)
    req(len(ins.starts) == len(ins.steps) == len(x.shape) == len(y.shape) and
        x.dtype == y.dtype, "slice parameters must cover every axis")
    for start, step, n, size in zip(ins.starts, ins.steps, y.shape, x.shape, strict=True):
        last = start + step * (n - 1)
        req(step != 0 and (n == 0 or (0 <= start < size and 0 <= last < size)),
            f"slice start {start} step {step} count {n} outside {size}")


def pad(p: isa.Program, ins: isa.Pad, req: Require) -> None:
    """Non-negative pads; reflect needs pads smaller than the axis."""
    x, y = _t(p, ins.ifm), _t(p, ins.ofm)
    rank = len(x.shape)
    req(len(ins.pads) == 2 * rank and all(0 <= q <= MAX_PAD for q in ins.pads) and
        ins.mode in (0, 1, 2) and x.dtype == y.dtype and x.dtype in QUANT.split("|") and
        qrange(x.dtype)[0] <= ins.value <= qrange(x.dtype)[1],
        "bad pads, mode or value")
    want = tuple(d + ins.pads[a] + ins.pads[a + rank] for a, d in enumerate(x.shape))
    req(want == y.shape, f"output shape {y.shape} != {want}")
    req(ins.mode == 0 or all(d > 0 for d in x.shape), "edge/reflect padding of an empty axis")
    req(ins.mode != 2 or all(ins.pads[a] < d and ins.pads[a + rank] < d
                             for a, d in enumerate(x.shape)), "reflect pads exceed the axis")


def quantize(p: isa.Program, ins: isa.Quantize, req: Require) -> None:
    """float32 → int8/uint8/int16."""
    _dtypes(p, ins, req, "float32", QUANT)
    req(ins.inv_scale > 0 and _t(p, ins.ifm).shape == _t(p, ins.ofm).shape, "bad quantize")
    req(ins.inv_scale <= FLOAT32_MAX, f"inverse scale {ins.inv_scale:g} overflows float32")


def dequantize(p: isa.Program, ins: isa.Dequantize, req: Require) -> None:
    """int8/uint8/int16 → float32."""
    _dtypes(p, ins, req, QUANT, "float32")
    req(ins.scale > 0 and _t(p, ins.ifm).shape == _t(p, ins.ofm).shape, "bad dequantize")
    req(ins.scale <= FLOAT32_MAX, f"scale {ins.scale:g} overflows float32")


def cpu_call(p: isa.Program, ins: isa.CpuCall, req: Require) -> None:
    """The partition blob is ONNX bytes; its interface is checked when the session loads."""
    req(p.blobs[ins.partition].kind == "onnx", "partition blob is not ONNX")
    req(ins.unit == isa.CPU and len(ins.outputs) >= 1, "a CPU call runs on the CPU unit")


SHAPE_RULES: dict[type, Callable] = {
    isa.Conv: conv, isa.DepthwiseConv: conv, isa.FullyConnected: fully_connected,
    isa.Add: binary, isa.Mul: binary, isa.AvgPool: avgpool, isa.GlobalAvgPool: global_avgpool,
    isa.MaxPool: maxpool, isa.Lut: lut, isa.Concat: concat, isa.Gather: gather,
    isa.Reshape: reshape, isa.Transpose: transpose, isa.Slice: slice_, isa.Pad: pad,
    isa.Quantize: quantize, isa.Dequantize: dequantize, isa.CpuCall: cpu_call,
    isa.ChannelLut: channel_lut}
