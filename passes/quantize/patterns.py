"""Pattern matching: partition a canonical float graph into quantizable units or CPU nodes.

The matchers live with their ops (`compiler.core.qops`, one family module per op); each is
a small function `match_x(node, graph) -> Unit | str` returning a unit, or the reason (a
user-facing string) why the node cannot run in int8. This module adds what spans ops:
elementwise regions tabulated as one LUT, dtype checks, keep-float requests and the walk.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from compiler.core.fixedpoint import LUT_FUNCTIONS
from compiler.core.ir import is_const
from compiler.core.qops import OPS, Unit, matchers
from compiler.core.qops.lut import match_gated
from compiler.core.qops.match import is_float
from compiler.core.qops.regions import BINARY, UNARY, grow_region
from compiler.core.subgraphs import outer_inputs
from passes.quantize.dynamic import runtime_tensors
from passes.quantize.placement import place_on_host

__all__ = ["Unit", "MATCHERS", "KEEP_FLOAT_REASON", "match_node", "partition",
           "scale_preserving"]

MATCHERS = matchers()
_SCALE_PRESERVING = frozenset(k for d in OPS.values() if d.scale_preserving for k in d.unit_kinds)


def scale_preserving(unit: Unit) -> bool:
    """True when the unit's outputs reuse its input scale (no arithmetic)."""
    return unit.kind in _SCALE_PRESERVING


def _activation_inputs_float(node: gs.Node, tensors: list[gs.Tensor]) -> str:
    for t in tensors:
        if not is_const(t) and not is_float(t):
            return f"input {t.name!r} is {t.dtype}, not float32"
    if any(not is_float(o) for o in node.outputs):
        return "output is not float32"
    return ""


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


HOST_REASONS = {
    "If": "control flow (If) runs on the host", "Loop": "control flow (Loop) runs on the host",
    "Scan": "control flow (Scan) runs on the host",
    "NonMaxSuppression": "post-processing (NonMaxSuppression): output size depends on the "
                         "data",
    "NonZero": "NonZero: output size depends on the data",
    "Unique": "Unique: output size depends on the data",
    "Compress": "Compress: output size depends on the data",
}
"""User-facing reasons for ops that belong on the host whatever their dtypes."""


def match_node(node: gs.Node, graph: gs.Graph, order: dict[int, int] | None = None) -> Unit:
    """The unit for one node: a quantizable pattern anchored at it, or a cpu unit."""
    if node.domain not in (None, "", "ai.onnx"):
        return _cpu(node, f"{node.op} (domain {node.domain}) has no int8 implementation")
    if node.op in HOST_REASONS:
        return _cpu(node, HOST_REASONS[node.op])
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
    inputs = [t for t in node.inputs if t.name and not is_const(t)] + outer_inputs(node)
    return Unit("cpu", [node], list({t.name: t for t in inputs}.values()),
                [o for o in node.outputs if o.name], reason=reason)


def _runtime_reason(unit: Unit, runtime: dict[str, str]) -> str:
    """Why a matched unit cannot run on the NPU ('' when every shape is static).

    A tensor whose shape is known only at run time must stay on the host.
    """
    roles = [("input", t) for t in unit.inputs] + [("output", t) for t in unit.outputs]
    for role, t in roles:
        if t.name in runtime:
            return (f"{role} {t.name!r} has a shape known only at run time "
                    f"(from {runtime[t.name]})")
    return ""


KEEP_FLOAT_REASON = "kept in float by request (--keep-float)"


def _kept_partners(node: gs.Node, graph: gs.Graph, order: dict[int, int],
                   taken: set[int]) -> list[Unit]:
    """CPU units for what an int8 pattern anchored at a kept `node` would have fused.

    Keeping a Conv float but not its activation would quantize the Conv's raw output (its
    pre-activation range, far wider than the activation's) and apply the Clip/ReLU to that:
    EfficientNet-Lite0 with `conv_stem` kept fell from cosine 0.990 to 0.855.
    """
    unit = match_node(node, graph, order)
    if unit.kind == "cpu":
        return []
    partners = [n for n in unit.nodes[1:] if id(n) not in taken]
    taken.update(id(n) for n in partners)
    return [_cpu(n, f"fused with {node.name!r}, which is kept in float") for n in partners]


def partition(graph: gs.Graph, keep_float: frozenset[str] = frozenset()) -> list[Unit]:
    """Units in topological order; each node belongs to exactly one unit.

    Nodes named in `keep_float` become cpu units (mixed precision chosen by the user), with
    the nodes their int8 pattern would fuse (activation, BN, residual Add), and no fused
    pattern swallows them. Units that would only add rounding between host nodes
    go to the host too (`placement.place_on_host`).
    """
    graph.toposort()
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    taken: set[int] = {id(n) for n in graph.nodes if n.name in keep_float}
    runtime = runtime_tensors(graph)
    units = []
    for node in graph.nodes:
        if node.name in keep_float:
            units.append(_cpu(node, KEEP_FLOAT_REASON))
            units += _kept_partners(node, graph, order, taken)
            continue
        if id(node) in taken:
            continue
        unit = match_node(node, graph, order)
        kept = [n.name for n in unit.nodes[1:] if n.name in keep_float]
        if kept:
            unit = _cpu(node, f"its int8 pattern would fuse {kept[0]!r}, which is kept in float")
        elif any(id(n) in taken for n in unit.nodes[1:]):  # defensive: fusions look forward
            unit = _cpu(node, "overlapping quantization patterns")
        elif unit.kind != "cpu" and _runtime_reason(unit, runtime):
            unit = _cpu(node, _runtime_reason(unit, runtime))
        taken.update(id(n) for n in unit.nodes)
        units.append(unit)
    return place_on_host(units, graph)
