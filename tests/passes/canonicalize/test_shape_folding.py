"""Folding Shape arithmetic: torch.onnx channel splits and reshapes with computed bounds."""

import numpy as np
import pytest

from compiler.core.cost import model_cost
from compiler.core.health import check_graph
from compiler.core.io import load_model
from compiler.core.numerics import run
from passes.canonicalize import canonicalize, fold_constants
from tests import exporter_graphs as eg

# conv0 16x16 + branch 8x8 + conv2 16x16 1x1 convs on 8x8 pixels
FULL_MACS = (16 * 16 + 8 * 8 + 16 * 16) * 8 * 8
SHAPE_OPS = {"Shape", "Gather", "Div", "Mul", "Sub", "Unsqueeze", "Constant"}


def _feeds(seed=0):
    return {"x": np.random.default_rng(seed).standard_normal((1, 16, 8, 8)).astype(np.float32)}


@pytest.mark.parametrize("split", ["Slice", "Split"])
@pytest.mark.parametrize("opset", [11, 13, 17])
def test_shape_arithmetic_folds_to_constants(split, opset):
    if split == "Split" and opset < 13:
        pytest.skip("Split takes its sizes as an input from opset 13")
    proto = eg.shufflenet_unit(split, opset=opset)
    model = load_model(proto)
    fold_constants(model)
    check_graph(model)
    ops = {n.op for n in model.graph.nodes}
    assert not ops & SHAPE_OPS and split in ops
    assert model_cost(model).macs == FULL_MACS
    feeds = _feeds()
    np.testing.assert_allclose(run(model, feeds)["y"], run(proto, feeds)["y"], rtol=1e-6,
                               atol=1e-6)


def test_canonicalize_counts_every_mac_and_keeps_the_function():
    proto = eg.shufflenet_unit("Slice")
    result = canonicalize(load_model(proto), verify_each=True)
    assert model_cost(result.model).macs == FULL_MACS
    shapes = {t.name: tuple(t.shape) for t in result.model.graph.tensors().values()
              if t.name in ("a", "b", "shuffled")}
    assert shapes == {"a": (1, 8, 8, 8), "b": (1, 8, 8, 8), "shuffled": (1, 16, 8, 8)}
    feeds = _feeds(1)
    np.testing.assert_allclose(run(result.model, feeds)["y"], run(proto, feeds)["y"],
                               rtol=1e-6, atol=1e-6)
