"""Binding the user's input shapes at load (`--input-shape`, config `input.shape`)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.core.cost import model_cost
from compiler.core.errors import ConfigError
from compiler.core.io import load_model
from compiler.core.qonnx import load_lean
from compiler.core.shapes import parse_input_shapes
from compiler.driver.config import load_config, step_options


def symbolic_net(dims=("N", 3, "H", "W"), name: str = "x") -> onnx.ModelProto:
    """Conv(3->8, 3x3) - Relu - Conv(8->16, 3x3, stride 2) - Relu - GAP - Flatten - Gemm(16->10)."""
    rng = np.random.default_rng(0)

    def init(shape, tag):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), tag)

    nodes = [
        helper.make_node("Conv", [name, "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1],
                         strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
    ]
    inits = [init((8, 3, 3, 3), "w1"), init(8, "b1"), init((16, 8, 3, 3), "w2"), init(16, "b2"),
             init((10, 16), "fw"), init(10, "fb")]
    graph = helper.make_graph(
        nodes, "symbolic_net", [helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dims[0], 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def expected_macs(h: int, w: int) -> int:
    """By hand: conv1 at h x w, conv2 at ceil(h/2) x ceil(w/2), Gemm 16x10 (per image)."""
    conv1 = h * w * 8 * (3 * 3 * 3)
    conv2 = ((h + 1) // 2) * ((w + 1) // 2) * 16 * (8 * 3 * 3)
    return conv1 + conv2 + 16 * 10


def two_input_net() -> onnx.ModelProto:
    """y = a + b, both [N, 4, H, W]."""
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 4, "H", "W"])
              for n in ("a", "b")]
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"], name="add")], "two",
                              inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                     ["N", 4, "H", "W"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _input_shape(model, name="x"):
    return next(t.shape for t in model.graph.inputs if t.name == name)


# -- parsing -----------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("x:1x3x224x224", {"x": (1, 3, 224, 224)}),
    ("1x3x224x224", {"": (1, 3, 224, 224)}),
    (" a:1x4X8x8 , b:1x4x8x8", {"a": (1, 4, 8, 8), "b": (1, 4, 8, 8)}),
    (["a:1x4", "b:2x4"], {"a": (1, 4), "b": (2, 4)}),
    ([1, 3, 8, 8], {"": (1, 3, 8, 8)}),
    ({"x": [1, 3, 8, 8]}, {"x": (1, 3, 8, 8)}),
    ({"x": "1x3x8x8"}, {"x": (1, 3, 8, 8)}),
    ("input:0:1x3x8x8", {"input:0": (1, 3, 8, 8)}),  # TF-style names keep their colon
    (None, {}),
])
def test_parse_accepts_every_documented_form(value, expected):
    assert parse_input_shapes(value) == expected


@pytest.mark.parametrize("value, match", [
    ("x:1x3x0x8", "every dim must be positive"),
    ("x:1x-3x8x8", "every dim must be positive"),
    ("x:1x3xHx8", "dims must be integers"),
    ("x:1x3x8x8,x:1x3x4x4", "given twice"),
    (["1x3x8x8", "y:1x3"], "only for a single-input model"),
    ({"x": [1, 2.5]}, "list of integers"),
    (7, "expected NAME:1x3x224x224"),
])
def test_parse_rejects_bad_specs_in_one_line(value, match):
    with pytest.raises(ConfigError, match=match) as info:
        parse_input_shapes(value)
    assert "\n" not in str(info.value)


# -- binding at load -----------------------------------------------------------------------

def test_named_shape_binds_every_tensor_and_gives_exact_macs():
    model = load_model(symbolic_net(), input_shapes="x:1x3x12x20")
    assert _input_shape(model) == [1, 3, 12, 20]
    shapes = {n: t.shape for n, t in model.graph.tensors().items()}
    assert shapes["c2"] == [1, 16, 6, 10] and shapes["y"] == [1, 10]
    assert all(s is not None and all(isinstance(d, int) for d in s) for s in shapes.values())
    assert model_cost(model).macs == expected_macs(12, 20) == 51840 + 69120 + 160


def test_bare_shape_dict_and_odd_sizes_bind_the_only_input():
    for spec in ("1x3x7x9", [1, 3, 7, 9], {"x": [1, 3, 7, 9]}):
        model = load_model(symbolic_net(), input_shapes=spec)
        assert _input_shape(model) == [1, 3, 7, 9]
        assert model_cost(model).macs == expected_macs(7, 9)


def test_batch_given_by_the_user_scales_the_macs():
    model = load_model(symbolic_net(), input_shapes="x:2x3x8x8")
    assert _input_shape(model)[0] == 2
    assert model_cost(model).macs == 2 * expected_macs(8, 8)


def test_without_a_shape_a_symbolic_batch_becomes_one():
    model = load_model(symbolic_net(("N", 3, 8, 8)), bind=True)
    assert _input_shape(model) == [1, 3, 8, 8]
    assert model_cost(model).macs == expected_macs(8, 8)


def test_without_bind_symbolic_dims_are_kept():
    model = load_model(symbolic_net())
    assert _input_shape(model) == ["N", 3, "H", "W"]


def test_symbolic_height_without_a_shape_names_input_dim_and_flag():
    with pytest.raises(ConfigError) as info:
        load_model(symbolic_net(), bind=True)
    message = str(info.value)
    assert "\n" not in message
    for part in ("input 'x'", "symbolic dim 2", "'H'", "--input-shape x:1x3xHxW",
                 "input.shape"):
        assert part in message, (part, message)


@pytest.mark.parametrize("spec, parts", [
    ("z:1x3x8x8", ["--input-shape z:1x3x8x8", "no input 'z'", "inputs: x"]),
    ("x:1x3x8", ["--input-shape x:1x3x8", "input 'x'", "rank 4", "Nx3xHxW", "not 3"]),
    ("x:1x4x8x8", ["--input-shape x:1x4x8x8", "dim 1 of input 'x' is fixed at 3"]),
    ("x:1x3x0x8", ["--input-shape", "every dim must be positive"]),
])
def test_bad_specs_are_one_line_errors_naming_flag_and_input(spec, parts):
    with pytest.raises(ConfigError) as info:
        load_model(symbolic_net(), input_shapes=spec)
    message = str(info.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)


def test_fixed_batch_conflict_is_an_error():
    with pytest.raises(ConfigError, match="dim 0 of input 'x' is fixed at 1"):
        load_model(symbolic_net((1, 3, "H", "W")), input_shapes="x:4x3x8x8")


def test_bare_shape_on_a_two_input_model_asks_for_names():
    with pytest.raises(ConfigError, match=r"has 2 inputs \(a, b\); name it, e.g. "
                                          r"--input-shape a:1x4x8x8"):
        load_model(two_input_net(), input_shapes="1x4x8x8")
    model = load_model(two_input_net(), input_shapes=["a:1x4x8x8", "b:1x4x8x8"])
    assert _input_shape(model, "a") == _input_shape(model, "b") == [1, 4, 8, 8]
    with pytest.raises(ConfigError, match="input 'b'.*symbolic dim 2"):
        load_model(two_input_net(), input_shapes="a:1x4x8x8")


def test_inputs_are_never_modified(tmp_path):
    proto = symbolic_net()
    before = proto.SerializeToString()
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    on_disk = path.read_bytes()
    load_model(proto, input_shapes="x:1x3x8x8")
    load_model(path, input_shapes="x:1x3x8x8")
    load_lean(path, input_shapes="1x3x8x8", bind=True)
    assert proto.SerializeToString() == before
    assert path.read_bytes() == on_disk


def test_lean_load_binds_with_detached_weights(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(symbolic_net(), path)  # w2 (4.6 kB) is detached while normalizing
    model = load_lean(path, input_shapes="1x3x12x20", bind=True)
    assert [t.name for t in model.graph.inputs] == ["x"]
    assert _input_shape(model) == [1, 3, 12, 20]
    assert model_cost(model).macs == expected_macs(12, 20)


def test_binding_an_ir_model_copies_it():
    model = load_model(symbolic_net())
    bound = load_model(model, input_shapes="1x3x12x20")
    assert _input_shape(bound) == [1, 3, 12, 20] and _input_shape(model) == ["N", 3, "H", "W"]
    assert model_cost(bound).macs == expected_macs(12, 20)


def test_shape_arithmetic_folds_once_bound():
    """Reshape to [N, -1] with N taken from Shape (torch's flatten): concrete once bound."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["n"], name="batch"),
             helper.make_node("Concat", ["n", "minus_one"], ["t"], name="target", axis=0),
             helper.make_node("Reshape", ["x", "t"], ["y"], name="reshape")]
    consts = [numpy_helper.from_array(np.array([0], np.int64), "zero"),
              numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
    graph = helper.make_graph(
        nodes, "flat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "M"])], consts)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert load_model(proto).graph.tensors()["y"].shape != [2, 60]
    bound = load_model(proto, input_shapes="x:2x3x4x5")
    assert bound.graph.tensors()["y"].shape == [2, 60]


def test_config_key_input_shape():
    config = load_config(overrides={"input.shape": {"x": [1, 3, 12, 20]}})
    assert step_options(config, "shape").spec == {"x": (1, 3, 12, 20)}
    assert step_options(load_config(), "shape").spec == {}
    with pytest.raises(ConfigError, match="key 'input.shape'.*every dim must be positive"):
        step_options(load_config(overrides={"input.shape": "x:1x3x0x4"}), "shape")


def test_exporter_dim_names_become_a_readable_template():
    proto = symbolic_net()
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "p2o.DynamicDimension.1", "width"
    with pytest.raises(ConfigError, match=r"--input-shape x:1x3xNxWIDTH, each letter a size"):
        load_model(proto, bind=True)
