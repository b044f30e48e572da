"""Rewrite one node for new channel layouts: gather weights, constants and attributes.

`tracer` is the `ApplyTracer` after tracing: `tracer.old_positions(tensor)` gives, for each
new channel position of a tensor, the old position it came from.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.errors import GraphError
from compiler.core.ir import const_value
from passes.prune.slots import label
from passes.prune.trace import ELEMENTWISE, shape_of, slice_params


def _changed(tracer, tensor: gs.Tensor) -> bool:
    new, old = tracer.slots.get(tensor.name), tracer.analysis.slots.get(tensor.name)
    if new is None or old is None:
        return False
    if len(new.arr) != len(old.arr) or new.dims != old.dims:
        return True
    return not np.array_equal(tracer.old_positions(tensor.name), np.arange(len(old.arr)))


def _positions(tracer, tensor: gs.Tensor, axis: int, n: int) -> np.ndarray:
    # Old positions of the channels a weighted op reads on `axis`; channels traced on
    # another axis were pinned (`channel_input`), so they are all still there.
    slot = tracer.slots.get(tensor.name)
    if slot is None or slot.axis != axis or len(slot.dims) != 1:
        return np.arange(n)
    return tracer.old_positions(tensor.name)


def _set_const(node: gs.Node, i: int, value: np.ndarray) -> None:
    # Named after the node and slot (not a global counter) so repeated runs in one process
    # produce identical models; the replaced constant is disconnected, so no clash.
    node.inputs[i] = gs.Constant(f"{label(node)}.in{i}.pruned", np.ascontiguousarray(value))


def rewrite_node(node: gs.Node, tracer) -> None:
    """Apply the new channel layouts to `node`'s constants and attributes, in place."""
    fn = _REWRITES.get(node.op)
    if fn is not None:
        fn(node, tracer)
    elif node.op in ELEMENTWISE:  # not Pad pads, Clip bounds, Reshape shapes...
        _per_channel_consts(node, tracer)


def _conv(node: gs.Node, tracer) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if not (_changed(tracer, x) or _changed(tracer, y)):
        return
    w = const_value(node.inputs[1])
    group = int(node.attrs.get("group", 1))
    px = _positions(tracer, x, 1, w.shape[1] * group)
    py = tracer.old_positions(y.name)
    if group > 1 and w.shape[1] == 1:  # depthwise
        w = np.take(w, py, axis=0)
        node.attrs["group"] = len(px)
    else:
        w = np.take(w, py, axis=0)
        w = np.take(w, _block_positions(px, group, w.shape[1], node), axis=1)
    _set_const(node, 1, w)
    _bias(node, 2, py)


def _conv_transpose(node: gs.Node, tracer) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if not (_changed(tracer, x) or _changed(tracer, y)):
        return
    w = const_value(node.inputs[1])  # [Cin, Cout/group, k...]
    group = int(node.attrs.get("group", 1))
    px, py = _positions(tracer, x, 1, w.shape[0]), tracer.old_positions(y.name)
    w = np.take(w, px, axis=0)
    if group > 1 and const_value(node.inputs[1]).shape[0] == group:  # depthwise
        node.attrs["group"] = len(px)
    else:
        w = np.take(w, _block_positions(py, group, w.shape[1], node), axis=1)
    _set_const(node, 1, w)
    _bias(node, 2, py)


def _block_positions(pos: np.ndarray, group: int, old_block: int, node: gs.Node) -> np.ndarray:
    # A grouped conv keeps the same channels in every group: check, return block 0's choice.
    if group == 1:
        return pos
    rows = pos.reshape(group, -1) - (np.arange(group) * old_block)[:, None]
    if not np.all(rows == rows[0]):
        raise GraphError(f"node {node.name!r}: groups of a grouped conv were pruned unequally")
    return rows[0]


def _bias(node: gs.Node, i: int, pos: np.ndarray) -> None:
    if len(node.inputs) > i and node.inputs[i].name:
        b = const_value(node.inputs[i])
        if b is not None and b.ndim >= 1 and b.shape[-1] > 1:
            _set_const(node, i, np.take(b, pos, axis=-1))


def _gemm(node: gs.Node, tracer) -> None:
    x, y = node.inputs[0], node.outputs[0]
    if not (_changed(tracer, x) or _changed(tracer, y)):
        return
    w = const_value(node.inputs[1])
    trans = node.op == "Gemm" and node.attrs.get("transB", 0)
    px = _positions(tracer, x, len(shape_of(x)) - 1, w.shape[1 if trans else 0])
    py = tracer.old_positions(y.name)
    w = np.take(np.take(w, px, axis=1 if trans else 0), py, axis=0 if trans else 1)
    _set_const(node, 1, w)
    if node.op == "Gemm":
        _bias(node, 2, py)


def _norm(node: gs.Node, tracer) -> None:
    x = node.inputs[0]
    if not _changed(tracer, x):
        return
    px = tracer.old_positions(x.name)
    for i in range(1, len(node.inputs)):
        v = const_value(node.inputs[i])
        if v is not None and v.ndim == 1 and len(v) > 1:
            _set_const(node, i, np.take(v, px))


def _per_channel_consts(node: gs.Node, tracer) -> None:
    # Element-wise / PRelu operands shaped [C,1,1], [1,C,1,1] ... follow the output channels.
    if not node.outputs or not _changed(tracer, node.outputs[0]):
        return
    out_shape = shape_of(node.outputs[0])
    slot = tracer.analysis.slots[node.outputs[0].name]
    old_c = len(slot.arr)
    py = tracer.old_positions(node.outputs[0].name)
    for i, t in enumerate(node.inputs):
        v = const_value(t)
        if v is None or out_shape is None or len(slot.dims) != 1:
            continue
        axis = v.ndim - (len(out_shape) - slot.axis)
        if axis >= 0 and v.shape[axis] == old_c and old_c > 1:
            _set_const(node, i, np.take(v, py, axis=axis))


def _reshape(node: gs.Node, tracer) -> None:
    y = node.outputs[0]
    new, old = tracer.slots.get(y.name), tracer.analysis.slots.get(y.name)
    if new is None or (len(new.arr) == len(old.arr) and new.dims == old.dims):
        return
    shape = const_value(node.inputs[1]).copy()
    dims = list(new.dims) if len(new.dims) > 1 else [len(new.arr)]
    for i, d in enumerate(dims):
        if shape[new.axis + i] != -1:  # -1 is inferred; 0 (copy) is made explicit
            shape[new.axis + i] = d
    _set_const(node, 1, shape.astype(np.int64))


def _split(node: gs.Node, tracer) -> None:
    bounds = tracer.cuts.get(node.name)
    if bounds is None:
        return
    sizes = np.array([b - a for a, b in bounds], np.int64)
    node.attrs.pop("num_outputs", None)
    if "split" in node.attrs:
        node.attrs["split"] = sizes.tolist()
        return
    name = f"{label(node)}.split_sizes"
    if len(node.inputs) > 1:
        node.inputs[1] = gs.Constant(name, sizes)
    else:
        node.inputs.append(gs.Constant(name, sizes))


def _slice(node: gs.Node, tracer) -> None:
    bounds = tracer.cuts.get(node.name)
    if bounds is None:
        return
    start, stop = bounds[0]
    channel = tracer.analysis.slots[node.inputs[0].name].axis
    starts, ends = const_value(node.inputs[1]).copy(), const_value(node.inputs[2]).copy()
    rank = len(shape_of(node.inputs[0]))
    axes = const_value(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name \
        else np.arange(rank)
    i = [k for k, a in enumerate(axes.tolist()) if (a + rank if a < 0 else a) == channel][0]
    if slice_params(node, channel) is None:
        return
    starts[i], ends[i] = start, stop
    _set_const(node, 1, starts.astype(starts.dtype))
    _set_const(node, 2, ends.astype(ends.dtype))


def _resize(node: gs.Node, tracer) -> None:
    y = node.outputs[0]
    if len(node.inputs) > 3 and node.inputs[3].name and _changed(tracer, y):
        sizes = const_value(node.inputs[3]).copy()
        slot = tracer.slots[y.name]
        sizes[slot.axis] = len(slot.arr)
        _set_const(node, 3, sizes)


_REWRITES = {"Conv": _conv, "ConvTranspose": _conv_transpose, "Gemm": _gemm, "MatMul": _gemm,
             "BatchNormalization": _norm, "InstanceNormalization": _norm,
             "Reshape": _reshape, "Split": _split, "Slice": _slice, "Resize": _resize}
