"""16-bit weights (W16 / A16W16, docs/fixed-point.md §17) on npusim: the simulator,
model.quant.onnx in onnxruntime and the numpy reference agree on every element for every MAC
op kind with int16 weights (with 8- and 16-bit activations) and for zoo models with a mix of
int8, A16W8 and A16W16 layers; the binary encoding (blob kind 9, format 2.3) and its load
checks; and the perf model's cost of a 16-bit-weight layer.
"""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pytest

from compiler.core import fixedpoint as fp
from compiler.core.builder import GraphBuilder
from compiler.core.errors import TargetError
from passes.quantize.api import quantize_model
from targets.npusim import build_binary, estimate_perf, isa, load_binary
from targets.npusim import kernels as K
from targets.npusim.check import check_program
from targets.npusim.codec import KIND_CODES
from targets.npusim.testing import op_zoo_model, random_inputs
from tests.targets.npusim.test_npusim_int16 import _layer_model, _three_way

MAC_OPS = ("Conv", "Gemm", "MatMul")


def _build(proto, weights16, int16=(), calib=4, seed=0):
    result = quantize_model(proto, random_inputs(proto, calib, seed), int16=list(int16),
                            int16_weights=list(weights16))
    return result, build_binary(result.quant_model)


def _w16_instructions(program: isa.Program) -> set[str]:
    return {i.kind for i in program.code if i.kind in ("conv", "dwconv", "fc")
            and program.blobs[i.weights].kind == "weight16"}


@pytest.mark.parametrize("seed, activations", [(1, False), (2, True), (3, True)])
def test_op_zoo_with_16bit_weights_is_bit_exact(seed, activations):
    proto = op_zoo_model(seed=seed)
    macs = [n.name for n in proto.graph.node if n.op_type in MAC_OPS]
    result, built = _build(proto, macs, int16=macs if activations else ())
    _three_way(proto, result, built, frames=2, seed=seed)
    weights = {op.name: op.weight for op in result.qgraph.ops if hasattr(op, "weight")}
    assert weights and all(w.dtype == np.int16 for w in weights.values())
    # 16-bit weights use their range: 256x the int8 resolution
    assert max(int(np.abs(w).max()) for w in weights.values()) == fp.WEIGHT16_MAX
    assert {"conv", "dwconv", "fc"} <= _w16_instructions(built.program)
    if activations:
        wide = [i for i in built.program.code if i.kind in ("conv", "dwconv", "fc")
                and built.program.tensors[i.ifm].dtype == "int16"]
        assert wide  # A16W16 instructions ran


def _zoo_mixed(name, size):
    from models.pretrained.efficientnet_lite0 import efficientnet_lite0
    from models.zoo import ARCHITECTURES

    if name == "efficientnet_lite0":  # real ImageNet weights, at its own 224x224
        proto = efficientnet_lite0()[0]
    else:
        proto, _ = ARCHITECTURES[name](seed=0, batch=1, image_size=size)
    macs = [n.name for n in proto.graph.node if n.op_type in MAC_OPS]
    a16w16 = [macs[0], macs[-1]]  # the stem and the classifier
    a8w16 = [macs[len(macs) // 3]]
    a16w8 = [macs[len(macs) // 2]]
    return proto, a16w16 + a8w16, a16w16 + a16w8


@pytest.mark.parametrize("name, size", [
    ("mobilenetv2", 64), pytest.param("resnet50", 64, marks=pytest.mark.slow),
    pytest.param("vgg16", 32, marks=pytest.mark.slow),
    pytest.param("ssd_resnet50", 300, marks=pytest.mark.slow),
    pytest.param("efficientnet_lite0", 224, marks=pytest.mark.slow)])
def test_zoo_models_with_int8_a16w8_and_a16w16_layers_are_bit_exact(name, size):
    proto, weights16, int16 = _zoo_mixed(name, size)
    result, built = _build(proto, weights16, int16=int16, calib=2)
    _three_way(proto, result, built, frames=1)
    p = built.program
    by_name = {i.name: i for i in p.code}
    kinds = {}
    for node in set(weights16) | set(int16):
        ins = by_name[node]
        kinds[node] = (p.tensors[ins.ifm].dtype == "int16", p.blobs[ins.weights].kind)
    assert sorted(kinds.values(), key=str) == sorted(
        [(True, "weight16"), (True, "weight16"), (False, "weight16"), (True, "weight")], key=str)
    assert any(b.kind == "weight" for b in p.blobs)  # the rest stays int8


# --- binary -----------------------------------------------------------------------------------

def _fc_model():
    b = GraphBuilder("w16_fc", 3)
    x = b.input("x", [1, 24])
    h = b.relu(b.gemm(x, b.rng.standard_normal((16, 24)) * 0.3, b.rng.standard_normal(16),
                      name="fc1"))
    b.output(b.gemm(h, b.rng.standard_normal((5, 16)), None, name="fc2"))
    return b.build()


@pytest.fixture(scope="module")
def fc_build():
    proto = _fc_model()
    return proto, _build(proto, ["fc1"], calib=8)


def test_w16_binary_is_format_2_3_with_blob_kind_9(fc_build):
    proto, (result, built) = fc_build
    assert KIND_CODES["weight16"] == 9
    assert struct.unpack_from("<HH", built.data, 4) == (2, 3)
    _, plain = _build(proto, [], calib=8)
    assert struct.unpack_from("<HH", plain.data, 4) == (2, 0)  # 8-bit binaries stay 2.0
    p = load_binary(built.data)
    fc1 = next(i for i in p.code if i.name == "fc1")
    blob = p.blobs[fc1.weights]
    assert blob.kind == "weight16" and blob.array.dtype == np.int16
    qop = next(op for op in result.qgraph.ops if op.name == "fc1")
    np.testing.assert_array_equal(blob.array, qop.weight)
    assert blob.stored_bytes == 2 * qop.weight.size == 768
    _three_way(proto, result, built, frames=4)


def _with_blob(p: isa.Program, i: int, blob: isa.Blob) -> isa.Program:
    blobs = list(p.blobs)
    blobs[i] = blob
    return dataclasses.replace(p, blobs=tuple(blobs))


def test_w16_blobs_are_checked_on_load(fc_build):
    _, (_, built) = fc_build
    p = load_binary(built.data)
    fc1 = next(i for i in p.code if i.name == "fc1")
    w = p.blobs[fc1.weights].array
    big = w.copy()
    big.flat[0] = fp.WEIGHT16_MAX + 1
    with pytest.raises(TargetError, match="16-bit weight outside"):
        check_program(_with_blob(p, fc1.weights, isa.Blob("weight16", big)))
    bits = fp.layer_multiplier_bits(w, "int8")
    mult = p.blobs[fc1.mult].array
    assert 16 <= bits < 31 and int(mult.max()) < 1 << bits
    with pytest.raises(TargetError, match="16-bit-weight layer"):
        check_program(_with_blob(p, fc1.mult, isa.Blob("mult", np.full_like(mult, 1 << bits))))


def test_simulator_gemms_of_16bit_weights_run_in_float64():
    assert K.gemm_dtype(np.int8, np.int16) == np.float64
    assert K.gemm_dtype(np.int8, np.int8) == np.float32
    # 3x3 depthwise: 9·128·32768 > 2^24 in float32
    assert K.depthwise_dtype((3, 3), np.int8, np.int16) is np.float64
    assert K.depthwise_dtype((3, 3), np.uint8, np.int8) is np.float32


# --- cost ---------------------------------------------------------------------------------------

def test_16bit_weights_cost_one_mac_pass_per_weight_digit():
    proto = _layer_model()  # the 64->64 3x3 conv the int16 cost test uses
    layers, sizes = {}, {}
    for label, w16, a16 in (("int8", [], []), ("w16", ["conv"], []),
                            ("a16w16", ["conv"], ["conv"])):
        _, built = _build(proto, w16, int16=a16, calib=2)
        layers[label] = {lay["name"]: lay for lay in estimate_perf(built.data).layers}["conv"]
        p = load_binary(built.data)
        sizes[label] = p.blobs[next(i for i in p.code if i.name == "conv").weights].stored_bytes
    overhead = 200  # default preset's instruction overhead
    # 64x64 3x3 at 32x32: ⌈1024/4⌉·⌈64/16⌉·⌈64/16⌉·9 = 36864 array cycles per pass
    assert layers["int8"]["cycles"] == 36864 + overhead
    assert layers["w16"]["cycles"] == 2 * 36864 + overhead
    assert layers["a16w16"]["cycles"] == 4 * 36864 + overhead
    assert layers["w16"]["macs"] == layers["int8"]["macs"] == 37748736
    assert sizes["w16"] == sizes["a16w16"] == 2 * 64 * 64 * 9 == 73728
    assert sizes["int8"] <= 64 * 64 * 9
