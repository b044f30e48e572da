"""Model interfaces exporters write besides one float32 NCHW input of batch 1, end to end.

float16 models (torch `.half()` exports), a fixed batch larger than 1, a raw uint8 image input
(a Cast in the graph, as TFLite-converted models have) and two image inputs: each goes through
quantize, build, verify (bit for bit), run and compile, with its interface kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.core.errors import DataError
from compiler.core.float16 import upcast_half
from targets.npusim import Simulator
from tests.test_field_corpus import _cli

RNG = np.random.default_rng(7)


def _w(name: str, shape: tuple, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array((RNG.standard_normal(shape) * 0.3).astype(dtype), name)


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _classifier(x: str, batch: int, dtype=np.float32, elem=TensorProto.FLOAT) -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", [x, "w0", "b0"], ["c0"], name="c0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("GlobalAveragePool", ["r1"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    inits = [_w("w0", (8, 3, 3, 3), dtype), _w("b0", (8,), dtype), _w("w1", (16, 8, 3, 3), dtype),
             _w("b1", (16,), dtype), _w("fw", (10, 16), dtype), _w("fb", (10,), dtype)]
    return _model(nodes, [helper.make_tensor_value_info(x, elem, [batch, 3, 12, 12])],
                  [helper.make_tensor_value_info("y", elem, [batch, 10])], inits)


def _uint8_image_model() -> onnx.ModelProto:
    """uint8 NHWC image -> Cast -> /255 -> Transpose -> conv net -> (class id, probabilities)."""
    nodes = [helper.make_node("Cast", ["img"], ["xf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Div", ["xf", "k255"], ["xn"], name="scale"),
             helper.make_node("Transpose", ["xn"], ["x"], name="nchw", perm=[0, 3, 1, 2])]
    body = _classifier("x", 1)
    nodes += list(body.graph.node) + [
        helper.make_node("ArgMax", ["y"], ["cls"], name="argmax", axis=1, keepdims=0),
        helper.make_node("Softmax", ["y"], ["prob"], name="softmax", axis=1)]
    inits = list(body.graph.initializer) + [numpy_helper.from_array(np.float32(255), "k255")]
    return _model(nodes, [helper.make_tensor_value_info("img", TensorProto.UINT8, [1, 12, 12, 3])],
                  [helper.make_tensor_value_info("cls", TensorProto.INT64, [1]),
                   helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 10])], inits)


def _two_input_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["a", "wa"], ["ca"], name="ca", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["b", "wb"], ["cb"], name="cb", pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["ca", "cb"], ["cat"], name="cat", axis=1),
             helper.make_node("Relu", ["cat"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "wf"], ["y"], name="fuse")]
    return _model(nodes, [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3, 12, 12]),
                          helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 1, 12, 12])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 12, 12])],
                  [_w("wa", (8, 3, 3, 3)), _w("wb", (8, 1, 3, 3)), _w("wf", (4, 16, 1, 1))])


def _quantize_build_verify(tmp_path: Path, model: onnx.ModelProto, feeds: dict) -> Path:
    """quantize, build and verify through the CLI; the verify must be bit-exact."""
    src, calib = tmp_path / "m.onnx", tmp_path / "calib.npz"
    onnx.save(model, src)
    np.savez(calib, **feeds)
    assert _cli(["quantize", src, "-o", tmp_path / "q", "--calib", calib])[0] == 0
    quant = tmp_path / "q" / "model.quant.onnx"
    assert _cli(["build", quant, "-o", tmp_path / "m.bin"])[0] == 0
    code, out = _cli(["verify", quant, tmp_path / "m.bin", "--inputs", calib])
    assert code == 0 and out["consistent"], out
    assert sum(o["mismatched"] for o in out["outputs"]) == 0
    return quant


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_upcast_keeps_the_half_interface_and_the_function():
    model = _classifier("x", 1, np.float16, TensorProto.FLOAT16)
    x = RNG.standard_normal((1, 3, 12, 12)).astype(np.float16)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    up = onnx.ModelProto()
    up.CopyFrom(model)
    assert upcast_half(up) == ["x", "y"]
    assert all(t.data_type == TensorProto.FLOAT for t in up.graph.initializer)
    assert up.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert up.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert [n.op_type for n in up.graph.node][0] == "Cast"
    assert [n.op_type for n in up.graph.node][-1] == "Cast"
    got = ort.InferenceSession(up.SerializeToString()).run(None, {"x": x})[0]
    assert got.dtype == np.float16 and got.shape == (1, 10)
    # same weights, finer intermediate rounding: within float16's resolution of the outputs
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32),
                               atol=4e-3 * float(np.abs(want).max()) + 1e-3)
    assert upcast_half(up) is None  # already float32 inside: nothing to do


def test_float16_model_compiles_to_a_binary_with_float16_io(tmp_path):
    model = _classifier("x", 1, np.float16, TensorProto.FLOAT16)
    x = RNG.standard_normal((16, 3, 12, 12)).astype(np.float16)
    quant = _quantize_build_verify(tmp_path, model, {"x": x})
    q = onnx.load(str(quant))
    assert q.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert q.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    data = (tmp_path / "m.bin").read_bytes()
    assert tuple(np.frombuffer(data, "<u2", 2, 4)) == (2, 2)  # float16 tensors: format 2.2
    sim = Simulator(tmp_path / "m.bin")
    got = sim.run({"x": x})["y"]
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x[:1]})[0]
    assert got.dtype == np.float16 and got.shape == (16, 10)
    assert _cosine(got[:1], ref) > 0.99
    # the float16 model is quantized, not left on the CPU: only the two boundary casts are
    code, out = _cli(["compile", tmp_path / "m.onnx", "-o", tmp_path / "c", "--calib",
                      tmp_path / "calib.npz", "--quiet"])
    assert code == 0, out


def test_fixed_batch_of_four_runs_whole_frames(tmp_path):
    model = _classifier("x", 4)
    x = RNG.standard_normal((8, 3, 12, 12)).astype(np.float32)
    quant = _quantize_build_verify(tmp_path, model, {"x": x})
    sim = Simulator(tmp_path / "m.bin")
    assert sim.frame_batch == 4
    code, perf = _cli(["perf", tmp_path / "m.bin"])
    assert code == 0 and perf["batch"] == 4 and perf["fps"] == pytest.approx(
        4e3 / perf["latency_ms"], rel=1e-3)  # samples per second: 4 per frame
    got = sim.run({"x": x})["y"]
    sess = ort.InferenceSession(str(quant))
    want = np.concatenate([sess.run(None, {"x": x[i:i + 4]})[0] for i in (0, 4)])
    np.testing.assert_array_equal(got, want)  # each frame is 4 distinct samples
    with pytest.raises(DataError, match="fixed batch of 4"):
        sim.run({"x": x[:6]})
    np.savez(tmp_path / "six.npz", x=x[:6])
    code, out = _cli(["verify", quant, tmp_path / "m.bin", "--inputs", tmp_path / "six.npz"])
    assert code == 0 and out["samples"] == 4 and "do not fill" in out["notes"][0]
    code, out = _cli(["compile", tmp_path / "m.onnx", "-o", tmp_path / "c", "--calib",
                      tmp_path / "calib.npz", "--quiet"])
    assert code == 0, out


def test_uint8_image_input_reaches_the_npu_as_is(tmp_path):
    model = _uint8_image_model()
    img = RNG.integers(0, 256, (8, 12, 12, 3)).astype(np.uint8)
    quant = _quantize_build_verify(tmp_path, model, {"img": img})
    qdq = onnx.load(str(tmp_path / "q" / "model.qdq.onnx"))
    assert qdq.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    out = ort.InferenceSession(qdq.SerializeToString()).run(None, {"img": img[:1]})
    assert out[0].dtype == np.int64 and out[1].shape == (1, 10)
    sim = Simulator(tmp_path / "m.bin")
    got = sim.run({"img": img})
    ref = ort.InferenceSession(model.SerializeToString())
    want = np.concatenate([ref.run(None, {"img": img[i:i + 1]})[1] for i in range(8)])
    assert _cosine(got["prob"], want) > 0.99
    code, out = _cli(["compile", tmp_path / "m.onnx", "-o", tmp_path / "c", "--calib",
                      tmp_path / "calib.npz", "--quiet"])
    assert code == 0, out
    del quant


def test_two_input_model_compiles_with_eval_skipped(tmp_path):
    model = _two_input_model()
    feeds = {"a": RNG.standard_normal((8, 3, 12, 12)).astype(np.float32),
             "b": RNG.standard_normal((8, 1, 12, 12)).astype(np.float32)}
    _quantize_build_verify(tmp_path, model, feeds)
    code, out = _cli(["compile", tmp_path / "m.onnx", "-o", tmp_path / "c", "--calib",
                      tmp_path / "calib.npz", "--quiet"])
    assert code == 0, out
    assert (tmp_path / "c" / "model.bin").is_file()


def test_bfloat16_model_is_computed_and_fed_in_float32(tmp_path):
    """numpy has no bfloat16: the inputs and outputs become float32 too."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    model = _classifier("x", 1)
    for t in model.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(ml_dtypes.bfloat16),
                                           t.name))
    for v in [*model.graph.input, *model.graph.output]:
        v.type.tensor_type.elem_type = TensorProto.BFLOAT16
    up = onnx.ModelProto()
    up.CopyFrom(model)
    assert upcast_half(up) == []
    assert up.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert "Cast" not in [n.op_type for n in up.graph.node]
    x = RNG.standard_normal((8, 3, 12, 12)).astype(np.float32)
    quant = _quantize_build_verify(tmp_path, model, {"x": x})
    assert onnx.load(str(quant)).graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT


def _dynamic_hw_classifier() -> onnx.ModelProto:
    model = _classifier("x", 1)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_param, dims[2].dim_param, dims[3].dim_param = "N", "H", "W"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    return model


def test_data_shapes_fill_only_symbolic_dims_past_the_batch():
    from compiler.core.io import bind_input_shapes
    from compiler.core.shapes import DataShapes

    def bound(spec, model=None):
        proto = model or _dynamic_hw_classifier()
        bind_input_shapes(proto, DataShapes(spec), "m")
        return [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]

    assert bound({"": (6, 3, 20, 24)}) == [1, 3, 20, 24]  # batch: the usual default
    assert bound({"x": (6, 3, 20, 24), "labels": (6,)}) == [1, 3, 20, 24]
    assert bound({"images": (6, 3, 20, 24), "labels": (6,)}) == [1, 3, 20, 24]
    assert bound({"": (6, 5, 20, 24)}) == [1, 3, 20, 24]  # a fixed dim is never overridden
    fixed = _classifier("x", 1)
    assert bound({"": (6, 3, 20, 24)}, fixed) == [1, 3, 12, 12]
    with pytest.raises(Exception, match="--input-shape"):  # rank 3 data: no hint, the error
        bound({"": (6, 20, 24)})


def test_dynamic_height_and_width_come_from_the_calibration_file(tmp_path):
    src, calib = tmp_path / "m.onnx", tmp_path / "calib.npy"
    onnx.save(_dynamic_hw_classifier(), src)
    np.save(calib, RNG.standard_normal((8, 3, 20, 24)).astype(np.float32))
    assert _cli(["inspect", src])[0] == 2  # nothing to take the size from: one-line error
    assert _cli(["quantize", src, "-o", tmp_path / "q", "--calib", calib])[0] == 0
    quant = onnx.load(str(tmp_path / "q" / "model.quant.onnx"))
    assert [d.dim_value for d in quant.graph.input[0].type.tensor_type.shape.dim] == \
        [1, 3, 20, 24]
    code, out = _cli(["compare", src, tmp_path / "q" / "model.quant.onnx", "--calib", calib])
    assert code == 0 and out["outputs"][0]["cosine"] > 0.99
    code, out = _cli(["compile", src, "-o", tmp_path / "c", "--calib", calib, "--quiet"])
    assert code == 0, out
