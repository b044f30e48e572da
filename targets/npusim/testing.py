"""Small models and helpers for npusim tests and examples (no test framework dependency).

`op_zoo_model()` exercises every instruction kind (conv, depthwise, grouped conv, FC, add,
mul, LUT, both poolings, global pooling, concat with differing scales, nearest resize,
reshape/transpose/slice/split/pad, a CPU partition and a capability fallback) in one graph
small enough to quantize, build and verify in about a second.
"""

from __future__ import annotations

import numpy as np
import onnx

from compiler.core.builder import GraphBuilder


def _w(b: GraphBuilder, *shape: int) -> np.ndarray:
    return (b.rng.standard_normal(shape) * (2.0 / np.prod(shape[1:])) ** 0.5).astype(np.float32)


def op_zoo_model(seed: int = 0, size: int = 16) -> onnx.ModelProto:
    """A graph with every op kind the target lowers (input `x` [1, 3, size, size])."""
    b = GraphBuilder("npusim_op_zoo", seed)
    x = b.input("x", [1, 3, size, size])
    c1 = b.relu(b.conv(x, _w(b, 8, 3, 3, 3), b.rng.standard_normal(8), name="c1"))
    dw = b.relu6(b.conv(c1, _w(b, 8, 1, 3, 3), None, stride=2, group=8, name="dw"))
    pw = b.conv(dw, _w(b, 16, 8, 1, 1), b.rng.standard_normal(16), name="pw")
    se = b.mul(pw, b.sigmoid(b.global_avgpool(pw)))  # squeeze-excite gate: broadcasting Mul
    gc = b.conv(se, _w(b, 16, 4, 3, 3), None, group=4, name="grouped")
    silu = b.mul(gc, b.sigmoid(gc))
    mp = b.maxpool(silu, 3, 2, ceil=True)
    ap = b.avgpool(silu, 3, 2, pad=1)
    cat = b.concat([mp, b.relu(ap)], axis=1)
    up = b.node("Resize", [cat, "", b.const(np.array([1, 1, 2, 2], np.float32), "scales")],
                mode="nearest")
    # a 13x13 kernel (beyond the NPU's 11x11) whose every tap reads the 8x8 map somewhere,
    # so canonicalization cannot cut it (passes/canonicalize/padding_taps.py)
    big = b.conv(up, _w(b, 32, 32, 13, 13) * 0.3, None, pad=6, name="big_kernel")
    res = b.add(big, up)
    sl = b.node("Slice", [res, b.const(np.array([1, 2], np.int64), "starts"),
                          b.const(np.array([9, 100], np.int64), "ends"),
                          b.const(np.array([2, 3], np.int64), "axes"),
                          b.const(np.array([2, 3], np.int64), "steps")])
    parts = b.node("Split", [sl, b.const(np.array([12, 20], np.int64), "split")],
                   n_outputs=2, axis=1)
    padded = b.node("Pad", [parts[0], b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
                                              "pads")], mode="reflect")
    right = b.avgpool(b.node("Pad", [parts[1], b.const(np.array(
        [0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")], mode="constant"), 2, 2)
    cat2 = b.concat([b.maxpool(padded, 2, 2), right], axis=1)
    t = b.transpose(b.reshape(cat2, [1, 32, -1]), [0, 2, 1])
    flat = b.flatten(b.global_avgpool(b.reshape(b.transpose(t, [0, 2, 1]), [1, 32, 3, 2])))
    fc = b.gemm(flat, _w(b, 10, 32), b.rng.standard_normal(10))
    b.output(b.node("Softmax", [fc], axis=1, name="softmax"))
    return b.build()


def random_inputs(model: onnx.ModelProto, frames: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded standard-normal inputs with `frames` on the batch axis."""
    rng = np.random.default_rng(seed)
    out = {}
    init = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in init:
            continue
        dims = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
        out[inp.name] = rng.standard_normal([frames] + dims[1:]).astype(np.float32)
    return out
