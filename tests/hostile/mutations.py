"""Semantic mutations of the tiny models: each keeps the protobuf well-formed but makes the
model wrong, hostile or extreme in one way.

`FLOAT` mutations start from a float model of `models.BUILDERS`; `QUANT` mutations start
from the session's `model.quant.onnx` (mostly its embedded QGraph JSON). A mutation may also
need files next to the model (external data, FIFOs, symlinks): `SETUP` maps its name to that
preparation, run in the case folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.hostile.models import init, node, replace_init, set_attr

Mutation = Callable[[onnx.ModelProto], None]
FLOAT: dict[str, tuple[str, Mutation]] = {}
QUANT: dict[str, Mutation] = {}
SETUP: dict[str, Callable[[Path], None]] = {}


def float_mutation(base: str, name: str | None = None):
    """Register a mutation of float model `base`."""
    def deco(fn: Mutation) -> Mutation:
        FLOAT[name or fn.__name__] = (base, fn)
        return fn
    return deco


def quant_mutation(fn: Mutation) -> Mutation:
    """Register a mutation of the quantized model."""
    QUANT[fn.__name__] = fn
    return fn


def _dims(m: onnx.ModelProto, dims: list) -> None:
    shape = m.graph.input[0].type.tensor_type.shape
    shape.Clear()
    for d in dims:
        if isinstance(d, str):
            shape.dim.add().dim_param = d
        else:
            shape.dim.add().dim_value = d


# -- structure -------------------------------------------------------------------------------

@float_mutation("res")
def no_inputs(m):
    del m.graph.input[:]


@float_mutation("res")
def no_outputs(m):
    del m.graph.output[:]


@float_mutation("conv")
def no_nodes_passthrough(m):
    del m.graph.node[:]
    del m.graph.initializer[:]
    m.graph.output[0].CopyFrom(m.graph.input[0])


@float_mutation("conv")
def constant_graph(m):
    """No inputs: the output is computed from weights alone."""
    del m.graph.input[:]
    m.graph.initializer.append(numpy_helper.from_array(np.ones((1, 3, 8, 8), np.float32), "x"))


@float_mutation("res")
def missing_initializer(m):
    keep = [t for t in m.graph.initializer if t.name != "w1"]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)


@float_mutation("res")
def duplicate_node_output(m):
    node(m, "relug").output[0] = "r0"


@float_mutation("res")
def duplicate_initializer(m):
    extra = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w0")
    m.graph.initializer.append(extra)


@float_mutation("res")
def duplicate_node_names(m):
    for n in m.graph.node:
        n.name = "same"


@float_mutation("res")
def cycle(m):
    node(m, "stem").input[0] = "s"  # stem reads the residual sum that depends on it


@float_mutation("res")
def self_loop(m):
    node(m, "relu0").input[0] = "r0"


@float_mutation("res")
def output_is_input(m):
    m.graph.output.append(m.graph.input[0])


@float_mutation("res")
def output_twice(m):
    m.graph.output.append(m.graph.output[0])


@float_mutation("res")
def intermediate_output(m):
    """A feature map inside a residual group is also a graph output."""
    m.graph.output.append(helper.make_tensor_value_info("r0", TensorProto.FLOAT, None))


@float_mutation("res")
def dangling_node(m):
    m.graph.node.append(helper.make_node("Relu", ["nowhere"], ["dead"], name="dangling"))


@float_mutation("conv")
def deep_chain(m):
    """3,000 Relus in a row: recursive graph walks overflow the stack."""
    relu = node(m, "relu")
    out = relu.output[0]
    relu.output[0] = "chain_0"
    m.graph.node.extend(helper.make_node("Relu", [f"chain_{i}"], [f"chain_{i + 1}"],
                                         name=f"chain{i}") for i in range(2999))
    m.graph.node.append(helper.make_node("Relu", ["chain_2999"], [out], name="chain_end"))
    _toposort_tail(m)


def _toposort_tail(m):
    # put the consumers of the chain's output after the chain
    later = [n for n in m.graph.node if n.name in ("gap", "flatten", "fc")]
    rest = [n for n in m.graph.node if n.name not in ("gap", "flatten", "fc")]
    del m.graph.node[:]
    m.graph.node.extend(rest + later)


@float_mutation("res")
def unsorted_nodes(m):
    nodes = list(m.graph.node)[::-1]
    del m.graph.node[:]
    m.graph.node.extend(nodes)


@float_mutation("res")
def newline_names(m):
    """Names carrying newlines and a fake traceback, on a node that is also wrong."""
    n = node(m, "grouped")
    n.name = "evil\nTraceback (most recent call last):\n  boom"
    set_attr(n, "group", 3)


@float_mutation("res")
def long_names(m):
    for i, n in enumerate(m.graph.node):
        n.name = f"{i}_" + "n" * 20000


@float_mutation("res")
def path_names(m):
    """Tensor and node names that look like paths (names end up in file names and reports)."""
    old = "r0"
    new = "../../../../tmp/npuc-hostile-escape"
    for n in m.graph.node:
        n.name = "../" + n.name + "/..//etc/passwd"
        n.input[:] = [new if i == old else i for i in n.input]
        n.output[:] = [new if o == old else o for o in n.output]


# -- shapes ----------------------------------------------------------------------------------

@float_mutation("res")
def zero_dim_input(m):
    _dims(m, ["N", 3, 0, 8])


@float_mutation("res")
def zero_batch(m):
    _dims(m, [0, 3, 8, 8])


@float_mutation("res")
def zero_channel_weight(m):
    replace_init(m, "w1", np.zeros((0, 8, 1, 1), np.float32))
    replace_init(m, "fw", np.zeros((10, 0), np.float32))


@float_mutation("conv")
def zero_out_channels_everywhere(m):
    replace_init(m, "w", np.zeros((0, 3, 3, 3), np.float32))
    for name in ("b", "g", "beta", "mean", "var"):
        replace_init(m, name, np.zeros((0,), np.float32))
    replace_init(m, "fw", np.zeros((10, 0), np.float32))


@float_mutation("res")
def wrong_weight_in_channels(m):
    replace_init(m, "w0", np.ones((8, 5, 3, 3), np.float32))


@float_mutation("res")
def wrong_gemm_dims(m):
    replace_init(m, "fw", np.ones((10, 7), np.float32))


@float_mutation("res")
def wrong_bias_len(m):
    replace_init(m, "b0", np.ones((5,), np.float32))


@float_mutation("res")
def rank_mismatch_input(m):
    _dims(m, ["N", 3, 8])


@float_mutation("res")
def huge_input_shape(m):
    _dims(m, [1, 3, 100000, 100000])


@float_mutation("res")
def huge_batch(m):
    _dims(m, [2 ** 31, 3, 8, 8])


@float_mutation("res")
def int64_max_dim(m):
    _dims(m, [1, 3, 2 ** 62, 8])


@float_mutation("res")
def negative_dims(m):
    _dims(m, [1, -3, -8, 8])


@float_mutation("res")
def symbolic_spatial(m):
    _dims(m, ["N", 3, "H", "W"])


@float_mutation("res")
def no_input_shape(m):
    m.graph.input[0].type.tensor_type.ClearField("shape")


@float_mutation("res")
def int64_input(m):
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64


@float_mutation("res")
def string_input(m):
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.STRING


@float_mutation("res")
def sequence_input(m):
    m.graph.input[0].CopyFrom(helper.make_tensor_sequence_value_info("x", TensorProto.FLOAT,
                                                                     [1, 3, 8, 8]))


@float_mutation("res")
def wrong_output_shape(m):
    out = m.graph.output[0].type.tensor_type.shape
    out.Clear()
    out.dim.add().dim_value = 7
    out.dim.add().dim_value = 3


# -- size bombs ------------------------------------------------------------------------------

def _bomb(m: onnx.ModelProto, nodes: list, inits: list, result: str) -> None:
    """Add `result` (any shape) to the graph output through a ReduceMax to a scalar."""
    m.graph.initializer.extend(inits)
    out = m.graph.output[0].name
    last = next(n for n in m.graph.node if out in n.output)
    last.output[:] = [o if o != out else "pre_bomb" for o in last.output]
    m.graph.node.extend(nodes + [
        helper.make_node("ReduceMax", [result], ["bomb_max"], name="bomb_reduce", keepdims=0),
        helper.make_node("Add", ["pre_bomb", "bomb_max"], [out], name="bomb_add")])


def _i64(name: str, values: list) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


@float_mutation("conv")
def constantofshape_bomb(m):
    _bomb(m, [helper.make_node("ConstantOfShape", ["bomb_shape"], ["bomb"], name="cos",
                               value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))],
          [_i64("bomb_shape", [1, 8, 100000, 100000])], "bomb")


@float_mutation("conv")
def constantofshape_int64_overflow(m):
    _bomb(m, [helper.make_node("ConstantOfShape", ["bomb_shape"], ["bomb"], name="cos")],
          [_i64("bomb_shape", [2 ** 62, 2 ** 62, 4])], "bomb")


@float_mutation("conv")
def constantofshape_negative(m):
    _bomb(m, [helper.make_node("ConstantOfShape", ["bomb_shape"], ["bomb"], name="cos")],
          [_i64("bomb_shape", [4, -1])], "bomb")


@float_mutation("conv")
def expand_bomb(m):
    _bomb(m, [helper.make_node("Expand", ["bomb_one", "bomb_shape"], ["bomb"], name="expand")],
          [numpy_helper.from_array(np.ones((1,), np.float32), "bomb_one"),
           _i64("bomb_shape", [100000, 100000, 100])], "bomb")


@float_mutation("conv")
def tile_bomb(m):
    _bomb(m, [helper.make_node("Tile", ["r", "bomb_reps"], ["bomb"], name="tile")],
          [_i64("bomb_reps", [1, 1, 100000, 100000])], "bomb")


@float_mutation("conv")
def tile_constant_bomb(m):
    _bomb(m, [helper.make_node("Tile", ["bomb_one", "bomb_reps"], ["bomb"], name="tile")],
          [numpy_helper.from_array(np.ones((2, 2), np.float32), "bomb_one"),
           _i64("bomb_reps", [200000, 200000])], "bomb")


@float_mutation("conv")
def range_bomb(m):
    _bomb(m, [helper.make_node("Range", ["r0", "r1", "r2"], ["bomb"], name="range")],
          [numpy_helper.from_array(np.array(0, np.float32), "r0"),
           numpy_helper.from_array(np.array(1e12, np.float32), "r1"),
           numpy_helper.from_array(np.array(1, np.float32), "r2")], "bomb")


@float_mutation("conv")
def pad_bomb(m):
    set_attr(node(m, "conv"), "pads", [100000, 100000, 100000, 100000])


@float_mutation("resize")
def resize_bomb(m):
    replace_init(m, "scales", np.array([1, 1, 100000, 100000], np.float32))


@float_mutation("resize")
def resize_scales_zero(m):
    replace_init(m, "scales", np.array([1, 1, 0, 0], np.float32))


@float_mutation("resize")
def resize_scales_negative(m):
    replace_init(m, "scales", np.array([1, 1, -2, -2], np.float32))


@float_mutation("resize")
def resize_scales_nan(m):
    replace_init(m, "scales", np.array([1, 1, np.nan, np.inf], np.float32))


@float_mutation("resize")
def resize_sizes_bomb(m):
    n = node(m, "up")
    n.input[:] = ["c0", "", "", "sizes"]
    m.graph.initializer.append(_i64("sizes", [1, 4, 1000000, 1000000]))


@float_mutation("conv")
def reshape_bad(m):
    flat = node(m, "flatten")
    flat.op_type = "Reshape"
    del flat.attribute[:]
    flat.input.append("bad_shape")
    m.graph.initializer.append(_i64("bad_shape", [3, 7]))


@float_mutation("conv")
def reshape_two_minus_one(m):
    flat = node(m, "flatten")
    flat.op_type = "Reshape"
    del flat.attribute[:]
    flat.input.append("bad_shape")
    m.graph.initializer.append(_i64("bad_shape", [-1, -1]))


# -- attributes ------------------------------------------------------------------------------

@float_mutation("res")
def group_mismatch(m):
    set_attr(node(m, "grouped"), "group", 3)


@float_mutation("res")
def group_zero(m):
    set_attr(node(m, "grouped"), "group", 0)


@float_mutation("res")
def group_negative(m):
    set_attr(node(m, "grouped"), "group", -2)


@float_mutation("res")
def group_huge(m):
    set_attr(node(m, "grouped"), "group", 2 ** 40)


@float_mutation("res")
def depthwise_wrong_group(m):
    set_attr(node(m, "depthwise"), "group", 4)


@float_mutation("res")
def depthwise_weight_mismatch(m):
    replace_init(m, "wd", np.ones((8, 2, 3, 3), np.float32))


@float_mutation("res")
def strides_zero(m):
    set_attr(node(m, "stem"), "strides", [0, 0])


@float_mutation("res")
def strides_huge(m):
    set_attr(node(m, "stem"), "strides", [2 ** 40, 2 ** 40])


@float_mutation("res")
def dilations_zero(m):
    set_attr(node(m, "stem"), "dilations", [0, 0])


@float_mutation("res")
def dilations_huge(m):
    set_attr(node(m, "stem"), "dilations", [100000, 100000])


@float_mutation("res")
def pads_negative(m):
    set_attr(node(m, "stem"), "pads", [-5, -5, -5, -5])


@float_mutation("res")
def pads_wrong_length(m):
    set_attr(node(m, "stem"), "pads", [1, 1, 1])


@float_mutation("res")
def kernel_shape_mismatch(m):
    set_attr(node(m, "stem"), "kernel_shape", [5, 5])


@float_mutation("res")
def auto_pad_garbage(m):
    set_attr(node(m, "stem"), "auto_pad", "NOPE")


@float_mutation("res")
def attr_wrong_type(m):
    set_attr(node(m, "grouped"), "group", 2.5)


@float_mutation("res")
def attr_string_type(m):
    set_attr(node(m, "stem"), "strides", ["a", "b"])


@float_mutation("res")
def attr_unknown(m):
    set_attr(node(m, "stem"), "frobnicate", 7)


@float_mutation("conv")
def gemm_trans_garbage(m):
    set_attr(node(m, "fc"), "transB", 7)


@float_mutation("conv")
def gemm_alpha_nan(m):
    set_attr(node(m, "fc"), "alpha", float("nan"))


@float_mutation("conv")
def bn_negative_var(m):
    replace_init(m, "var", -np.ones(8, np.float32))


@float_mutation("conv")
def bn_epsilon_nan(m):
    set_attr(node(m, "bn"), "epsilon", float("nan"))


@float_mutation("conv")
def bn_epsilon_negative(m):
    set_attr(node(m, "bn"), "epsilon", -1.0)
    replace_init(m, "var", np.zeros(8, np.float32))


@float_mutation("conv")
def flatten_axis_out_of_range(m):
    set_attr(node(m, "flatten"), "axis", 9)


@float_mutation("conv")
def softmax_axis_out_of_range(m):
    m.graph.node.append(helper.make_node("Softmax", ["y_pre"], [m.graph.output[0].name],
                                         name="sm", axis=-9))
    node(m, "fc").output[0] = "y_pre"


# -- ops and domains -------------------------------------------------------------------------

@float_mutation("res")
def unknown_op(m):
    node(m, "relu1").op_type = "FrobnicateRelu"


@float_mutation("res")
def unknown_domain(m):
    n = node(m, "relu1")
    n.domain = "com.evil"
    m.opset_import.append(helper.make_opsetid("com.evil", 1))


@float_mutation("res")
def domain_without_import(m):
    node(m, "relu1").domain = "com.evil"


@float_mutation("res")
def ms_contrib_op(m):
    n = node(m, "relu1")
    n.op_type, n.domain = "Gelu", "com.microsoft"
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))


@float_mutation("res")
def function_op(m):
    """A model-local function used as an op (onnx FunctionProto)."""
    f = helper.make_function("local", "MyRelu", ["a"], ["b"],
                             [helper.make_node("Relu", ["a"], ["b"])],
                             [helper.make_opsetid("", 17)])
    m.functions.append(f)
    n = node(m, "relu1")
    n.op_type, n.domain = "MyRelu", "local"
    m.opset_import.append(helper.make_opsetid("local", 1))


@float_mutation("res")
def if_subgraph(m):
    """An If whose branches hold the ReLU: subgraphs must not be walked blindly."""
    n = node(m, "relu1")
    then = helper.make_graph([helper.make_node("Relu", ["c1"], ["t_out"])], "then", [],
                             [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Neg", ["c1"], ["e_out"])], "else", [],
                              [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)])
    m.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    n.CopyFrom(helper.make_node("If", ["cond"], ["r1"], name="branch", then_branch=then,
                                else_branch=other))


@float_mutation("res")
def loop_bomb(m):
    """A Loop with 2^40 iterations in a side branch."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["acc_in", "one"], ["acc_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(np.array(1, np.float32), "one")])
    _bomb(m, [helper.make_node("Loop", ["trip", "cond", "acc0"], ["bomb"], name="loop",
                               body=body)],
          [_i64("trip", 2 ** 40), numpy_helper.from_array(np.array(True), "cond"),
           numpy_helper.from_array(np.array(0, np.float32), "acc0")], "bomb")


# -- weights ---------------------------------------------------------------------------------

@float_mutation("res")
def nan_weights(m):
    w = numpy_helper.to_array(init(m, "w1")).copy()
    w[0, 0, 0, 0] = np.nan
    replace_init(m, "w1", w)


@float_mutation("res")
def inf_bias(m):
    replace_init(m, "b0", np.full(8, np.inf, np.float32))


@float_mutation("res")
def huge_weights(m):
    replace_init(m, "w1", np.full((16, 8, 1, 1), 3e38, np.float32))


@float_mutation("res")
def denormal_weights(m):
    replace_init(m, "w0", np.full((8, 3, 3, 3), 1e-42, np.float32))


@float_mutation("res")
def zero_weights(m):
    replace_init(m, "w0", np.zeros((8, 3, 3, 3), np.float32))
    replace_init(m, "b0", np.zeros(8, np.float32))


@float_mutation("res")
def float64_weights(m):
    replace_init(m, "w1", numpy_helper.to_array(init(m, "w1")).astype(np.float64))


@float_mutation("res")
def float16_weights(m):
    replace_init(m, "w1", numpy_helper.to_array(init(m, "w1")).astype(np.float16))


@float_mutation("res")
def int8_weights(m):
    replace_init(m, "w1", np.ones((16, 8, 1, 1), np.int8))


@float_mutation("res")
def string_weights(m):
    t = init(m, "w1")
    t.CopyFrom(helper.make_tensor("w1", TensorProto.STRING, [2], [b"a", b"b"]))


@float_mutation("res")
def raw_data_short(m):
    """raw_data shorter than the dims say."""
    t = init(m, "w1")
    t.raw_data = t.raw_data[:10]


@float_mutation("res")
def raw_data_and_float_data(m):
    t = init(m, "w1")
    t.float_data.extend([1.0] * 4)


@float_mutation("res")
def huge_declared_initializer(m):
    """dims claim 2^40 elements; there are 128 bytes of data."""
    t = init(m, "w1")
    del t.dims[:]
    t.dims.extend([2 ** 20, 2 ** 20, 1, 1])


@float_mutation("res")
def initializer_negative_dims(m):
    t = init(m, "w1")
    del t.dims[:]
    t.dims.extend([-16, 8, 1, 1])


@float_mutation("res")
def segment_field(m):
    t = init(m, "w1")
    t.segment.begin, t.segment.end = 0, 2 ** 40


# -- external data ---------------------------------------------------------------------------

def _external(m: onnx.ModelProto, location: str, offset: int | None = None,
              length: int | None = None, name: str = "w1") -> None:
    t = init(m, name)
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    del t.external_data[:]
    entries = {"location": location}
    if offset is not None:
        entries["offset"] = str(offset)
    if length is not None:
        entries["length"] = str(length)
    for k, v in entries.items():
        t.external_data.add(key=k, value=v)


def _weights_file(case_dir: Path, name: str = "w1.bin") -> None:
    (case_dir / name).write_bytes(np.ones(16 * 8, np.float32).tobytes())


@float_mutation("res")
def external_ok(m):
    _external(m, "w1.bin")


SETUP["external_ok"] = _weights_file


@float_mutation("res")
def external_parent_escape(m):
    _external(m, "../../../../../../etc/passwd")


@float_mutation("res")
def external_absolute(m):
    _external(m, "/etc/passwd")


@float_mutation("res")
def external_missing(m):
    _external(m, "nope.bin")


@float_mutation("res")
def external_offset_huge(m):
    _external(m, "w1.bin", offset=2 ** 60, length=512)


SETUP["external_offset_huge"] = _weights_file


@float_mutation("res")
def external_length_huge(m):
    _external(m, "w1.bin", offset=0, length=2 ** 40)


SETUP["external_length_huge"] = _weights_file


@float_mutation("res")
def external_length_short(m):
    _external(m, "w1.bin", offset=0, length=12)


SETUP["external_length_short"] = _weights_file


@float_mutation("res")
def external_offset_negative(m):
    _external(m, "w1.bin", offset=-100, length=512)


SETUP["external_offset_negative"] = _weights_file


@float_mutation("res")
def external_symlink_escape(m):
    _external(m, "link.bin")


SETUP["external_symlink_escape"] = lambda d: os.symlink("/etc/passwd", d / "link.bin")


@float_mutation("res")
def external_fifo(m):
    _external(m, "pipe.bin")


SETUP["external_fifo"] = lambda d: os.mkfifo(d / "pipe.bin")


@float_mutation("res")
def external_directory(m):
    _external(m, ".")


@float_mutation("res")
def external_dev_zero(m):
    _external(m, "/dev/zero", offset=0, length=512)


@float_mutation("res")
def external_no_location(m):
    t = init(m, "w1")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL


@float_mutation("res")
def external_null_byte(m):
    _external(m, "w1.bin\x00../../etc/passwd")


SETUP["external_null_byte"] = _weights_file


# -- versions --------------------------------------------------------------------------------

def _opset(m: onnx.ModelProto, version: int) -> None:
    for op in m.opset_import:
        if op.domain in ("", "ai.onnx"):
            op.version = version


for _v in (0, 1, 5, 7, 100, 2 ** 40):
    float_mutation("conv", f"opset_{_v}")(lambda m, v=_v: _opset(m, v))
for _v in (0, 1, 3, 100, 2 ** 62):
    float_mutation("conv", f"ir_version_{_v}")(lambda m, v=_v: setattr(m, "ir_version", v))


@float_mutation("conv")
def no_default_opset(m):
    del m.opset_import[:]
    m.opset_import.append(helper.make_opsetid("com.evil", 1))


@float_mutation("conv")
def two_default_opsets(m):
    m.opset_import.append(helper.make_opsetid("", 9))


@float_mutation("conv")
def bad_sparsity_metadata(m):
    m.metadata_props.add(key="npuc.sparsity", value='{"conv": [1, 2, "x"]')


@float_mutation("conv")
def hostile_sparsity_metadata(m):
    m.metadata_props.add(key="npuc.sparsity", value=json.dumps(
        {"conv": {"block": 0, "mask": [[1e308]], "n": -1}, "fc": None}))


@float_mutation("conv")
def deep_json_metadata(m):
    m.metadata_props.add(key="npuc.sparsity", value="[" * 100000 + "]" * 100000)


@float_mutation("conv")
def qgraph_in_float_model(m):
    m.metadata_props.add(key="npuc.qgraph", value='{"format":"npuc.qgraph","version":1}')


# -- quantized model (model.quant.onnx) -------------------------------------------------------

def _qgraph(m: onnx.ModelProto) -> dict:
    return json.loads(next(p.value for p in m.metadata_props if p.key == "npuc.qgraph"))


def _set_qgraph(m: onnx.ModelProto, value: dict | str) -> None:
    for p in m.metadata_props:
        if p.key == "npuc.qgraph":
            p.value = value if isinstance(value, str) else json.dumps(value)


def _qop(q: dict, kind: str) -> dict:
    return next(op for op in q["ops"] if op["kind"] == kind)


def _qedit(edit: Callable[[dict], None]) -> Mutation:
    def mutate(m: onnx.ModelProto) -> None:
        q = _qgraph(m)
        edit(q)
        _set_qgraph(m, q)
    return mutate


@quant_mutation
def qgraph_missing(m):
    keep = [p for p in m.metadata_props if p.key != "npuc.qgraph"]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)


@quant_mutation
def qgraph_not_json(m):
    _set_qgraph(m, "{not json")


@quant_mutation
def qgraph_deep_json(m):
    _set_qgraph(m, "[" * 200000 + "]" * 200000)


@quant_mutation
def qgraph_wrong_type(m):
    _set_qgraph(m, "[1, 2, 3]")


@quant_mutation
def qgraph_future_version(m):
    _qedit(lambda q: q.update(version=99))(m)


_QEDITS: dict[str, Callable[[dict], None]] = {
    "qgraph_no_ops": lambda q: q.update(ops=[]),
    "qgraph_ops_null": lambda q: q.update(ops=None),
    "qgraph_shift_huge": lambda q: _qop(q, "QGlobalAvgPool").update(shift=10 ** 6),
    "qgraph_shift_negative": lambda q: _qop(q, "QGlobalAvgPool").update(shift=-5),
    "qgraph_m0_negative": lambda q: _qop(q, "QGlobalAvgPool").update(m0=-1),
    "qgraph_m0_bigint": lambda q: _qop(q, "QGlobalAvgPool").update(m0=10 ** 40),
    "qgraph_m0_string": lambda q: _qop(q, "QGlobalAvgPool").update(m0="x"),
    "qgraph_lo_above_hi": lambda q: _qop(q, "QGlobalAvgPool").update(lo=100, hi=-100),
    "qgraph_scale_nan": lambda q: _qop(q, "QQuantize").update(scale=float("nan"),
                                                              inv_scale=float("nan")),
    "qgraph_scale_zero": lambda q: _qop(q, "QQuantize").update(scale=0.0, inv_scale=0.0),
    "qgraph_scale_negative": lambda q: _qop(q, "QQuantize").update(scale=-1.0,
                                                                   inv_scale=-1.0),
    "qgraph_scale_huge": lambda q: _qop(q, "QQuantize").update(scale=1e308,
                                                               inv_scale=1e308),
    "qgraph_strides_zero": lambda q: _qop(q, "QConv").update(strides=[0, 0]),
    "qgraph_pads_huge": lambda q: _qop(q, "QConv").update(pads=[10 ** 6] * 4),
    "qgraph_group_zero": lambda q: _qop(q, "QConv").update(group=0),
    "qgraph_group_mismatch": lambda q: _qop(q, "QConv").update(group=3),
    "qgraph_unknown_kind": lambda q: _qop(q, "QConv").update(kind="QFrobnicate"),
    "qgraph_weight_missing_array": lambda q: _qop(q, "QConv").update(
        weight={"$array": "nope::weight"}),
    "qgraph_inline_huge": lambda q: _qop(q, "QConv").update(weight_scale={"$inline": {
        "dtype": "<f4", "shape": [2 ** 40], "data": "AAAA"}}),
    "qgraph_inline_object": lambda q: _qop(q, "QConv").update(weight_scale={"$inline": {
        "dtype": "O", "shape": [1], "data": "AAAA"}}),
    "qgraph_inline_bad_base64": lambda q: _qop(q, "QConv").update(weight_scale={"$inline": {
        "dtype": "<f4", "shape": [8], "data": "!!!"}}),
    "qgraph_tensor_shape_huge": lambda q: q["tensors"][2].update(shape=[1, 8, 10 ** 6, 10 ** 6]),
    "qgraph_tensor_shape_negative": lambda q: q["tensors"][2].update(shape=[1, -8, 8, 8]),
    "qgraph_tensor_dtype_bogus": lambda q: q["tensors"][2].update(dtype="complex1024"),
    "qgraph_tensor_dup": lambda q: q["tensors"].append(dict(q["tensors"][2])),
    "qgraph_input_unknown": lambda q: q.update(inputs=["nope"]),
    "qgraph_op_reads_unknown": lambda q: _qop(q, "QConv").update(inputs=["nope"]),
    "qgraph_op_cycle": lambda q: _qop(q, "QConv").update(inputs=["r"]),
    "qgraph_tensors_dict": lambda q: q.update(tensors={"a": 1}),
}
for _name, _edit in _QEDITS.items():
    QUANT[_name] = _qedit(_edit)


@quant_mutation
def quant_weight_dtype(m):
    """The int8 conv weight initializer turned into float32."""
    t = next(t for t in m.graph.initializer if t.data_type == TensorProto.INT8 and
             len(t.dims) == 4)
    arr = numpy_helper.to_array(t).astype(np.float32)
    t.CopyFrom(numpy_helper.from_array(arr, t.name))


@quant_mutation
def quant_weight_shape(m):
    t = next(t for t in m.graph.initializer if t.data_type == TensorProto.INT8 and
             len(t.dims) == 4)
    arr = numpy_helper.to_array(t)
    t.CopyFrom(numpy_helper.from_array(np.concatenate([arr, arr]), t.name))


@quant_mutation
def quant_weight_external(m):
    t = next(t for t in m.graph.initializer if t.data_type == TensorProto.INT8 and
             len(t.dims) == 4)
    t.ClearField("raw_data")
    t.ClearField("int32_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="/etc/passwd")


@quant_mutation
def quant_node_removed(m):
    # the convolutions, in either exact form model.quant.onnx writes them (fixed-point §11)
    nodes = [n for n in m.graph.node if n.op_type not in ("ConvInteger", "Conv")]
    del m.graph.node[:]
    m.graph.node.extend(nodes)


@quant_mutation
def quant_float_model(m):
    """A float model where the quantized one is expected (metadata kept)."""
    from tests.conftest import conv_model

    q = [p for p in m.metadata_props]
    m.CopyFrom(conv_model())
    m.metadata_props.extend(q)
