"""QPRelu, the op added in one module (compiler/core/qops/prelu.py): bit-exact three ways.

numpy reference == model.quant.onnx in onnxruntime (every int8 tensor) == npusim binary in
the simulator (`channel_lut`, tabulated from the reference), on seeded random inputs, with
positive, zero and negative slopes; float vs int8 cosine on a small conv model.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from compiler.core.numerics import cosine, run
from compiler.core.qops import OPS, channel_tables
from compiler.core.qops.prelu import QPRelu
from passes.quantize.api import pristine_float, quantize_model
from targets.npusim import build_binary, verify
from targets.npusim.testing import random_inputs
from tests.quant_helpers import check_quantized, feeds_for, make_model

rng = np.random.default_rng(0)
node = helper.make_node
SLOPES = np.array([0.25, 0.0, -0.5, 1.5, 0.01, -2.0], np.float32)


def conv_prelu_model(slope: np.ndarray, channels: int = 6):
    """x [N, 4, 10, 10] -> Conv 3x3 -> PRelu(slope) -> Conv 1x1 -> y."""
    w1 = rng.standard_normal((channels, 4, 3, 3)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((3, channels, 1, 1)).astype(np.float32) * 0.3
    nodes = [node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
             node("PRelu", ["c", "slope"], ["p"]), node("Conv", ["p", "w2"], ["y"])]
    inits = {"w1": w1, "b1": rng.standard_normal(channels).astype(np.float32) * 0.1,
             "slope": slope, "w2": w2}
    return make_model(nodes, {"x": ["N", 4, 10, 10]}, ["y"], inits)


def prelu_ops(result) -> list[QPRelu]:
    return [op for op in result.qgraph.ops if isinstance(op, QPRelu)]


@pytest.mark.parametrize("slope", [SLOPES.reshape(6, 1, 1), SLOPES.reshape(1, 6, 1, 1),
                                   np.array([0.1], np.float32)], ids=["c11", "1c11", "scalar"])
def test_prelu_reference_equals_onnxruntime_and_float(slope):
    result = check_quantized(conv_prelu_model(slope), batch=3, min_cos=0.99)
    (op,) = prelu_ops(result)
    assert op.neg_m0.shape == (6,)
    if slope.size == 6:
        assert list(np.sign(op.neg_m0)) == list(np.sign(SLOPES).astype(int))


@pytest.mark.parametrize("seed", [1, 2])
def test_prelu_simulator_equals_onnxruntime(seed):
    proto = conv_prelu_model(SLOPES.reshape(6, 1, 1))
    quant = quantize_model(proto, random_inputs(proto, 4, 0)).quant_model
    binary = build_binary(quant)
    assert "channel_lut" in {i.kind for i in binary.instructions}
    report = verify(quant, binary.data, random_inputs(proto, 3, seed))
    assert report.consistent
    assert all(out["mismatched"] == 0 for out in report.outputs)


def test_channel_tables_cover_every_input_value():
    proto = conv_prelu_model(SLOPES.reshape(6, 1, 1))
    result = quantize_model(proto, feeds_for(proto, 4, 0))
    (op,) = prelu_ops(result)
    x = np.broadcast_to(np.arange(-128, 128, dtype=np.int8), (2, 6, 256)).copy()
    ref = OPS["QPRelu"].reference(op, [x], None)[0]
    np.testing.assert_array_equal(channel_tables(op, 6), ref[0])
    zero = int(np.flatnonzero(SLOPES == 0)[0])
    assert np.all(ref[:, zero, :128] == 0)  # a zero slope maps every negative input to 0


def test_prelu_float_vs_int8_cosine():
    proto = conv_prelu_model(SLOPES.reshape(6, 1, 1))
    result = quantize_model(proto, feeds_for(proto, 16, 0))
    test = feeds_for(proto, 8, 5)
    ref, out = run(pristine_float(proto, result), test)["y"], run(result.quant_model, test)["y"]
    assert cosine(ref, out) > 0.99


def test_non_channel_slope_stays_float():
    slope = rng.standard_normal((1, 10, 10)).astype(np.float32)
    result = quantize_model(conv_prelu_model(slope), feeds_for(conv_prelu_model(slope), 4, 0))
    assert not prelu_ops(result)
    assert any("not per-channel" in r for op in result.qgraph.ops
               for r in getattr(op, "reasons", {}).values())
