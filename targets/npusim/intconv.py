"""Convolutions of 8-bit activations on the int8 GEMM engine (`intgemm`).

Per frame, the [C, H, W] input is copied once into a padded channels-last uint8 buffer
(int8 `x` as `x + 128`, the border as the zero point, so a padded element counts as 0).
The output channels are cut into *blocks*: a dense conv is one block; grouped and
depthwise convs join consecutive groups into blocks whose weight is block-diagonal (zeros
between groups add exact zeros: wasted MACs, which the int8 kernels run faster than numpy
runs the useful ones), as many as `block_channels` weighs against the cost of a call. Each block
copies its windows into the [OH·OW, kh·kw·C_block] patch matrix (a dense 1x1 stride-1 conv
reads the buffer itself), makes one engine call for the int32 sums `[OH·OW, N_block]`,
requantizes them (§3: float64 where `Requant.float_ok` holds, int64 for the other
channels) and writes them transposed into the [N, OH, OW] output.

With the native kernels (`native`), the copy, the windows and the requantization (int64
for every channel, fused with the transposed store) are each one C call, and a depthwise
conv (one filter per channel) runs without a GEMM: `native.Depthwise` sums its taps over
the channels-last buffer and requantizes row by row.

It all runs on the calling thread, with single-threaded engine sessions: splitting a conv
over two worker threads measured no faster on the 2-core build machine, with numpy's
requantization (its short calls wait on each other for the GIL) and with the native
kernels (GIL released; 0.7–1.2× per conv, no gain per frame: docs/perf-model.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from targets.npusim import native
from targets.npusim import plans as P
from targets.npusim.intgemm import ZERO_POINT, IntGemm

REQUANT_BYTES = 1 << 18  # float64 scratch of one requant block: within a core's L2
CALL_MACS = 2e7
"""One engine call's fixed cost (≈ 40 µs with its numpy calls, measured on the build
machine) in MACs of the int8 kernels (≈ 500 GMAC/s there)."""
MIN_BLOCK, MAX_BLOCK = 16, 256


def block_channels(m: int, taps: int) -> int:
    """Output channels per block-diagonal GEMM of a grouped conv of `m` outputs per channel.

    Blocks of `nb` channels cost `C/nb` calls and `m·taps·C·nb` MACs (most of them zeros):
    their sum is least at `nb = sqrt(CALL_MACS / (m·taps))`, e.g. 27 channels for 3x3 at
    56x56 and 128 for 5x5 at 7x7 (clamped to [16, 256]).
    """
    return int(np.clip(np.sqrt(CALL_MACS / max(1, m * taps)), MIN_BLOCK, MAX_BLOCK))


def groups_per_block(groups: int, out_per_group: int, channels: int) -> int:
    """Consecutive groups joined into one GEMM (at least one).

    The largest divisor of `groups` whose blocks hold at most `channels` outputs.
    """
    fits = [d for d in range(1, groups + 1)
            if groups % d == 0 and d * out_per_group <= channels]
    return max(fits, default=1)


def block_weights(w: np.ndarray, groups: int, per_block: int) -> list[np.ndarray]:
    """Each block's int8 `[kh·kw·Cin_block, N_block]` GEMM weight, block-diagonal by group.

    K runs over (kh, kw, input channel) like the channels-last windows.
    """
    n, cin_g, kh, kw = w.shape
    n_g = n // groups
    out = []
    for first in range(0, groups, per_block):
        b = np.zeros((kh, kw, per_block * cin_g, per_block * n_g), np.int8)
        for u in range(per_block):
            g = first + u
            b[:, :, u * cin_g:(u + 1) * cin_g, u * n_g:(u + 1) * n_g] = \
                w[g * n_g:(g + 1) * n_g].transpose(2, 3, 1, 0)
        out.append(b.reshape(kh * kw * per_block * cin_g, per_block * n_g))
    return out


class IntConv:
    """One conv instruction's engine sessions and buffers (made at load).

    Args:
        sim: The simulator (its workspace).
        x_shape: The ifm's [C, H, W].
        x_dtype: int8 or uint8.
        y_dtype: The ofm's type.
        w: int8 weights [N, C / groups, kh, kw].
        groups: The conv's groups (C for depthwise).
        geometry: (stride, pads (top, left, bottom, right), dilation, (OH, OW)).
        requant: The per-channel §3 constants, shaped [N] (`Requant.make(..., trailing=0)`).
    """

    def __init__(self, sim: Any, x_shape: tuple[int, ...], x_dtype: np.dtype,
                 y_dtype: np.dtype, w: np.ndarray, groups: int, geometry: tuple,
                 requant: P.Requant) -> None:
        stride, pads, dilation, out_hw = geometry
        c, h, wd = x_shape
        self.zero_point = ZERO_POINT[np.dtype(x_dtype)]
        self.pads, self.hw = pads, (h, wd)
        hp, wp = h + pads[0] + pads[2], wd + pads[1] + pads[3]
        self.hwc = sim.workspace.request("int_hwc", (hp, wp, c), np.uint8)
        self.native = native.NativeRequant.like(requant) if sim.native_kernels else None
        self.depthwise = native.Depthwise(
            w, self.native, (hp, wp, c), out_hw, tuple(stride), tuple(dilation),
            self.zero_point) if self.native and groups == c == w.shape[0] else None
        self.gemms: list[IntGemm] = []
        if self.depthwise is None:
            self._plan_blocks(sim, w, groups, geometry, (hp, wp, c), y_dtype, requant)

    def _plan_blocks(self, sim: Any, w: np.ndarray, groups: int, geometry: tuple,
                     buf_shape: tuple[int, int, int], y_dtype: np.dtype,
                     requant: P.Requant) -> None:
        """The block-diagonal GEMMs (engine sessions) and their scratch."""
        stride, pads, dilation, out_hw = geometry
        (_, wp, c), kh, kw = buf_shape, w.shape[2], w.shape[3]
        per_block = groups_per_block(groups, w.shape[0] // groups,
                                     block_channels(out_hw[0] * out_hw[1], kh * kw))
        weights = block_weights(w, groups, per_block)
        blocks, (k, nb) = len(weights), weights[0].shape
        cb, m = c // blocks, out_hw[0] * out_hw[1]
        self.nb = nb
        self.direct = (blocks == 1 and (kh, kw) == (1, 1) and tuple(stride) == (1, 1)
                       and not any(pads))
        self.patches = None if self.direct else sim.workspace.request(
            "int_patches", (m, k), np.uint8)  # blocks run one after another
        self.geometry = (out_hw, (kh, kw), tuple(stride), tuple(dilation), cb)
        self.window = ((blocks, out_hw[0], out_hw[1], kh, kw, cb),
                       (cb, stride[0] * wp * c, stride[1] * c, dilation[0] * wp * c,
                        dilation[1] * c, 1))
        self.acc = sim.workspace.request("int_acc", (m, nb), np.int32)
        self.gemms = [IntGemm(b, m, self.zero_point, 1) for b in weights]
        if self.native:
            return  # the numpy requantization's state and scratch are not needed
        self.requant = requant
        self.exact_cols = [np.flatnonzero(~requant.float_ok[i * nb:(i + 1) * nb])
                           for i in range(blocks)]  # channels the float64 form misses
        self.rq_rows = min(m, max(8, REQUANT_BYTES // (8 * nb)))
        self.scratch = sim.workspace.request("int_rq", (self.rq_rows, nb), np.float64)
        self.q = sim.workspace.request("int_q", (self.rq_rows, nb), y_dtype)

    def run(self, x: np.ndarray, y: np.ndarray) -> None:
        """`y` [N, OH, OW] (the output's type) from `x` [C, H, W] (int8 or uint8)."""
        self._fill(x)
        y2 = y.reshape(y.shape[0], -1)
        if self.depthwise:
            self.depthwise(self.hwc(), y2)
            return
        for block in range(len(self.gemms)):
            self._block(block, y2)

    def _fill(self, x: np.ndarray) -> None:
        """`x` into the padded channels-last buffer, border included (the memory is shared)."""
        buf = self.hwc()
        if self.native and x.flags.c_contiguous:
            native.fill_hwc(x, buf, self.pads, self.zero_point)
            return
        top, left, bottom, right = self.pads
        h, w = self.hw
        zp = self.zero_point
        if top:
            buf[:top] = zp
        if bottom:
            buf[top + h:] = zp
        rows = buf[top:top + h]
        if left:
            rows[:, :left] = zp
        if right:
            rows[:, left + w:] = zp
        src = x.transpose(1, 2, 0)
        interior = rows[:, left:left + w]
        if zp:  # int8 x as the uint8 x + 128: the bit pattern with its sign bit flipped
            np.bitwise_xor(src.view(np.uint8), np.uint8(0x80), out=interior)
        else:
            np.copyto(interior, src)

    def _block(self, block: int, y2: np.ndarray) -> None:
        """One block of output channels: windows, one GEMM, requantization."""
        if self.direct:
            a = self.hwc().reshape(-1, self.hwc.shape[2])
        elif self.native:
            out_hw, kernel, stride, dilation, cb = self.geometry
            a = self.patches()
            native.patches(self.hwc(), out_hw, kernel, stride, dilation, block * cb, cb, a)
        else:
            shape, strides = self.window
            view = as_strided(self.hwc(), shape, strides, writeable=False)[block]
            a = self.patches()
            np.copyto(a.reshape(shape[1:]), view)
        acc = self.gemms[block](a, self.acc())
        n0, m = block * self.nb, acc.shape[0]
        if self.native:
            self.native.columns(acc, y2[n0:n0 + self.nb], n0)
            return
        scratch, q = self.scratch(), self.q()
        for a0 in range(0, m, self.rq_rows):
            a1 = min(a0 + self.rq_rows, m)
            self._requant(acc[a0:a1], scratch[:a1 - a0], q[:a1 - a0], n0,
                          self.exact_cols[block])
            np.copyto(y2[n0:n0 + self.nb, a0:a1].T, q[:a1 - a0])

    def _requant(self, src: np.ndarray, scratch: np.ndarray, dst: np.ndarray, n0: int,
                 exact_cols: np.ndarray) -> None:
        """§3 of int32 sums `src` [rows, N_block] (channels from `n0`) into contiguous `dst`.

        The float64 form for every channel, then the int64 formula again for `exact_cols`
        (block-relative), the channels where the float form is not proven (`Requant`).
        Contiguous: a strided store through the float-to-int cast measured 5x slower than
        requantizing here and then transposing the bytes.
        """
        rq, n1 = self.requant, n0 + self.nb
        if len(exact_cols) == self.nb:
            v = scratch.view(np.int64)
            v[...] = src
            rq.apply(v, dst, n0, n1)
            return
        f = scratch
        f[...] = src  # the int32 -> float64 cast alone, then the add: 2x faster than both in one
        np.add(f, rq.bias_f[n0:n1], out=f)
        rq.apply_float(f, dst, n0, n1)
        if len(exact_cols):
            v = src[:, exact_cols].astype(np.int64)
            part = np.empty(v.shape, dst.dtype)
            rq.apply_at(v, part, exact_cols + n0)
            dst[:, exact_cols] = part
