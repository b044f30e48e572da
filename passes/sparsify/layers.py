"""Which layers 1xN sparsification can touch, and a uniform view of their weights.

Every candidate weight is seen as a *logical* array `[Cout, Cin, *kernel]` whatever its
storage layout (Conv `OIHW`, Gemm `transB=1` `OI`, Gemm `transB=0`/MatMul `IO`), so blocks,
criteria and reconstruction are written once. Eligibility checks are small functions that
return the reason a user sees, or None.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.cost import model_cost, node_cost
from compiler.core.io import load_model, to_proto
from compiler.core.ir import Model, const_value, is_const

MAC_OPS = ("Conv", "Gemm", "MatMul")
BLOCK_SIZES = (2, 4, 8, 16, 32)


@dataclass
class Layer:
    """A weight layer 1xN sparsification may act on.

    Attributes:
        node: The Conv/Gemm/MatMul node.
        weight: Its constant weight tensor (shape never changes).
        layout: Storage layout of `weight`: "OIHW" (Conv, any kernel rank), "OI" or "IO".
        macs: MACs of the node (0 when shapes are unknown).
    """

    node: gs.Node
    weight: gs.Constant
    layout: str
    macs: int

    @property
    def name(self) -> str:
        """The node name (the key used in reports and metadata)."""
        return self.node.name

    @property
    def cout(self) -> int:
        """Output channels."""
        return int(self.logical().shape[0])

    @property
    def cin(self) -> int:
        """Input channels (per group for grouped convs)."""
        return int(self.logical().shape[1])

    @property
    def group(self) -> int:
        """Conv groups (1 for dense layers)."""
        return int(self.node.attrs.get("group", 1)) if self.node.op == "Conv" else 1

    def logical(self) -> np.ndarray:
        """The weight as `[Cout, Cin, *kernel]` (a view when the layout allows)."""
        w = np.asarray(self.weight.values)
        return w.T if self.layout == "IO" else w

    def store(self, logical: np.ndarray) -> None:
        """Write a logical `[Cout, Cin, *kernel]` array back in the storage layout."""
        w = logical.T if self.layout == "IO" else logical
        self.weight.values = np.ascontiguousarray(w, dtype=np.asarray(self.weight.values).dtype)


def weight_layer(node: gs.Node, macs: int | None = None) -> Layer | None:
    """The `Layer` view of a Conv/Gemm/MatMul with a constant weight, else None."""
    if node.op not in MAC_OPS or len(node.inputs) < 2 or not is_const(node.inputs[1]):
        return None
    w = const_value(node.inputs[1])
    if node.op == "Conv":
        layout = "OIHW" if w.ndim >= 3 else None
    elif node.op == "Gemm":
        layout = "OI" if node.attrs.get("transB", 0) else "IO"
    else:
        layout = "IO"
    if layout is None or (layout != "OIHW" and w.ndim != 2):
        return None
    return Layer(node, node.inputs[1], layout, node_cost(node).macs if macs is None else macs)


def ineligible_reason(layer: Layer, block: int) -> str | None:
    """Why `layer` cannot be split into 1xN blocks of `block` output channels (None: it can).

    A grouped conv is fine when each group's output channels split into whole blocks: a
    block's input index is then relative to its group (the stored weight's axis 1).
    """
    for check in (_check_shared, _check_groups, _check_gemm):
        reason = check(layer)
        if reason:
            return reason
    group = layer.group
    if (layer.cout // group) % block:
        what = f"Cout={layer.cout}" if group == 1 else f"Cout/group={layer.cout // group}"
        return f"{what} is not a multiple of N={block}"
    return None


def _check_shared(layer: Layer) -> str | None:
    users = [n for n in layer.weight.outputs]
    if len(users) > 1:
        return f"weight {layer.weight.name!r} is shared by {len(users)} nodes"
    return None


def _check_groups(layer: Layer) -> str | None:
    if layer.group > 1 and layer.cin == 1:
        return (f"depthwise conv (group={layer.group}): one input channel per filter, "
                "no 1xN blocks")
    return None


def _check_gemm(layer: Layer) -> str | None:
    if layer.node.op == "Gemm" and layer.node.attrs.get("transA", 0):
        return "Gemm with transA=1 is not handled"
    return None


def weight_layers(model: Model, macs: dict[str, int] | None = None) -> list[Layer]:
    """All Conv/Gemm/MatMul nodes with constant weights, in graph order.

    Args:
        model: The model.
        macs: MACs per node name (see `node_macs`); default: each node's own cost.
    """
    return [layer for n in model.graph.nodes
            if (layer := weight_layer(n, None if macs is None else macs.get(n.name, 0)))]


def node_macs(model: Model) -> dict[str, int]:
    """MACs per node name, per image: a symbolic batch is costed as batch 1.

    `compiler.core.cost` counts 0 MACs for tensors of unknown shape, which a symbolic batch makes
    every tensor; a batch-1 copy gives the per-image cost the budgets need.
    """
    costs = {c.name: c.macs for c in model_cost(model).nodes}
    if any(costs.get(n.name, 0) == 0 for n in model.graph.nodes if n.op in MAC_OPS):
        fixed = load_model(to_proto(model), fix_batch=True)
        costs = {c.name: c.macs for c in model_cost(fixed).nodes}
    return costs


def boundary_layers(model: Model, layers: Sequence[Layer]) -> tuple[set[str], set[str]]:
    """Names of the first layers (no weight layer upstream) and last ones (none downstream).

    In a classifier these are the stem conv and the final classifier; detection heads
    all count as last layers.
    """
    names = {layer.name for layer in layers}
    first = {x.name for x in layers if not reaches(x.node, names, upstream=True)}
    last = {x.name for x in layers if not reaches(x.node, names, upstream=False)}
    return first, last


def reaches(start: gs.Node, targets: set[str], *, upstream: bool) -> bool:
    """True when another node named in `targets` is up/downstream of `start`."""
    seen, stack = {id(start)}, [start]
    while stack:
        node = stack.pop()
        for nxt in _neighbours(node, upstream):
            if id(nxt) in seen:
                continue
            if nxt.name in targets:
                return True
            seen.add(id(nxt))
            stack.append(nxt)
    return False


def _neighbours(node: gs.Node, upstream: bool) -> Iterable[gs.Node]:
    if upstream:
        return [t.inputs[0] for t in node.inputs if t.inputs]
    return [n for t in node.outputs for n in t.outputs]


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """True when `name` equals or glob-matches one of `patterns`."""
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)
