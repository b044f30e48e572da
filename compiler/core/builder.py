"""A small graph builder used by the model zoo to write ONNX models from numpy weights.

It lives in `compiler/` because it produces ONNX protobufs; callers only see tensor names.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

INTERNAL_OPSET = 17


class GraphBuilder:
    """Accumulates nodes and initializers, then emits a checked `onnx.ModelProto`.

    Each op method takes tensor names and returns the output tensor name, so a network
    reads like its forward function.

    Args:
        name: Graph name.
        seed: Seed of `self.rng`, for builders that draw weights.
    """

    def __init__(self, name: str, seed: int = 0) -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)
        self._nodes: list[onnx.NodeProto] = []
        self._inits: list[onnx.TensorProto] = []
        self._inputs: list[onnx.ValueInfoProto] = []
        self._outputs: list[onnx.ValueInfoProto] = []
        self._counts: dict[str, int] = {}

    def fresh(self, prefix: str) -> str:
        """Return a unique tensor/node name starting with `prefix`."""
        n = self._counts.get(prefix, 0)
        self._counts[prefix] = n + 1
        return prefix if n == 0 else f"{prefix}_{n}"

    def input(self, name: str, shape: Sequence[int | str], dtype=np.float32) -> str:
        """Declare a graph input (string dims are symbolic, e.g. "N")."""
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        self._inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def output(self, name: str, dtype=np.float32) -> str:
        """Declare an existing tensor as a graph output (shape left to inference)."""
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        self._outputs.append(helper.make_tensor_value_info(name, elem, None))
        return name

    def const(self, array: np.ndarray, name: str = "const") -> str:
        """Add an initializer and return its name."""
        name = self.fresh(name)
        self._inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: Sequence[str], n_outputs: int = 1, name: str | None = None,
             **attrs) -> str | list[str]:
        """Add a generic node; returns one output name, or a list when `n_outputs` > 1."""
        base = self.fresh(name or op.lower())
        outs = [base if i == 0 else f"{base}:{i}" for i in range(n_outputs)]
        self._nodes.append(helper.make_node(op, list(inputs), outs, name=base, **attrs))
        return outs[0] if n_outputs == 1 else outs

    # -- layers -----------------------------------------------------------------------------

    def conv(self, x: str, w: np.ndarray, b: np.ndarray | None = None, stride: int = 1,
             pad: int | Sequence[int] | None = None, group: int = 1, dilation: int = 1,
             name: str = "conv") -> str:
        """Conv with OIHW weights; `pad=None` gives 'same' padding for odd kernels."""
        kh, kw = w.shape[2], w.shape[3]
        if pad is None:
            pads = [dilation * (kh - 1) // 2, dilation * (kw - 1) // 2] * 2
        elif isinstance(pad, int):
            pads = [pad] * 4
        else:
            pads = list(pad)
        ins = [x, self.const(w.astype(np.float32), f"{name}.weight")]
        if b is not None:
            ins.append(self.const(b.astype(np.float32), f"{name}.bias"))
        return self.node("Conv", ins, name=name, kernel_shape=[kh, kw], strides=[stride] * 2,
                         pads=pads, group=group, dilations=[dilation] * 2)

    def batchnorm(self, x: str, scale: np.ndarray, bias: np.ndarray, mean: np.ndarray,
                  var: np.ndarray, eps: float = 1e-5, name: str = "bn") -> str:
        """Inference-mode BatchNormalization."""
        ins = [x] + [self.const(a.astype(np.float32), f"{name}.{k}")
                     for k, a in (("scale", scale), ("bias", bias), ("mean", mean), ("var", var))]
        return self.node("BatchNormalization", ins, name=name, epsilon=eps)

    def relu(self, x: str) -> str:
        """ReLU."""
        return self.node("Relu", [x])

    def clip(self, x: str, lo: float, hi: float) -> str:
        """Clip with constant bounds (ReLU6 is `clip(x, 0, 6)`)."""
        lo_name = self.const(np.array(lo, np.float32), "clip_min")
        hi_name = self.const(np.array(hi, np.float32), "clip_max")
        return self.node("Clip", [x, lo_name, hi_name])

    def relu6(self, x: str) -> str:
        """ReLU6 as Clip(0, 6)."""
        return self.clip(x, 0.0, 6.0)

    def add(self, a: str, b: str) -> str:
        """Element-wise (broadcasting) Add."""
        return self.node("Add", [a, b])

    def mul(self, a: str, b: str) -> str:
        """Element-wise (broadcasting) Mul."""
        return self.node("Mul", [a, b])

    def sigmoid(self, x: str) -> str:
        """Sigmoid."""
        return self.node("Sigmoid", [x])

    def maxpool(self, x: str, k: int, stride: int, pad: int = 0, ceil: bool = False) -> str:
        """MaxPool with a square kernel."""
        return self.node("MaxPool", [x], kernel_shape=[k, k], strides=[stride] * 2,
                         pads=[pad] * 4, ceil_mode=int(ceil))

    def avgpool(self, x: str, k: int, stride: int, pad: int = 0) -> str:
        """AveragePool with a square kernel (padding excluded from the average)."""
        return self.node("AveragePool", [x], kernel_shape=[k, k], strides=[stride] * 2,
                         pads=[pad] * 4)

    def global_avgpool(self, x: str) -> str:
        """GlobalAveragePool."""
        return self.node("GlobalAveragePool", [x])

    def flatten(self, x: str, axis: int = 1) -> str:
        """Flatten."""
        return self.node("Flatten", [x], axis=axis)

    def reshape(self, x: str, shape: Sequence[int]) -> str:
        """Reshape to a constant shape."""
        return self.node("Reshape", [x, self.const(np.array(shape, np.int64), "shape")])

    def transpose(self, x: str, perm: Sequence[int]) -> str:
        """Transpose."""
        return self.node("Transpose", [x], perm=list(perm))

    def concat(self, xs: Sequence[str], axis: int = 1) -> str:
        """Concat."""
        return self.node("Concat", list(xs), axis=axis)

    def gemm(self, x: str, w: np.ndarray, b: np.ndarray | None = None, name: str = "fc") -> str:
        """Fully connected layer with weight [out, in] (transB=1)."""
        ins = [x, self.const(w.astype(np.float32), f"{name}.weight")]
        if b is not None:
            ins.append(self.const(b.astype(np.float32), f"{name}.bias"))
        return self.node("Gemm", ins, name=name, transB=1)

    # -- output -----------------------------------------------------------------------------

    def build(self, opset: int = INTERNAL_OPSET, check: bool = True) -> onnx.ModelProto:
        """Emit the model, run shape inference and (optionally) `onnx.checker`."""
        graph = helper.make_graph(self._nodes, self.name, self._inputs, self._outputs,
                                  self._inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                  producer_name="npuc.builder")
        model.ir_version = 8
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        if check:
            onnx.checker.check_model(model, full_check=True)
        return model

    def build_lean(self, opset: int = INTERNAL_OPSET, check: bool = True,
                   min_elements: int = 1 << 20) -> onnx.ModelProto:
        """Like `build`, for models with huge weights (e.g. VGG's 400 MB FC layer).

        Shape inference and the checker serialize the whole model; here they run on a
        skeleton whose initializers of >= `min_elements` elements become typed graph inputs
        (small ones such as Reshape shapes keep their data, which inference needs); the big
        initializers are appended to the checked skeleton afterwards.
        """
        big = [t for t in self._inits if int(np.prod(t.dims)) >= min_elements]
        names = {t.name for t in big}
        skeleton = GraphBuilder(self.name)
        skeleton._nodes, skeleton._outputs = self._nodes, self._outputs
        skeleton._inits = [t for t in self._inits if t.name not in names]
        skeleton._inputs = self._inputs + [
            helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in big]
        model = skeleton.build(opset, check)
        del model.graph.input[len(self._inputs):]
        model.graph.initializer.extend(big)  # the one unavoidable copy of the big weights
        return model


def he_normal(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    """He-normal weights for a conv/fc weight whose fan-in is prod(shape[1:])."""
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
