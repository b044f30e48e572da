"""numpy NHWC layers of the block-wise reconstruction (`passes.recon_block`).

A 2-D convolution with its forward and backward (im2col + matmul, 1x1 stride-1 convs as one
matmul, depthwise convs per tap, the backward's per-tap scatter), and the gradient through a
clamp (ReLU, ReLU6, Clip).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.ir import const_value
from passes.recon import conv_geometry


@dataclass
class Conv:
    """A 2-D convolution in NHWC with its parameters (weights OIHW, bias [Cout])."""

    w: np.ndarray
    b: np.ndarray
    strides: tuple[int, int] = (1, 1)
    dil: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    depthwise: bool = False

    @classmethod
    def of(cls, node: gs.Node, in_hw: tuple[int, int]) -> Conv:
        """The layer of an ONNX Conv node (input spatial size `in_hw`)."""
        w = np.asarray(const_value(node.inputs[1]), np.float32)
        has_b = len(node.inputs) > 2 and node.inputs[2].name
        b = (np.asarray(const_value(node.inputs[2]), np.float32).reshape(-1) if has_b
             else np.zeros(w.shape[0], np.float32))
        strides, dil, pads, _ = conv_geometry(node, in_hw, w.shape[2:])
        group = int(node.attrs.get("group", 1))
        return cls(w.copy(), b.copy(), tuple(strides), tuple(dil), tuple(pads),
                   depthwise=group > 1)

    def _out_hw(self, h: int, w: int) -> tuple[int, int]:
        kh, kw = self.w.shape[2:]
        p = self.pads
        oh = (h + p[0] + p[2] - self.dil[0] * (kh - 1) - 1) // self.strides[0] + 1
        ow = (w + p[1] + p[3] - self.dil[1] * (kw - 1) - 1) // self.strides[1] + 1
        return oh, ow

    def _pointwise(self) -> bool:
        return (self.w.shape[2:] == (1, 1) and self.strides == (1, 1) and not any(self.pads)
                and not self.depthwise)

    def _taps(self, xp: np.ndarray, oh: int, ow: int) -> list[tuple[slice, slice]]:
        kh, kw = self.w.shape[2:]
        s, d = self.strides, self.dil
        return [(slice(i * d[0], i * d[0] + s[0] * (oh - 1) + 1, s[0]),
                 slice(j * d[1], j * d[1] + s[1] * (ow - 1) + 1, s[1]))
                for i in range(kh) for j in range(kw)]

    def _pad(self, x: np.ndarray) -> np.ndarray:
        p = self.pads
        if not any(p):
            return x
        return np.pad(x, ((0, 0), (p[0], p[2]), (p[1], p[3]), (0, 0)))

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, tuple]:
        """Output `[B, OH, OW, Cout]` of `x [B, H, W, Cin]` and what `backward` needs."""
        bsz, h, w_, c = x.shape
        oh, ow = self._out_hw(h, w_)
        cout = self.w.shape[0]
        if self._pointwise():
            y = x.reshape(-1, c) @ self.w.reshape(cout, c).T
            return (y + self.b).reshape(bsz, oh, ow, cout), (x,)
        xp = self._pad(x)
        taps = self._taps(xp, oh, ow)
        if self.depthwise:
            wk = self.w.reshape(cout, -1)  # [C, K]
            y = np.zeros((bsz, oh, ow, cout), np.result_type(x, self.w))
            for k, (si, sj) in enumerate(taps):
                y += xp[:, si, sj, :] * wk[:, k]
            return y + self.b, (xp, x.shape)
        cols = np.stack([xp[:, si, sj, :] for si, sj in taps], axis=-1)  # [B,OH,OW,C,K]
        rows = cols.reshape(bsz * oh * ow, -1)
        y = rows @ self.w.reshape(cout, -1).T
        return (y + self.b).reshape(bsz, oh, ow, cout), (rows, xp.shape, x.shape)

    def backward(self, dy: np.ndarray, saved: tuple,
                 need_dx: bool = True) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """(dx, dw, db) of the output gradient `dy [B, OH, OW, Cout]`."""
        bsz, oh, ow, cout = dy.shape
        db = dy.reshape(-1, cout).sum(0)
        if self._pointwise():
            (x,) = saved
            c = x.shape[-1]
            dyf = dy.reshape(-1, cout)
            dw = (dyf.T @ x.reshape(-1, c)).reshape(self.w.shape)
            dx = (dyf @ self.w.reshape(cout, c)).reshape(x.shape) if need_dx else None
            return dx, dw, db
        if self.depthwise:
            xp, xshape = saved
            taps = self._taps(xp, oh, ow)
            wk = self.w.reshape(cout, -1)
            dw = np.stack([np.einsum("bhwc,bhwc->c", dy, xp[:, si, sj, :]) for si, sj in taps],
                          axis=1).reshape(self.w.shape)
            dx = None
            if need_dx:
                dxp = np.zeros(xp.shape, dy.dtype)
                for k, (si, sj) in enumerate(taps):
                    dxp[:, si, sj, :] += dy * wk[:, k]
                dx = self._crop(dxp, xshape)
            return dx, dw, db
        rows, xp_shape, xshape = saved
        dyf = dy.reshape(-1, cout)
        dw = (dyf.T @ rows).reshape(self.w.shape)
        dx = None
        if need_dx:
            drows = (dyf @ self.w.reshape(cout, -1)).reshape(bsz, oh, ow, xshape[-1], -1)
            dxp = np.zeros(xp_shape, dy.dtype)
            for k, (si, sj) in enumerate(self._taps(dxp, oh, ow)):
                dxp[:, si, sj, :] += drows[..., k]
            dx = self._crop(dxp, xshape)
        return dx, dw, db

    def _crop(self, dxp: np.ndarray, xshape: tuple) -> np.ndarray:
        p = self.pads
        return dxp[:, p[0]:p[0] + xshape[1], p[1]:p[1] + xshape[2], :]


def clamp_backward(dy: np.ndarray, x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Gradient through `clip(x, lo, hi)` (ReLU: lo 0, hi inf)."""
    return dy * ((x > lo) & (x < hi))


__all__ = ["Conv", "clamp_backward"]
