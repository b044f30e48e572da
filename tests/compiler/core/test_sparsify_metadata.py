"""The npuc.sparsity metadata: round trip through ONNX, packing, validation."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from compiler.core.errors import GraphError
from compiler.core.io import load_model, save_model
from passes.sparsify import (
    METADATA_KEY,
    LayerMask,
    check_masks,
    read_sparsity_metadata,
    sparsify_model,
)
from passes.sparsify.layers import weight_layers
from tests.passes.sparsify.test_sparsify_blocks import tiny_net


def test_mask_packing_is_row_major_msb_first():
    mask = np.array([[1, 0, 1, 1, 0, 0, 0, 0, 1]], bool)
    entry = LayerMask("n", "w", 4, mask).to_json()
    raw = base64.b64decode(entry["mask"])
    assert list(raw) == [0b10110000, 0b10000000]
    assert entry["mask_shape"] == [1, 9]
    assert np.array_equal(LayerMask.from_json("n", entry).mask, mask)


def test_metadata_survives_save_and_load(tmp_path):
    sparse, report = sparsify_model(tiny_net(), 4, 0.5, criterion="l1", reconstruct=False)
    path = save_model(sparse, tmp_path / "s.onnx")
    loaded = load_model(path)
    masks = read_sparsity_metadata(loaded)
    doc = json.loads(loaded.metadata[METADATA_KEY])
    assert doc["block"] == 4 and doc["version"] == 1 and doc["criterion"] == "l1"
    assert set(masks) == {r["node"] for r in report["layers"]}
    assert masks["c"].mask.shape == (8, 16) and masks["c"].sparsity == pytest.approx(0.5)
    check_masks(loaded)  # the saved weights really are zero where the masks say so


def test_check_masks_detects_non_zero_in_masked_block():
    sparse, _ = sparsify_model(tiny_net(), 4, 0.5, criterion="l1", reconstruct=False)
    masks = read_sparsity_metadata(sparse)
    layer = next(x for x in weight_layers(sparse) if x.name == "a")
    g, c = np.argwhere(~masks["a"].mask)[0]
    w = layer.logical().copy()
    w[4 * g, c, 1, 1] = 0.5
    layer.store(w)
    with pytest.raises(GraphError, match="non-zero values in blocks"):
        check_masks(sparse)


def test_model_without_metadata_reads_empty():
    assert read_sparsity_metadata(tiny_net()) == {}


@pytest.mark.parametrize("text, match", [
    ("not json", "is malformed"),
    ('{"block": 4}', "is malformed"),
    ('{"layers": {"a": {"weight": "w", "block": 4, "mask_shape": [2, 8], "mask": "AA=="}}}',
     "entry for node 'a' is malformed"),
])
def test_malformed_metadata_is_a_graph_error(text, match):
    model = tiny_net()
    model.metadata[METADATA_KEY] = text
    with pytest.raises(GraphError, match=match):
        read_sparsity_metadata(model)
