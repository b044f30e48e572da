"""Shared helpers of the quantization tests: tiny models and the bit-exactness oracle."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compiler.core.io import load_model, to_proto
from compiler.core.numerics import cosine, run
from compiler.core.qgraph import QGraph
from passes.quantize.api import QuantResult, pristine_float, quantize_model
from passes.quantize.emit_int import emit_int
from passes.quantize.reference import execute


def make_model(nodes, inputs: dict[str, list], outputs: list[str],
               inits: dict[str, np.ndarray] | None = None, opset: int = 17) -> onnx.ModelProto:
    """A float32 model from onnx.helper nodes; inputs name -> shape."""
    graph = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                     for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    known = {v.name: v for v in list(inferred.value_info) + list(inferred.output)}
    for out in model.graph.output:
        if out.name in known and known[out.name].type.tensor_type.HasField("shape"):
            out.CopyFrom(known[out.name])
    return model


def feeds_for(model: onnx.ModelProto, n: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded N(0,1) feeds with `n` samples for every (fixed-shape) input."""
    rng = np.random.default_rng(seed)
    out = {}
    for inp in model.graph.input:
        dims = [d.dim_value if d.dim_value > 0 else n for d in inp.type.tensor_type.shape.dim]
        dims[0] = n
        out[inp.name] = rng.standard_normal(dims).astype(np.float32)
    return out


def int8_tensors(qg: QGraph) -> list[str]:
    """Every computed int8 tensor of a QGraph."""
    return [n for n, t in qg.tensors.items() if t.is_quantized and t.data is None]


def mismatches(qg: QGraph, feeds: dict[str, np.ndarray]) -> dict[str, int]:
    """Elements differing between the numpy reference and onnxruntime, per tensor."""
    ref = execute(qg, feeds, keep_all=True)
    out = run(emit_int(qg, expose=int8_tensors(qg)), feeds)
    bad = {}
    for name, value in out.items():
        if value.shape != ref[name].shape or value.dtype != ref[name].dtype:
            bad[name] = -1
        elif not np.array_equal(value, ref[name]):
            bad[name] = int(np.sum(value != ref[name]))
    return bad


def check_quantized(model: onnx.ModelProto, *, calib: int = 8, batch: int = 1,
                    min_cos: float = 0.98, **options) -> QuantResult:
    """Quantize, then assert: 0 mismatches, lossless QGraph round trip, cosine vs float."""
    calib_feeds = feeds_for(model, calib, seed=0)
    result = quantize_model(model, calib_feeds, **options)
    test = feeds_for(model, batch, seed=1)
    assert mismatches(result.qgraph, test) == {}
    assert QGraph.from_model(load_model(to_proto(result.quant_model))) == result.qgraph
    ref, out = run(pristine_float(model, result), test), run(result.quant_model, test)
    for name in ref:
        assert cosine(ref[name], out[name]) >= min_cos, name
    return result
