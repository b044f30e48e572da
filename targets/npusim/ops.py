"""Per-instruction closures for the simulator: `COMPILERS[cls](sim, ins) -> step()`.

A compiler fetches the instruction's arena views and constants once (float32 weights, exact
K splits) and returns a zero-argument function that reads the input views and writes the
output view. Batch is 1 per frame (the simulator loops), so kernels work on [C, H, W].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from compiler.core.errors import TargetError
from targets.npusim import isa
from targets.npusim import kernels as K

Step = Callable[[], None]


def _blob(sim: Any, i: int) -> np.ndarray:
    return sim.program.blobs[i].array


def _out_hw(sim: Any, ins: isa.Instr) -> tuple[int, int]:
    return tuple(sim.views[ins.ofm].shape[2:])


def conv(sim: Any, ins: isa.Conv) -> Step:
    """Grouped/dense conv: im2col + exact float32 GEMM per group, per-channel requant."""
    x, y = sim.views[ins.ifm], sim.views[ins.ofm]
    w = _blob(sim, ins.weights)
    g, cout = ins.group, w.shape[0]
    wmat = w.reshape(g, cout // g, -1)
    w32 = [wmat[i].astype(np.float32) for i in range(g)]
    splits = [K.k_splits(wmat[i], K.x_max(x.dtype)) for i in range(g)]
    bias = _blob(sim, ins.bias).astype(np.int64)[:, None]
    m0 = _blob(sim, ins.mult).astype(np.int64)[:, None]
    shift = _blob(sim, ins.shift).astype(np.int64)[:, None]
    kernel, out_hw, cin_g = tuple(w.shape[2:]), _out_hw(sim, ins), w.shape[1]

    def step() -> None:
        for n in range(x.shape[0]):
            parts = [K.exact_matmul(w32[i], K.im2col(x[n, i * cin_g:(i + 1) * cin_g], kernel,
                                                     ins.stride, ins.pads, ins.dilation,
                                                     out_hw), splits[i]) for i in range(g)]
            acc = parts[0] if g == 1 else np.concatenate(parts, axis=0)
            acc += bias
            y[n] = K.requant(acc, m0, shift, ins.lo, ins.hi, y.dtype).reshape(y.shape[1:])
    return step


def depthwise(sim: Any, ins: isa.DepthwiseConv) -> Step:
    """Per-channel taps, exact in float32."""
    x, y = sim.views[ins.ifm], sim.views[ins.ofm]
    w = _blob(sim, ins.weights)
    bias = _blob(sim, ins.bias).astype(np.int64)[:, None, None]
    m0 = _blob(sim, ins.mult).astype(np.int64)[:, None, None]
    shift = _blob(sim, ins.shift).astype(np.int64)[:, None, None]
    out_hw = _out_hw(sim, ins)

    def step() -> None:
        for n in range(x.shape[0]):
            acc = K.depthwise(x[n], w, ins.stride, ins.pads, ins.dilation, out_hw) + bias
            y[n] = K.requant(acc, m0, shift, ins.lo, ins.hi, y.dtype)
    return step


def fully_connected(sim: Any, ins: isa.FullyConnected) -> Step:
    """x[M, K] · Wᵀ through the exact GEMM (as Wᵀ-major: [N, K] @ [K, M])."""
    x, y = sim.views[ins.ifm], sim.views[ins.ofm]
    w = _blob(sim, ins.weights)
    w32, splits = w.astype(np.float32), K.k_splits(w, K.x_max(x.dtype))
    bias = _blob(sim, ins.bias).astype(np.int64)[:, None]
    m0 = _blob(sim, ins.mult).astype(np.int64)[:, None]
    shift = _blob(sim, ins.shift).astype(np.int64)[:, None]

    def step() -> None:
        cols = x.reshape(-1, w.shape[1]).T.astype(np.float32)
        acc = K.exact_matmul(w32, cols, splits) + bias
        y[...] = K.requant(acc, m0, shift, ins.lo, ins.hi, y.dtype).T.reshape(y.shape)
    return step


def add(sim: Any, ins: isa.Add) -> Step:
    """Broadcasting add with a common shift."""
    a, b, y = sim.views[ins.a], sim.views[ins.b], sim.views[ins.ofm]
    return lambda: y.__setitem__(..., K.add(a, b, ins.mult_a, ins.mult_b, ins.shift, ins.lo,
                                             ins.hi, y.dtype))


def mul(sim: Any, ins: isa.Mul) -> Step:
    """Broadcasting multiply, one requant."""
    a, b, y = sim.views[ins.a], sim.views[ins.b], sim.views[ins.ofm]
    return lambda: y.__setitem__(..., K.requant(a.astype(np.int64) * b, ins.mult, ins.shift,
                                                 ins.lo, ins.hi, y.dtype))


def avgpool(sim: Any, ins: isa.AvgPool) -> Step:
    """Window sums, per-position requant."""
    x, y = sim.views[ins.ifm], sim.views[ins.ofm]
    m0, shift = _blob(sim, ins.mult).astype(np.int64), _blob(sim, ins.shift).astype(np.int64)

    def step() -> None:
        for n in range(x.shape[0]):
            acc = K.window_sum(x[n], ins.kernel, ins.stride, ins.pads, _out_hw(sim, ins))
            y[n] = K.requant(acc, m0, shift, ins.lo, ins.hi, y.dtype)
    return step


def global_avgpool(sim: Any, ins: isa.GlobalAvgPool) -> Step:
    """Spatial sum, scalar requant."""
    x, y = sim.views[ins.ifm], sim.views[ins.ofm]
    return lambda: y.__setitem__(..., K.requant(x.sum(axis=(2, 3), dtype=np.int64), ins.mult,
                                                 ins.shift, ins.lo, ins.hi, y.dtype
                                                 ).reshape(y.shape))


def maxpool(sim: Any, ins: isa.MaxPool) -> Step:
    """Window max."""
    x, y = sim.views[ins.ifm], sim.views[ins.ofm]

    def step() -> None:
        for n in range(x.shape[0]):
            y[n] = K.window_max(x[n], ins.kernel, ins.stride, ins.pads, ins.dilation,
                                _out_hw(sim, ins))
    return step


def lut(sim: Any, ins: isa.Lut) -> Step:
    """Table lookup (the blob holds the entries' bytes; they are of the output's type)."""
    x, y = sim.views[ins.ifm], sim.views[ins.ofm]
    table = _blob(sim, ins.table).view(y.dtype)
    return lambda: y.__setitem__(..., K.lut(x, table))


def channel_lut(sim: Any, ins: isa.ChannelLut) -> Step:
    """One table per channel (entries of the output's type)."""
    x, y = sim.views[ins.ifm], sim.views[ins.ofm]
    table = _blob(sim, ins.table).view(y.dtype)
    return lambda: y.__setitem__(..., K.channel_lut(x, table))


def concat(sim: Any, ins: isa.Concat) -> Step:
    """Requantize inputs whose scale or type differs (M0/shift not the identity), then join."""
    xs, y = [sim.views[i] for i in ins.inputs], sim.views[ins.ofm]
    ident = [m == 1 << 30 and s == 30 and x.dtype == y.dtype
             for x, m, s in zip(xs, ins.mults, ins.shifts, strict=True)]
    lo, hi = int(np.iinfo(y.dtype).min), int(np.iinfo(y.dtype).max)

    def step() -> None:
        parts = [x if same else K.requant(x, m, s, lo, hi, y.dtype)
                 for x, same, m, s in zip(xs, ident, ins.mults, ins.shifts, strict=True)]
        np.concatenate(parts, axis=ins.axis, out=y)
    return step


def gather(sim: Any, ins: isa.Gather) -> Step:
    """Index each listed axis."""
    x, y = sim.views[ins.ifm], sim.views[ins.ofm]
    pairs = [(a, _blob(sim, b)) for a, b in zip(ins.axes, ins.indices, strict=True)]

    def step() -> None:
        v = x
        for axis, idx in pairs:
            v = np.take(v, idx, axis=axis)
        y[...] = v
    return step


def reshape(sim: Any, ins: isa.Reshape) -> Step:
    """Row-major copy."""
    x, y = sim.views[ins.ifm], sim.views[ins.ofm]
    return lambda: y.__setitem__(..., x.reshape(y.shape))


def transpose(sim: Any, ins: isa.Transpose) -> Step:
    """Axis permutation."""
    x, y = sim.views[ins.ifm], sim.views[ins.ofm]
    return lambda: y.__setitem__(..., np.transpose(x, ins.perm))


def slice_(sim: Any, ins: isa.Slice) -> Step:
    """Strided slice: start, step and the output count per axis."""
    x, y = sim.views[ins.ifm], sim.views[ins.ofm]
    index = tuple(np.arange(n, dtype=np.int64) * step + start
                  for start, step, n in zip(ins.starts, ins.steps, y.shape, strict=True))
    return lambda: y.__setitem__(..., x[np.ix_(*index)] if index else x)


def pad(sim: Any, ins: isa.Pad) -> Step:
    """Constant, edge or reflect padding."""
    x, y = sim.views[ins.ifm], sim.views[ins.ofm]
    rank = len(x.shape)
    widths = [(ins.pads[a], ins.pads[a + rank]) for a in range(rank)]
    mode = ("constant", "edge", "reflect")[ins.mode]
    kwargs = {"constant_values": ins.value} if ins.mode == 0 else {}
    return lambda: y.__setitem__(..., np.pad(x, widths, mode=mode, **kwargs))


def quantize(sim: Any, ins: isa.Quantize) -> Step:
    """float32 → int8/uint8."""
    x, y = sim.views[ins.ifm], sim.views[ins.ofm]
    return lambda: y.__setitem__(..., K.quantize(x, ins.inv_scale, y.dtype))


def dequantize(sim: Any, ins: isa.Dequantize) -> Step:
    """int8/uint8 → float32."""
    x, y = sim.views[ins.ifm], sim.views[ins.ofm]
    return lambda: y.__setitem__(..., K.dequantize(x, ins.scale))


def cpu_call(sim: Any, ins: isa.CpuCall) -> Step:
    """Run the embedded ONNX partition with onnxruntime (session built on first use)."""
    from targets.npusim.cpu import PartitionRunner

    runner = PartitionRunner(sim.program, ins)
    outs = [(i, sim.views[i], sim.program.tensors[i]) for i in ins.outputs]

    def step() -> None:
        values = runner.run([sim.value(i) for i in ins.inputs])
        for (i, y, t), value in zip(outs, values, strict=True):
            if y is None:  # a host tensor: any size along its run-time dimensions
                sim.host[i] = _host_value(ins, t, value)
            elif value.shape != y.shape:
                raise TargetError(f"CPU partition {ins.name!r}: output shape {value.shape} "
                                  f"!= {y.shape}")
            else:
                y[...] = value
    return step


def _host_value(ins: isa.CpuCall, t: isa.Tensor, value: np.ndarray) -> np.ndarray:
    """Check a run-time-shaped output against its rank, dtype and static dimensions."""
    fits = value.ndim == len(t.shape) and all(
        d in (isa.RUNTIME_DIM, n) for d, n in zip(t.shape, value.shape, strict=True))
    if not fits or value.dtype != np.dtype(t.dtype):
        raise TargetError(f"CPU partition {ins.name!r}: output {t.name!r} is {value.dtype} "
                          f"{value.shape}, the binary declares {t.dtype} {t.shape}")
    return value


COMPILERS: dict[type, Callable[[Any, Any], Step]] = {
    isa.Conv: conv, isa.DepthwiseConv: depthwise, isa.FullyConnected: fully_connected,
    isa.Add: add, isa.Mul: mul, isa.AvgPool: avgpool, isa.GlobalAvgPool: global_avgpool,
    isa.MaxPool: maxpool, isa.Lut: lut, isa.Concat: concat, isa.Gather: gather,
    isa.Reshape: reshape, isa.Transpose: transpose, isa.Slice: slice_, isa.Pad: pad,
    isa.Quantize: quantize, isa.Dequantize: dequantize, isa.CpuCall: cpu_call,
    isa.ChannelLut: channel_lut}
