"""Mixed precision: nodes named in keep_float stay in float on a CPU partition."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.core import qgraph as q
from compiler.core.errors import ConfigError
from compiler.core.numerics import cosine, run
from passes.quantize.api import quantize_model
from passes.quantize.patterns import KEEP_FLOAT_REASON
from tests.passes.quantize.test_bias_correction import data, net
from tests.quant_helpers import mismatches


def test_kept_classifier_runs_in_float_and_the_rest_stays_bit_exact():
    model = net(0)
    calib, test = {"x": data(0)}, {"x": data(4, 8)}
    mixed = quantize_model(model, calib, "max", keep_float=["fc"])
    full = quantize_model(model, calib, "max")
    cpu = [op for op in mixed.qgraph.ops if isinstance(op, q.QCpuPartition)]
    assert len(cpu) == 1 and mixed.report["cpu_reasons"] == {"fc": f"Gemm: {KEEP_FLOAT_REASON}"}
    assert mixed.report["int8_nodes"] == full.report["int8_nodes"] - 1
    assert list(mixed.qgraph.info["keep_float"]) == ["fc"]
    assert mismatches(mixed.qgraph, test) == {}
    # the logits come out of the float Gemm, not off an int8 grid
    assert "fc__q" in full.qgraph.tensors and "fc__q" not in mixed.qgraph.tensors
    out = run(mixed.quant_model, test)["fc"]
    steps = out / full.qgraph.tensors["fc__q"].scale
    assert np.mean(np.abs(steps - np.round(steps)) > 1e-3) > 0.9
    assert cosine(out, run(model, test)["fc"]) > 0.999


def test_a_kept_activation_stops_the_fusion_with_a_reason():
    model = net(0)
    relu = next(n for n in model.graph.nodes if n.op == "Relu")
    result = quantize_model(model, {"x": data(0)}, "max", keep_float=[relu.name])
    reasons = result.report["cpu_reasons"]
    assert reasons[relu.name] == f"Relu: {KEEP_FLOAT_REASON}"
    assert reasons["c1"] == (f"Conv: its int8 pattern would fuse {relu.name!r}, which is kept "
                             "in float")
    assert mismatches(result.qgraph, {"x": data(4, 2)}) == {}


def test_unknown_node_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match=r"--keep-float: no node named 'classifier'"):
        quantize_model(net(0), {"x": data(0)}, keep_float=["classifier"])


def test_kept_layers_are_neither_rounded_nor_bias_corrected():
    from compiler.core.io import load_model
    from passes.recon import NOT_INT8

    model = net(0)
    result = quantize_model(model, {"x": data(0)}, "max", keep_float=["fc"], rounding="gptq",
                            bias_correction=True)
    original = {n.name: n for n in load_model(model).graph.nodes}
    kept = next(n for n in result.float_model.graph.nodes if n.name == "fc")
    for i in (1, 2):  # weight and bias exactly as given
        np.testing.assert_array_equal(kept.inputs[i].values, original["fc"].inputs[i].values)
    assert result.report["weight_rounding_skipped"] == {"fc": NOT_INT8}
    assert set(result.report["weight_rounding"]) == {"c1", "dw", "c2"}
    conv = next(n for n in result.float_model.graph.nodes if n.name == "c2")
    assert not np.array_equal(conv.inputs[2].values, original["c2"].inputs[2].values)


def test_a_kept_conv_keeps_its_fused_activation_in_float():
    """Its raw output is never quantized: only the activation's output enters the NPU."""
    model = net(0)
    relu = next(n for n in model.graph.nodes if n.op == "Relu" and n.inputs[0].name ==
                next(c for c in model.graph.nodes if c.name == "c1").outputs[0].name)
    calib, test = {"x": data(0)}, {"x": data(4, 8)}
    result = quantize_model(model, calib, "max", keep_float=["c1"])
    reasons = result.report["cpu_reasons"]
    assert reasons == {"c1": f"Conv: {KEEP_FLOAT_REASON}",
                       relu.name: "Relu: fused with 'c1', which is kept in float"}
    conv_out = next(n for n in model.graph.nodes if n.name == "c1").outputs[0].name
    assert f"{conv_out}__q" not in result.qgraph.tensors
    assert result.qgraph.tensor(f"{relu.outputs[0].name}__q").dtype == "uint8"
    assert mismatches(result.qgraph, test) == {}
    full = quantize_model(model, calib, "max")
    ref = run(model, test)["fc"]
    assert cosine(run(result.quant_model, test)["fc"], ref) >= \
        cosine(run(full.quant_model, test)["fc"], ref) - 1e-4
