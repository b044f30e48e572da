"""Channel semantics of ONNX ops: how each op maps the channel axis of its inputs to its outputs.

Every activation tensor of rank >= 2 carries a `Slot`: one id per position of its channel
axis (axis 1; for the 5-D middle of a channel shuffle, axes 1-2 flattened). Producers (Conv,
Gemm, graph inputs, unknown ops) create fresh ids; every other op derives its output ids from
its inputs (Concat concatenates, Split/Slice cut, Flatten repeats each id over the spatial
size, a shuffle permutes) and ties ids that must be removed together (residual Add, grouped
convs). The same rules run twice: `groups.py` traces fresh element ids to find the groups,
`apply.py` traces the kept ids to learn every tensor's new channel layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.ir import const_value, static_shape

CHANNELWISE = {
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Elu",
    "Selu", "Celu", "Softplus", "Softsign", "Exp", "Log", "Abs", "Neg", "Sqrt", "Erf", "Gelu",
    "Mish", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Identity", "Dropout",
    "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
    "Cast", "BatchNormalization", "InstanceNormalization", "ThresholdedRelu", "Shrink",
    "IsNaN", "IsInf", "Not",
}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "Where",
               "Equal", "Less", "Greater", "And", "Or"}
WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


@dataclass(frozen=True)
class Slot:
    """Channel ids of one tensor.

    Attributes:
        arr: One id per channel position (flattened over `dims`).
        dims: Sizes of the channel axes starting at axis 1: (C,) normally, (G, C/G) inside a
            channel shuffle.
    """

    arr: np.ndarray
    dims: tuple[int, ...]


class Tracer:
    """What the rules call; subclasses decide what fresh ids, ties and blocks mean."""

    def __init__(self) -> None:
        self.slots: dict[str, Slot] = {}

    def slot(self, tensor: gs.Tensor) -> Slot | None:
        """The slot of a tensor, or None for constants and non-channel tensors."""
        return self.slots.get(tensor.name) if tensor.name else None

    def set(self, tensor: gs.Tensor, slot: Slot) -> None:
        """Record a tensor's slot."""
        self.slots[tensor.name] = slot

    def fresh(self, tensor: gs.Tensor, n: int) -> np.ndarray:
        """Ids of a producer's output channels."""
        raise NotImplementedError

    def tie(self, a: np.ndarray, b: np.ndarray, node: gs.Node) -> None:
        """Ids at equal positions of `a` and `b` must be removed together."""
        raise NotImplementedError

    def block(self, arr: np.ndarray, reason: str) -> None:
        """The channels in `arr` must not be removed."""

    def cut(self, node: gs.Node, tensor: gs.Tensor, arr: np.ndarray,
            ranges: list[tuple[int, int]]) -> list[np.ndarray]:
        """Split `arr` (the slot of `tensor`) by old position ranges [start, stop)."""
        return [arr[a:b] for a, b in ranges]


Rule = Callable[[gs.Node, Tracer], None]


def shape_of(tensor: gs.Tensor) -> tuple[int, ...] | None:
    """Static shape with a symbolic batch (axis 0) read as 1; None if another dim is unknown."""
    shape = tensor.shape
    if shape is None:
        return None
    if len(shape) and not isinstance(shape[0], (int, np.integer)):
        shape = [1, *shape[1:]]
    return static_shape(gs.Variable("probe", shape=list(shape)))


def carries_channels(tensor: gs.Tensor) -> bool:
    """Variable float tensors of rank >= 2 have a channel axis (axis 1)."""
    if isinstance(tensor, gs.Constant) or not tensor.name:
        return False
    shape = tensor.shape
    dtype = np.dtype(tensor.dtype) if tensor.dtype is not None else np.dtype(np.float32)
    return shape is not None and len(shape) >= 2 and dtype.kind == "f"


def unknown(node: gs.Node, tr: Tracer, why: str | None = None) -> None:
    """An op whose channel semantics are unknown: pin its inputs and outputs."""
    reason = f"{node.op} node {node.name!r}: {why or 'channel semantics unknown'}"
    for t in node.inputs:
        s = tr.slot(t)
        if s is not None:
            tr.block(s.arr, reason)
    for t in node.outputs:
        if carries_channels(t):
            n = t.shape[1] if isinstance(t.shape[1], (int, np.integer)) else 1
            arr = tr.fresh(t, n)
            tr.set(t, Slot(arr, (n,)))
            tr.block(arr, reason)


def _passthrough(node: gs.Node, tr: Tracer) -> None:
    x = tr.slot(node.inputs[0])
    if x is None:
        return unknown(node, tr, "input has no channel axis")
    tr.set(node.outputs[0], x)
    for extra in node.outputs[1:]:  # MaxPool indices, Dropout mask: flat indices depend on C
        if extra.name and extra.outputs:
            return unknown(node, tr, f"second output {extra.name!r} is used")
    return None


def _pad(node: gs.Node, tr: Tracer) -> None:
    pads = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    axes = const_value(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
    x_shape = shape_of(node.inputs[0])
    if pads is None or x_shape is None or axes is not None:
        return unknown(node, tr, "pads are not constant")
    rank = len(x_shape)
    if pads[1] != 0 or pads[1 + rank] != 0:
        return unknown(node, tr, "pads the channel axis")
    return _passthrough(node, tr)


def _resize(node: gs.Node, tr: Tracer) -> None:
    x_shape, y_shape = shape_of(node.inputs[0]), shape_of(node.outputs[0])
    if x_shape is None or y_shape is None or x_shape[1] != y_shape[1]:
        return unknown(node, tr, "resizes the channel axis")
    return _passthrough(node, tr)


def _conv(node: gs.Node, tr: Tracer) -> None:
    x, w = tr.slot(node.inputs[0]), const_value(node.inputs[1])
    if x is None or w is None or len(x.dims) != 1:
        return unknown(node, tr, "weights are not constant")
    group = int(node.attrs.get("group", 1))
    transpose = node.op == "ConvTranspose"
    cin_g = w.shape[0] // group if transpose else w.shape[1]
    cout = w.shape[1] * group if transpose else w.shape[0]
    out = node.outputs[0]
    if group > 1 and cin_g == 1:  # depthwise: each input channel owns `cout/group` outputs
        tr.set(out, Slot(np.repeat(x.arr, cout // group), (cout,)))
        return None
    y = tr.fresh(out, cout)
    if group > 1:  # same per-group selection keeps `group` valid
        _tie_blocks(x.arr, group, node, tr)
        _tie_blocks(y, group, node, tr)
    tr.set(out, Slot(y, (cout,)))
    return None


def _tie_blocks(arr: np.ndarray, blocks: int, node: gs.Node, tr: Tracer) -> None:
    rows = arr.reshape(blocks, -1)
    for g in range(1, blocks):
        tr.tie(rows[0], rows[g], node)


def _gemm(node: gs.Node, tr: Tracer) -> None:
    x, w = tr.slot(node.inputs[0]), const_value(node.inputs[1])
    if x is None or w is None or len(x.dims) != 1 or w.ndim != 2:
        return unknown(node, tr, "weights are not a constant matrix")
    if node.op == "Gemm" and node.attrs.get("transA", 0):
        return unknown(node, tr, "transA")
    if node.op == "MatMul" and len(shape_of(node.inputs[0]) or ()) != 2:
        return unknown(node, tr, "MatMul on a tensor of rank other than 2")
    n_out = w.shape[0] if node.op == "Gemm" and node.attrs.get("transB", 0) else w.shape[1]
    tr.set(node.outputs[0], Slot(tr.fresh(node.outputs[0], n_out), (n_out,)))
    return None


def _elementwise(node: gs.Node, tr: Tracer) -> None:
    out_shape = shape_of(node.outputs[0])
    if out_shape is None:
        return unknown(node, tr, "output shape unknown")
    rank, joined = len(out_shape), []
    for t in node.inputs:
        shape = shape_of(t) if t.name else ()
        if shape is None:
            return unknown(node, tr, f"shape of {t.name!r} unknown")
        aligned = len(shape) - (rank - 1)  # the operand axis facing the channel axis
        broadcast = shape[aligned] == 1 and out_shape[1] != 1 if aligned >= 0 else True
        if broadcast or isinstance(t, gs.Constant):
            continue
        s = tr.slot(t)
        if s is None or aligned != 1:
            return unknown(node, tr, f"operand {t.name!r} of rank {len(shape)} broadcasts "
                                     "onto the channel axis")
        joined.append(s)
    if not joined:
        return unknown(node, tr, "no operand carries the output channels")
    for s in joined[1:]:
        if s.dims != joined[0].dims:
            return unknown(node, tr, "operands have different channel layouts")
        tr.tie(joined[0].arr, s.arr, node)
    tr.set(node.outputs[0], joined[0])
    return None


def _axis(node: gs.Node, default: int = 0) -> int | None:
    shape = shape_of(node.inputs[0])
    if shape is None:
        return None
    axis = int(node.attrs.get("axis", default))
    return axis + len(shape) if axis < 0 else axis


def _concat(node: gs.Node, tr: Tracer) -> None:
    axis = _axis(node)
    slots = [tr.slot(t) for t in node.inputs]
    if axis is None or any(s is None or len(s.dims) != 1 for s in slots):
        return unknown(node, tr, "concatenates constants or non-channel tensors")
    if axis == 1:
        arr = np.concatenate([s.arr for s in slots])
        tr.set(node.outputs[0], Slot(arr, (len(arr),)))
        return None
    for s in slots[1:]:
        tr.tie(slots[0].arr, s.arr, node)
    tr.set(node.outputs[0], slots[0])
    return None


def _split(node: gs.Node, tr: Tracer) -> None:
    x, axis = tr.slot(node.inputs[0]), _axis(node)
    if x is None or axis is None or len(x.dims) != 1:
        return unknown(node, tr, "input has no channel axis")
    if axis != 1:
        for out in node.outputs:
            tr.set(out, x)
        return None
    sizes = [shape_of(o)[1] if shape_of(o) else None for o in node.outputs]
    in_shape = shape_of(node.inputs[0])
    if None in sizes or in_shape is None or sum(sizes) != in_shape[1]:
        return unknown(node, tr, "split sizes unknown")
    offsets = np.cumsum([0] + sizes)
    ranges = [(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    for out, part in zip(node.outputs, tr.cut(node, node.inputs[0], x.arr, ranges),
                         strict=True):
        tr.set(out, Slot(part, (len(part),)))
    return None


def slice_params(node: gs.Node) -> tuple[int, int, int] | None:
    """(start, stop, step) of a Slice on the channel axis, (0, 0, 0) if it leaves axis 1 alone."""
    x_shape = shape_of(node.inputs[0])
    values = [const_value(t) if t.name else None for t in node.inputs[1:]]
    if x_shape is None or len(values) < 2 or values[0] is None or values[1] is None:
        return None
    starts, ends = values[0].tolist(), values[1].tolist()
    rank = len(x_shape)
    axes = values[2].tolist() if len(values) > 2 and values[2] is not None else range(rank)
    steps = values[3].tolist() if len(values) > 3 and values[3] is not None else [1] * rank
    for i, a in enumerate(axes):
        if (a + rank if a < 0 else a) == 1:
            start, stop, step = slice(starts[i], ends[i], steps[i]).indices(x_shape[1])
            return start, stop, step
    return 0, 0, 0


def _slice(node: gs.Node, tr: Tracer) -> None:
    x, params = tr.slot(node.inputs[0]), slice_params(node)
    if x is None or params is None or len(x.dims) != 1:
        return unknown(node, tr, "slice bounds are not constant")
    start, stop, step = params
    if (start, stop, step) == (0, 0, 0):
        tr.set(node.outputs[0], x)
        return None
    if step != 1:
        return unknown(node, tr, "strided slice of the channel axis")
    part = tr.cut(node, node.inputs[0], x.arr, [(start, max(start, stop))])[0]
    tr.set(node.outputs[0], Slot(part, (len(part),)))
    return None


def _flatten(node: gs.Node, tr: Tracer) -> None:
    x, shape = tr.slot(node.inputs[0]), shape_of(node.inputs[0])
    axis = _axis(node, 1)
    if x is None or shape is None or axis != 1 or len(x.dims) != 1:
        return unknown(node, tr, "flattens across the batch or channel axis")
    spatial = int(np.prod(shape[2:], dtype=np.int64))
    arr = np.repeat(x.arr, spatial)
    tr.set(node.outputs[0], Slot(arr, (len(arr),)))
    return None


def reshape_kind(node: gs.Node) -> str | None:
    """Which channel-preserving reshape this is: flatten / keep / split / merge, or None."""
    a, b = shape_of(node.inputs[0]), shape_of(node.outputs[0])
    if a is None or b is None or a[0] != b[0]:
        return None
    if len(b) == 2 and len(a) >= 2:
        return "flatten"
    if len(a) >= 2 and len(b) >= 2 and a[1] == b[1] and np.prod(a[2:]) == np.prod(b[2:]):
        return "keep"
    if len(b) == len(a) + 1 and b[1] * b[2] == a[1] and tuple(b[3:]) == tuple(a[2:]):
        return "split"
    if len(a) == len(b) + 1 and a[1] * a[2] == b[1] and tuple(a[3:]) == tuple(b[2:]):
        return "merge"
    return None


def _reshape(node: gs.Node, tr: Tracer) -> None:
    x, kind = tr.slot(node.inputs[0]), reshape_kind(node)
    if x is None or kind is None or const_value(node.inputs[1]) is None:
        return unknown(node, tr, "reshape mixes the channel axis with others")
    out = node.outputs[0]
    if kind == "flatten" and len(x.dims) == 1:
        spatial = int(np.prod(shape_of(node.inputs[0])[2:], dtype=np.int64))
        arr = np.repeat(x.arr, spatial)
        tr.set(out, Slot(arr, (len(arr),)))
    elif kind == "keep" and len(x.dims) == 1:
        tr.set(out, x)
    elif kind == "split" and len(x.dims) == 1:
        groups = shape_of(out)[1]
        if len(x.arr) % groups:
            return unknown(node, tr, "channel count not divisible by the shuffle groups")
        _tie_blocks(x.arr, groups, node, tr)  # equal per-block selection keeps the reshape valid
        tr.set(out, Slot(x.arr, (groups, len(x.arr) // groups)))
    elif kind == "merge" and len(x.dims) == 2:
        tr.set(out, Slot(x.arr, (len(x.arr),)))
    else:
        return unknown(node, tr, "reshape of an unsupported channel layout")
    return None


def _transpose(node: gs.Node, tr: Tracer) -> None:
    x = tr.slot(node.inputs[0])
    shape = shape_of(node.inputs[0])
    if x is None or shape is None:
        return unknown(node, tr, "input has no channel axis")
    perm = list(node.attrs.get("perm", list(range(len(shape)))[::-1]))
    n = len(x.dims)
    if perm[0] != 0 or sorted(perm[1:1 + n]) != list(range(1, 1 + n)) \
            or perm[1 + n:] != list(range(1 + n, len(shape))):
        return unknown(node, tr, "moves the channel axis")
    if perm[1:1 + n] == list(range(1, 1 + n)):
        tr.set(node.outputs[0], x)
        return None
    dims = x.dims
    arr = x.arr.reshape(dims).transpose([p - 1 for p in perm[1:1 + n]]).ravel()
    tr.set(node.outputs[0], Slot(arr, tuple(dims[p - 1] for p in perm[1:1 + n])))
    return None


def _reduce(node: gs.Node, tr: Tracer) -> None:
    shape = shape_of(node.inputs[0])
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
        value = const_value(node.inputs[1])
        axes = None if value is None else value.tolist()
    if shape is None or axes is None:
        return unknown(node, tr, "reduces over unknown axes")
    axes = [a + len(shape) if a < 0 else a for a in axes]
    if 0 in axes or 1 in axes or not node.attrs.get("keepdims", 1) and min(axes) < 1:
        return unknown(node, tr, "reduces over the channel axis")
    return _passthrough(node, tr)


def _softmax(node: gs.Node, tr: Tracer) -> None:
    if _axis(node, -1) == 1:
        return unknown(node, tr, "normalizes across channels")
    return _passthrough(node, tr)


def _squeeze(node: gs.Node, tr: Tracer) -> None:
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1:
        value = const_value(node.inputs[1])
        axes = None if value is None else value.tolist()
    x_shape, y_shape = shape_of(node.inputs[0]), shape_of(node.outputs[0])
    if axes is None or x_shape is None or y_shape is None:
        return unknown(node, tr, "axes unknown")
    rank = max(len(x_shape), len(y_shape))
    if any((a + rank if a < 0 else a) <= 1 for a in axes):
        return unknown(node, tr, "squeezes or unsqueezes the batch or channel axis")
    return _passthrough(node, tr)


def _shape(node: gs.Node, tr: Tracer) -> None:
    return unknown(node, tr, "reads the tensor's shape")


RULES: dict[str, Rule] = {
    **{op: _passthrough for op in CHANNELWISE},
    **{op: _elementwise for op in ELEMENTWISE},
    "Conv": _conv, "ConvTranspose": _conv, "Gemm": _gemm, "MatMul": _gemm,
    "Concat": _concat, "Split": _split, "Slice": _slice, "Flatten": _flatten,
    "Reshape": _reshape, "Transpose": _transpose, "Pad": _pad, "Resize": _resize,
    "Upsample": _resize, "Softmax": _softmax, "LogSoftmax": _softmax,
    "ReduceMean": _reduce, "ReduceSum": _reduce, "ReduceMax": _reduce, "ReduceMin": _reduce,
    "ReduceL2": _reduce, "Squeeze": _squeeze, "Unsqueeze": _squeeze, "Shape": _shape,
    "Size": _shape,
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
    for t in graph.inputs:
        if carries_channels(t):
            n = shape_of(t)[1] if shape_of(t) else 1
            arr = tr.fresh(t, n)
            tr.set(t, Slot(arr, (n,)))
            tr.block(arr, f"graph input {t.name!r}")
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
            tr.block(s.arr, f"graph output {t.name!r}")
    return order
