"""Partitioning that degrades: post-processing, control flow and ops without an int8 form stay
float on CPU partitions with a per-node reason; every Conv/Gemm before them is int8.

Oracles: the numpy reference of the QGraph and `model.quant.onnx` in onnxruntime agree bit
for bit on every int8 tensor and every output (`mismatches`); the QGraph round-trips
through its JSON; the float partitions compute what the float model computes.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

from compiler.core.io import load_model, to_proto
from compiler.core.numerics import cosine, run
from compiler.core.qgraph import QCpuPartition, QGraph
from passes.quantize.api import pristine_float, quantize_model
from passes.quantize.dynamic import runtime_tensors
from tests import exporter_graphs as eg
from tests.quant_helpers import feeds_for, make_model, mismatches

NO_INT8 = "{} has no int8 implementation"
NMS_REASON = "post-processing (NonMaxSuppression): output size depends on the data"
ISLAND = "between host nodes and without MACs: int8 would only add rounding"

GRAPHS = {
    "ssd_nms": (eg.ssd_nms_model, {
        "nms": NMS_REASON, "pick_box_idx": NO_INT8.format("Gather"),
        "pick_label": NO_INT8.format("Gather"), "gather_boxes": NO_INT8.format("Gather"),
        "gather_scores": NO_INT8.format("GatherND")}),
    "topk": (eg.topk_model, {"topk": NO_INT8.format("TopK"),
                             "gather_top": NO_INT8.format("Gather")}),
    "topk_dynamic_k": (lambda: eg.topk_model(dynamic_k=True), {
        "above": NO_INT8.format("Greater"), "above_cast": NO_INT8.format("Cast"),
        "count": NO_INT8.format("ReduceSum"), "count_1d": "input 'n_above' is int64, not float32",
        "k_min": NO_INT8.format("Min"), "topk": NO_INT8.format("TopK"),
        "gather_top": NO_INT8.format("Gather"),
        # a Squeeze is int8-capable, but its input's size is only known at run time
        "top_squeeze": "input 'top_boxes4' has a shape known only at run time (from TopK "
                       "'topk')"}),
    "nonzero": (eg.nonzero_model, {
        "peaks": NO_INT8.format("Greater"), "nonzero": "NonZero: output size depends on the data",
        "coords": "input 'nz' is int64, not float32", "coords_shape": NO_INT8.format("Shape"),
        "n_peaks": NO_INT8.format("Gather"), "n_peaks1": "input 'n_peaks' is int64, not float32",
        "ones_shape": "input 'n_peaks1' is int64, not float32",
        "ones": NO_INT8.format("ConstantOfShape")}),
    "control_flow": (eg.control_flow_model, {
        "feat_mean": "ReduceMean over axes other than (2, 3)",
        "bright": NO_INT8.format("Greater"), "if_bright": "control flow (If) runs on the host",
        "loop": "control flow (Loop) runs on the host"}),
    "layernorm": (lambda: eg.missing_op_model("layernorm"),
                  {"layernorm": NO_INT8.format("LayerNormalization")}),
    "einsum": (lambda: eg.missing_op_model("einsum"), {"einsum": NO_INT8.format("Einsum")}),
    "gelu": (lambda: eg.missing_op_model("gelu"),
             {"gelu": "Gelu (domain com.microsoft) has no int8 implementation"}),
    "erf_softmax": (lambda: eg.missing_op_model("erf"), {"softmax": NO_INT8.format("Softmax")}),
    "nested_control_flow": (eg.nested_control_flow_model, {
        "mean": "ReduceMean over axes other than (2, 3)", "flag": NO_INT8.format("Greater"),
        "loop": "control flow (Loop) runs on the host",
        "conv_after": "input 'acc_final' has a shape known only at run time (from Loop 'loop')"}),
    "host_tensor": (eg.host_tensor_model, {
        "softmax": NO_INT8.format("Softmax"), "pos": NO_INT8.format("Greater"),
        "nonzero": "NonZero: output size depends on the data",
        "peaks": "input 'nz' is int64, not float32", "max": NO_INT8.format("ReduceMax"),
        "gather_vals": NO_INT8.format("GatherND"), "trips": NO_INT8.format("Cast"),
        "loop": "control flow (Loop) runs on the host",
        "times4": ISLAND}),  # the Loop's trip count: an int8 Mul would round it
}
HOST_CONVS = {"conv_after"}  # after a Loop whose output shape ONNX cannot infer


@pytest.fixture(scope="module", params=sorted(GRAPHS))
def quantized(request):
    build, reasons = GRAPHS[request.param]
    proto = build()
    return proto, quantize_model(proto, feeds_for(proto, 8, seed=0)), reasons


def test_cpu_nodes_and_their_reasons(quantized):
    _, result, reasons = quantized
    cpu = {n["node"]: n["reason"] for n in result.report["nodes"] if n["qop"] == "QCpuPartition"}
    assert cpu == reasons
    assert set(result.report["cpu_reasons"]) == set(reasons)


def test_every_conv_and_gemm_is_int8(quantized):
    proto, result, _ = quantized
    weighted = {n.name for n in proto.graph.node if n.op_type in ("Conv", "Gemm")} - HOST_CONVS
    kinds = {op.name: op.kind for op in result.qgraph.ops}
    assert weighted and {kinds.get(n) for n in weighted} <= {"QConv", "QGemm"}


def test_bit_exact_and_round_trip(quantized):
    proto, result, _ = quantized
    for seed in (1, 2):
        assert mismatches(result.qgraph, feeds_for(proto, 1, seed)) == {}
    assert QGraph.from_model(load_model(to_proto(result.quant_model))) == result.qgraph


SELECTIONS = {"ssd_nms", "topk", "topk_dynamic_k", "nonzero", "host_tensor"}
"""Graphs whose outputs select by score: int8 rounding may pick other boxes or peaks."""


def test_static_outputs_keep_float_fidelity(quantized):
    proto, result, _ = quantized
    feeds = feeds_for(proto, 1, seed=3)
    ref, out = run(pristine_float(proto, result), feeds), run(result.quant_model, feeds)
    for name, value in ref.items():
        runtime = result.qgraph.tensor(name).runtime_shape
        assert runtime or value.shape == out[name].shape, name
        if proto.graph.name not in SELECTIONS and value.dtype == np.float32:
            assert cosine(value, out[name]) > 0.95, name


def _partitions(result) -> list[QCpuPartition]:
    return [op for op in result.qgraph.ops if isinstance(op, QCpuPartition)]


def test_detection_tail_is_one_host_partition():
    proto = eg.ssd_nms_model()
    result = quantize_model(proto, feeds_for(proto, 8, seed=0))
    (tail,) = _partitions(result)
    assert sorted(n.name for n in tail.nodes) == ["gather_boxes", "gather_scores", "nms",
                                                  "pick_box_idx", "pick_label"]
    assert sorted(tail.outputs) == ["det_boxes", "det_labels", "det_scores"]
    runtime = {n for n, t in result.qgraph.tensors.items() if t.runtime_shape}
    assert runtime == {"det_boxes", "det_labels", "det_scores"}
    assert result.qgraph.tensor("det_boxes").shape == (-1, 4)


def test_subgraphs_read_outer_scope_through_partition_inputs():
    proto = eg.control_flow_model()
    result = quantize_model(proto, feeds_for(proto, 8, seed=0))
    parts = _partitions(result)
    if_node = next(n for p in parts for n in p.nodes if n.op == "If")
    then = if_node.attrs["then_branch"]
    assert isinstance(then, onnx.GraphProto)
    # the branch read int8 `feat` from the outer scope: it now reads the dequantized copy,
    # which its partition takes as an input
    assert [list(n.input) for n in then.node] == [["feat__dq"], ["then_a", "then_k"]]
    owner = next(p for p in parts if if_node in p.nodes)
    assert "feat__dq" in owner.inputs
    loop = next(n for p in parts for n in p.nodes if n.op == "Loop")
    loop_owner = next(p for p in parts if loop in p.nodes)
    assert "pooled__dq" in loop_owner.inputs
    assert [list(n.input) for n in loop.attrs["body"].node][2] == ["v_half", "pooled__dq"]


def test_runtime_tensors_tell_batch_from_data_dependent_sizes():
    proto = eg.ssd_nms_model()
    for out in proto.graph.output:
        out.type.tensor_type.ClearField("shape")
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    graph = gs.import_onnx(inferred)
    graph.toposort()
    found = runtime_tensors(graph)
    assert {"selected", "box_idx", "det_boxes", "det_scores", "det_labels"} <= set(found)
    assert found["det_boxes"] == "NonMaxSuppression 'nms'"
    assert not {"feat", "boxes", "scores"} & set(found)  # [N, ...]: a dynamic batch only


def test_int8_capable_node_after_nonzero_stays_on_host():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("NonZero", ["r"], ["nz"], name="nz"),
             helper.make_node("Cast", ["nz"], ["f"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Relu", ["f"], ["y"], name="relu_after")]
    proto = make_model(nodes, {"x": [1, 4]}, ["y"])
    result = quantize_model(proto, feeds_for(proto, 4, seed=0))
    cpu = {n["node"]: n["reason"] for n in result.report["nodes"] if n["qop"] == "QCpuPartition"}
    assert cpu["relu_after"].startswith("input 'f' has a shape known only at run time")
    assert mismatches(result.qgraph, {"x": np.array([[1, -1, 2, 0]], np.float32)}) == {}


def test_symbolic_batch_sizes_computed_from_detections_are_run_time():
    proto = eg.nonzero_model()
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    for out in proto.graph.output:
        for i, dim in enumerate(out.type.tensor_type.shape.dim):
            dim.dim_param = f"{out.name}_{i}"
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(proto, data_prop=True))
    graph.toposort()
    found = runtime_tensors(graph)
    # ConstantOfShape's [?, 2] has an unknown dim 0 like a batch, but its size comes from
    # the Shape of the NonZero output: run-time
    assert {"nz", "coords", "ones"} <= set(found)
    assert found["ones"] == "NonZero 'nonzero'"
    # Shape arithmetic on ordinary tensors only carries the batch: not run-time
    assert not {"feat", "heat", "heat_shape", "batch1", "flat_shape"} & set(found)
