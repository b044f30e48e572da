"""Pattern matching: partition a canonical float graph into quantizable units or CPU nodes.

Each matcher is a small function `match_x(node, graph) -> Unit | str` returning a unit, or
the reason (a user-facing string) why the node cannot run in int8. Fusions: Conv/Gemm/
MatMul/Add/Sub/Mul/AvgPool + Relu/Clip (lo/hi), MatMul + constant bias Add, x·Sigmoid(x)
(SiLU) and x·HardSigmoid(x) as one lookup table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.fixedpoint import LUT_FUNCTIONS
from compiler.core.ir import const_value, consumers, is_const, is_graph_output, static_shape
from passes.quantize.regions import BINARY, UNARY, grow_region

SCALE_PRESERVING = ("maxpool", "resize", "move")
LUT_OPS = ("Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Relu", "Clip", "Elu",
           "Softplus", "Softsign", "Abs", "Neg")


@dataclass
class Unit:
    """A group of float nodes that becomes one quantized op (or one CPU node).

    Attributes:
        kind: conv, gemm, matmul, add, mul, concat, avgpool, gap, maxpool, resize, move,
            lut or cpu.
        nodes: The float nodes, anchor first.
        inputs: Activation inputs (float tensors; constant operands included for add/mul/
            concat, where they become int8 constant tensors).
        outputs: Output tensors (of the last fused node).
        params: Kind-specific facts: fused activation bounds `act` (lo, hi) in real units,
            lookup-table function and parameters, constant bias of a fused MatMul + Add, ...
        reason: Why a cpu unit could not be quantized.
    """

    kind: str
    nodes: list[gs.Node]
    inputs: list[gs.Tensor]
    outputs: list[gs.Tensor]
    params: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    @property
    def anchor(self) -> gs.Node:
        """The first (defining) node."""
        return self.nodes[0]

    @property
    def scale_preserving(self) -> bool:
        """True when the outputs reuse the input scale (no arithmetic)."""
        return self.kind in SCALE_PRESERVING


# --- helpers --------------------------------------------------------------------------------

def _is_float(t: gs.Tensor) -> bool:
    return t.dtype is not None and np.dtype(t.dtype) == np.float32


def _single_consumer(graph: gs.Graph, t: gs.Tensor) -> gs.Node | None:
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
    user = _single_consumer(graph, out)
    if user is None or user.op not in ("Relu", "Clip"):
        return None
    bounds = clip_bounds(user)
    return (user, bounds) if bounds is not None else None


def _with_activation(graph: gs.Graph, unit: Unit) -> Unit:
    fused = fused_activation(graph, unit.outputs[0])
    if fused is not None:
        node, bounds = fused
        unit.nodes.append(node)
        unit.outputs = [node.outputs[0]]
        unit.params["act"] = bounds
    return unit


def _activation_inputs_float(node: gs.Node, tensors: list[gs.Tensor]) -> str:
    for t in tensors:
        if not is_const(t) and not _is_float(t):
            return f"input {t.name!r} is {t.dtype}, not float32"
    if any(not _is_float(o) for o in node.outputs):
        return "output is not float32"
    return ""


def _int_list(node: gs.Node, key: str, default: list[int]) -> list[int]:
    return [int(v) for v in node.attrs.get(key, default)]


# --- matchers -------------------------------------------------------------------------------

def match_conv(node: gs.Node, graph: gs.Graph) -> Unit | str:
    """Conv 2-D with constant weights (any group) + optional Relu/Clip."""
    w = const_value(node.inputs[1])
    if w is None:
        return "weights are not constant"
    if w.ndim != 4:
        return f"only 2-D convolutions run in int8 (weight rank {w.ndim})"
    if len(node.inputs) > 2 and node.inputs[2].name and not is_const(node.inputs[2]):
        return "bias is not constant"
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") and \
            static_shape(node.inputs[0]) is None:
        return "auto_pad needs a static input shape"
    return _with_activation(graph, Unit("conv", [node], [node.inputs[0]], list(node.outputs)))


def match_gemm(node: gs.Node, graph: gs.Graph) -> Unit | str:
    """Gemm with constant B, transA=0, bias broadcast along N."""
    if node.attrs.get("transA", 0):
        return "transA=1 is not supported"
    b = const_value(node.inputs[1])
    if b is None or b.ndim != 2:
        return "B is not a constant matrix"
    n = b.shape[0] if node.attrs.get("transB", 0) else b.shape[1]
    if len(node.inputs) > 2 and node.inputs[2].name:
        c = const_value(node.inputs[2])
        if c is None or c.size not in (1, n) or (c.ndim == 2 and c.shape[0] != 1):
            return "C is not a constant broadcast along N"
    return _with_activation(graph, Unit("gemm", [node], [node.inputs[0]], list(node.outputs)))


def match_matmul(node: gs.Node, graph: gs.Graph) -> Unit | str:
    """MatMul with a constant 2-D right operand, + optional constant bias Add, + Relu/Clip."""
    b = const_value(node.inputs[1])
    if b is None:
        return "MatMul of two activations stays float"
    if b.ndim != 2:
        return f"right operand has rank {b.ndim}, need 2"
    unit = Unit("matmul", [node], [node.inputs[0]], list(node.outputs))
    user = _single_consumer(graph, node.outputs[0])
    if user is not None and user.op == "Add":
        other = [t for t in user.inputs if t is not node.outputs[0]]
        c = const_value(other[0]) if len(other) == 1 else None
        if c is not None and c.size == b.shape[1] and c.shape[-1] == b.shape[1]:
            unit.nodes.append(user)
            unit.outputs = list(user.outputs)
            unit.params["bias"] = c.reshape(-1)
    return _with_activation(graph, unit)


def match_binary(node: gs.Node, graph: gs.Graph) -> Unit | str:
    """Add/Sub/Mul of activations or with a constant, Div by a constant, + Relu/Clip.

    A Div by a constant becomes a Mul by its reciprocal.
    """
    a, b = node.inputs
    if is_const(a) and is_const(b):
        return "both operands constant (not folded)"
    if node.op == "Div":
        c = const_value(b)
        if c is None or not np.all(np.isfinite(c)) or np.any(c == 0):
            return "Div by a non-constant or zero divisor"
        b = gs.Constant(f"{b.name}__reciprocal",
                        np.asarray(1.0 / c.astype(np.float64), np.float32))
    kind = "add" if node.op in ("Add", "Sub") else "mul"
    unit = Unit(kind, [node], [a, b], list(node.outputs), {"sub": node.op == "Sub"})
    return _with_activation(graph, unit)


def match_gated(gate: gs.Node, graph: gs.Graph) -> Unit | None:
    """x·Sigmoid(x) (SiLU) or x·HardSigmoid(x) as one table, matched at the gate node."""
    x, gate_t = gate.inputs[0], gate.outputs[0]
    mul = _single_consumer(graph, gate_t)
    if mul is None or mul.op != "Mul" or not {id(t) for t in mul.inputs} == {id(x), id(gate_t)}:
        return None
    if not _is_float(mul.outputs[0]):
        return None
    if gate.op == "Sigmoid":
        return Unit("lut", [gate, mul], [x], list(mul.outputs), {"fn": "SiLU"})
    params = {"alpha": float(gate.attrs.get("alpha", 0.2)),
              "beta": float(gate.attrs.get("beta", 0.5))}
    return Unit("lut", [gate, mul], [x], list(mul.outputs),
                {"fn": "HardSigmoidMul", "fn_params": params})


def match_concat(node: gs.Node, graph: gs.Graph) -> Unit | str:
    """Concat of activations (constant inputs become int8 constants)."""
    if all(is_const(t) for t in node.inputs):
        return "all inputs constant (not folded)"
    return Unit("concat", [node], list(node.inputs), list(node.outputs))


def match_avgpool(node: gs.Node, graph: gs.Graph) -> Unit | str:
    """AveragePool 2-D with a static input shape (the divisor map depends on it)."""
    shape = static_shape(node.inputs[0])
    if shape is None or len(shape) != 4:
        return "needs a static 4-D input shape"
    if any(d != 1 for d in node.attrs.get("dilations", [1, 1])):
        return "dilated average pooling"
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return f"auto_pad={node.attrs['auto_pad']}"
    return _with_activation(graph, Unit("avgpool", [node], [node.inputs[0]], list(node.outputs)))


def match_global_pool(node: gs.Node, graph: gs.Graph) -> Unit | str:
    """GlobalAveragePool, or ReduceMean over axes (2, 3), on a 4-D tensor with static H, W."""
    shape = node.inputs[0].shape
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]):
        return "needs a 4-D input with static spatial size"
    keepdims = True
    if node.op == "ReduceMean":
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1:
            axes = const_value(node.inputs[1])
        if axes is None or sorted(int(a) % 4 for a in np.ravel(axes)) != [2, 3]:
            return "ReduceMean over axes other than (2, 3)"
        keepdims = bool(node.attrs.get("keepdims", 1))
    unit = Unit("gap", [node], [node.inputs[0]], list(node.outputs), {"keepdims": keepdims})
    return _with_activation(graph, unit)


def match_maxpool(node: gs.Node, graph: gs.Graph) -> Unit | str:
    """MaxPool 2-D without the indices output."""
    if len([o for o in node.outputs if o.name]) != 1 or consumers(node.outputs[-1]) and \
            len(node.outputs) > 1:
        return "the indices output is used"
    if len(node.attrs.get("kernel_shape", [])) != 2:
        return "only 2-D max pooling"
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return f"auto_pad={node.attrs['auto_pad']}"
    return Unit("maxpool", [node], [node.inputs[0]], [node.outputs[0]])


def match_resize(node: gs.Node, graph: gs.Graph) -> Unit | str:
    """Nearest Resize/Upsample with constant scales/sizes and static shapes."""
    if node.attrs.get("mode", "nearest") != "nearest":
        return f"mode={node.attrs.get('mode')} (only nearest is integer data movement)"
    if static_shape(node.inputs[0]) is None or static_shape(node.outputs[0]) is None:
        return "needs static input and output shapes"
    if any(t.name and not is_const(t) for t in node.inputs[1:]):
        return "scales/sizes are not constant"
    return Unit("resize", [node], [node.inputs[0]], list(node.outputs))


def match_move(node: gs.Node, graph: gs.Graph) -> Unit | str:
    """Reshape/Flatten/Transpose/Squeeze/Unsqueeze/Slice/Split/Pad with constant operands."""
    if any(t.name and not is_const(t) for t in node.inputs[1:]):
        return "shape/index operands are not constant"
    if node.op == "Pad":
        pads = const_value(node.inputs[1])
        if pads is None or np.any(pads < 0):
            return "negative or missing pads"
        if len(node.inputs) > 3 and node.inputs[3].name:
            return "Pad with explicit axes"
    if node.op == "Reshape" and node.attrs.get("allowzero", 0):
        return "Reshape allowzero=1"
    return Unit("move", [node], [node.inputs[0]], [o for o in node.outputs if o.name])


def match_lut(node: gs.Node, graph: gs.Graph) -> Unit | str:
    """Elementwise unary functions tabulated in 256 entries."""
    if node.op in ("Sigmoid", "HardSigmoid"):
        gated = match_gated(node, graph)
        if gated is not None:
            return gated
    params: dict[str, float] = {}
    if node.op == "Clip":
        bounds = clip_bounds(node)
        if bounds is None:
            return "Clip bounds are not constant"
        params = {k: v for k, v in zip(("lo", "hi"), bounds, strict=True) if v is not None}
    elif node.op in ("LeakyRelu", "Elu"):
        params = {"alpha": float(node.attrs.get("alpha", 0.01 if node.op == "LeakyRelu" else 1.0))}
    elif node.op == "HardSigmoid":
        params = {"alpha": float(node.attrs.get("alpha", 0.2)),
                  "beta": float(node.attrs.get("beta", 0.5))}
    if node.op not in LUT_FUNCTIONS:
        return f"no table for {node.op}"
    return Unit("lut", [node], [node.inputs[0]], list(node.outputs),
                {"fn": node.op, "fn_params": params})


MATCHERS: dict[str, Callable[[gs.Node, gs.Graph], Unit | str]] = {
    "Conv": match_conv, "Gemm": match_gemm, "MatMul": match_matmul,
    "Add": match_binary, "Sub": match_binary, "Mul": match_binary, "Div": match_binary,
    "Concat": match_concat,
    "AveragePool": match_avgpool, "GlobalAveragePool": match_global_pool,
    "ReduceMean": match_global_pool, "MaxPool": match_maxpool, "Resize": match_resize,
    "Upsample": match_resize,
    **{op: match_move for op in ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
                                 "Slice", "Split", "Pad")},
    **{op: match_lut for op in LUT_OPS},
}


def match_region(node: gs.Node, graph: gs.Graph, order: dict[int, int]) -> Unit | None:
    """An elementwise region anchored at `node` as one table (None: no multi-op region)."""
    region = grow_region(node, graph, order)
    if region is None:
        return None
    nodes, out = region
    if len(nodes) == 1 and node.op in LUT_FUNCTIONS:
        return None  # a plain unary op: the named float64 table (match_lut)
    if len(nodes) == 2 and node.op in ("Sigmoid", "HardSigmoid"):
        gated = match_gated(node, graph)
        if gated is not None and gated.nodes == nodes:
            return gated
    x = next(t for t in node.inputs if t.name and not is_const(t))
    return Unit("lut", nodes, [x], [out], {"fn": "+".join(n.op for n in nodes), "region": True})


def match_node(node: gs.Node, graph: gs.Graph, order: dict[int, int] | None = None) -> Unit:
    """The unit for one node: a quantizable pattern anchored at it, or a cpu unit."""
    if node.domain not in (None, "", "ai.onnx"):
        return _cpu(node, f"{node.op} (domain {node.domain}) has no int8 implementation")
    acts = [t for t in node.inputs[:1]] if node.op not in ("Add", "Sub", "Mul", "Div", "Concat") \
        else list(node.inputs)
    reason = _activation_inputs_float(node, acts)
    if not reason and node.op in UNARY | BINARY:
        region = match_region(node, graph, order or {})
        if region is not None:
            return region
    matcher = MATCHERS.get(node.op)
    if matcher is None:
        return _cpu(node, f"{node.op} has no int8 implementation")
    if reason:
        return _cpu(node, reason)
    result = matcher(node, graph)
    return _cpu(node, result) if isinstance(result, str) else result


def _cpu(node: gs.Node, reason: str) -> Unit:
    inputs = [t for t in node.inputs if t.name and not is_const(t)]
    return Unit("cpu", [node], inputs, [o for o in node.outputs if o.name], reason=reason)


KEEP_FLOAT_REASON = "kept in float by request (--keep-float)"


def partition(graph: gs.Graph, keep_float: frozenset[str] = frozenset()) -> list[Unit]:
    """Units in topological order; each node belongs to exactly one unit.

    Nodes named in `keep_float` become cpu units (mixed precision chosen by the user), and
    no fused pattern swallows them.
    """
    graph.toposort()
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    taken: set[int] = {id(n) for n in graph.nodes if n.name in keep_float}
    units = []
    for node in graph.nodes:
        if node.name in keep_float:
            units.append(_cpu(node, KEEP_FLOAT_REASON))
            continue
        if id(node) in taken:
            continue
        unit = match_node(node, graph, order)
        kept = [n.name for n in unit.nodes[1:] if n.name in keep_float]
        if kept:
            unit = _cpu(node, f"its int8 pattern would fuse {kept[0]!r}, which is kept in float")
        elif any(id(n) in taken for n in unit.nodes[1:]):  # defensive: fusions look forward
            unit = _cpu(node, "overlapping quantization patterns")
        taken.update(id(n) for n in unit.nodes)
        units.append(unit)
    return units
