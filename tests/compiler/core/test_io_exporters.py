"""Loading exporter-written graphs: IR v3 initializer inputs, old opsets, odd attributes."""

import json

import numpy as np
import onnx
import pytest

from compiler.cli import main
from compiler.core.errors import ModelLoadError
from compiler.core.io import load_model, to_proto
from compiler.core.numerics import run
from compiler.core.qonnx import detach_weights, load_lean
from tests import exporter_graphs as eg
from tests.exporter_graphs import caffe2_resnet_block, legacy_classifier, standalone_bn_model


def _ort_reference(proto: onnx.ModelProto, feeds: dict) -> dict:
    return run(proto, feeds)


def _feeds(model, seed=0):
    rng = np.random.default_rng(seed)
    return {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in model.graph.inputs}


@pytest.mark.parametrize("loader", [load_model, "lean"])
def test_ir3_initializer_inputs_load_with_the_function_kept(tmp_path, loader):
    proto = caffe2_resnet_block()
    path = tmp_path / "c2.onnx"
    onnx.save(proto, path)
    model = load_lean(path) if loader == "lean" else loader(path)
    assert [t.name for t in model.graph.inputs] == ["gpu_0/data_0"]
    feeds = _feeds(model)
    want = _ort_reference(proto, feeds)["gpu_0/softmax_1"]
    np.testing.assert_allclose(run(model, feeds)["gpu_0/softmax_1"], want, rtol=1e-5, atol=1e-5)


def test_detach_weights_does_not_list_an_initializer_input_twice():
    light, arrays = detach_weights(caffe2_resnet_block())
    names = [i.name for i in light.graph.input]
    assert len(names) == len(set(names))
    assert "gpu_0/res0_w_0" in arrays and "gpu_0/res0_w_0" in names
    onnx.checker.check_model(light)


@pytest.mark.parametrize("builder", [caffe2_resnet_block, standalone_bn_model])
def test_exporter_model_goes_through_every_command(tmp_path, capsys, builder):
    src, calib = tmp_path / "c2.onnx", tmp_path / "calib.npy"
    onnx.save(builder(), src)
    rng = np.random.default_rng(0)
    np.save(calib, rng.standard_normal((8, 3, 8, 8)).astype(np.float32))
    p, s, q, b = (str(tmp_path / n) for n in ("p.onnx", "s.onnx", "q", "m.bin"))
    steps = [["inspect", str(src)], ["groups", str(src)],
             ["quantize", str(src), "-o", str(tmp_path / "q0"), "--calib", str(calib)],
             ["prune", str(src), "-o", p, "--ratio", "0.3", "--calib", str(calib)],
             ["sparsify", p, "-o", s, "--block", "4", "--sparsity", "0.5", "--calib", str(calib)],
             ["quantize", s, "-o", q, "--calib", str(calib)],
             ["build", f"{q}/model.quant.onnx", "-o", b]]
    for argv in steps:
        assert main(argv) == 0, argv
    capsys.readouterr()
    assert main(["verify", f"{q}/model.quant.onnx", b, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["consistent"] is True
    # Every node, standalone BatchNorms included, runs on the NPU.
    assert main(["build", f"{q}/model.quant.onnx", "-o", b, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cpu_partitions"] == 0


def _check_against_original(proto: onnx.ModelProto, tol: float = 1e-5):
    """Load (opset conversion) + canonicalize; outputs equal onnxruntime on the original."""
    from passes.canonicalize import canonicalize

    model = canonicalize(load_model(proto)).model
    feeds = _feeds(model, seed=1)
    want = _ort_reference(proto, feeds)["y"]
    np.testing.assert_allclose(run(model, feeds)["y"], want, rtol=tol, atol=tol)
    return model


def _ops(model):
    return [n.op for n in model.graph.nodes]


@pytest.mark.parametrize(("opset", "mode", "scales"), [
    (7, "nearest", (1, 1, 2, 2)), (7, "linear", (1, 1, 2, 2)), (9, "nearest", (1, 1, 2, 2)),
    (9, "linear", (1, 1, 2, 2)), (9, "nearest", (1, 1, 1.5, 2.5)), (8, "linear", (1, 1, 3, 1.5)),
])
def test_upsample_becomes_resize_with_upsample_semantics(opset, mode, scales):
    model = _check_against_original(eg.upsample_model(opset, mode, scales))
    assert "Upsample" not in _ops(model) and "Resize" in _ops(model)
    assert "up" in [n.name for n in model.graph.nodes]


@pytest.mark.parametrize("opset", [7, 8])
@pytest.mark.parametrize("spatial", [0, 1])
def test_batchnorm_with_spatial_attribute(opset, spatial):
    model = _check_against_original(eg.spatial_bn_model(opset, spatial))
    assert "BatchNormalization" not in _ops(model)


@pytest.mark.parametrize(("opset", "lo", "hi"), [
    (9, 0, 6), (9, None, 6), (9, -1, None), (10, 0, 6), (11, 0, 6), (11, None, 6),
    (13, 0, None), (13, None, None), (17, -0.5, 0.5),
])
def test_clip_bounds_as_attributes_or_inputs(opset, lo, hi):
    model = _check_against_original(eg.clip_model(opset, lo, hi))
    clip = next(n for n in model.graph.nodes if n.op == "Clip")
    assert clip.name == "clip"


@pytest.mark.parametrize(("opset", "with_mask"), [(7, False), (9, True), (10, False),
                                                  (12, False), (13, True)])
def test_inference_dropout_is_dropped(opset, with_mask):
    model = _check_against_original(eg.dropout_model(opset, with_mask))
    assert "Dropout" not in _ops(model)


@pytest.mark.parametrize("op", ["Sum", "Mean"])
@pytest.mark.parametrize("opset", [7, 8, 13])
def test_sum_and_mean_of_n_inputs(op, opset):
    model = _check_against_original(eg.variadic_model(op, opset, n=4))
    assert op not in _ops(model)


def test_unconvertible_node_is_named_in_one_line():
    proto = eg.spatial_bn_model(8, 0)
    proto.graph.initializer.pop()  # statistics no longer constant: cannot be rewritten
    proto.graph.input.append(onnx.helper.make_tensor_value_info("bn_riv", 1, [4, 3, 3]))
    pattern = r"<ModelProto>: node 'bn' \(BatchNormalization\): spatial=0"
    with pytest.raises(ModelLoadError, match=pattern) as info:
        load_model(proto)
    assert "\n" not in str(info.value)


def test_converter_failure_names_the_node(monkeypatch):
    from compiler.core import opset

    monkeypatch.setattr(opset, "_rewrite_unconvertible", lambda proto, label: None)
    with pytest.raises(ModelLoadError, match=r"cannot convert opset 8 to 17: node 'bn' "
                                             r"\(BatchNormalization\): .*spatial") as info:
        load_model(eg.spatial_bn_model(8, 0))
    assert "\n" not in str(info.value)


def test_converted_node_names_stay_unique():
    from tests.conftest import light_path

    model = load_model(light_path("squeezenet"))  # opset 9: Softmax expands on conversion
    names = [n.name for n in model.graph.nodes if n.name]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("opset", [1, 3, 5, 6, 7, 22, onnx.defs.onnx_opset_version()])
def test_oldest_and_newest_opsets_load_with_the_function_kept(opset):
    # The opset-9 spelling is the reference every other one must compute.
    reference = load_model(legacy_classifier(9))
    model = load_model(legacy_classifier(opset))
    assert model.opset == 17 and [n.op for n in model.nodes] == [n.op for n in reference.nodes]
    feeds = {"x": np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    np.testing.assert_array_equal(run(to_proto(model), feeds)["y"],
                                  run(to_proto(reference), feeds)["y"])


def test_inputs_no_node_reads_are_dropped_but_subgraph_reads_are_kept():
    from onnx import helper

    vi = lambda n: helper.make_tensor_value_info(n, 1, [1, 3])  # noqa: E731
    then = helper.make_graph([helper.make_node("Relu", ["z"], ["t"])], "then", [], [vi("t")])
    other = helper.make_graph([helper.make_node("Neg", ["z"], ["e"])], "else", [], [vi("e")])
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("ReduceMax", ["r"], ["m"], keepdims=0),
             helper.make_node("Greater", ["m", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    zero = onnx.numpy_helper.from_array(np.array(0, np.float32), "zero")
    graph = helper.make_graph(nodes, "g", [vi("x"), vi("z"), vi("leftover")], [vi("y")], [zero])
    model = load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [t.name for t in model.graph.inputs] == ["x", "z"]
