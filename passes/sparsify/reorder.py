"""Filter reordering (1xN's filter rearrangement) through the pruning dependency groups.

Each eligible layer's output channels are sorted by filter L1 norm (largest first) so filters
of similar magnitude share a block; `passes.prune.apply.apply_keep` applies the permutation to
everything indexed by those channels (the producer's filters and bias, per-channel constants,
the consumers' input channels), so the function is unchanged. A group produced by several
layers (residual sums) or one pruning cannot touch is left as is, with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from compiler.core.ir import Model
from passes.sparsify.layers import Layer, weight_layers

log = logging.getLogger(__name__)

REORDERED = "reordered"


def filter_order(logical: np.ndarray) -> np.ndarray:
    """Output-channel permutation by descending filter L1 norm (stable on ties)."""
    l1 = np.abs(np.asarray(logical, np.float64)).reshape(logical.shape[0], -1).sum(axis=1)
    return np.argsort(-l1, kind="stable")


def reorder_layers(model: Model, names: Sequence[str]) -> tuple[Model, dict[str, str]]:
    """Reorder the output channels of the named layers where their group allows it.

    Returns:
        (the reordered model, node name -> "reordered" or the reason it was not).
    """
    model, info, _ = reorder_with_layout(model, names)
    return model, info


def reorder_with_layout(model: Model, names: Sequence[str]) -> tuple[Model, dict[str, str], Any]:
    """`reorder_layers`, also returning the `ApplyTracer` (None when nothing moved).

    `tracer.old_positions(tensor)` gives, per channel of a reordered tensor, its position
    before the reordering (how a float teacher's channels line up with the student's).
    """
    from passes.prune.apply import apply_with_layout
    from passes.prune.groups import build_groups

    groups = build_groups(model)
    layers = {layer.name: layer for layer in weight_layers(model)}
    info, keep = {}, {}
    for name in names:
        layer = layers[name]
        group, reason = _group_of(groups, layer)
        if group is None:
            info[name] = reason
            continue
        keep[group.id] = _group_order(group, layer)
        info[name] = REORDERED
    layout = None
    if keep:
        model, layout = apply_with_layout(model, keep)
    return model, info, layout


def _group_of(groups, layer: Layer):
    """(the group holding exactly the layer's output channels, None) or (None, reason)."""
    if layer.group > 1:
        return None, "grouped conv: filters cannot move between groups"
    hits = [g for g in groups if layer.name in g.producers]
    if len(hits) != 1:
        return None, (f"output channels span {len(hits)} channel groups" if hits
                      else "no channel group found for its output")
    group = hits[0]
    if len(group.producers) > 1:
        return None, f"residual/shared group ({len(group.producers)} producing layers)"
    if not group.prunable:
        return None, f"channel group not reorderable: {group.reason}"
    if group.positions(layer.node.outputs[0].name).shape != (layer.cout, 1):
        return None, "output channels do not map one-to-one onto its channel group"
    return group, None


def _group_order(group, layer: Layer) -> np.ndarray:
    """The filter order as group channel indices (what `apply_keep` takes)."""
    pos = group.positions(layer.node.outputs[0].name)[:, 0]
    channel_at = np.empty(layer.cout, int)
    channel_at[pos] = np.arange(layer.cout)
    return channel_at[filter_order(layer.logical())]
