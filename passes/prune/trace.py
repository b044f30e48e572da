"""Channel semantics of ONNX ops: how each op maps the channel axis of its inputs to its outputs.

Every activation tensor of rank >= 2 carries a `Slot`: one id per position of its channel
axis (axis 1 where produced; followed through Transposes, Reshapes, Squeezes and reductions
by `layout.py`). Producers (Conv, Gemm, MatMul, graph inputs, unknown ops) create fresh ids;
every other op derives its output ids from its inputs (Concat concatenates, Split/Slice cut,
Flatten repeats each id over the spatial size, a shuffle permutes) and ties ids that must be
removed together (residual Add, grouped convs). The same rules run twice: `groups.py` traces
fresh element ids to find the groups, `apply.py` traces the kept ids to learn every tensor's
new channel layout.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.ir import const_value
from passes.prune.layout import LAYOUT_RULES, norm_axes, reshape_blocks, tie_blocks
from passes.prune.slots import (
    Slot,
    Tracer,
    carries_channels,
    channel_input,
    describe,
    flat,
    produce,
    shape_of,
    unknown,
)

__all__ = ["CHANNELWISE", "ELEMENTWISE", "POINTWISE", "RULES", "WEIGHTED", "Slot", "Tracer",
           "carries_channels", "describe", "reshape_blocks", "shape_of", "slice_params",
           "topo_order", "trace", "unknown"]

# element by element: any channel axis passes through
POINTWISE = {
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Elu",
    "Selu", "Celu", "Softplus", "Softsign", "Exp", "Log", "Abs", "Neg", "Sqrt", "Erf", "Gelu",
    "Mish", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Identity", "Dropout",
    "Cast", "ThresholdedRelu", "Shrink", "IsNaN", "IsInf", "Not",
}
# per channel, with the channels on axis 1 (pooling windows and statistics over the rest)
CHANNEL_FIRST = {
    "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
    "BatchNormalization", "InstanceNormalization",
}
CHANNELWISE = POINTWISE | CHANNEL_FIRST
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "Where",
               "Equal", "Less", "Greater", "And", "Or", "PRelu"}
WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}

Rule = Callable[[gs.Node, Tracer], None]


def _extra_outputs_used(node: gs.Node) -> bool:
    # MaxPool indices, Dropout mask: flat indices / masks whose layout depends on C
    return any(t.name and t.outputs for t in node.outputs[1:])


def _pointwise(node: gs.Node, tr: Tracer) -> None:
    x = tr.slot(node.inputs[0])
    if x is None:
        return unknown(node, tr, "input has no channel axis")
    if _extra_outputs_used(node):
        return unknown(node, tr, f"second output {node.outputs[1].name!r} is used")
    tr.set(node.outputs[0], x)
    return None


def _channel_first(node: gs.Node, tr: Tracer) -> None:
    if tr.slot(node.inputs[0]) is None:
        return unknown(node, tr, "input has no channel axis")
    x = tr.slot(node.inputs[0])
    if x.axis != 1 or len(x.dims) != 1:
        return unknown(node, tr, f"works on axis 1, the channels are on axis {x.axis}")
    return _pointwise(node, tr)


def _pads(node: gs.Node, rank: int) -> list[int] | None:
    """Pads per axis as [begin..., end...] over all `rank` axes, None if not constant."""
    pads = const_value(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1].name \
        else node.attrs.get("pads")
    if pads is None:
        return None
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    if len(node.inputs) <= 3 or not node.inputs[3].name:
        return pads if len(pads) == 2 * rank else None
    axes = const_value(node.inputs[3])
    if axes is None:
        return None
    full = [0] * (2 * rank)
    for i, a in enumerate(norm_axes(axes.reshape(-1), rank)):
        full[a], full[a + rank] = pads[i], pads[i + len(axes.reshape(-1))]
    return full


def _pad(node: gs.Node, tr: Tracer) -> None:
    x, x_shape = tr.slot(node.inputs[0]), shape_of(node.inputs[0])
    pads = _pads(node, len(x_shape)) if x_shape is not None else None
    if x is None or pads is None:
        return unknown(node, tr, "pads are not constant")
    if any(pads[a] or pads[a + len(x_shape)] for a in x.axes):
        return unknown(node, tr, "pads the channel axis")
    return _pointwise(node, tr)


def _resize(node: gs.Node, tr: Tracer) -> None:
    x = tr.slot(node.inputs[0])
    x_shape, y_shape = shape_of(node.inputs[0]), shape_of(node.outputs[0])
    if x is None or x_shape is None or y_shape is None:
        return unknown(node, tr, "shapes unknown")
    if any(x_shape[a] != y_shape[a] for a in x.axes):
        return unknown(node, tr, "resizes the channel axis")
    if len(x.dims) != 1:
        return unknown(node, tr, "resizes a channel shuffle's middle")
    return _pointwise(node, tr)


def _conv(node: gs.Node, tr: Tracer) -> None:
    w = const_value(node.inputs[1])
    if tr.slot(node.inputs[0]) is None or w is None:
        return unknown(node, tr, "weights are not constant")
    x = channel_input(node, tr, 1)
    group = int(node.attrs.get("group", 1))
    transpose = node.op == "ConvTranspose"
    cin_g = w.shape[0] // group if transpose else w.shape[1]
    cout = w.shape[1] * group if transpose else w.shape[0]
    if group > 1 and cin_g == 1:  # depthwise: each input channel owns `cout/group` outputs
        if x is None:
            return unknown(node, tr, "depthwise on channels traced on another axis")
        tr.set(node.outputs[0], flat(np.repeat(x.arr, cout // group)))
        return None
    y = produce(node, tr, cout)
    if group > 1:  # same per-group selection keeps `group` valid
        if x is not None:
            tie_blocks(x.arr, group, node, tr)
        tie_blocks(y, group, node, tr)
    return None


def _gemm(node: gs.Node, tr: Tracer) -> None:
    w, shape = const_value(node.inputs[1]), shape_of(node.inputs[0])
    if tr.slot(node.inputs[0]) is None or w is None or w.ndim != 2 or shape is None:
        return unknown(node, tr, "weights are not a constant matrix")
    if node.op == "Gemm" and node.attrs.get("transA", 0):
        return unknown(node, tr, "transA")
    channel_input(node, tr, len(shape) - 1)  # K: the last axis (a Gemm's input is 2-D)
    n_out = w.shape[0] if node.op == "Gemm" and node.attrs.get("transB", 0) else w.shape[1]
    produce(node, tr, n_out, len(shape) - 1)
    return None


def _operand(t: gs.Tensor, tr: Tracer, rank: int, out_shape: tuple) -> tuple | None:
    """(slot, output axis of its channels) of one operand of an element-wise op.

    (None, None) for operands without channels or broadcast over them (constants are sliced
    by the rewrite); None if the operand's shape is unknown.
    """
    if isinstance(t, gs.Constant) or not t.name:
        return None, None
    s, shape = tr.slot(t), shape_of(t)
    if shape is None:
        return None
    if s is None:
        return None, None
    offset = rank - len(shape)
    if all(shape[a] == 1 for a in s.axes) and any(out_shape[a + offset] != 1 for a in s.axes):
        return None, None  # e.g. a [N, 1, H, W] attention map scaling every channel
    return s, s.axis + offset


def _elementwise(node: gs.Node, tr: Tracer) -> None:
    out_shape = shape_of(node.outputs[0])
    if out_shape is None:
        return unknown(node, tr, "output shape unknown")
    rank, joined = len(out_shape), []
    for t in node.inputs:
        found = _operand(t, tr, rank, out_shape)
        if found is None:
            return unknown(node, tr, f"shape of {t.name!r} unknown")
        if found[0] is not None:
            joined.append(found)
    if not joined:
        return unknown(node, tr, "no operand carries the output channels")
    first, axis = joined[0]
    for s, a in joined[1:]:
        if s.dims != first.dims or a != axis:
            return unknown(node, tr, "operands have different channel layouts")
        tr.tie(first.arr, s.arr, node)
    out = first.at(axis)
    for t in node.inputs:  # variable operands without channels must broadcast over them
        if t.name and not isinstance(t, gs.Constant) and tr.slot(t) is None \
                and not _broadcasts(t, out, rank):
            return unknown(node, tr, f"operand {t.name!r} broadcasts onto the channel axis")
    tr.set(node.outputs[0], out)
    return None


def _broadcasts(t: gs.Tensor, out: Slot, rank: int) -> bool:
    shape = shape_of(t)
    if shape is None:
        return False
    offset = rank - len(shape)
    return all(a - offset < 0 or shape[a - offset] == 1 for a in out.axes)


def _axis(node: gs.Node, default: int = 0) -> int | None:
    shape = shape_of(node.inputs[0])
    if shape is None:
        return None
    return norm_axes([node.attrs.get("axis", default)], len(shape))[0]


def _concat(node: gs.Node, tr: Tracer) -> None:
    axis = _axis(node)
    slots = [tr.slot(t) for t in node.inputs]
    if axis is None or any(s is None for s in slots):
        return unknown(node, tr, "concatenates constants or non-channel tensors")
    first = slots[0]
    if axis == first.axis and all(s.axis == axis and len(s.dims) == 1 for s in slots):
        tr.set(node.outputs[0], flat(np.concatenate([s.arr for s in slots]), axis))
        return None
    if axis in first.axes or any((s.axis, s.dims) != (first.axis, first.dims) for s in slots):
        return unknown(node, tr, "inputs have different channel layouts")
    for s in slots[1:]:
        tr.tie(first.arr, s.arr, node)
    tr.set(node.outputs[0], first)
    return None


def _split(node: gs.Node, tr: Tracer) -> None:
    x, axis = tr.slot(node.inputs[0]), _axis(node)
    if x is None or axis is None:
        return unknown(node, tr, "input has no channel axis")
    if axis not in x.axes:
        for out in node.outputs:
            tr.set(out, x)
        return None
    sizes = [shape_of(o)[axis] if shape_of(o) else None for o in node.outputs]
    if len(x.dims) != 1 or None in sizes or sum(sizes) != shape_of(node.inputs[0])[axis]:
        return unknown(node, tr, "split sizes unknown")
    offsets = np.cumsum([0] + sizes)
    ranges = [(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    for out, part in zip(node.outputs, tr.cut(node, node.inputs[0], x.arr, ranges),
                         strict=True):
        tr.set(out, flat(part, axis))
    return None


def slice_params(node: gs.Node, axis: int = 1) -> tuple[int, int, int] | None:
    """(start, stop, step) of a Slice on `axis`, (0, 0, 0) if it leaves that axis alone."""
    x_shape = shape_of(node.inputs[0])
    values = [const_value(t) if t.name else None for t in node.inputs[1:]]
    if x_shape is None or len(values) < 2 or values[0] is None or values[1] is None:
        return None
    starts, ends = values[0].tolist(), values[1].tolist()
    rank = len(x_shape)
    axes = values[2].tolist() if len(values) > 2 and values[2] is not None else range(rank)
    steps = values[3].tolist() if len(values) > 3 and values[3] is not None else [1] * rank
    for i, a in enumerate(axes):
        if (a + rank if a < 0 else a) == axis:
            start, stop, step = slice(starts[i], ends[i], steps[i]).indices(x_shape[axis])
            return start, stop, step
    return 0, 0, 0


def _slice(node: gs.Node, tr: Tracer) -> None:
    x = tr.slot(node.inputs[0])
    if x is None:
        return unknown(node, tr, "input has no channel axis")
    params = [slice_params(node, a) for a in x.axes]
    if any(p is None for p in params):
        return unknown(node, tr, "slice bounds are not constant")
    if all(p == (0, 0, 0) for p in params):
        tr.set(node.outputs[0], x)
        return None
    start, stop, step = params[0]
    if len(x.dims) != 1 or step != 1:
        return unknown(node, tr, "strided slice of the channel axis" if step != 1
                       else "slices a shuffle's channel axes")
    part = tr.cut(node, node.inputs[0], x.arr, [(start, max(start, stop))])[0]
    tr.set(node.outputs[0], flat(part, x.axis))
    return None


def _shape(node: gs.Node, tr: Tracer) -> None:
    return unknown(node, tr, "reads the tensor's shape")


RULES: dict[str, Rule] = {
    **{op: _pointwise for op in POINTWISE},
    **{op: _channel_first for op in CHANNEL_FIRST},
    **{op: _elementwise for op in ELEMENTWISE},
    **LAYOUT_RULES,
    "Conv": _conv, "ConvTranspose": _conv, "Gemm": _gemm, "MatMul": _gemm,
    "Concat": _concat, "Split": _split, "Slice": _slice, "Pad": _pad, "Resize": _resize,
    "Upsample": _resize, "Shape": _shape, "Size": _shape,
}


def topo_order(graph: gs.Graph) -> list[gs.Node]:
    """Nodes in a topological order (the graph itself is left as it is)."""
    produced = {t.name for t in graph.inputs} | {
        name for name, t in graph.tensors().items() if isinstance(t, gs.Constant)}
    pending, order = list(graph.nodes), []
    while pending:
        rest = []
        for node in pending:
            if all(not t.name or t.name in produced for t in node.inputs):
                order.append(node)
                produced.update(t.name for t in node.outputs)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            order.extend(rest)  # a cycle or dangling input: the health check reports it
            break
        pending = rest
    return order


def trace(graph: gs.Graph, tr: Tracer) -> list[gs.Node]:
    """Run the rules over the graph; returns the nodes in the order traced."""
    tr.opset = int(graph.opset or 17)
    for t in graph.inputs:
        if carries_channels(t):
            n = shape_of(t)[1] if shape_of(t) else 1
            arr = tr.fresh(t, n)
            tr.set(t, flat(arr))
            tr.block(arr, f"graph input {t.name!r}", {"input": t.name})
    order = topo_order(graph)
    for node in order:
        rule = RULES.get(node.op) if node.domain in (None, "", "ai.onnx") else None
        if rule is None:
            unknown(node, tr)
        else:
            rule(node, tr)
        for out in node.outputs:  # outputs a rule left without channels, e.g. from shapes
            if carries_channels(out) and tr.slot(out) is None:
                unknown(node, tr, f"output {out.name!r} not derived from its inputs")
                break
    for t in graph.outputs:
        s = tr.slot(t)
        if s is not None:
            tr.block(s.arr, f"graph output {t.name!r}", {"output": t.name})
    return order
