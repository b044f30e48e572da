"""Host placement of int8 units that would only add rounding (passes/quantize/placement.py).

Oracles: the reasons per node; the numpy reference and model.quant.onnx agree bit for bit;
the placed model is closer to the float model than the all-int8 one by a measured factor.
"""

from __future__ import annotations

import numpy as np
import pytest

from compiler.core.numerics import run
from passes.quantize import patterns
from passes.quantize.api import pristine_float, quantize_model
from passes.quantize.placement import BEFORE_HOST_REASON, ISLAND_REASON
from tests import exporter_graphs as eg
from tests.quant_helpers import feeds_for, mismatches


def _cpu_reasons(result) -> dict[str, str]:
    return {n["node"]: n["reason"] for n in result.report["nodes"]
            if n["qop"] == "QCpuPartition"}


def _quantize(proto, placed: bool, monkeypatch):
    if not placed:
        monkeypatch.setattr(patterns, "place_on_host", lambda units, graph: units)
    result = quantize_model(proto, feeds_for(proto, 16, seed=0))
    monkeypatch.undo()
    return result


def _max_err(proto, result, rows: slice = slice(None)) -> float:
    """max |int8 - float| of the first output (its `rows` along axis 1) on 8 seeded inputs."""
    name, err = proto.graph.output[0].name, 0.0
    reference = pristine_float(proto, result)  # as given: bias correction moved biases
    for seed in range(8):
        feeds = feeds_for(proto, 1, seed=seed + 1)
        diff = run(result.quant_model, feeds)[name] - run(reference, feeds)[name]
        err = max(err, float(np.abs(diff[:, rows]).max()))
    return err


def test_concat_before_host_softmax_keeps_each_heads_scale(monkeypatch):
    proto = eg.scaled_heads_softmax()
    placed, plain = _quantize(proto, True, monkeypatch), _quantize(proto, False, monkeypatch)
    # the moves before the Concat stay int8 (each keeps its head's scale anyway)
    assert _cpu_reasons(placed) == {"probs": "Softmax has no int8 implementation",
                                    "logits": BEFORE_HOST_REASON}
    assert set(_cpu_reasons(plain)) == {"probs"}
    kinds = {op.name: op.kind for op in placed.qgraph.ops}
    assert kinds["head_small"] == kinds["head_big"] == "QConv"
    # the small head's anchors (rows 0-63) no longer share the big head's scale (gain 40)
    small = slice(0, 64)
    assert _max_err(proto, placed, small) < _max_err(proto, plain, small) / 4
    assert mismatches(placed.qgraph, feeds_for(proto, 1, seed=2)) == {}


def test_sigmoid_after_host_deconv_runs_in_float(monkeypatch):
    proto = eg.db_head()
    placed, plain = _quantize(proto, True, monkeypatch), _quantize(proto, False, monkeypatch)
    assert _cpu_reasons(placed)["y"] == ISLAND_REASON
    assert "y" not in _cpu_reasons(plain)
    out = run(placed.quant_model, feeds_for(proto, 1, seed=1))["y_out"]
    steps = out * 127  # an int8 Sigmoid table has outputs on the 1/127 grid
    assert not np.allclose(steps, np.round(steps), atol=1e-3)
    assert _max_err(proto, placed) < _max_err(proto, plain)
    assert mismatches(placed.qgraph, feeds_for(proto, 1, seed=2)) == {}


@pytest.mark.parametrize("build, host", [
    (eg.fpn_resize, {}), (eg.shufflenet_v2, {}),
    (eg.c2f_detect, {"dfl_softmax": "Softmax has no int8 implementation"})])
def test_int8_data_movement_between_int8_ops_stays(build, host):
    proto = build()
    assert _cpu_reasons(quantize_model(proto, feeds_for(proto, 4, seed=0))) == host
