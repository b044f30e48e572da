"""Apply channel selections: slice or reorder weights, constants and attributes of every member.

`apply_keep(model, {group_id: indices})` keeps, for each listed group, the given channels in
the given order (a permutation reorders them everywhere consistently). The rules of
`trace.py` are re-run on the kept element ids; each tensor's new channel layout then tells
every weight, per-channel constant, Split/Slice bound and Reshape shape how to change.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from compiler.core.errors import ConfigError, GraphError
from compiler.core.ir import Model, const_value
from passes.prune.groups import Analysis, analyze
from passes.prune.rewrite import rewrite_node
from passes.prune.slots import label
from passes.prune.trace import Slot, Tracer, trace


def component_ranks(analysis: Analysis, keep: Mapping[int, np.ndarray]) -> np.ndarray:
    """Per component: its rank in the kept order, -1 when removed (identity for unlisted)."""
    rank = analysis.comp_index.copy()
    for gid, idx in keep.items():
        comps = group_components(analysis, gid)
        rank[comps] = -1
        rank[comps[idx]] = np.arange(len(idx))
    return rank


def group_components(analysis: Analysis, gid: int) -> np.ndarray:
    """Component ids of a group, indexed by channel index."""
    comps = np.flatnonzero(analysis.comp_group == gid)
    return comps[np.argsort(analysis.comp_index[comps])]


def check_keep(analysis: Analysis, keep: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Validate a keep map: known prunable groups, unique in-range indices, at least one kept."""
    clean = {}
    for gid, idx in keep.items():
        if not 0 <= int(gid) < len(analysis.groups):
            raise ConfigError(f"keep: no group {gid} (the model has {len(analysis.groups)})")
        group = analysis.groups[int(gid)]
        arr = np.asarray(idx)
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise ConfigError(f"keep[{gid}]: expected a 1-D integer index array")
        arr = arr.astype(np.int64)
        if len(arr) == 0 or len(np.unique(arr)) != len(arr) or arr.min() < 0 \
                or arr.max() >= group.channels:
            raise ConfigError(f"keep[{gid}]: need 1..{group.channels} unique indices in "
                              f"[0, {group.channels})")
        if not group.prunable and not np.array_equal(arr, np.arange(group.channels)):
            raise ConfigError(f"group {gid} is not prunable: {group.reason}")
        clean[int(gid)] = arr
    return clean


class ApplyTracer(Tracer):
    """Traces the kept element ids; checks ties; records new Split/Slice bounds."""

    def __init__(self, analysis: Analysis, ranks: np.ndarray) -> None:
        super().__init__()
        self.analysis = analysis
        self.ranks = ranks
        self.sub = _substitution(analysis, ranks)
        self.cuts: dict[str, list[tuple[int, int]]] = {}
        self._pos_cache: dict[str, np.ndarray] = {}

    def fresh(self, tensor: gs.Tensor, n: int) -> np.ndarray:
        """The producer's kept ids.

        Kept positions stay in their old order, so any structure of the layout (a grouped
        conv's blocks, channels that a shuffle interleaves) survives; a keep order that
        permutes a group puts, at the position of its r-th kept channel (by index), the
        same occurrence of its r-th channel in keep order.
        """
        old = self.analysis.slots[tensor.name].arr
        comps = self.analysis.comp[old]
        kept = np.flatnonzero(self.ranks[comps] >= 0)
        have = comps[kept]
        occ = occurrence(have)
        width = int(occ.max(initial=0)) + 1
        key = have.astype(np.int64) * width + occ
        want = self.sub[have].astype(np.int64) * width + occ
        order = np.argsort(key)
        found = np.minimum(np.searchsorted(key[order], want), len(key) - 1)
        if len(key) and np.any(key[order][found] != want):
            raise GraphError(f"tensor {tensor.name!r}: the channels of a group occur unevenly, "
                             "they cannot be reordered")
        return old[kept[order[found]]]

    def tie(self, a: np.ndarray, b: np.ndarray, node: gs.Node) -> None:
        """Tied channels must have been selected identically."""
        comp = self.analysis.comp
        if len(a) != len(b) or not np.array_equal(comp[a], comp[b]):
            raise GraphError(f"node {node.name!r} ({node.op}): tied channels were selected "
                             "inconsistently")

    def cut(self, node: gs.Node, tensor: gs.Tensor, arr: np.ndarray,
            ranges: list[tuple[int, int]]) -> list[np.ndarray]:
        """Cut by old position; the pieces must stay contiguous in the new layout."""
        old_pos = self.old_positions(tensor.name, arr)
        parts, bounds = [], []
        for a, b in ranges:
            idx = np.flatnonzero((old_pos >= a) & (old_pos < b))
            if len(idx) and idx[-1] - idx[0] + 1 != len(idx):
                raise GraphError(f"node {node.name!r}: the selected channels of a "
                                 f"{node.op} piece are no longer contiguous")
            start = int(idx[0]) if len(idx) else int(np.sum(old_pos < a))
            parts.append(arr[idx])
            bounds.append((start, start + len(idx)))
        self.cuts[node.name] = bounds
        return parts

    def old_positions(self, tensor: str, new: np.ndarray | None = None) -> np.ndarray:
        """For each new channel position of `tensor`, its old position."""
        if new is None:
            if tensor in self._pos_cache:
                return self._pos_cache[tensor]
            new = self.slots[tensor].arr
        old = self.analysis.slots[tensor].arr
        pos = map_positions(old, new)
        if new is self.slots.get(tensor, Slot(np.zeros(0), ())).arr:
            self._pos_cache[tensor] = pos
        return pos


def _substitution(analysis: Analysis, ranks: np.ndarray) -> np.ndarray:
    # Per component: the component placed where it stood (identity unless a group's keep
    # order permutes it): per group, the r-th kept by channel index -> the r-th in keep order.
    sub = np.arange(len(ranks))
    kept = np.flatnonzero(ranks >= 0)
    groups = analysis.comp_group[kept]
    by_index = kept[np.lexsort((analysis.comp_index[kept], groups))]
    by_rank = kept[np.lexsort((ranks[kept], groups))]
    sub[by_index] = by_rank
    return sub


def occurrence(values: np.ndarray) -> np.ndarray:
    """For each entry, how many equal entries precede it."""
    order = np.argsort(values, kind="stable")
    sorted_vals = values[order]
    starts = np.r_[0, np.flatnonzero(sorted_vals[1:] != sorted_vals[:-1]) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(values)]))
    occ = np.empty(len(values), np.int64)
    occ[order] = np.arange(len(values)) - run_start
    return occ


def map_positions(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Old position of each entry of `new`: the r-th copy of an id maps to its r-th old copy."""
    width = int(max(occurrence(old).max(initial=0), occurrence(new).max(initial=0))) + 1
    old_key = old.astype(np.int64) * width + occurrence(old)
    new_key = new.astype(np.int64) * width + occurrence(new)
    order = np.argsort(old_key)
    found = np.searchsorted(old_key[order], new_key)
    if len(new) and (found.max() >= len(old) or np.any(old_key[order][found] != new_key)):
        raise GraphError("internal: a kept channel has no old position")
    return order[found]


def apply_keep(model: Model, keep: Mapping[int, np.ndarray], *,
               analysis: Analysis | None = None) -> Model:
    """Keep the given channels of each group, in the given order.

    Args:
        model: The model (not modified); canonicalized, as analysed by `build_groups`.
        keep: Group id -> channel indices to keep, in order (`np.take` semantics: a
            permutation of all channels reorders them consistently everywhere).
        analysis: The model's `Analysis`, when already computed.

    Returns:
        A new model; graph output shapes unchanged.

    Raises:
        ConfigError: Unknown or unprunable group, invalid indices.
    """
    return apply_with_layout(model, keep, analysis=analysis)[0]


def apply_with_layout(model: Model, keep: Mapping[int, np.ndarray], *,
                      analysis: Analysis | None = None) -> tuple[Model, ApplyTracer]:
    """`apply_keep`, also returning the tracer.

    `tracer.old_positions(tensor)` maps each new channel position of a tensor to its
    position in the original model.
    """
    analysis = analysis or analyze(model)
    keep = check_keep(analysis, keep)
    tracer = ApplyTracer(analysis, component_ranks(analysis, keep))
    trace(model.graph, tracer)
    out = model.copy()
    nodes = {n.name: n for n in out.graph.nodes}
    for node in analysis.order:
        rewrite_node(nodes[node.name], tracer)
    _update_shapes(out, analysis, tracer)
    return out, tracer


def _update_shapes(model: Model, analysis: Analysis, tracer: ApplyTracer) -> None:
    for name, tensor in model.graph.tensors().items():
        slot = tracer.slots.get(name)
        if slot is None or isinstance(tensor, gs.Constant) or tensor.shape is None:
            continue
        old = analysis.slots[name]
        if len(slot.arr) == len(old.arr) and slot.dims == old.dims:
            continue
        shape = list(tensor.shape)
        dims = slot.dims if len(slot.dims) > 1 else (len(slot.arr),)
        shape[slot.axis:slot.axis + len(dims)] = list(dims)
        tensor.shape = shape


def zero_removed(model: Model, keep: Mapping[int, np.ndarray], *,
                 analysis: Analysis | None = None) -> Model:
    """The pruning oracle: the original model with removed channels' consumer weights zeroed.

    Its outputs must equal `apply_keep(model, keep)`'s.
    """
    analysis = analysis or analyze(model)
    ranks = component_ranks(analysis, check_keep(analysis, keep))
    out = model.copy()
    for node in out.graph.nodes:
        slot = analysis.slots.get(node.inputs[0].name) if node.inputs else None
        w = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
        if node.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or slot is None \
                or w is None:
            continue
        removed = ranks[analysis.comp[slot.arr]] < 0
        if removed.any():
            # per node: a weight shared by nodes with different removed inputs (one head on
            # several pyramid levels) needs one zeroed copy each, under distinct names
            node.inputs[1] = gs.Constant(f"{label(node)}.{node.inputs[1].name}_zeroed",
                                         _zero_inputs(node, w.copy(), removed))
    return out


def _zero_inputs(node: gs.Node, w: np.ndarray, removed: np.ndarray) -> np.ndarray:
    group = int(node.attrs.get("group", 1))
    if node.op == "Conv":
        if w.shape[1] == 1 and group > 1:
            return w  # depthwise: the removed channel's own output is removed downstream
        rows = removed.reshape(group, -1)
        per = w.shape[0] // group
        for g in range(group):
            w[g * per:(g + 1) * per, rows[g]] = 0
    elif node.op == "ConvTranspose" or node.op == "MatMul":
        w[removed] = 0
    elif node.attrs.get("transB", 0):
        w[:, removed] = 0
    else:
        w[removed] = 0
    return w
