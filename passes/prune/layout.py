"""Channel rules of the ops that move the channel axis.

Transpose, Reshape, Flatten, Squeeze/Unsqueeze, reductions and normalizations over an axis.
NHWC exports (tf2onnx, tflite2onnx) wrap NCHW convs in Transposes and apply biases, pads and
reductions on the NHWC side; sequence models read channels from the last axis. The channel
axis is followed through all of them as long as it stays one (or, inside a channel shuffle,
two adjacent) axis whose positions the trace can name.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.ir import const_value
from passes.prune.slots import Slot, Tracer, flat, shape_of, unknown


def tie_blocks(arr: np.ndarray, blocks: int, node: gs.Node, tr: Tracer) -> None:
    """Tie channel j of every block (equal per-block selection keeps a reshape valid)."""
    rows = arr.reshape(blocks, -1)
    for g in range(1, blocks):
        tr.tie(rows[0], rows[g], node)


def norm_axes(axes, rank: int) -> list[int]:
    """Axes with negative values resolved."""
    return [int(a) + rank if int(a) < 0 else int(a) for a in axes]


def node_axes(node: gs.Node, key: str = "axes") -> list[int] | None:
    """An `axes` attribute, or the constant second input (opset 13+ Squeeze, 18+ Reduce)."""
    axes = node.attrs.get(key)
    if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
        value = const_value(node.inputs[1])
        axes = None if value is None else value.reshape(-1).tolist()
    return None if axes is None else list(axes)


def spread(x: Slot, shape: tuple[int, ...], lo: int, hi: int) -> np.ndarray:
    """Ids of every position of the axes shape[lo:hi] merged into one (they hold the slot)."""
    # `shape` is the traced model's; the channel axes take the slot's (maybe pruned) sizes
    sub, view = list(shape[lo:hi]), [1] * (hi - lo)
    for k, d in enumerate(x.dims):
        sub[x.axis - lo + k] = view[x.axis - lo + k] = d
    return np.broadcast_to(x.arr.reshape(view), sub).ravel()


def reshape_blocks(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple] | None:
    """Pair the axes of a reshape: ((i0, i1), (j0, j1)) blocks with equal element counts."""
    blocks, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        i0, j0, pa, pb = i, j, 1, 1
        if i < len(a):
            pa, i = a[i], i + 1
        if j < len(b):
            pb, j = b[j], j + 1
        while pa != pb:
            if pa < pb and i < len(a):
                pa, i = pa * a[i], i + 1
            elif pb < pa and j < len(b):
                pb, j = pb * b[j], j + 1
            else:
                return None
        blocks.append(((i0, i), (j0, j)))
    return blocks


def reshape_slot(node: gs.Node, x: Slot, tr: Tracer) -> Slot | None:
    """The output slot of a Reshape of `x`, or None when it mixes channels with other axes.

    Decisions read the traced model's shapes only, so the kept ids (`apply.py`) follow the
    same path as the analysis.
    """
    a, b = shape_of(node.inputs[0]), shape_of(node.outputs[0])
    blocks = reshape_blocks(a, b) if a is not None and b is not None else None
    hit = [blk for blk in blocks or [] if blk[0][0] <= x.axis < blk[0][1]]
    if not hit or hit[0][0][1] < x.axes.stop:
        return None
    (i0, i1), (j0, j1) = hit[0]
    if j0 == j1:  # trailing size-1 axes, the channel axis among them, map to no output axis
        return None
    big = [k for k in range(j0, j1) if b[k] != 1] or [j0]
    if any(a[k] != 1 for k in range(i0, i1) if k not in x.axes):  # merged with other axes
        if len(big) != 1 or (i0 == 0 < x.axis):
            return None
        return flat(spread(x, a, i0, i1), big[0])
    if len(big) == 1:  # same channels on one axis (a shuffle's two axes merged back)
        return flat(x.arr, big[0])
    if big != list(range(big[0], big[0] + len(big))):
        return None
    if [b[k] for k in big] == [a[k] for k in x.axes]:
        return Slot(x.arr, x.dims, big[0])
    if len(x.dims) == 1 and len(big) == 2 and tuple(a[i1:]) == tuple(b[j1:]):
        # [N, C, H, W] -> [N, G, C/G, H, W]: a channel shuffle starts
        groups = b[big[0]]
        if len(x.arr) % groups:
            return None
        tie_blocks(x.arr, groups, node, tr)
        return Slot(x.arr, (groups, len(x.arr) // groups), big[0])
    return None


def _reshape(node: gs.Node, tr: Tracer) -> None:
    x = tr.slot(node.inputs[0])
    if x is None or const_value(node.inputs[1]) is None:
        return unknown(node, tr, "reshape target is not constant")
    out = reshape_slot(node, x, tr)
    if out is None:
        return unknown(node, tr, "reshape mixes the channel axis with others")
    tr.set(node.outputs[0], out)
    return None


def _transpose(node: gs.Node, tr: Tracer) -> None:
    x, shape = tr.slot(node.inputs[0]), shape_of(node.inputs[0])
    if x is None or shape is None:
        return unknown(node, tr, "input has no channel axis")
    perm = norm_axes(node.attrs.get("perm", list(range(len(shape)))[::-1]), len(shape))
    where = [perm.index(k) for k in x.axes]
    lo = min(where)
    if sorted(where) != list(range(lo, lo + len(where))):
        return unknown(node, tr, "separates the channel axes")
    sub = [perm[lo + t] - x.axis for t in range(len(x.dims))]
    arr = x.arr.reshape(x.dims).transpose(sub).ravel()
    tr.set(node.outputs[0], Slot(arr, tuple(x.dims[r] for r in sub), lo))
    return None


def _flatten(node: gs.Node, tr: Tracer) -> None:
    x, shape = tr.slot(node.inputs[0]), shape_of(node.inputs[0])
    if x is None or shape is None:
        return unknown(node, tr, "input has no channel axis")
    axis = norm_axes([node.attrs.get("axis", 1)], len(shape))[0]
    if axis < 1 or x.axis < axis:
        return unknown(node, tr, "flattens the channel axis into the batch axis")
    tr.set(node.outputs[0], flat(spread(x, shape, axis, len(shape))))
    return None


def _squeeze(node: gs.Node, tr: Tracer) -> None:
    x, shape = tr.slot(node.inputs[0]), shape_of(node.inputs[0])
    axes = node_axes(node)
    if x is None or shape is None:
        return unknown(node, tr, "input has no channel axis")
    axes = norm_axes(axes, len(shape)) if axes is not None else [
        k for k, d in enumerate(shape) if d == 1]
    if any(k in x.axes for k in axes):
        return unknown(node, tr, "squeezes the channel axis")
    tr.set(node.outputs[0], x.at(x.axis - sum(k < x.axis for k in axes)))
    return None


def _unsqueeze(node: gs.Node, tr: Tracer) -> None:
    x, shape, axes = tr.slot(node.inputs[0]), shape_of(node.inputs[0]), node_axes(node)
    if x is None or shape is None or axes is None:
        return unknown(node, tr, "axes unknown")
    rank = len(shape) + len(axes)
    inserted = set(norm_axes(axes, rank))
    kept = [k for k in range(rank) if k not in inserted]
    where = [kept[k] for k in x.axes]
    if where != list(range(where[0], where[0] + len(where))):
        return unknown(node, tr, "inserts an axis between the channel axes")
    tr.set(node.outputs[0], x.at(where[0]))
    return None


def _reduce(node: gs.Node, tr: Tracer) -> None:
    x, shape = tr.slot(node.inputs[0]), shape_of(node.inputs[0])
    if x is None or shape is None:
        return unknown(node, tr, "input has no channel axis")
    axes = node_axes(node)
    if not axes:
        if axes is not None and node.attrs.get("noop_with_empty_axes", 0):
            tr.set(node.outputs[0], x)
            return None
        return unknown(node, tr, "reduces over all axes, the channel axis included")
    axes = norm_axes(axes, len(shape))
    if any(k in x.axes for k in axes):
        return unknown(node, tr, "reduces over the channel axis")
    keep = node.attrs.get("keepdims", 1)
    tr.set(node.outputs[0], x if keep else x.at(x.axis - sum(k < x.axis for k in axes)))
    return None


def _softmax(node: gs.Node, tr: Tracer) -> None:
    x, shape = tr.slot(node.inputs[0]), shape_of(node.inputs[0])
    if x is None or shape is None:
        return unknown(node, tr, "input has no channel axis")
    axis = norm_axes([node.attrs.get("axis", -1 if tr.opset >= 13 else 1)], len(shape))[0]
    # before opset 13 Softmax normalizes over all axes from `axis` on
    over = {axis} if tr.opset >= 13 else set(range(axis, len(shape)))
    if over & set(x.axes):
        return unknown(node, tr, "normalizes across channels")
    tr.set(node.outputs[0], x)
    return None


def _layer_norm(node: gs.Node, tr: Tracer) -> None:
    x, shape = tr.slot(node.inputs[0]), shape_of(node.inputs[0])
    if x is None or shape is None:
        return unknown(node, tr, "input has no channel axis")
    axis = norm_axes([node.attrs.get("axis", -1)], len(shape))[0]
    if any(k >= axis for k in x.axes):
        return unknown(node, tr, "normalizes over the channel axis")
    tr.set(node.outputs[0], x)
    return None


LAYOUT_RULES = {
    "Reshape": _reshape, "Transpose": _transpose, "Flatten": _flatten, "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze, "Softmax": _softmax, "LogSoftmax": _softmax, "Hardmax": _softmax,
    "LayerNormalization": _layer_norm,
    **{op: _reduce for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1",
                              "ReduceL2", "ReduceProd", "ReduceLogSumExp", "ReduceSumSquare")},
}
