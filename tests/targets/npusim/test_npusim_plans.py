"""The simulator's prepared kernels (`targets/npusim/plans.py`) equal the int64 spec formulas.

The float64 requantization is checked at its proof's edges (ties, clamp bounds, the largest
shifts it is allowed for), the blocked GEMM against an int64 matmul (several K pieces, float
and int64 rows, groups, threads), and the Add table against `kernels.add`.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from passes.quantize.api import quantize_model
from targets.npusim import build_binary, isa, ops
from targets.npusim import kernels as K
from targets.npusim import plans as P
from targets.npusim.intgemm import exact
from targets.npusim.simulate import Simulator
from targets.npusim.testing import op_zoo_model, random_inputs
from tests.targets.npusim.engines import needs_native


def _ties(m0: int, s: int, lo: int, hi: int) -> np.ndarray:
    """Accumulators whose exact result sits on or next to every rounding tie in [lo-2, hi+2]."""
    q = np.arange(lo - 2, hi + 3, dtype=np.int64)
    centre = ((2 * q - 1) << (s - 1)) // m0  # acc·M0 ≈ (q - 1/2)·2^s
    return (centre[:, None] + np.arange(-2, 3)).reshape(-1)


@pytest.mark.parametrize("lo,hi", [(-128, 127), (0, 255), (0, 6), (-128, 0)])
@pytest.mark.parametrize("s", [1, 20, 31, 43, 44, 45])
def test_float_requant_equals_int64_where_allowed(lo, hi, s):
    rng = np.random.default_rng(s)
    m0 = np.array([1 << 30, (1 << 31) - 1, int(rng.integers(1 << 30, 1 << 31))])
    e = int(np.ceil(np.log2(max(-lo, hi + 1))))
    rq = P.Requant.make(np.array([0, 5, -7]), m0, np.full(3, s), lo, hi, 1)
    assert bool(rq.float_ok.all()) == (s + e <= 52)
    if not rq.float_ok.all():
        return
    acc = np.stack([_ties(int(m), s, lo, hi)[:60] for m in m0])
    acc[:, 0], acc[:, 1], acc[:, 2] = -(1 << 31), 1 << 31, 0  # the spec's extremes
    want = K.requant(acc + rq.bias, rq.m0, rq.shift, lo, hi, np.int16)
    got = np.empty_like(want)
    rq.apply_float((acc + rq.bias).astype(np.float64), got, 0, 3)
    np.testing.assert_array_equal(got, want)


def test_float_requant_rejects_rows_beyond_the_bound():
    # s + e = 56 > 52: allowed only where the weight bound keeps |acc·M0| < 2^52
    rq = P.Requant.make(np.zeros(2), np.full(2, 1 << 30), np.full(2, 49), -128, 127, 1,
                        bound=np.array([(1 << 22) - 1, 1 << 23]))
    assert rq.float_ok.tolist() == [True, False]
    acc = np.array([[(1 << 22) - 1, -((1 << 22) - 1), 1 << 18, (1 << 18) + 1]] * 2)
    want = K.requant(acc, rq.m0, rq.shift, -128, 127)
    got = np.empty((1, 4), np.int8)
    rq.apply_float(acc[:1].astype(np.float64), got, 0, 1)
    np.testing.assert_array_equal(got[0], want[0])
    assert got[0].tolist() == [8, -8, 1, 1]


@pytest.mark.parametrize("groups,threads", [(1, 1), (1, 2), (2, 2)])
def test_gemm_blocks_equal_int64_matmul(groups, threads):
    rng = np.random.default_rng(groups + threads)
    n, k, m = 320, 2600, 700  # K this long with |w| ~ 127 needs several exact K pieces
    w = rng.integers(-127, 128, (n, k)).astype(np.int8)
    if groups == 2:
        w[n // 2:] = w[:n // 2]
    x = rng.integers(-128, 128, (groups * k, m)).astype(np.int8)
    bias = rng.integers(-(1 << 20), 1 << 20, n)
    m0 = rng.integers(1 << 30, 1 << 31, n)
    shift = np.where(np.arange(n) < n // 2, 58, 40)  # the first half: int64 rows only
    shift[[200, 201, 317]] = 58  # int64 rows inside float blocks
    rq = P.Requant.make(bias, m0, shift, -128, 127, 1, P.row_bound(w, 128))
    gemm = P.GemmBlocks.make(w, groups, m, 128, rq, threads, P.Workspace())
    blocks = [b for p in gemm.parts for b in p.blocks]
    assert any(len(b.pieces) > 1 for b in blocks) and len(gemm.parts) == threads
    assert {f for b in blocks for _, _, f in b.runs} == {True, False}
    assert max(len(b.runs) for b in blocks) >= 3 and max(b.c1 for b in blocks) == m
    out = np.empty((n, m), np.int8)
    for part in gemm.parts:
        gemm.run(part, x.astype(np.float32), out)
    g = n // groups  # float64 products and sums of these sizes are exact integers
    ref = np.concatenate([w[i * g:(i + 1) * g].astype(np.float64)
                          @ x[i * k:(i + 1) * k].astype(np.float64) for i in range(groups)])
    want = K.requant(ref.astype(np.int64) + rq.bias, rq.m0, rq.shift, -128, 127)
    np.testing.assert_array_equal(out, want)


def test_workspace_shares_one_buffer_per_role():
    ws = P.Workspace()
    a = ws.request("r", (4, 5), np.float32)
    b = ws.request("r", (3,), np.int64)
    c = ws.request("other", (2,), np.int8)
    assert ws.nbytes == 80 + 2
    a()[...] = 1.0
    assert np.shares_memory(a(), b()) and not np.shares_memory(a(), c())
    assert a().shape == (4, 5) and b().dtype == np.int64 and a() is a()


def test_blocks_and_ranges_cover_rows_once():
    for n, parts in [(1, 2), (7, 3), (100, 8), (5, 1)]:
        cut = P.ranges(n, parts)
        assert sum(b - a for a, b in cut) == n and len(cut) == min(n, parts)
    assert P.blocks(10, 10 ** 6, min_rows=1) == [(i, i + 1) for i in range(10)]


def test_simulator_threads_do_not_change_results():
    proto = op_zoo_model(seed=4)
    data = build_binary(quantize_model(proto, random_inputs(proto, 4, 0)).quant_model).data
    feeds = random_inputs(proto, 3, 7)
    one = Simulator(data, threads=1).run(feeds)
    two = Simulator(data, threads=2).run(feeds)
    assert one.keys() == two.keys()
    for name, value in one.items():
        np.testing.assert_array_equal(two[name], value)


class FakeSim:
    """Just what an op compiler reads: views, blobs, threads, map."""

    def __init__(self, views, blobs=(), threads=2, int8_gemm=False, native_kernels=False):
        self.views, self.threads, self.workspace = list(views), threads, P.Workspace()
        self.int8_gemm, self.native_kernels = int8_gemm, native_kernels
        self.program = SimpleNamespace(blobs=[SimpleNamespace(array=b) for b in blobs])

    def map(self, fn, items):
        for item in reversed(items):  # any order must give the same result
            fn(item)


@pytest.mark.parametrize("da,db,bshape", [(np.int8, np.int8, (1, 6, 5, 7)),
                                          (np.uint8, np.int8, (1, 6, 1, 1)),
                                          (np.uint8, np.uint8, (1, 1, 5, 7))])
@pytest.mark.parametrize("native_kernels", [False, pytest.param(True, marks=needs_native)])
def test_add_table_equals_int64_add(da, db, bshape, native_kernels):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (1, 6, 5, 7)).astype(np.uint8).view(da)
    b = rng.integers(0, 256, bshape).astype(np.uint8).view(db)
    y = np.empty(a.shape, np.int8)
    ins = isa.Add(a=0, b=1, ofm=2, mult_a=1 << 28, mult_b=-(3 << 26), shift=31, lo=-100,
                  hi=90)
    ops.add(FakeSim([a, b, y], native_kernels=native_kernels), ins)()
    want = K.add(a, b, ins.mult_a, ins.mult_b, ins.shift, ins.lo, ins.hi)
    np.testing.assert_array_equal(y, want)
    assert len(np.unique(y)) > 20


@pytest.mark.parametrize("engine,native_kernels", [
    (False, False), (True, False), pytest.param(True, True, marks=needs_native),
    pytest.param(False, True, marks=needs_native)])
@pytest.mark.parametrize("dtype,kernel,stride,pads,dilation", [
    (np.int8, 3, (1, 1), (1, 1, 1, 1), (1, 1)), (np.uint8, 3, (2, 2), (0, 0, 1, 1), (1, 1)),
    (np.int8, 5, (2, 1), (2, 1, 2, 3), (1, 1)), (np.uint8, 3, (1, 1), (2, 2, 2, 2), (2, 2))])
def test_depthwise_and_maxpool_equal_reference_kernels(dtype, kernel, stride, pads, dilation,
                                                       engine, native_kernels):
    if engine and not exact():
        pytest.skip("onnxruntime's int8 GEMM is not exact on this machine")
    rng = np.random.default_rng(kernel)
    c, h, w = 40, 13, 11
    x = rng.integers(0, 256, (1, c, h, w)).astype(np.uint8).view(dtype)
    oh = (h + pads[0] + pads[2] - dilation[0] * (kernel - 1) - 1) // stride[0] + 1
    ow = (w + pads[1] + pads[3] - dilation[1] * (kernel - 1) - 1) // stride[1] + 1
    wt = rng.integers(-127, 128, (c, 1, kernel, kernel)).astype(np.int8)
    blobs = [wt, rng.integers(-5000, 5000, c).astype(np.int32),
             rng.integers(1 << 30, 1 << 31, c).astype(np.int32),
             np.where(np.arange(c) % 7 < 3, 60, 30).astype(np.int32)]  # int64 and float rows
    y = np.empty((1, c, oh, ow), np.int8)
    ins = isa.DepthwiseConv(ifm=0, ofm=1, weights=0, bias=1, mult=2, shift=3, stride=stride,
                            pads=pads, dilation=dilation, group=c, lo=-128, hi=127)
    ops.depthwise(FakeSim([x, y], blobs, int8_gemm=engine, native_kernels=native_kernels),
                  ins)()
    acc = K.depthwise(x[0], wt, stride, pads, dilation, (oh, ow)) + blobs[1][:, None, None]
    want = K.requant(acc, blobs[2].astype(np.int64)[:, None, None],
                     blobs[3].astype(np.int64)[:, None, None], -128, 127)
    np.testing.assert_array_equal(y[0], want)
    mp = np.empty((1, c, oh, ow), dtype)
    ins = isa.MaxPool(ifm=0, ofm=1, kernel=(kernel, kernel), stride=stride, pads=pads,
                      dilation=dilation)
    ops.maxpool(FakeSim([x, mp]), ins)()
    np.testing.assert_array_equal(mp[0], K.window_max(x[0], (kernel, kernel), stride, pads,
                                                      dilation, (oh, ow)))


def test_workspace_allocated_up_front_gives_threads_one_buffer():
    # Views bound concurrently on first use must land in the same memory (a race here
    # once sent half of a layer's channels to a second buffer).
    from concurrent.futures import ThreadPoolExecutor

    ws = P.Workspace()
    lazies = [ws.request("padded", (64, 64), np.int8) for _ in range(8)]
    ws.allocate()
    with ThreadPoolExecutor(8) as pool:
        views = list(pool.map(lambda lazy: lazy(), lazies))
    assert all(np.shares_memory(views[0], v) for v in views[1:])
    proto = op_zoo_model(seed=1)
    data = build_binary(quantize_model(proto, random_inputs(proto, 2, 0)).quant_model).data
    assert {"padded", "patches"} <= set(Simulator(data, int8_gemm=False).workspace._memory)
