"""Consistency: the binary in the simulator equals model.quant.onnx in onnxruntime, bit for bit.

Covers every instruction kind (op zoo), the onnx light model zoo, the models/ zoo, and
pruned, 1xN-sparse and combined variants, on seeded random and real inputs.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from compiler.core.errors import DataError
from compiler.core.io import load_model
from passes.quantize.api import quantize_model
from targets.npusim import Simulator, build_binary, verify
from targets.npusim.testing import op_zoo_model, random_inputs
from tests.conftest import LIGHT_MODELS, conv_model, light_path

HEAVY_LIGHT = {"vgg19", "zfnet512", "bvlc_alexnet", "densenet121", "inception_v2", "resnet50"}


def _check(proto, calib_frames=4, frames=2, seed=1, feeds=None, model=None):
    quant = quantize_model(model or proto, random_inputs(proto, calib_frames, 0)).quant_model
    result = build_binary(quant)
    report = verify(quant, result.data, feeds or random_inputs(proto, frames, seed))
    for out in report.outputs:
        assert out["elements"] > 0
        assert out["mismatched"] == 0, out
        assert out["max_abs"] == 0.0
    assert report.consistent
    return quant, result, report


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_op_zoo_is_bit_exact(seed):
    _, result, report = _check(op_zoo_model(seed=seed), seed=seed, frames=3)
    kinds = {i.kind for i in result.instructions}
    assert {"conv", "dwconv", "fc", "add", "mul", "lut", "maxpool", "avgpool", "gavgpool",
            "concat", "resize", "slice", "pad", "transpose", "reshape", "cpu_call"} <= kinds
    assert report.samples == 3


def test_capability_fallback_runs_on_cpu_and_is_counted():
    _, result, _ = _check(op_zoo_model())
    big = next(p for p in result.placement if p["node"] == "big_kernel")
    assert big["unit"] == "CPU" and "13" in big["reason"]
    assert result.cpu_partitions == 2  # the 13x13 conv and the Softmax partition


def _atrous(size: int, dilations: tuple[int, ...]) -> onnx.ModelProto:
    """DeepLab's ASPP: parallel 3x3 convs with dilation d and padding d, concatenated."""
    from compiler.core.builder import GraphBuilder
    b = GraphBuilder("aspp", 0)
    x = b.relu(b.input("x", [1, 8, size, size]))
    branches = [b.relu(b.node("Conv", [x, b.const(
        b.rng.standard_normal((4, 8, 3, 3)).astype(np.float32) * 0.2, f"w{d}")],
        name=f"atrous{d}", dilations=[d, d], pads=[d] * 4)) for d in dilations]
    b.output(b.concat(branches, axis=1))
    return b.build()


def test_atrous_convs_run_on_the_npu_bit_exactly():
    """DeepLabV3's ASPP at 256x256 input (16x16 map): dilation 24/36 become 1x1 convs in
    canonicalization, dilation 12 (a 25x25 window) runs as is; 40 (81x81) exceeds the
    NPU's 64-wide window and falls back to the CPU with the reason."""
    _, result, _ = _check(_atrous(16, (12, 24, 36)), frames=2)
    units = {p["node"]: p["unit"] for p in result.placement if p["node"].startswith("atrous")}
    assert units == {"atrous12": "NPU", "atrous24": "NPU", "atrous36": "NPU"}
    convs = [i for i in result.instructions if i.kind == "conv"]
    assert sorted(tuple(i.dilation) for i in convs) == [(1, 1), (1, 1), (12, 12)]
    _, result, _ = _check(_atrous(48, (40,)), frames=1)
    wide = next(p for p in result.placement if p["node"] == "atrous40")
    assert wide["unit"] == "CPU" and "dilated kernel 81x81 exceeds 64" in wide["reason"]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow)
                                  if n in HEAVY_LIGHT else n for n in LIGHT_MODELS])
def test_light_zoo_is_bit_exact(name):
    _check(onnx.load(str(light_path(name))), calib_frames=2, frames=1)


def test_conv_model_batch_of_frames():
    proto = conv_model()
    quant, result, report = _check(proto, frames=5)
    assert report.outputs[0]["elements"] == 50


def _zoo(name, size):
    from models.zoo import ARCHITECTURES

    proto, _ = ARCHITECTURES[name](seed=0, batch=1, image_size=size)
    return proto


@pytest.mark.parametrize("name, size", [
    ("mobilenetv2", 64), pytest.param("resnet50", 64, marks=pytest.mark.slow),
    pytest.param("vgg16", 32, marks=pytest.mark.slow),
    pytest.param("ssd_resnet50", 300, marks=pytest.mark.slow)])
def test_zoo_models_are_bit_exact(name, size):
    _check(_zoo(name, size), calib_frames=2, frames=1)


@pytest.mark.slow
def test_zoo_resnet50_full_size_real_photos():
    from models.datasets import load_dataset

    proto = _zoo("resnet50", 224)
    x = load_dataset("photos", limit=2).inputs
    assert x.shape[1:] == (3, 224, 224)
    _check(proto, calib_frames=2, feeds={"input": x.astype(np.float32)})


def _pruned(proto, ratio=0.3):
    from passes.prune import prune_model

    return prune_model(load_model(proto, fix_batch=True), ratio=ratio, reconstruct=False,
                       round_to=1)[0]


def _sparse(model_or_proto, block=4, sparsity=0.5):
    from passes.canonicalize import canonicalize
    from passes.sparsify import sparsify_model

    model = canonicalize(load_model(model_or_proto, fix_batch=True)).model
    return sparsify_model(model, block=block, sparsity=sparsity, criterion="l1",
                          reconstruct=False)[0]


@pytest.mark.parametrize("variant", ["pruned", pytest.param("sparse", marks=pytest.mark.slow),
                                     pytest.param("pruned+sparse", marks=pytest.mark.slow)])
def test_compressed_variants_are_bit_exact(variant):
    proto = _zoo("resnet50", 64)
    model = _pruned(proto) if "pruned" in variant else load_model(proto, fix_batch=True)
    if "sparse" in variant:
        model = _sparse(model)
    _, result, _ = _check(proto, model=model, calib_frames=2, frames=2)
    if "sparse" in variant:
        assert len(result.sparse_layers) > 10
        assert set(result.sparse_layers.values()) <= {4, 8, 16, 32}


def _fmnist_cnn():
    from compiler.core.builder import GraphBuilder

    b = GraphBuilder("fmnist_cnn", 3)
    x = b.input("input", [1, 1, 28, 28])
    h = b.relu(b.conv(x, b.rng.standard_normal((8, 1, 3, 3)) * 0.5, None, stride=2))
    h = b.relu(b.conv(h, b.rng.standard_normal((16, 8, 3, 3)) * 0.2, None, stride=2))
    b.output(b.gemm(b.flatten(b.global_avgpool(h)), b.rng.standard_normal((10, 16)) * 0.3))
    return b.build()


def test_real_fashion_mnist_inputs():
    from compiler.driver.data import load_data
    from models.datasets import load_dataset

    proto = _fmnist_cnn()
    calib = load_dataset("fmnist-calib", limit=16).inputs
    quant = quantize_model(proto, {"input": calib}).quant_model
    feeds = load_data("fmnist-eval", load_model(proto), limit=6).arrays
    report = verify(quant, build_binary(quant).data, feeds)
    assert report.consistent and report.samples == 6
    assert report.outputs[0]["elements"] == 60


def test_bad_feeds_are_data_errors():
    proto = conv_model()
    quant = quantize_model(proto, random_inputs(proto, 2, 0)).quant_model
    sim = Simulator(build_binary(quant).data)
    with pytest.raises(DataError, match="missing input 'x'"):
        sim.run({"y": np.zeros((1, 3, 8, 8), np.float32)})
    with pytest.raises(DataError, match="shape"):
        sim.run({"x": np.zeros((1, 3, 9, 8), np.float32)})


def test_symbolic_batch_model_runs_frame_by_frame():
    proto = conv_model(batch="N")
    quant = quantize_model(proto, {"x": random_inputs(conv_model(), 4, 0)["x"]}).quant_model
    result = build_binary(quant)
    assert result.program.tensors[result.program.inputs[0]].shape == (1, 3, 8, 8)
    report = verify(quant, result.data, random_inputs(conv_model(), 3, 1))
    assert report.consistent and report.outputs[0]["elements"] == 30
