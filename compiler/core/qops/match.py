"""Helpers shared by the op families' matchers and lowerings (float graph side).

A matcher is a small function `match_x(node, graph) -> Unit | str` returning a unit, or
the reason (a user-facing string) why the node cannot run in int8.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core import fixedpoint as fp
from compiler.core.ir import const_value, consumers, is_const, is_graph_output, static_shape
from compiler.core.qops.base import Unit, UnitIO


def is_float(t: gs.Tensor) -> bool:
    """True for a float32 tensor."""
    return t.dtype is not None and np.dtype(t.dtype) == np.float32


def single_consumer(graph: gs.Graph, t: gs.Tensor) -> gs.Node | None:
    """The only consumer of `t` (None when shared or a graph output)."""
    users = consumers(t)
    if len(users) != 1 or is_graph_output(graph, t):
        return None
    return users[0]


def clip_bounds(node: gs.Node) -> tuple[float | None, float | None] | None:
    """Real (lo, hi) of a Relu or a Clip with constant bounds; None when not constant."""
    if node.op == "Relu":
        return 0.0, None
    if node.op != "Clip":
        return None
    bounds = []
    for i in (1, 2):
        t = node.inputs[i] if len(node.inputs) > i else None
        if t is None or not t.name:
            bounds.append(None)
        elif is_const(t) and const_value(t).size == 1:
            # ONNX wants scalar bounds, but exporters also write shape [1]
            bounds.append(float(const_value(t).reshape(-1)[0]))
        else:
            return None
    return bounds[0], bounds[1]


def fused_activation(graph: gs.Graph, out: gs.Tensor) -> tuple[gs.Node, tuple] | None:
    """The Relu/Clip that is the only consumer of `out`, with its real bounds."""
    user = single_consumer(graph, out)
    if user is None or user.op not in ("Relu", "Clip"):
        return None
    bounds = clip_bounds(user)
    return (user, bounds) if bounds is not None else None


def with_activation(graph: gs.Graph, unit: Unit) -> Unit:
    """Fuse a following Relu/Clip into `unit` (its bounds go to params["act"])."""
    fused = fused_activation(graph, unit.outputs[0])
    if fused is not None:
        node, bounds = fused
        unit.nodes.append(node)
        unit.outputs = [node.outputs[0]]
        unit.params["act"] = bounds
    return unit


def single(kind: str, node: gs.Node) -> Unit:
    """A one-node unit reading the node's first input."""
    return Unit(kind, [node], [node.inputs[0]], list(node.outputs))


# --- lowering helpers -------------------------------------------------------------------

def f64(v: float) -> np.float64:
    """A float64 scalar (scale ratios are computed in float64)."""
    return np.float64(v)


def bounds(unit: Unit, io: UnitIO) -> tuple[int, int]:
    """Integer clamp bounds of the unit's fused activation at the output scale.

    Without one: the output precision's whole range.
    """
    lo, hi = unit.params.get("act", (None, None))
    return fp.clamp_bounds(lo, hi, io.out_scale, io.out_dtype)


def channel_requant(sx: float, sw: np.ndarray, sy: float, bits: int = 31
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (m0, shift) of Sx·Sw[c]/Sy with `bits`-bit multipliers (§2, §16)."""
    m = f64(sx) * sw.astype(np.float64) / f64(sy)
    return fp.quantize_multipliers(m, bits)


def weight_layer(w: np.ndarray, b: np.ndarray | None, io: UnitIO, name: str
                 ) -> dict[str, np.ndarray]:
    """Per-channel weights, int32 bias and requant multipliers of a conv/FC layer.

    `w` is [Cout, ...] (the reduction over the rest); returns the QOp fields `weight`
    (int8, or int16 when `io.weight_dtype` says so, §17), `bias`, `m0`, `shift` and
    `weight_scale` (the bias-safe scale of docs/fixed-point.md §1; its bound depends on the
    input and weight precisions). A 64-bit accumulator (int16 inputs or weights) gets
    multipliers narrow enough for it (§16, §17).
    """
    sx, k, xt, wt = io.in_scales[0], int(np.prod(w.shape[1:])), io.in_dtype(0), io.weight_dtype
    wq, sw = fp.quantize_weights(w, name, fp.bias_scale_floor(b, sx, k, name, xt, wt), wt)
    m0, shift = channel_requant(sx, sw, io.out_scale, fp.layer_multiplier_bits(wq, xt))
    return {"weight": wq, "bias": fp.quantize_bias(b, sx, sw, k, name, xt, wt), "m0": m0,
            "shift": shift, "weight_scale": sw}


def explicit_pads(node: gs.Node, kernel: list[int], strides: list[int],
                  dilations: list[int]) -> list[int]:
    """ONNX pads of a windowed node, resolving auto_pad SAME_* against the input shape."""
    mode = node.attrs.get("auto_pad", "NOTSET")
    if mode == "VALID":
        return [0] * (2 * len(kernel))
    if mode == "NOTSET":
        return [int(p) for p in node.attrs.get("pads", [0] * (2 * len(kernel)))]
    spatial = static_shape(node.inputs[0])[2:]
    begin, end = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small = total // 2
        begin.append(small if mode == "SAME_UPPER" else total - small)
        end.append(total - begin[-1])
    return begin + end
