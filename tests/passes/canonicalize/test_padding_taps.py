"""trim_padding_taps: Conv taps that only read zero padding are cut, the function is kept."""

import itertools

import numpy as np
import pytest
from onnx import helper

from compiler.core.cost import model_cost
from compiler.core.io import load_model
from compiler.core.numerics import run
from passes.canonicalize import canonicalize, trim_padding_taps
from tests.quant_helpers import make_model

RNG = np.random.default_rng(0)


def conv_net(size, kernel, dilation, pads, stride=(1, 1), cin=4, cout=5, shared=False):
    """x [1, cin, *size] -> Conv (-> a second Conv with the same weights when `shared`)."""
    w = RNG.standard_normal((cout, cin, *kernel)).astype(np.float32)
    attrs = {"dilations": list(dilation), "pads": list(pads), "strides": list(stride)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", **attrs)]
    outputs = ["y"]
    inputs = {"x": [1, cin, *size]}
    if shared:  # the same weights on a map where every tap reads data
        nodes.append(helper.make_node("Conv", ["x2", "w"], ["z"], name="twin"))
        outputs.append("z")
        inputs["x2"] = [1, cin] + [k + 2 for k in kernel]
    b = RNG.standard_normal(cout).astype(np.float32)
    return make_model(nodes, inputs, outputs, {"w": w, "b": b})


def trimmed(proto):
    model = load_model(proto)
    count = trim_padding_taps(model)
    return model, count


def conv(model, name="conv"):
    return next(n for n in model.graph.nodes if n.name == name)


def test_aspp_branch_on_a_small_map_becomes_a_1x1_conv():
    # DeepLabV3 ASPP at 256x256 input: 3x3, dilation 24, pads 24 on a 16x16 map
    proto = conv_net((16, 16), (3, 3), (24, 24), (24, 24, 24, 24), cin=8, cout=6)
    before = load_model(proto)
    model, count = trimmed(proto)
    node = conv(model)
    assert count == 1 and node.inputs[1].values.shape == (6, 8, 1, 1)
    assert node.attrs["dilations"] == [1, 1] and node.attrs["pads"] == [0, 0, 0, 0]
    assert model_cost(before).macs == 9 * model_cost(model).macs == 9 * 6 * 8 * 16 * 16
    x = RNG.standard_normal((1, 8, 16, 16)).astype(np.float32)
    ref, out = run(before, {"x": x}), run(model, {"x": x})
    np.testing.assert_allclose(out["y"], ref["y"], rtol=1e-5, atol=1e-5)


def test_a_dilated_conv_whose_taps_all_read_data_is_left_alone():
    proto = conv_net((16, 16), (3, 3), (12, 12), (12, 12, 12, 12))
    assert trimmed(proto)[1] == 0


@pytest.mark.parametrize("case", range(60))
def test_random_geometries_keep_the_function(case):
    rng = np.random.default_rng(case)
    rank = 1 + case % 2
    size = tuple(int(v) for v in rng.integers(1, 9, rank))
    kernel = tuple(int(v) for v in rng.integers(1, 6, rank))
    dilation = tuple(int(v) for v in rng.integers(1, 7, rank))
    stride = tuple(int(v) for v in rng.integers(1, 4, rank))
    pads = tuple(int(v) for v in rng.integers(0, 2 * max(dilation) * max(kernel), 2 * rank))
    pads = tuple(min(p, d * (k - 1)) for p, d, k in zip(
        pads, dilation * 2, kernel * 2, strict=True))  # pads beyond the kernel: not exported
    if any(s + pads[a] + pads[rank + a] < d * (k - 1) + 1
           for a, (s, d, k) in enumerate(zip(size, dilation, kernel, strict=True))):
        pytest.skip("no output position")
    proto = conv_net(size, kernel, dilation, pads, stride)
    before = load_model(proto)
    model, count = trimmed(proto)
    x = rng.standard_normal((1, 4, *size)).astype(np.float32)
    ref, out = run(before, {"x": x})["y"], run(model, {"x": x})["y"]
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    kept = conv(model).inputs[1].values.shape[2:]
    assert (count == 1) == (kept != kernel)
    # a cut tap that read data would show with the input all ones
    assert model_cost(model).macs <= model_cost(before).macs
    ones = np.ones_like(x)
    np.testing.assert_allclose(run(model, {"x": ones})["y"], run(before, {"x": ones})["y"],
                               rtol=1e-5, atol=1e-5)


def test_cut_taps_read_only_padding_exhaustively():
    """1-D: for every geometry up to small sizes, the kept taps are exactly those that
    read the input for some output (brute force over output positions)."""
    from passes.canonicalize.padding_taps import _reads_data
    for size, k, d, s, begin in itertools.product(range(1, 7), range(1, 5), range(1, 5),
                                                  range(1, 4), range(0, 9)):
        out = (size + 2 * begin - d * (k - 1) - 1) // s + 1
        if out < 1:
            continue
        for t in range(k):
            brute = any(0 <= y * s - begin + d * t < size for y in range(out))
            assert _reads_data(t, d, s, begin, size, out) == brute, (size, k, d, s, begin, t)


def test_shared_weights_get_a_new_constant():
    shared = conv_net((1, 1), (3, 3), (1, 1), (1, 1, 1, 1), shared=True)
    model = load_model(shared)
    twin_w = conv(model, "twin").inputs[1]
    assert trim_padding_taps(model) == 1
    assert conv(model, "twin").inputs[1] is twin_w and twin_w.values.shape[2:] == (3, 3)
    assert conv(model).inputs[1].values.shape[2:] == (1, 1)


def test_canonicalize_runs_it():
    proto = conv_net((16, 16), (3, 3), (36, 36), (36, 36, 36, 36))
    model = canonicalize(load_model(proto)).model
    assert conv(model).inputs[1].values.shape[2:] == (1, 1)
