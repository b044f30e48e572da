"""The simulator's int8 GEMM engine (`intgemm`, `intconv`): exact, or not used.

The engine is onnxruntime's `MatMulInteger`; the probe must reject a kernel that saturates
(x86 AVX2 without VNNI adds u8·s8 pairs in int16), and every conv shape the engine takes
(dense, strided, padded, dilated, 1x1, grouped, depthwise, uint8 input, int16 output,
channels whose requantization needs the int64 formula) must equal the int64 reference and
the float-BLAS path element for element.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from compiler.core.builder import GraphBuilder
from compiler.core.errors import TargetError
from passes.quantize.api import quantize_model
from targets.npusim import build_binary, intgemm, native, verify
from targets.npusim import kernels as K
from targets.npusim import plans as P
from targets.npusim.intconv import IntConv, block_channels, block_weights, groups_per_block
from targets.npusim.simulate import Simulator
from targets.npusim.testing import op_zoo_model, random_inputs
from tests.targets.npusim.engines import needs_engine, needs_native


def _saturating_gemm(self, a, out):
    """What an AVX2 u8s8 kernel computes: pairs of products summed in saturating int16."""
    b = self._b.astype(np.int64)
    a64 = a.astype(np.int64)
    k = a.shape[1] + a.shape[1] % 2
    a64 = np.pad(a64, ((0, 0), (0, k - a.shape[1])))
    b = np.pad(b, ((0, k - b.shape[0]), (0, 0)))
    pairs = a64[:, 0::2, None] * b[None, 0::2] + a64[:, 1::2, None] * b[None, 1::2]
    acc = np.clip(pairs, -32768, 32767).sum(axis=1) - self._zp * b.sum(axis=0)
    out[...] = acc
    return out


def test_probe_rejects_a_saturating_kernel(monkeypatch):
    real_init = intgemm.IntGemm.__init__

    def init(self, b, m, zero_point, threads):
        real_init(self, b, m, zero_point, threads)
        self._b, self._zp = b, zero_point
    monkeypatch.setattr(intgemm.IntGemm, "__init__", init)
    monkeypatch.setattr(intgemm.IntGemm, "__call__", _saturating_gemm)
    assert intgemm._probe() is False
    # the emulation itself is exact away from saturation: the probe's extremes catch it
    g = intgemm.IntGemm(np.full((4, 2), 3, np.int8), 1, 0, 1)
    assert g(np.full((1, 4), 5, np.uint8), np.empty((1, 2), np.int32)).tolist() == [[60, 60]]


@needs_engine
@pytest.mark.parametrize("m,k,n,zp", [(1, 1, 1, 0), (5, 33, 7, 128), (200, 576, 64, 128),
                                      (49, 4608, 40, 0)])
def test_int_gemm_equals_int64(m, k, n, zp):
    rng = np.random.default_rng(k)
    b = rng.integers(-128, 128, (k, n)).astype(np.int8)
    a = rng.integers(0, 256, (m, k)).astype(np.uint8)
    a[0] = 255  # the saturating extremes ride along
    b[:, 0] = 127
    gemm = intgemm.IntGemm(b, m, zp, 1)
    got = gemm(a, np.empty((m, n), np.int32))
    np.testing.assert_array_equal(got, (a.astype(np.int64) - zp) @ b.astype(np.int64))
    with pytest.raises(TargetError, match="int8 GEMM"):
        gemm(a[:, :-1] if k > 1 else a[:0], np.empty((m, n), np.int32))


@pytest.mark.parametrize("groups,per_group,want", [(1, 64, 1), (8, 2, 8), (144, 1, 24),
                                                   (7, 5, 1), (40, 1, 20), (4, 48, 1)])
def test_groups_per_block(groups, per_group, want):
    assert groups_per_block(groups, per_group, 32) == want


def test_block_channels_trade_calls_against_wasted_macs():
    assert block_channels(56 * 56, 9) == 26  # sqrt(2e7 / 28224)
    assert block_channels(7 * 7, 25) == 127
    assert block_channels(112 * 112, 25) == 16 and block_channels(1, 1) == 256


def test_block_weights_are_block_diagonal():
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (12, 2, 3, 3)).astype(np.int8)  # 6 groups of 2 in, 2 out
    blocks = block_weights(w, 6, 3)
    assert len(blocks) == 2 and blocks[0].shape == (3 * 3 * 6, 6)
    b = blocks[1].reshape(3, 3, 6, 6)
    for u in range(3):
        for v in range(3):
            part = b[:, :, 2 * u:2 * u + 2, 2 * v:2 * v + 2]
            if u == v:
                np.testing.assert_array_equal(part, w[6 + 2 * u:8 + 2 * u].transpose(2, 3, 1, 0))
            else:
                assert not part.any()


def _reference(x, w, groups, stride, pads, dilation, out_hw, rq):
    """int64 grouped conv + §3 per channel (kernels.im2col per group)."""
    n, cin_g = w.shape[0], w.shape[1]
    n_g = n // groups
    acc = np.concatenate([
        w[g * n_g:(g + 1) * n_g].reshape(n_g, -1).astype(np.int64)
        @ K.im2col(x[g * cin_g:(g + 1) * cin_g], w.shape[2:], stride, pads, dilation,
                   out_hw).astype(np.int64)
        for g in range(groups)])
    col = (-1, 1)
    return K.requant(acc + rq.bias.reshape(col), rq.m0.reshape(col), rq.shift.reshape(col),
                     rq.lo, rq.hi, np.int64)


@needs_engine
@pytest.mark.parametrize("c,n,groups,kernel,stride,pads,dilation,x_dtype,y_dtype", [
    (16, 24, 1, 3, (1, 1), (1, 1, 1, 1), (1, 1), np.int8, np.int8),
    (3, 16, 1, 7, (2, 2), (3, 3, 3, 3), (1, 1), np.int8, np.uint8),
    (8, 8, 1, 3, (2, 1), (0, 0, 1, 2), (1, 1), np.uint8, np.int8),
    (8, 12, 1, 3, (1, 1), (2, 2, 2, 2), (2, 2), np.uint8, np.int16),
    (32, 40, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), np.int8, np.int8),
    (32, 40, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), np.uint8, np.int8),
    (16, 32, 4, 3, (1, 1), (1, 1, 1, 1), (1, 1), np.int8, np.int8),
    (21, 14, 7, 1, (1, 1), (0, 0, 0, 0), (1, 1), np.uint8, np.int8),
    (40, 40, 40, 5, (2, 2), (2, 1, 2, 2), (1, 1), np.uint8, np.int8),
    (64, 64, 64, 3, (1, 1), (1, 1, 1, 1), (1, 1), np.int8, np.uint8),
    (24, 24, 24, 3, (1, 2), (2, 0, 1, 2), (2, 2), np.int8, np.int16),
])
@pytest.mark.parametrize("native_kernels", [False, pytest.param(True, marks=needs_native)])
def test_int_conv_equals_int64_reference(c, n, groups, kernel, stride, pads, dilation,
                                         x_dtype, y_dtype, native_kernels):
    rng = np.random.default_rng(c + n + kernel)
    h, wd = 13, 11
    x = rng.integers(0, 256, (c, h, wd)).astype(np.uint8).view(x_dtype)
    x.reshape(-1)[:7] = np.iinfo(x_dtype).max  # extremes
    w = rng.integers(-128, 128, (n, c // groups, kernel, kernel)).astype(np.int8)
    oh = (h + pads[0] + pads[2] - dilation[0] * (kernel - 1) - 1) // stride[0] + 1
    ow = (wd + pads[1] + pads[3] - dilation[1] * (kernel - 1) - 1) // stride[1] + 1
    info = np.iinfo(y_dtype)
    # every third channel's shift is too large for the float64 form (the int64 columns);
    # its bias near 2^30 keeps the results off zero there
    wide = np.arange(n) % 3 == 0
    shift = np.where(wide, 58, 30 if y_dtype != np.int16 else 22)
    bias = np.where(wide, rng.integers(-(1 << 30), 1 << 30, n), rng.integers(-3000, 3000, n))
    rq = P.Requant.make(bias, rng.integers(1 << 30, 1 << 31, n), shift, int(info.min),
                        int(info.max), 0)
    assert np.array_equal(rq.float_ok, ~wide)
    rq.mult_f[wide] = 0.0  # a float result there would be 0: only the int64 columns count
    sim = SimpleNamespace(workspace=P.Workspace(), native_kernels=native_kernels)
    conv = IntConv(sim, x.shape, x.dtype, np.dtype(y_dtype), w, groups,
                   (stride, pads, dilation, (oh, ow)), rq)
    sim.workspace.allocate()
    y = np.empty((n, oh, ow), y_dtype)
    conv.run(x, y)
    want = _reference(x, w, groups, stride, pads, dilation, (oh, ow), rq)
    np.testing.assert_array_equal(y.reshape(n, -1), want)
    assert len(np.unique(y)) > 3


def _grouped_model():
    b = GraphBuilder("engine_shapes", 3)
    x = b.input("x", [1, 6, 19, 17])
    c1 = b.relu(b.conv(x, b.rng.standard_normal((24, 6, 3, 3)) * 0.2, None, stride=2,
                       name="dense"))
    g = b.conv(c1, b.rng.standard_normal((24, 4, 3, 3)) * 0.2, None, group=6, pad=2,
               dilation=2, name="grouped")
    dw = b.relu6(b.conv(g, b.rng.standard_normal((24, 1, 5, 5)) * 0.2, None, group=24,
                        pad=2, name="depthwise"))
    b.output(b.conv(dw, b.rng.standard_normal((10, 24, 1, 1)) * 0.2, None, name="pointwise"))
    return b.build()


@needs_engine
@pytest.mark.parametrize("make", [op_zoo_model, _grouped_model])
def test_engine_and_blas_simulators_agree_with_onnxruntime(make):
    proto = make()
    result = quantize_model(proto, random_inputs(proto, 4, 0))
    data = build_binary(result.quant_model).data
    feeds = random_inputs(proto, 3, 9)
    engine = Simulator(data, int8_gemm=True, native_kernels=False)
    blas = Simulator(data, int8_gemm=False, native_kernels=False)
    assert any(k.startswith("int_") for k in engine.workspace._need)
    assert not any(k.startswith("int_") for k in blas.workspace._need)
    a, b = engine.run(feeds), blas.run(feeds)
    for name, value in a.items():
        np.testing.assert_array_equal(value, b[name])
    if native.available():  # the native kernels on either GEMM path
        for engine_on in (True, False):
            c = Simulator(data, int8_gemm=engine_on, native_kernels=True).run(feeds)
            for name, value in a.items():
                np.testing.assert_array_equal(value, c[name])
    report = verify(result.quant_model, data, feeds)  # the default: the engine, if exact
    assert report.consistent and all(o["mismatched"] == 0 for o in report.outputs)
