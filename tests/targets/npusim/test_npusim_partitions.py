"""Graphs that keep their post-processing, control flow or an op the NPU lacks: every one
builds, the simulator equals model.quant.onnx bit for bit (frame by frame, outputs of
data-dependent size included), and the fraction of MACs on the NPU is the hand-computed one.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import onnx
import pytest

from compiler.core.checked_save import save_checked
from compiler.core.errors import DataError, TargetError
from compiler.core.numerics import run
from passes.quantize.api import quantize_model
from targets.npusim import Simulator, build_binary, estimate_perf, load_binary, verify
from targets.npusim.check import check_program
from targets.npusim.container import ENTRY, HEADER, Section
from targets.npusim.isa import RUNTIME_DIM, Program, Tensor
from targets.npusim.macs import MacSplit
from targets.npusim.testing import random_inputs
from tests import exporter_graphs as eg

BACKBONE = eg.BACKBONE_MACS  # 16·16·8·3·9 + 8·8·8·8·9 = 92,160
TAIL = 8 * 8 * 8 * 8 * 9 + 8 * 8 * 4 * 8  # missing_op_model: Conv 3x3 8->8 + Conv 1x1 8->4
EINSUM = 1 * 8 * 8 * 8 * 8  # nchw,dc->ndhw: one MAC per (n, c, h, w, d)

# graph -> (builder, NPU MACs, CPU MACs, ops of each CPU partition)
GRAPHS = {
    "ssd_nms": (eg.ssd_nms_model, BACKBONE + 64 * 8 * 4 + 64 * 8 * 3, 0,
                [["NonMaxSuppression", "Gather", "GatherND"]]),
    "topk": (eg.topk_model, BACKBONE + 64 * 8 * 4 + 64 * 8, 0, [["TopK", "Gather"]]),
    "topk_dynamic_k": (lambda: eg.topk_model(dynamic_k=True), BACKBONE + 64 * 8 * 4 + 64 * 8, 0,
                       [["Greater", "Cast", "ReduceSum", "Reshape", "..."]]),
    "nonzero": (eg.nonzero_model, BACKBONE + 64 * 8 + 8 * 64 * 5, 0,
                [["Greater", "NonZero", "Transpose", "Shape", "..."]]),
    "clip_boxes": (eg.clip_boxes_model, BACKBONE + 64 * 8 * 4 + 64 * 8, 0,
                   [["Greater", "NonZero", "Squeeze", "Gather", "..."]]),
    "control_flow": (eg.control_flow_model, BACKBONE + 64 * 8 * 4, 0,
                     [["ReduceMean", "Greater", "If"], ["Loop"]]),
    "layernorm": (lambda: eg.missing_op_model("layernorm"), BACKBONE + TAIL, 0,
                  [["LayerNormalization"]]),
    "einsum": (lambda: eg.missing_op_model("einsum"), BACKBONE + TAIL, EINSUM, [["Einsum"]]),
    "gelu": (lambda: eg.missing_op_model("gelu"), BACKBONE + TAIL, 0, [["Gelu"]]),
    "erf_softmax": (lambda: eg.missing_op_model("erf"), BACKBONE + TAIL, 0, [["Softmax"]]),
    # the Conv after the Loop has an input of run-time shape: 64·8·4 float MACs on the host
    "nested_control_flow": (eg.nested_control_flow_model, BACKBONE, 64 * 8 * 4,
                            [["ReduceMean", "Greater", "Loop", "Conv"]]),
    "host_tensor": (eg.host_tensor_model, BACKBONE + 64 * 8 * 8, 0,
                    [["Softmax", "Greater", "ReduceMax", "NonZero", "..."], ["GatherND"]]),
}
HOST_CONVS = {"conv_after"}


@pytest.fixture(scope="module", params=sorted(GRAPHS))
def built(request):
    build, npu, cpu, ops = GRAPHS[request.param]
    proto = build()
    quant = quantize_model(proto, random_inputs(proto, 8, 0)).quant_model
    return request.param, proto, quant, build_binary(quant), (npu, cpu, ops)


def test_verify_is_bit_exact(built):
    _, proto, quant, result, _ = built
    report = verify(quant, result.data, random_inputs(proto, 3, 1))
    assert report.consistent and report.samples == 3
    for out in report.outputs:
        assert out["mismatched"] == 0 and out["max_abs"] == 0.0, out
    assert sum(o["elements"] for o in report.outputs) > 0


def test_verify_reads_model_quant_onnx_with_an_empty_level(tmp_path):
    # As `npuc verify` does: model.quant.onnx is loaded from disk (shapes inferred, the
    # data-dependent K named), and its empty pyramid level runs in the reference session.
    proto = eg.clip_boxes_model()
    quant = quantize_model(proto, random_inputs(proto, 8, 0)).quant_model
    path = save_checked(quant, tmp_path / "model.quant.onnx")
    feeds = random_inputs(proto, 3, 1)
    report = verify(path, build_binary(quant).data, feeds)
    assert report.consistent and report.samples == 3
    boxes = next(o for o in report.outputs if o["name"] == "det_boxes")
    kept = sum(int((run(quant, {"x": feeds["x"][f:f + 1]})["scores"] > 0.5).sum())
               for f in range(3))
    assert boxes["elements"] == 4 * kept > 0 and boxes["mismatched"] == 0


def test_simulator_equals_onnxruntime_frame_by_frame(built):
    _, proto, quant, result, _ = built
    sim, feeds = Simulator(result.data), random_inputs(proto, 3, 2)
    for f, got in enumerate(sim.run_frames(feeds)):
        want = run(quant, {n: a[f:f + 1] for n, a in feeds.items()})
        assert got.keys() == want.keys()
        for name, value in want.items():
            assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
            np.testing.assert_array_equal(got[name], value)


def test_npu_mac_fraction_is_hand_computed(built):
    _, _, _, result, (npu, cpu, ops) = built
    macs = result.macs
    assert (macs.npu_macs, macs.cpu_macs) == (npu, cpu)
    assert result.summary()["npu_mac_fraction"] == pytest.approx(npu / (npu + cpu), abs=1e-6)
    shown = [r["ops"][:4] + (["..."] if len(r["ops"]) > 4 else []) for r in macs.partitions]
    assert shown == ops
    assert result.cpu_partitions == len(ops)
    perf = estimate_perf(result.data)
    assert perf.npu_mac_fraction == macs.fraction
    assert perf.to_dict()["npu_mac_fraction"] == round(macs.fraction, 6)
    # the unsaved program (a CPU partition's blob has raw bytes only) prices the same
    assert estimate_perf(result.program).latency_ms == pytest.approx(perf.latency_ms, rel=1e-9)


def test_every_conv_and_gemm_runs_on_the_npu(built):
    _, proto, _, result, _ = built
    units = {p["node"]: p["unit"] for p in result.placement}
    weighted = [n.name for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    assert weighted and {units[n] for n in weighted if n not in HOST_CONVS} == {"NPU"}


def test_einsum_fraction_and_line():
    proto = eg.missing_op_model("einsum")
    result = build_binary(quantize_model(proto, random_inputs(proto, 4, 0)).quant_model)
    assert result.macs.fraction == pytest.approx(131072 / 135168)
    assert result.macs.line() == "MACs on NPU: 97.0% (1 CPU partition: Einsum)"


def test_float_conv_kept_on_cpu_counts_as_cpu_macs():
    proto = eg.missing_op_model("layernorm")
    quant = quantize_model(proto, random_inputs(proto, 4, 0),
                           keep_float=["tail_conv1"]).quant_model
    macs = build_binary(quant).macs
    assert (macs.npu_macs, macs.cpu_macs) == (BACKBONE + TAIL - 2048, 2048)
    assert macs.fraction == pytest.approx(129024 / 131072)


@pytest.fixture(scope="module")
def ssd():
    proto = eg.ssd_nms_model()
    quant = quantize_model(proto, random_inputs(proto, 8, 0)).quant_model
    return proto, quant, build_binary(quant)


def test_detections_are_host_tensors(ssd):
    _, _, result = ssd
    program = load_binary(result.data)
    host = {t.name: t for t in program.tensors if t.runtime}
    assert set(host) == {"det_boxes", "det_scores", "det_labels"}
    assert host["det_boxes"].shape == (RUNTIME_DIM, 4) and host["det_labels"].dtype == "int64"
    assert all(t.nbytes == 0 and t.offset == 0 and t.region == "output" for t in host.values())
    assert struct.unpack_from("<HH", result.data, 4) == (2, 0)


def test_detection_count_varies_per_frame_and_joins(ssd):
    proto, _, result = ssd
    sim = Simulator(result.data)
    feeds = random_inputs(proto, 4, 5)
    frames = sim.run_frames(feeds)
    counts = [f["det_boxes"].shape[0] for f in frames]
    assert len(set(counts)) > 1
    joined = sim.run(feeds)
    assert joined["det_boxes"].shape == (sum(counts), 4)


def test_ragged_outputs_cannot_be_joined():
    proto = eg.topk_model(dynamic_k=True)
    result = build_binary(quantize_model(proto, random_inputs(proto, 8, 0)).quant_model)
    sim = Simulator(result.data)
    feeds = random_inputs(proto, 4, 1)
    ks = {f["top_scores"].shape for f in sim.run_frames(feeds)}
    assert len(ks) > 1
    with pytest.raises(DataError, match="differs between frames"):
        sim.run(feeds)


def _with_version(data: bytes, major: int, minor: int) -> bytes:
    head = bytearray(data[:HEADER.size])
    struct.pack_into("<HH", head, 4, major, minor)
    table = data[HEADER.size:HEADER.size + ENTRY.size * len(Section)]
    struct.pack_into("<I", head, HEADER.size - 4, zlib.crc32(bytes(head[:-4]) + table))
    return bytes(head) + data[HEADER.size:]


def test_version_one_binaries_still_load_and_three_is_refused():
    proto = eg.missing_op_model("layernorm")
    data = build_binary(quantize_model(proto, random_inputs(proto, 4, 0)).quant_model).data
    assert len(load_binary(_with_version(data, 1, 0)).code) == len(load_binary(data).code)
    with pytest.raises(TargetError, match="unsupported format version 3.0"):
        load_binary(_with_version(data, 3, 0))


def test_only_cpu_calls_touch_host_tensors(ssd):
    _, _, result = ssd
    p = load_binary(result.data)
    dq = next(i for i in p.code if i.kind == "dequantize")  # float32, read by the cpu_call
    t = p.tensors[dq.ofm]
    tensors = list(p.tensors)
    tensors[dq.ofm] = Tensor(t.name, (RUNTIME_DIM,) + t.shape[1:], t.dtype, t.scale, 0,
                               t.region, t.blob)
    broken = Program(tuple(tensors), p.blobs, p.code, p.inputs, p.outputs, p.arena_size,
                     p.metadata)
    with pytest.raises(TargetError, match="run-time shape; only a cpu_call may use it"):
        check_program(broken)


def test_conv_inside_a_loop_body_is_reported_uncounted():
    rng = np.random.default_rng(0)
    inits, nodes = eg._backbone(rng)
    body = eg._loop_graph("body", [onnx.helper.make_node(
        "Conv", ["v", "body_w"], ["v_out"], name="body_conv", kernel_shape=[1, 1])],
        [("v", "v_out", [1, 8, 8, 8])])
    inits += [eg._i64("trips", 2), eg._init(rng, "body_w", (8, 8, 1, 1))]
    nodes.append(onnx.helper.make_node("Loop", ["trips", "", "feat"], ["y"], body=body,
                                       name="loop"))
    proto = eg._graph_model(nodes, "loop_conv", inits, [eg._vi("y", [1, 8, 8, 8])])
    macs = build_binary(quantize_model(proto, random_inputs(proto, 4, 0)).quant_model).macs
    assert (macs.npu_macs, macs.cpu_macs, macs.uncounted) == (BACKBONE, 0, ["body_conv"])
    assert macs.line() == ("MACs on NPU: 100.0% (1 CPU partition: Loop; not counted: 1 CPU "
                           "layer(s) of run-time size or inside If/Loop bodies (body_conv))")


def test_mac_line_stays_short_and_honest():
    many = MacSplit(99_990, 10, [{"ops": ["ReduceMean"], "macs": 0}] * 8 + [
        {"ops": ["A", "B", "C", "D", "E"], "macs": 10}])
    assert many.percent == "99.990%"  # not "100.0%" while the host has MACs
    assert many.line() == ("MACs on NPU: 99.990% (9 CPU partitions: ReduceMean; ReduceMean; "
                           "ReduceMean; ReduceMean; ReduceMean; ReduceMean; ... 3 more)")
    assert MacSplit(0, 0).line() == "MACs on NPU: 100.0% (no CPU partitions)"
    assert MacSplit(1, 3, [{"ops": ["A", "B", "C", "D", "E"], "macs": 3}]).line() == \
        "MACs on NPU: 25.0% (1 CPU partition: A, B, C, D, ...)"


def test_nms_host_time_counts_its_overlap_tests(ssd):
    _, _, result = ssd
    from compiler.core.cost import model_cost
    from compiler.core.io import load_model, parse_proto

    p = load_binary(result.data)
    call = next(i for i in p.code if i.kind == "cpu_call")
    cost = model_cost(load_model(parse_proto(p.blobs[call.partition].raw, "nms")))
    nms = next(n for n in cost.nodes if n.op == "NonMaxSuppression")
    assert (nms.ops, nms.params) == (1 * 3 * 64 * (6 + 5), 0)  # 64 boxes, 3 classes, 5 kept
    layer = next(r for r in estimate_perf(p).layers if r["kind"] == "cpu_call")
    # inputs (boxes, scores, squeezed boxes) and outputs (one row each: run-time dims count
    # as 1) through the call, plus the outputs written once more
    elements = (64 * 4 + 3 * 64 + 64 * 4 + (4 + 1 + 1)) + (4 + 1 + 1)
    flops = 8 * elements + 16 * nms.ops
    assert layer["host_us"] == round(flops / 8e9 * 1e6, 2)
