"""Custom-domain ops: their output shapes come from running the node in onnxruntime."""

from __future__ import annotations

import numpy as np
from onnx import helper

from compiler.core.io import load_model
from compiler.core.numerics import compare_models
from passes.canonicalize import canonicalize, probe_custom_shapes
from tests import exporter_graphs as eg
from tests.quant_helpers import feeds_for


def test_gelu_output_is_typed_and_shapes_flow_downstream():
    model = load_model(eg.missing_op_model("gelu"))
    tensors = model.graph.tensors()
    assert tensors["mid"].shape is None and tensors["tail_c0"].shape is None
    assert probe_custom_shapes(model) == 1
    tensors = model.graph.tensors()
    assert list(tensors["mid"].shape) == [1, 8, 8, 8] and tensors["mid"].dtype == np.float32
    assert list(tensors["tail_c0"].shape) == [1, 8, 8, 8]  # inferred after the probe
    assert probe_custom_shapes(model) == 0  # nothing left to probe


def test_canonicalize_probes_and_keeps_the_function():
    proto = eg.missing_op_model("gelu")
    result = canonicalize(load_model(proto))
    assert list(result.model.graph.tensors()["mid"].shape) == [1, 8, 8, 8]
    errors = compare_models(proto, result.model, feeds_for(proto, 1, seed=0))
    assert max(errors.values()) < 1e-6


def test_unrunnable_custom_op_stays_untyped():
    proto = eg.missing_op_model("gelu")
    node = next(n for n in proto.graph.node if n.op_type == "Gelu")
    node.domain = "org.example"  # no runtime knows it
    del proto.opset_import[1:]
    proto.opset_import.append(helper.make_opsetid("org.example", 1))
    model = load_model(proto)
    assert probe_custom_shapes(model) == 0
    assert model.graph.tensors()["mid"].shape is None
