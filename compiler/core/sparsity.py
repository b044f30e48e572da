"""The block masks that travel with a sparse model, for targets to encode zero blocks.

Stored in `model.metadata["npuc.sparsity"]` (ONNX `metadata_props`) as JSON:

    {"version": 1, "block": N, "criterion": "l1",
     "layers": {node_name: {"weight": initializer_name, "layout": "OIHW" | "OI" | "IO",
                            "block": n, "mask_shape": [Cout/n, Cin],
                            "mask": base64(np.packbits(mask.ravel())), "sparsity": s}}}

Mask bit (g, c) = 1 means the block of output channels g*n .. g*n+n-1 at input channel c
(the whole kernel) is kept; 0 means every weight in it is exactly zero. Bits are packed
row-major, most significant bit first (numpy `packbits` default). `n` is the layer's block
size: N for 1xN criteria, 1 for `css` (whole filters zeroed). See docs/sparsity.md.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from compiler.core.errors import GraphError
from compiler.core.ir import Model, const_value
from compiler.core.safe_yaml import load_json

METADATA_KEY = "npuc.sparsity"
FORMAT_VERSION = 1


@dataclass
class LayerMask:
    """The 1xN block mask of one layer.

    Attributes:
        node: Node name.
        weight: Name of the weight initializer (original shape, zeros in pruned blocks).
        block: Output channels per block (1 for whole-filter masks).
        mask: Bool `[Cout/block, Cin]`, True = block kept.
        layout: Storage layout of the weight ("OIHW", "OI" = [out, in], "IO" = [in, out]).
        sparsity: Fraction of zero blocks.
    """

    node: str
    weight: str
    block: int
    mask: np.ndarray
    layout: str = "OIHW"
    sparsity: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The JSON entry of this layer."""
        packed = np.packbits(self.mask.astype(np.uint8).ravel())
        return {"weight": self.weight, "layout": self.layout, "block": int(self.block),
                "mask_shape": [int(d) for d in self.mask.shape],
                "mask": base64.b64encode(packed.tobytes()).decode("ascii"),
                "sparsity": round(float(self.sparsity), 6)}

    @classmethod
    def from_json(cls, node: str, entry: dict[str, Any]) -> LayerMask:
        """Parse one layer entry; raises `GraphError` naming the node when malformed."""
        try:
            shape = tuple(int(d) for d in entry["mask_shape"])
            raw = np.frombuffer(base64.b64decode(entry["mask"], validate=True), np.uint8)
            bits = np.unpackbits(raw)[: int(np.prod(shape))]
            if bits.size != int(np.prod(shape)) or len(shape) != 2:
                raise ValueError(f"mask has {bits.size} bits for shape {list(shape)}")
            return cls(node, str(entry["weight"]), int(entry["block"]),
                       bits.reshape(shape).astype(bool), str(entry.get("layout", "OIHW")),
                       float(entry.get("sparsity", 1.0 - bits.mean())))
        except (KeyError, TypeError, ValueError, binascii.Error) as e:
            raise GraphError(f"{METADATA_KEY} entry for node {node!r} is malformed: {e}") from e


def write_sparsity_metadata(model: Model, block: int, masks: dict[str, LayerMask],
                            criterion: str) -> None:
    """Store the masks in `model.metadata[METADATA_KEY]` (replacing any earlier entry)."""
    doc = {"version": FORMAT_VERSION, "block": int(block), "criterion": criterion,
           "layers": {name: m.to_json() for name, m in masks.items()}}
    model.metadata[METADATA_KEY] = json.dumps(doc, separators=(",", ":"))


def read_sparsity_metadata(model: Model) -> dict[str, LayerMask]:
    """The block masks stored with `model`, by node name ({} when it carries none).

    Raises:
        GraphError: The metadata exists but is not valid JSON of the documented form.
    """
    text = model.metadata.get(METADATA_KEY)
    if not text:
        return {}
    doc = load_json(text, f"metadata {METADATA_KEY!r} is malformed", GraphError)
    try:
        layers = doc["layers"]
        if not isinstance(layers, dict):
            raise TypeError("'layers' is not an object")
    except (ValueError, KeyError, TypeError) as e:
        raise GraphError(f"metadata {METADATA_KEY!r} is malformed: {e}") from e
    return {name: LayerMask.from_json(name, entry) for name, entry in layers.items()}


def logical_weight(weight: np.ndarray, layout: str) -> np.ndarray:
    """A stored weight as `[Cout, Cin, *kernel]`."""
    return weight.T if layout == "IO" else weight


def zero_blocks(logical: np.ndarray, block: int) -> np.ndarray:
    """Bool `[Cout/block, Cin]`: True where the whole block is exactly zero.

    Lets a target find zero blocks without metadata, or check the metadata against the data.
    """
    cout, cin = logical.shape[:2]
    return ~np.any(logical.reshape(cout // block, block, cin, -1) != 0, axis=(1, 3))


def check_masks(model: Model, masks: dict[str, LayerMask] | None = None) -> None:
    """Raise `GraphError` when a masked-out block of some weight is not exactly zero."""
    masks = read_sparsity_metadata(model) if masks is None else masks
    tensors = model.graph.tensors()
    for m in masks.values():
        w = const_value(tensors.get(m.weight))
        if w is None:
            raise GraphError(f"{METADATA_KEY}: weight {m.weight!r} of node {m.node!r} "
                             "is not an initializer of the model")
        zero = zero_blocks(logical_weight(w, m.layout), m.block)
        if zero.shape != m.mask.shape or np.any(~m.mask & ~zero):
            raise GraphError(f"{METADATA_KEY}: weight {m.weight!r} of node {m.node!r} has "
                             "non-zero values in blocks its mask marks as zero")
