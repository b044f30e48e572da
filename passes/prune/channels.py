"""Where each channel of a pruned model came from: metadata `npuc.prune.channels`.

A later step that compares the pruned model with the float model it came from (the 1xN
re-fit with the float model as teacher) needs, for each tensor, the float channel behind
every kept channel. `record_channels` stores it as JSON in the model's metadata (ONNX
`metadata_props`), only for tensors whose channels are not the float ones unchanged:

    {"layer1.0.conv1_out": [0, 2, 3, ...], ...}      # new position -> float position

A tensor absent from the map has the float model's channels in the float order.
"""

from __future__ import annotations

import json

import numpy as np

from compiler.core.errors import GraphError
from compiler.core.ir import Model, is_const

CHANNELS_KEY = "npuc.prune.channels"


def record_channels(pruned: Model, layout, before: dict[str, np.ndarray] | None = None) -> None:
    """Write the channel origins of `pruned`'s activations into its metadata, in place.

    Args:
        pruned: The pruned model.
        layout: The `ApplyTracer` of the pruning (`old_positions`).
        before: The map of the model that was pruned, when it was itself pruned (the
            positions are composed so they always refer to the float model).
    """
    before = before or {}
    out = {}
    for name, tensor in pruned.graph.tensors().items():
        if is_const(tensor) or name not in layout.slots:
            continue
        pos = np.asarray(layout.old_positions(name), np.int64)
        if name in before:
            pos = before[name][pos]
        width = len(layout.analysis.slots[name].arr) if name not in before else None
        if width is not None and len(pos) == width and np.array_equal(pos, np.arange(width)):
            continue
        out[name] = pos.tolist()
    pruned.metadata[CHANNELS_KEY] = json.dumps(out, separators=(",", ":"))


def read_channels(model: Model) -> dict[str, np.ndarray]:
    """The map written by `record_channels` (empty when the model was not pruned).

    Raises:
        GraphError: The metadata is present but malformed.
    """
    text = model.metadata.get(CHANNELS_KEY)
    if not text:
        return {}
    try:
        doc = json.loads(text)
        return {str(k): np.asarray(v, np.int64) for k, v in doc.items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise GraphError(f"metadata {CHANNELS_KEY!r} is malformed: {exc}") from exc


__all__ = ["CHANNELS_KEY", "read_channels", "record_channels"]
