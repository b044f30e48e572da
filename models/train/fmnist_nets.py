"""The two Fashion-MNIST networks (torch) and their ONNX writer (`models.train.fmnist`).

The networks are plain torch modules whose names become the ONNX node names; the writer
emits exactly Conv, BatchNormalization, Relu, Clip, Add, GlobalAveragePool, Flatten and Gemm
with ``onnx.helper`` from the trained weights (no ``torch.onnx.export``).
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np

from models.datasets.fmnist_idx import MEAN, STD

try:  # torch is only needed to train; importing this module without it stays possible.
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn
except ImportError:  # pragma: no cover - exercised in the main venv
    torch = None
    F = None
    nn = SimpleNamespace(Module=object)

ARCHS = ("resnet", "mobilenetv2")
OPSET = 17


# --------------------------------------------------------------------------------------------
# ONNX emission (numpy weights -> onnx.helper)
# --------------------------------------------------------------------------------------------


class OnnxWriter:
    """Accumulates nodes and initializers for a single-input, single-output float graph."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []

    def _init(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def _node(self, op: str, name: str, inputs: list[str], **attrs: Any) -> str:
        from onnx import helper

        out = f"{name}.out" if op != "Gemm" else "logits"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def conv(self, name: str, conv: nn.Module, x: str) -> str:
        """Emit a Conv node (no bias when the torch conv has none)."""
        inputs = [x, self._init(f"{name}.weight", _np(conv.weight))]
        if conv.bias is not None:
            inputs.append(self._init(f"{name}.bias", _np(conv.bias)))
        ph, pw = conv.padding
        return self._node(
            "Conv", name, inputs,
            kernel_shape=list(conv.kernel_size), strides=list(conv.stride),
            pads=[ph, pw, ph, pw], dilations=list(conv.dilation), group=conv.groups,
        )

    def bn(self, name: str, bn: nn.Module, x: str) -> str:
        """Emit an inference-mode BatchNormalization node."""
        inputs = [
            x,
            self._init(f"{name}.weight", _np(bn.weight)),
            self._init(f"{name}.bias", _np(bn.bias)),
            self._init(f"{name}.running_mean", _np(bn.running_mean)),
            self._init(f"{name}.running_var", _np(bn.running_var)),
        ]
        return self._node("BatchNormalization", name, inputs, epsilon=float(bn.eps))

    def relu(self, name: str, x: str) -> str:
        """Emit a Relu node."""
        return self._node("Relu", name, [x])

    def relu6(self, name: str, x: str) -> str:
        """Emit ReLU6 as Clip with min/max given as constant (initializer) inputs."""
        lo = self._init(f"{name}.min", np.array(0.0, dtype=np.float32))
        hi = self._init(f"{name}.max", np.array(6.0, dtype=np.float32))
        return self._node("Clip", name, [x, lo, hi])

    def add(self, name: str, a: str, b: str) -> str:
        """Emit an elementwise Add node."""
        return self._node("Add", name, [a, b])

    def head(self, fc: nn.Module, x: str) -> str:
        """Emit GlobalAveragePool -> Flatten -> Gemm producing ``logits``."""
        x = self._node("GlobalAveragePool", "pool", [x])
        x = self._node("Flatten", "flatten", [x], axis=1)
        w = self._init("fc.weight", _np(fc.weight))
        b = self._init("fc.bias", _np(fc.bias))
        return self._node("Gemm", "fc", [x, w, b], transB=1)

    def model(self, graph_name: str, doc: str) -> Any:
        """Assemble the ModelProto (dynamic batch dim ``N``)."""
        from onnx import TensorProto, checker, helper

        inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])
        graph = helper.make_graph(self.nodes, graph_name, [inp], [out], self.inits, doc)
        proto = helper.make_model(
            graph, producer_name="npuc-train", opset_imports=[helper.make_opsetid("", OPSET)]
        )
        proto.ir_version = 8
        helper.set_model_props(
            proto, {"preprocessing": json.dumps(preprocessing_record()), "dataset": "fmnist"}
        )
        checker.check_model(proto, full_check=True)
        return proto


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN + shortcut (1x1 conv+BN if reshaped)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the block."""
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x if self.downsample is None else self.downsample(x)
        return F.relu(y + s)

    def emit(self, w: OnnxWriter, p: str, x: str) -> str:
        """Emit the block into ``w`` under name prefix ``p``."""
        y = w.relu(f"{p}.relu1", w.bn(f"{p}.bn1", self.bn1, w.conv(f"{p}.conv1", self.conv1, x)))
        y = w.bn(f"{p}.bn2", self.bn2, w.conv(f"{p}.conv2", self.conv2, y))
        s = x
        if self.downsample is not None:
            s = w.conv(f"{p}.downsample.0", self.downsample[0], x)
            s = w.bn(f"{p}.downsample.1", self.downsample[1], s)
        return w.relu(f"{p}.relu2", w.add(f"{p}.add", y, s))


class ResNet(nn.Module):
    """Small CIFAR-style ResNet for 28x28 grey images."""

    def __init__(
        self, stem: int = 16, widths: tuple[int, ...] = (24, 48, 96),
        blocks: tuple[int, ...] = (2, 2, 2), strides: tuple[int, ...] = (1, 2, 2),
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        layers, cin = [], stem
        for width, n, stride in zip(widths, blocks, strides, strict=True):
            stage = [BasicBlock(cin if i == 0 else width, width, stride if i == 0 else 1)
                     for i in range(n)]
            layers.append(nn.Sequential(*stage))
            cin = width
        self.layers = nn.ModuleList(layers)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits [N, 10]."""
        x = F.relu(self.bn1(self.conv1(x)))
        for stage in self.layers:
            x = stage(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def emit(self, w: OnnxWriter) -> str:
        """Emit the whole network into ``w``; returns the output name."""
        x = w.relu("relu1", w.bn("bn1", self.bn1, w.conv("conv1", self.conv1, "input")))
        for si, stage in enumerate(self.layers):
            for bi, block in enumerate(stage):
                x = block.emit(w, f"layers.{si}.{bi}", x)
        return w.head(self.fc, x)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand-BN-ReLU6] - 3x3 dw-BN-ReLU6 - 1x1 project-BN (+ x)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.expand = None
        if expand != 1:
            self.expand = nn.Conv2d(cin, hidden, 1, 1, 0, bias=False)
            self.bn0 = nn.BatchNorm2d(hidden)
        self.dw = nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, cout, 1, 1, 0, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the block."""
        y = x if self.expand is None else F.relu6(self.bn0(self.expand(x)))
        y = F.relu6(self.bn1(self.dw(y)))
        y = self.bn2(self.project(y))
        return x + y if self.use_res else y

    def emit(self, w: OnnxWriter, p: str, x: str) -> str:
        """Emit the block into ``w`` under name prefix ``p``."""
        y = x
        if self.expand is not None:
            y = w.conv(f"{p}.expand", self.expand, y)
            y = w.relu6(f"{p}.relu0", w.bn(f"{p}.bn0", self.bn0, y))
        y = w.relu6(f"{p}.relu1", w.bn(f"{p}.bn1", self.bn1, w.conv(f"{p}.dw", self.dw, y)))
        y = w.bn(f"{p}.bn2", self.bn2, w.conv(f"{p}.project", self.project, y))
        return w.add(f"{p}.add", x, y) if self.use_res else y


# (expansion t, output channels c, repeats n, first stride s): the MobileNetV2 paper's first
# five stages with t=4 instead of 6 (about 1.4x cheaper to train on CPU, same block structure).
MBV2_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),   # 28x28, no expand conv (t=1), as in the paper
    (4, 24, 2, 2),   # 14x14
    (4, 32, 3, 1),
    (4, 64, 3, 2),   # 7x7
    (4, 96, 2, 1),
)


class MobileNetV2(nn.Module):
    """Small MobileNetV2 for 28x28 grey images."""

    def __init__(
        self, stem: int = 16, cfg: tuple[tuple[int, int, int, int], ...] = MBV2_CFG,
        last: int = 256,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        blocks, cin = [], stem
        for t, c, n, s in cfg:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(cin, last, 1, 1, 0, bias=False)
        self.bn2 = nn.BatchNorm2d(last)
        self.fc = nn.Linear(last, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits [N, 10]."""
        x = F.relu6(self.bn1(self.conv1(x)))
        x = self.blocks(x)
        x = F.relu6(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def emit(self, w: OnnxWriter) -> str:
        """Emit the whole network into ``w``; returns the output name."""
        x = w.relu6("relu1", w.bn("bn1", self.bn1, w.conv("conv1", self.conv1, "input")))
        for i, block in enumerate(self.blocks):
            x = block.emit(w, f"blocks.{i}", x)
        x = w.relu6("relu2", w.bn("bn2", self.bn2, w.conv("conv2", self.conv2, x)))
        return w.head(self.fc, x)


def build_model(arch: str) -> nn.Module:
    """Build an untrained model.

    Args:
        arch: ``"resnet"`` or ``"mobilenetv2"``.

    Returns:
        The torch module.
    """
    if arch == "resnet":
        return ResNet()
    if arch == "mobilenetv2":
        return MobileNetV2()
    raise ValueError(f"unknown arch {arch!r}; choose from {ARCHS}")


def preprocessing_record() -> dict[str, Any]:
    """Describe the input preprocessing the models expect."""
    return {
        "formula": "x = (uint8 / 255 - mean) / std",
        "mean": MEAN,
        "std": STD,
        "layout": "NCHW float32 [N,1,28,28]",
    }
