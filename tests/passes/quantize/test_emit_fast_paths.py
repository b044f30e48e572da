"""model.quant.onnx's float forms of integer arithmetic (docs/fixed-point.md §3, §11) are exact.

Σ x·W runs as a float32 MatMul/Conv when every partial sum stays below 2^24, and the
requantization as float64 where `fp.requant_float_ok` proves it; both are checked in
onnxruntime against the int64 formulas at the bounds, at the extremes of every input type
and at every rounding tie.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from compiler.core import fixedpoint as fp
from compiler.core import qgraph as q
from compiler.core.numerics import run, session
from compiler.core.qops.arith import MAX_FLOAT_CHUNKS, float_chunks
from passes.quantize.emit_int import IntEmitter


def _layer(weight: np.ndarray, bias, m0, shift, lo=-128, hi=127):
    """A QGemm-like op: weight [N, K] int8, per-channel int arrays."""
    n = len(weight)
    col = lambda v, dt: np.broadcast_to(np.asarray(v, dt), (n,)).copy()  # noqa: E731
    return SimpleNamespace(name="fc", weight=weight.astype(np.int8), bias=col(bias, np.int32),
                           m0=col(m0, np.int64), shift=col(shift, np.int64), lo=lo, hi=hi)


def _emit_gemm(op, x_dtype, k: int):
    """The emitted graph of `op` on an input [rows, k]; returns (ops used, run(x) -> y)."""
    e = IntEmitter(q.QGraph({}, (), (), (), {}))
    consts = {f"fc::{key}": gs.Constant(f"fc::{key}", getattr(op, key))
              for key in ("bias", "m0", "shift")}
    w = gs.Constant("w", np.ascontiguousarray(op.weight.T))
    x = gs.Variable("x", dtype=x_dtype, shape=[None, k])
    y = gs.Variable("y", dtype=np.int64 if op.hi > 255 or op.lo < -128 else np.int8)
    def matmul_float(t, k0, k1, wt):
        wf = e.slice(e.cast(wt, np.float32), k0, k1, axis=0)
        return e.node("MatMul", [e.slice(t, k0, k1, axis=-1), wf], dtype=np.float32)

    e.weighted_layer(op, x, y, w, lambda t, wt: e.node("MatMulInteger", [t, wt], dtype=np.int32),
                     matmul_float, consts.__getitem__, lambda v: np.abs(v.astype(np.int64)))
    sess = session(gs.export_onnx(gs.Graph(nodes=e.nodes, inputs=[x], outputs=[y], opset=17)))
    return {n.op for n in e.nodes}, lambda v: run(sess, {"x": v})["y"]


def _reference(op, x: np.ndarray) -> np.ndarray:
    acc = x.astype(np.int64) @ op.weight.astype(np.int64).T + op.bias.astype(np.int64)
    return fp.requantize(acc, op.m0.astype(np.int64), op.shift.astype(np.int64), op.lo, op.hi,
                         np.int64)


def _extreme_inputs(dtype, k: int, rng) -> np.ndarray:
    info = np.iinfo(dtype)
    rows = [np.full(k, info.min), np.full(k, info.max), rng.integers(info.min, info.max + 1, k),
            np.where(np.arange(k) % 2, info.min, info.max)]
    return np.stack(rows).astype(dtype)


@pytest.mark.parametrize("dtype, xmax", [(np.int8, 128), (np.uint8, 255)])
@pytest.mark.parametrize("chunks", [1, 2, MAX_FLOAT_CHUNKS, MAX_FLOAT_CHUNKS + 1])
def test_float32_mac_exactly_up_to_its_bound(dtype, xmax, chunks):
    """Σ|w|·max|x| just below `chunks`·2^24 runs as that many exact float32 ranges; past
    MAX_FLOAT_CHUNKS ranges the integer op is used."""
    limit = (fp.FLOAT32_EXACT - 1) // xmax
    l1 = limit * chunks - (127 * (chunks - 1) if chunks > 1 else 0)
    k = -(-l1 // 127)
    row = np.full(k, 127, np.int64)
    row[-1] = l1 - 127 * (k - 1)
    w = np.stack([row, -row, row * np.where(np.arange(k) % 2, -1, 1)])  # mixed signs too
    assert np.abs(w).sum(axis=1).max() == l1
    # M = 1 and a wide clamp: the output is the accumulator itself, every bit checked
    op = _layer(w, [5, -7, 2**20], 1 << 30, 30, lo=-(1 << 26), hi=1 << 26)
    ops, run_it = _emit_gemm(op, dtype, k)
    float_mac = chunks <= MAX_FLOAT_CHUNKS
    assert ("MatMul" in ops and "MatMulInteger" not in ops) == float_mac
    assert (float_chunks(np.abs(w), xmax) is None) == (not float_mac)
    if float_mac:
        ranges = float_chunks(np.abs(w), xmax)
        assert len(ranges) == chunks and ranges[0][0] == 0 and ranges[-1][1] == k
        assert all(np.abs(w[:, a:b]).sum(axis=1).max() * xmax < fp.FLOAT32_EXACT
                   for a, b in ranges)
    x = _extreme_inputs(dtype, k, np.random.default_rng(k))
    np.testing.assert_array_equal(run_it(x).astype(np.int64), _reference(op, x))


@pytest.mark.parametrize("lo, hi, out", [(-128, 127, np.int8), (0, 255, np.uint8),
                                         (-32768, 32767, np.int16)])
def test_float64_requant_equals_int64_at_every_tie_and_extreme(lo, hi, out):
    """Per channel, every output value's rounding tie (and one below and above) and the
    accumulator extremes, for multipliers and shifts where the float64 form is proven."""
    e_bits = int(np.ceil(np.log2(max(-lo, hi + 1))))
    m0 = np.array([1 << 30, (1 << 31) - 1, 1_234_567_891, (1 << 23) + 1])
    shift = np.array([31, 52 - e_bits, 37, 24])
    assert fp.requant_float_ok(m0, shift, lo, hi).all()
    cols = []
    for c in range(len(m0)):
        ties = [((2 * j + 1) << (int(shift[c]) - 1)) // int(m0[c]) for j in range(lo - 2, hi + 2)]
        values = {t + d for t in ties for d in (-1, 0, 1)} | {-(1 << 31), (1 << 31) - 1, 0}
        cols.append(np.array(sorted(values), np.int64))
    n = max(len(v) for v in cols)
    acc = np.stack([np.resize(v, n) for v in cols], axis=1)  # [n, channels]
    e = IntEmitter(q.QGraph({}, (), (), (), {}))
    x = gs.Variable("acc", dtype=np.float64, shape=[n, len(m0)])
    y = gs.Variable("y", dtype=out)
    e.requant_float(x, gs.Constant("m0", m0.astype(np.int64)),
                    gs.Constant("shift", shift.astype(np.int64)), lo, hi, y)
    sess = session(gs.export_onnx(gs.Graph(nodes=e.nodes, inputs=[x], outputs=[y], opset=17)))
    got = run(sess, {"acc": acc.astype(np.float64)})["y"]
    want = fp.requantize(acc, m0, shift, lo, hi, out)
    assert got.dtype == np.dtype(out)
    np.testing.assert_array_equal(got, want)


def test_unproven_channels_keep_the_int64_requant():
    """A shift of 60 on a large accumulator: float64 could round differently, so int64."""
    w = np.full((2, 64), 127, np.int64)
    op = _layer(w, [2**31 - 1, 0], [(1 << 31) - 1, 1 << 30], [60, 40])
    assert not fp.requant_float_ok(op.m0, op.shift, op.lo, op.hi,
                                   np.abs(w).sum(axis=1) * 128 + np.abs(op.bias)).all()
    ops, run_it = _emit_gemm(op, np.int8, 64)
    assert "Mod" in ops
    x = _extreme_inputs(np.int8, 64, np.random.default_rng(0))
    np.testing.assert_array_equal(run_it(x).astype(np.int64), _reference(op, x))
