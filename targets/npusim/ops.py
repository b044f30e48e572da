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
from targets.npusim import isa, native
from targets.npusim import kernels as K
from targets.npusim import plans as P
from targets.npusim.intconv import IntConv

Step = Callable[[], None]
PARALLEL_MIN_WORK = 1 << 17


def _blob(sim: Any, i: int) -> np.ndarray:
    return sim.program.blobs[i].array


def _out_hw(sim: Any, ins: isa.Instr) -> tuple[int, int]:
    return tuple(sim.views[ins.ofm].shape[2:])


def conv(sim: Any, ins: isa.Conv) -> Step:
    """Grouped/dense conv: patch matrix + exact float GEMM per row block, per-row requant.

    float32 for 8-bit inputs and weights, float64 for int16 ones (`kernels.gemm_dtype`).

    The patch matrix is filled once per frame (channel ranges in parallel); then each thread
    runs GEMM and requantization over its own blocks of output channels.
    """
    x, y = sim.views[ins.ifm], sim.views[ins.ofm]
    w = _blob(sim, ins.weights)
    out_hw = _out_hw(sim, ins)
    m = out_hw[0] * out_hw[1]
    if _on_engine(sim, x, y, w):
        return _int8_conv(sim, ins, x, y, w, out_hw, ins.group)
    patches = P.Patches(sim.workspace, x.shape[1:], x.dtype, tuple(w.shape[2:]), ins.stride,
                        ins.pads, ins.dilation, out_hw, w.dtype)
    wmat, xb = w.reshape(w.shape[0], -1), K.x_max(x.dtype)
    threads = _threads(sim, w.shape[0] * m + wmat.size * m // 16)
    rq = _requant(sim, ins, 1, P.row_bound(wmat, xb))
    gemm = P.GemmBlocks.make(wmat, ins.group, m, xb, rq, threads, sim.workspace,
                             native.NativeRequant.like(rq) if sim.native_kernels else None)
    fills = P.ranges(x.shape[1], threads)
    y2 = y.reshape(y.shape[0], w.shape[0], m)

    def step() -> None:
        for n in range(x.shape[0]):
            sim.map(lambda r, n=n: patches.fill(x[n], *r), fills)
            sim.map(lambda part, n=n: gemm.run(part, patches.matrix(), y2[n]), gemm.parts)
    return step


def _on_engine(sim: Any, x: np.ndarray, y: np.ndarray, w: np.ndarray,
               engine: bool | None = None) -> bool:
    """Whether a conv runs as `IntConv`: 8-bit input, int8 weights, `engine` on.

    `engine` defaults to the int8 GEMM engine; a depthwise conv also qualifies with the
    native kernels alone (they run it without a GEMM). Empty tensors stay on the numpy path
    (nothing to bind).
    """
    on = sim.int8_gemm if engine is None else engine
    return (bool(on) and x.dtype.itemsize == 1 and w.dtype == np.int8
            and min(x.size, y.size, w.size) > 0)


def _int8_conv(sim: Any, ins: isa.Conv, x: np.ndarray, y: np.ndarray, w: np.ndarray,
               out_hw: tuple[int, int], groups: int) -> Step:
    """An 8-bit conv (dense, grouped or depthwise) on the int8 GEMM engine (`intconv`)."""
    rq = _requant(sim, ins, 0, P.row_bound(w.reshape(w.shape[0], -1), K.x_max(x.dtype)))
    plan = IntConv(sim, x.shape[1:], x.dtype, y.dtype, w, groups,
                   (ins.stride, ins.pads, ins.dilation, out_hw), rq)

    def step() -> None:
        for n in range(x.shape[0]):
            plan.run(x[n], y[n])
    return step


def _threads(sim: Any, work: int) -> int:
    """Worker threads for an instruction of about `work` output-element passes.

    Handing work to a thread costs about 60 µs (measured), the time of ~30k element passes;
    smaller instructions run on the calling thread alone.
    """
    return sim.threads if work >= PARALLEL_MIN_WORK else 1


def _requant(sim: Any, ins: Any, trailing: int, bound: np.ndarray) -> P.Requant:
    """The instruction's bias, M0 and shift blobs as broadcastable columns."""
    return P.Requant.make(_blob(sim, ins.bias), _blob(sim, ins.mult), _blob(sim, ins.shift),
                          ins.lo, ins.hi, trailing, bound)


def depthwise(sim: Any, ins: isa.DepthwiseConv) -> Step:
    """Per-channel window dot products as one stacked [1, kh·kw] @ [kh·kw, OH·OW] GEMM.

    Exact in float32 (else float64, `kernels.depthwise_dtype`): every partial sum of at
    most kh·kw integer products stays an integer below 2^24. Channel blocks sized for the
    cache run on the worker threads, each with its own scratch.
    """
    x, y = sim.views[ins.ifm], sim.views[ins.ofm]
    w = _blob(sim, ins.weights)
    kernel, out_hw = tuple(w.shape[2:]), _out_hw(sim, ins)
    native_only = sim.native_kernels and w.shape[0] == x.shape[1]  # IntConv runs no GEMM
    if _on_engine(sim, x, y, w, engine=sim.int8_gemm or native_only):
        return _int8_conv(sim, ins, x, y, w, out_hw, x.shape[1])
    taps, m = kernel[0] * kernel[1], out_hw[0] * out_hw[1]
    dtype = K.depthwise_dtype(kernel, x.dtype, w.dtype)
    pad = P.Padded(sim.workspace, x.shape[1:], ins.pads, 0, x.dtype)
    wt = w.reshape(w.shape[0], 1, taps).astype(dtype)
    rq = _requant(sim, ins, 2, P.row_bound(w.reshape(w.shape[0], -1), K.x_max(x.dtype)))
    chunks = P.blocks(x.shape[1], m, min_rows=1)
    parts = P.deal([(c0, c1, rq.runs(c0, c1)) for c0, c1 in chunks],
                   _threads(sim, x.shape[1] * m * (1 + taps // 4)))
    rows = max(c1 - c0 for c0, c1 in chunks)
    scratch = [(sim.workspace.request(f"dw_cols/{i}", (rows, taps, m), dtype),
                sim.workspace.request(f"dw_acc/{i}", (rows, 1, m), dtype),
                sim.workspace.request(f"dw_acc64/{i}", (rows, 1, m), np.int64))
               for i in range(len(parts))]
    y3 = y.reshape(y.shape[0], y.shape[1], 1, m)

    def work(i: int, n: int) -> None:
        view = pad.windows(kernel, ins.stride, ins.dilation, out_hw)
        cols, acc, acc64 = (lazy() for lazy in scratch[i])
        for c0, c1, runs in parts[i]:
            c = c1 - c0
            pad.fill(x[n], c0, c1)
            np.copyto(cols[:c].reshape((c,) + view.shape[1:]), view[c0:c1])
            np.matmul(wt[c0:c1], cols[:c], out=acc[:c])
            for a, z, use_float in runs:  # rows a..z of this block
                if use_float:
                    f64 = acc64[a:z].view(np.float64)
                    np.add(acc[a:z], rq.bias_f[c0 + a:c0 + z], out=f64)
                    rq.apply_float(f64, y3[n, c0 + a:c0 + z], c0 + a, c0 + z)
                else:
                    np.copyto(acc64[a:z], acc[a:z], casting="unsafe")
                    rq.apply(acc64[a:z], y3[n, c0 + a:c0 + z], c0 + a, c0 + z)

    def step() -> None:
        for n in range(x.shape[0]):
            sim.map(lambda i, n=n: work(i, n), list(range(len(parts))))
    return step


def fully_connected(sim: Any, ins: isa.FullyConnected) -> Step:
    """x[M, K] · Wᵀ through the exact GEMM (as Wᵀ-major: [N, K] @ [K, M])."""
    x, y = sim.views[ins.ifm], sim.views[ins.ofm]
    w = _blob(sim, ins.weights)
    dtype = K.gemm_dtype(x.dtype, w.dtype)  # float64 for int16 activations or weights
    wf, splits = w.astype(dtype), K.k_splits(w, K.x_max(x.dtype), dtype)
    bias = _blob(sim, ins.bias).astype(np.int64)[:, None]
    m0 = _blob(sim, ins.mult).astype(np.int64)[:, None]
    shift = _blob(sim, ins.shift).astype(np.int64)[:, None]

    def step() -> None:
        cols = x.reshape(-1, w.shape[1]).T.astype(dtype)
        acc = K.exact_matmul(wf, cols, splits) + bias
        y[...] = K.requant(acc, m0, shift, ins.lo, ins.hi, y.dtype).T.reshape(y.shape)
    return step


def add(sim: Any, ins: isa.Add) -> Step:
    """Broadcasting add (§6) as a lookup in a 256x256 table of every operand pair.

    Both operands are 8-bit, so the table, computed at load with the int64 formula
    (`kernels.add`), holds every possible result; indices are the operands' raw bytes.
    With the native kernels, equal contiguous shapes are one pass (`native.lookup2`);
    otherwise equal shapes are split by channel across threads. An int16 operand takes the
    int64 formula directly (a table would need 2^24 entries or more).
    """
    a, b, y = sim.views[ins.a], sim.views[ins.b], sim.views[ins.ofm]
    if a.dtype.itemsize != 1 or b.dtype.itemsize != 1:
        return lambda: y.__setitem__(..., K.add(a, b, ins.mult_a, ins.mult_b, ins.shift,
                                                 ins.lo, ins.hi, y.dtype))
    byte = np.arange(256, dtype=np.uint8)
    table = K.add(byte.view(a.dtype)[:, None], byte.view(b.dtype)[None, :], ins.mult_a,
                  ins.mult_b, ins.shift, ins.lo, ins.hi, y.dtype).reshape(-1)
    if sim.native_kernels and a.shape == b.shape == y.shape and all(
            t.flags.c_contiguous for t in (a, b, y)):
        return lambda: native.lookup2(a, b, table, y)  # one pass, no index array
    lazy_index = sim.workspace.request("add_index", y.shape, np.uint16)
    split = a.shape == b.shape == y.shape and y.ndim >= 2
    chunks = P.ranges(y.shape[1], _threads(sim, y.size // 2)) if split else [None]

    def work(r: tuple[int, int] | None) -> None:
        part = (slice(None), slice(*r)) if r else (...,)
        ia, ib, i = a[part] if r else a, b[part] if r else b, lazy_index()[part]
        np.left_shift(ia.view(np.uint8), 8, out=i, dtype=np.uint16)
        np.bitwise_or(i, ib.view(np.uint8), out=i)
        np.take(table, i, out=y[part], mode="clip")  # every uint16 index is in range
    return lambda: sim.map(work, chunks)


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
    """Window max as a running `np.maximum` over the taps of a persistent padded copy.

    Padding with the type's minimum (-128, 0) never changes a max: each window holds at
    least one input element (checked on load).
    """
    x, y = sim.views[ins.ifm], sim.views[ins.ofm]
    pad = P.Padded(sim.workspace, x.shape[1:], ins.pads, np.iinfo(x.dtype).min, x.dtype)
    geometry = (ins.kernel, ins.stride, ins.dilation, _out_hw(sim, ins))
    chunks = P.ranges(x.shape[1], _threads(sim, y.size * len(ins.kernel) // 4))

    def work(r: tuple[int, int], n: int) -> None:
        c0, c1 = r
        pad.fill(x[n], c0, c1)
        view = pad.windows(*geometry)[c0:c1]
        out = y[n, c0:c1]
        np.copyto(out, view[:, 0, 0])
        for i in range(view.shape[1]):
            for j in range(view.shape[2]):
                if i or j:
                    np.maximum(out, view[:, i, j], out=out)

    def step() -> None:
        for n in range(x.shape[0]):
            sim.map(lambda r, n=n: work(r, n), chunks)
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
    """float32 → int8/uint8/int16."""
    x, y = sim.views[ins.ifm], sim.views[ins.ofm]
    return lambda: y.__setitem__(..., K.quantize(x, ins.inv_scale, y.dtype))


def dequantize(sim: Any, ins: isa.Dequantize) -> Step:
    """int8/uint8/int16 → float32."""
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
