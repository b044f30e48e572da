"""Elementwise regions: single-input chains of elementwise ops tabulated as one 256-entry LUT.

A region starts at a node with one non-constant input `x` and grows over consumers whose
every input is `x`, a region tensor, or a scalar constant, as long as exactly one region
tensor is used outside it. Examples: `x·Sigmoid(x)`, PaddleOCR's
`a·(y·Clip(y+3, 0, 6)/6) + b` with `y = c·conv + d`, GELU's `0.5·x·(1+Erf(x/√2))`. Every
int8 rounding inside the region disappears; the table is f evaluated by onnxruntime in
float32 on the 256 dequantized input values (docs/fixed-point.md §10).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core import fixedpoint as fp
from compiler.core.errors import GraphError
from compiler.core.ir import Model, const_value, consumers, is_const, is_graph_output
from compiler.core.numerics import run

UNARY = {"Relu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu",
         "Selu", "Softplus", "Softsign", "Abs", "Neg", "Exp", "Erf", "Sqrt", "Reciprocal", "Log",
         "Floor", "Ceil", "Round", "Sin", "Cos", "Identity", "Celu", "ThresholdedRelu"}
BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"}
MAX_NODES = 32


def _scalar_const(t: gs.Tensor) -> bool:
    v = const_value(t)
    return v is not None and v.size == 1


def elementwise_input(node: gs.Node, inside: set[str], x: gs.Tensor) -> bool:
    """True for an elementwise op reading only region tensors and scalar constants.

    `inside` holds the region's tensor names; the output must keep the shape of `x`.
    """
    if node.op not in UNARY | BINARY or node.domain not in (None, "", "ai.onnx"):
        return False
    if node.op in BINARY and len(node.inputs) != 2:
        return False
    if len([o for o in node.outputs if o.name]) != 1:
        return False
    live = [t for t in node.inputs if t.name]
    if node.op == "Clip" and any(not is_const(t) for t in live[1:]):
        return False
    if x.shape is not None and node.outputs[0].shape is not None and \
            list(node.outputs[0].shape) != list(x.shape):
        return False
    dynamic = [t for t in live if not is_const(t)]
    return bool(dynamic) and all(t.name in inside for t in dynamic) and all(
        _scalar_const(t) for t in live if is_const(t))


def _exits(graph: gs.Graph, nodes: list[gs.Node]) -> list[gs.Tensor]:
    members = {id(n) for n in nodes}
    out = []
    for n in nodes:
        t = n.outputs[0]
        if is_graph_output(graph, t) or any(id(c) not in members for c in consumers(t)):
            out.append(t)
    return out


def grow_region(anchor: gs.Node, graph: gs.Graph,
                order: dict[int, int]) -> tuple[list[gs.Node], gs.Tensor] | None:
    """The largest single-exit elementwise region starting at `anchor`, or None.

    `order` maps id(node) to its topological position.
    """
    dynamic = [t for t in anchor.inputs if t.name and not is_const(t)]
    if len({t.name for t in dynamic}) != 1 or \
            not elementwise_input(anchor, {dynamic[0].name}, dynamic[0]):
        return None
    x = dynamic[0]
    nodes, inside = [anchor], {x.name, anchor.outputs[0].name}
    members = {id(anchor)}
    best = 1 if len(_exits(graph, nodes)) == 1 else 0
    while len(nodes) < MAX_NODES:
        candidates = {id(c): c for n in nodes for c in consumers(n.outputs[0])
                      if id(c) not in members and elementwise_input(c, inside, x)}
        if not candidates:
            break
        n = min(candidates.values(), key=lambda c: order.get(id(c), 1 << 30))
        nodes.append(n)
        members.add(id(n))
        inside.add(n.outputs[0].name)
        if len(_exits(graph, nodes)) == 1:
            best = len(nodes)
    if best == 0:
        return None
    nodes = nodes[:best]
    return nodes, _exits(graph, nodes)[0]


def region_function(nodes: list[gs.Node], x: gs.Tensor, out: gs.Tensor,
                    values: np.ndarray, opset: int) -> np.ndarray:
    """Evaluate the region on a 1-D float32 array of input values (onnxruntime)."""
    tensors: dict[str, gs.Tensor] = {x.name: gs.Variable("x", np.float32, [len(values)])}

    def tensor(t: gs.Tensor) -> gs.Tensor:
        if not t.name:
            return gs.Variable.empty()
        if t.name not in tensors:
            tensors[t.name] = (gs.Constant(f"c_{len(tensors)}", np.asarray(const_value(t)))
                               if is_const(t) else gs.Variable(f"t_{len(tensors)}", np.float32))
        return tensors[t.name]

    clones = [gs.Node(n.op, f"n_{i}", dict(n.attrs), inputs=[tensor(t) for t in n.inputs],
                      outputs=[tensor(t) for t in n.outputs]) for i, n in enumerate(nodes)]
    result = tensor(out)
    graph = gs.Graph(nodes=clones, inputs=[tensors[x.name]], outputs=[result], opset=opset)
    return np.asarray(run(Model(graph, opset), {"x": values})[result.name], np.float64)


def region_values(nodes: list[gs.Node], x: gs.Tensor, out: gs.Tensor, x_scale: float,
                  opset: int, in_dtype: str = "int8") -> np.ndarray:
    """f(float32((i - offset)·Sx)) for the 256 table inputs, float64 (NaN outside f's domain)."""
    v = fp.lut_grid(x_scale, in_dtype).astype(np.float32)
    y = region_function(nodes, x, out, v, opset)
    # Size-1 constants in the region (Paddle writes [1, 1, 1, 1]) broadcast the 256 samples
    # to a higher rank; the table itself is one axis of 256 entries.
    if y.size != v.size:
        raise GraphError(f"region at {out.name!r}: table has {y.size} entries, not {v.size} "
                         "(a constant in it is not a scalar)")
    return y.reshape(-1)

