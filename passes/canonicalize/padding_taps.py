"""Drop the kernel taps of a Conv that only ever read zero padding.

A dilated Conv on a small feature map (DeepLabV3's ASPP: dilation 12, 24, 36 on a 16x16 map
at 256x256 input) has taps that fall into the padding for every output position: they
multiply zeros. Cutting the kernel to the taps that read real data for at least one output
(and moving the padding by the same amount) computes the same function exactly, with fewer
MACs; a kernel cut to one tap along an axis no longer needs its dilation there, which lets a
target with a dilation limit run it. Valid only for the bound input shape, which is static
after loading (`compiler.core.io`).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.ir import Model, static_shape
from passes.base import RewritePass


def trim_padding_taps(model: Model) -> int:
    """Cut every Conv's kernel to the taps that read input data (see module doc).

    Returns:
        The number of Conv nodes rewritten.
    """
    count = 0
    for node in [n for n in model.graph.nodes if n.op == "Conv"]:
        plan = _trim_plan(node)
        if plan is not None:
            _apply(model, node, *plan)
            count += 1
    return count


def _trim_plan(node: gs.Node) -> tuple[list[tuple[int, int]], list[int], list[int]] | None:
    """Per spatial axis the kept taps [t0, t1], the new pads and dilations; None: keep."""
    if not isinstance(node.inputs[1], gs.Constant) or node.attrs.get("auto_pad", "NOTSET") \
            not in ("NOTSET", b"NOTSET"):
        return None
    x, w = static_shape(node.inputs[0]), np.shape(node.inputs[1].values)
    if x is None or len(x) != len(w) or len(w) < 3:
        return None
    spatial, rank = x[2:], len(w) - 2
    strides = list(node.attrs.get("strides", [1] * rank))
    dilations = list(node.attrs.get("dilations", [1] * rank))
    pads = list(node.attrs.get("pads", [0] * 2 * rank))
    keep, new_pads, new_dil = [], list(pads), list(dilations)
    for ax in range(rank):
        k, d, s, size = w[2 + ax], dilations[ax], strides[ax], spatial[ax]
        begin, end = pads[ax], pads[rank + ax]
        out = (size + begin + end - d * (k - 1) - 1) // s + 1
        taps = [t for t in range(k) if _reads_data(t, d, s, begin, size, out)]
        if not taps or taps != list(range(taps[0], taps[-1] + 1)):
            return None  # an all-padding conv, or (never for stride 1) a gap: leave it
        t0, t1 = taps[0], taps[-1]
        new_pads[ax], new_pads[rank + ax] = begin - d * t0, end - d * (k - 1 - t1)
        if new_pads[ax] < 0 or new_pads[rank + ax] < 0:
            t0, t1 = 0, k - 1  # would need negative padding: keep this axis whole
            new_pads[ax], new_pads[rank + ax] = begin, end
        if t1 == t0:
            new_dil[ax] = 1
        keep.append((t0, t1))
    if all(t0 == 0 and t1 == w[2 + ax] - 1 for ax, (t0, t1) in enumerate(keep)):
        return None
    return keep, new_pads, new_dil


def _reads_data(t: int, d: int, s: int, begin: int, size: int, out: int) -> bool:
    """Whether tap `t` reads an input row in [0, size) for some output position."""
    offset = d * t - begin  # tap t of output y reads input row y·s + offset
    first = max(0, -(offset // s))  # the first output whose row is >= 0
    return first < out and first * s + offset < size


def _apply(model: Model, node: gs.Node, keep: list[tuple[int, int]], pads: list[int],
           dilations: list[int]) -> None:
    weight = node.inputs[1]
    cut = (slice(None), slice(None)) + tuple(slice(t0, t1 + 1) for t0, t1 in keep)
    values = np.ascontiguousarray(np.asarray(weight.values)[cut])
    if len(weight.outputs) == 1:
        weight.values = values  # sole user: replace the value in place
    else:
        node.inputs[1] = gs.Constant(_fresh(model, f"{weight.name}_taps"), values)
    node.attrs["pads"], node.attrs["dilations"] = pads, dilations
    if "kernel_shape" in node.attrs:
        node.attrs["kernel_shape"] = list(values.shape[2:])


def _fresh(model: Model, base: str) -> str:
    taken, name, i = model.graph.tensors(), base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


class TrimPaddingTaps(RewritePass):
    """Pass: cut Conv kernels to the taps that read input data."""

    rewrite = staticmethod(trim_padding_taps)
