"""Dependency groups: channel slots that must be removed together, found with networkx.

`trace.py` gives every channel position of every activation an element id and records ties
(residual Add, squeeze-excite Mul, grouped convs, shuffles). Elements are the nodes of a
networkx graph, ties its edges; a connected component is one removable channel. Components
seen in exactly the same set of tensors form a group: a residual stage's width, a conv's
output width, one input of a Concat. A group is prunable unless it touches a graph input or
output or an op with unknown channel semantics; then it carries that reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.ir import Model
from passes.prune.slots import label
from passes.prune.trace import ELEMENTWISE, WEIGHTED, Slot, Tracer, trace

log = logging.getLogger(__name__)

# Why channels are tied decides the group's kind; a residual tie outranks the others.
_TIE_KINDS = {"Conv": "grouped", "ConvTranspose": "grouped", "Reshape": "shuffle"}
_KIND_RANK = {"plain": 0, "concat": 1, "grouped": 2, "shuffle": 3, "residual": 4}


@dataclass
class Group:
    """A set of channels removed together.

    Attributes:
        id: Index in `build_groups`' list (topological order of first producer).
        channels: Number of removable channels (a grouped conv's tied channels count once).
        members: Human-readable members: "<node>.out" for producers, "<node>.in" for
            consumers, "<node>.const" / ".concat" / ".split" / ".slice" / ".shape" for
            constants and attributes that are sliced or rewritten.
        prunable: Whether channels of this group may be removed.
        reason: Why not, when not prunable.
        kind: "residual" (tied by an element-wise op: Add, SE Mul), "shuffle" (tied by a
            channel shuffle), "grouped" (tied across the groups of a grouped conv), "concat"
            (one input of a Concat), or "plain".
        producers: Weight-bearing nodes whose output channels are in the group.
        consumers: Weight-bearing nodes whose input channels are in the group.
        activations: Tensors (one per producer) whose feature maps represent the channels,
            after a following channel-wise activation when there is one (used by HRank).
        blocked_by: When not prunable, what pins the group: {"node": name, "op": op}, or
            {"input": name} / {"output": name} for a graph input or output.
    """

    id: int
    channels: int
    members: list[str]
    prunable: bool
    reason: str | None
    kind: str = "plain"
    producers: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    activations: list[str] = field(default_factory=list)
    blocked_by: dict | None = None
    analysis: Analysis | None = field(default=None, repr=False, compare=False)

    def positions(self, tensor: str) -> np.ndarray:
        """Channel positions of this group in a tensor's channel axis: [channels, r].

        Row k lists the (ascending) positions holding channel k; r > 1 for flattened
        tensors (k's spatial copies) and tied blocks (grouped convs, shuffles). Empty rows
        (shape [channels, 0]) when the tensor does not carry the group.
        """
        return self.analysis.positions(self.id, tensor)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"id": self.id, "channels": self.channels, "kind": self.kind,
                "prunable": self.prunable, "reason": self.reason, "blocked_by": self.blocked_by,
                "members": self.members}


class AnalysisTracer(Tracer):
    """Fresh element ids per producer; ties and blocks recorded for the union-find."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.edges: list[np.ndarray] = []
        self.blocked: list[tuple[np.ndarray, str]] = []
        self.fresh_slots: list[str] = []
        self.tie_ops: list[str] = []

    def fresh(self, tensor: gs.Tensor, n: int) -> np.ndarray:
        """New element ids."""
        arr = np.arange(self.count, self.count + n)
        self.count += n
        self.fresh_slots.append(tensor.name)
        return arr

    def tie(self, a: np.ndarray, b: np.ndarray, node: gs.Node) -> None:
        """Record element-wise edges (not those of `x * sigmoid(x)`, which ties x to itself)."""
        if np.array_equal(a, b):
            return
        self.edges.append(np.stack([a, b], axis=1))
        self.tie_ops.append(node.op)

    def block(self, arr: np.ndarray, reason: str, where: dict | None = None) -> None:
        """Record pinned elements."""
        self.blocked.append((arr, reason, where))


class Analysis:
    """The traced model: element ids per tensor, components, groups.

    Attributes:
        model: The analysed model (not modified).
        slots: Tensor name -> `Slot` of element ids.
        comp: Element id -> component id.
        comp_group: Component id -> group id.
        comp_index: Component id -> channel index within its group.
        groups: The groups.
        order: Nodes in traced (topological) order.
    """

    def __init__(self, model: Model) -> None:
        self.model = model
        tr = AnalysisTracer()
        self.order = trace(model.graph, tr)
        self.slots: dict[str, Slot] = tr.slots
        self.fresh_slots = tr.fresh_slots
        self.comp = _components(tr.count, tr.edges)
        n_comp = int(self.comp.max()) + 1 if tr.count else 0
        self.comp_group, self.comp_index, n_groups = self._group_components(n_comp)
        self.group_sizes = np.bincount(self.comp_group, minlength=n_groups)
        self.groups = self._make_groups(n_groups, tr)

    def _group_components(self, n_comp: int) -> tuple[np.ndarray, np.ndarray, int]:
        # Components present in the same tensors (same signature) form one group.
        rng = np.random.default_rng(12345)
        sig = np.zeros((n_comp, 2), np.uint64)
        for slot in self.slots.values():
            present = np.unique(self.comp[slot.arr])
            sig[present] += rng.integers(1, 2**62, 2, dtype=np.uint64)
        # Group ids and channel indices follow first appearance in producer slots.
        seen = np.concatenate([self.comp[self.slots[n].arr] for n in self.fresh_slots]) \
            if self.fresh_slots else np.zeros(0, np.int64)
        _, first = np.unique(seen, return_index=True)
        ordered = seen[np.sort(first)]  # every component, by first appearance
        _, key_first, key_inv = np.unique(sig[ordered], axis=0, return_index=True,
                                          return_inverse=True)
        rank = np.empty(len(key_first), np.int64)
        rank[np.argsort(key_first)] = np.arange(len(key_first))
        gids = rank[key_inv.ravel()]
        order = np.argsort(gids, kind="stable")
        starts = np.searchsorted(gids[order], np.arange(len(key_first)))
        index = np.empty(len(ordered), np.int64)
        index[order] = np.arange(len(ordered)) - starts[gids[order]]
        group_of, index_of = np.full(n_comp, -1), np.full(n_comp, -1)
        group_of[ordered], index_of[ordered] = gids, index
        return group_of, index_of, len(key_first)

    def _make_groups(self, n_groups: int, tr: AnalysisTracer) -> list[Group]:
        reasons: list[str | None] = [None] * n_groups
        where: list[dict | None] = [None] * n_groups
        for arr, reason, at in tr.blocked:
            for g in np.unique(self.comp_group[self.comp[arr]]):
                if reasons[g] is None:
                    reasons[g], where[g] = reason, at
        kinds = ["plain"] * n_groups
        for edges, op in zip(tr.edges, tr.tie_ops, strict=True):
            kind = _TIE_KINDS.get(op, "residual")
            for g in np.unique(self.comp_group[self.comp[edges[:, 0]]]) if len(edges) else []:
                if _KIND_RANK[kind] > _KIND_RANK[kinds[g]]:
                    kinds[g] = kind
        groups = [Group(g, int(self.group_sizes[g]), [], reasons[g] is None, reasons[g],
                        kinds[g], blocked_by=where[g], analysis=self) for g in range(n_groups)]
        self._add_members(groups)
        return groups

    def groups_in(self, tensor: str) -> np.ndarray:
        """Ids of the groups present in a tensor's channel axis."""
        slot = self.slots.get(tensor)
        if slot is None:
            return np.zeros(0, int)
        return np.unique(self.comp_group[self.comp[slot.arr]])

    def _add_members(self, groups: list[Group]) -> None:
        for node in self.order:
            for tag, tensors in _member_tensors(node):
                for t in tensors:
                    for g in self.groups_in(t):
                        _add_member(groups[g], node, tag, self)

    def positions(self, group: int, tensor: str) -> np.ndarray:
        """See `Group.positions`."""
        slot = self.slots.get(tensor)
        size = int(self.group_sizes[group])
        if slot is None:
            return np.zeros((size, 0), int)
        comps = self.comp[slot.arr]
        pos = np.flatnonzero(self.comp_group[comps] == group)
        if not len(pos):
            return np.zeros((size, 0), int)
        k = self.comp_index[comps[pos]]
        order = np.lexsort((pos, k))
        return pos[order].reshape(size, -1)


def _components(n: int, edges: list[np.ndarray]) -> np.ndarray:
    # Only tied elements enter the networkx graph; the others are components of their own.
    comp = np.arange(n)
    if edges:
        pairs = np.concatenate(edges)
        graph = nx.Graph()
        graph.add_edges_from(zip(pairs[:, 0].tolist(), pairs[:, 1].tolist(), strict=True))
        for members in nx.connected_components(graph):
            idx = np.fromiter(members, np.int64, len(members))
            comp[idx] = idx.min()
    return np.unique(comp, return_inverse=True)[1].ravel()


def _member_tensors(node: gs.Node) -> list[tuple[str, list[str]]]:
    outs = [node.outputs[0].name]
    ins = [node.inputs[0].name] if node.inputs else []
    if node.op in WEIGHTED:
        return [("out", outs), ("in", ins)]
    if node.op == "Concat":
        return [("concat", outs)]
    if node.op in ("Split", "Slice", "Reshape", "Resize"):
        tag = {"Reshape": "shape", "Resize": "shape"}.get(node.op, node.op.lower())
        return [(tag, ins)]
    if (node.op in ELEMENTWISE or node.op in ("BatchNormalization", "InstanceNormalization")) \
            and any(isinstance(t, gs.Constant) and t.values.size > 1 for t in node.inputs):
        return [("const", outs)]
    return []


def _add_member(group: Group, node: gs.Node, tag: str, analysis: Analysis) -> None:
    name = f"{label(node)}.{tag}"
    if tag == "shape" and node.op == "Reshape" and _same_layout(node, analysis):
        return
    if name in group.members:
        return
    group.members.append(name)
    if tag == "concat" and group.kind == "plain":
        group.kind = "concat"
    if tag == "out" and node.op in WEIGHTED and not _is_depthwise(node):
        group.producers.append(node.name)
        group.activations.append(_activation_of(node))
    elif tag == "in" and node.op in WEIGHTED and not _is_depthwise(node):
        group.consumers.append(node.name)


def _same_layout(node: gs.Node, analysis: Analysis) -> bool:
    # a Reshape that keeps the channel extent on the same axis needs no new target shape
    x, y = analysis.slots.get(node.inputs[0].name), analysis.slots.get(node.outputs[0].name)
    return x is not None and y is not None and len(x.arr) == len(y.arr) \
        and (x.dims, x.axis) == (y.dims, y.axis)


def _is_depthwise(node: gs.Node) -> bool:
    group = int(node.attrs.get("group", 1))
    w = node.inputs[1]
    return node.op == "Conv" and group > 1 and isinstance(w, gs.Constant) \
        and w.values.shape[1] == 1


def _activation_of(node: gs.Node) -> str:
    out = node.outputs[0]
    users = list(out.outputs)
    if len(users) == 1 and users[0].op in ("Relu", "Clip", "LeakyRelu", "HardSwish", "Sigmoid",
                                           "PRelu", "Elu", "Selu", "Mish"):
        return users[0].outputs[0].name
    return out.name


def analyze(model: Model) -> Analysis:
    """Trace `model` (ideally canonicalized: BatchNorm folded, constants folded)."""
    return Analysis(model)


def build_groups(model: Model) -> list[Group]:
    """The dependency groups of `model`, prunable or with the reason why not."""
    return analyze(model).groups
