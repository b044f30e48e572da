"""ResNet-18/50/101 (torchvision v1.5 topology), seeded weights, fitted BatchNorm statistics."""

from __future__ import annotations

import numpy as np
import onnx

from models.zoo.blocks import GAMMA_RESIDUAL, bottleneck, classifier, conv_bn, finish, start
from models.zoo.eager import EagerBuilder

#: (width, blocks, stride) of layer1..layer4; each block outputs 4 * width channels.
RESNET50_LAYERS = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
RESNET101_LAYERS = ((64, 3, 1), (128, 4, 2), (256, 23, 2), (512, 3, 2))
#: (width, blocks, stride) of ResNet-18's basic-block stages; each block outputs `width`.
RESNET18_LAYERS = ((64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2))


def resnet_stem(b: EagerBuilder, x: str) -> str:
    """7x7/2 conv + BN + ReLU + 3x3/2 max-pool (pad 1): 3 -> 64 channels, 1/4 resolution."""
    y = conv_bn(b, x, 3, 64, 7, stride=2, pad=3, names=("conv1", "bn1"))
    return b.maxpool(y, 3, 2, pad=1)


def resnet_layer(b: EagerBuilder, x: str, cin: int, width: int, blocks: int, stride: int,
                 name: str) -> tuple[str, int]:
    """A stage of `blocks` bottlenecks, the first carrying `stride`.

    Returns:
        The output tensor name and its channel count (4 * width).
    """
    for i in range(blocks):
        x = bottleneck(b, x, cin, width, stride if i == 0 else 1, f"{name}.{i}")
        cin = 4 * width
    return x, cin


def resnet50(seed: int = 0, batch: int | str = 1, image_size: int = 224,
             num_classes: int = 1000) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """ResNet-50 v1.5 exactly as torchvision (25,557,032 parameters at 1000 classes).

    Args:
        seed: Seed of weights and sample images.
        batch: Batch dimension of `input` (a string makes it symbolic).
        image_size: Input height and width.
        num_classes: Output classes.

    Returns:
        The model (input `input` [batch, 3, S, S], output `logits`) and sample inputs.
    """
    return _bottleneck_resnet("resnet50", RESNET50_LAYERS, seed, batch, image_size,
                              num_classes)


def resnet101(seed: int = 0, batch: int | str = 1, image_size: int = 224,
              num_classes: int = 1000) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """ResNet-101 v1.5 as torchvision (44,549,160 parameters at 1000 classes).

    Arguments and result as `resnet50`.
    """
    return _bottleneck_resnet("resnet101", RESNET101_LAYERS, seed, batch, image_size,
                              num_classes)


def _bottleneck_resnet(name: str, layers: tuple, seed: int, batch: int | str,
                       image_size: int, num_classes: int
                       ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    b, x, sample = start(name, seed, batch, image_size)
    x, cin = resnet_stem(b, x), 64
    for i, (width, blocks, stride) in enumerate(layers):
        x, cin = resnet_layer(b, x, cin, width, blocks, stride, f"layer{i + 1}")
    return finish(b, [classifier(b, x, cin, num_classes)]), sample


def resnet18(seed: int = 0, batch: int | str = 1, image_size: int = 224,
             num_classes: int = 1000) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """ResNet-18 as torchvision (11,689,512 parameters at 1000 classes): basic blocks.

    Arguments and result as `resnet50`.
    """
    b, x, sample = start("resnet18", seed, batch, image_size)
    x, cin = resnet_stem(b, x), 64
    for i, (width, blocks, stride) in enumerate(RESNET18_LAYERS):
        for j in range(blocks):
            x = basic_block(b, x, cin, width, stride if j == 0 else 1, f"layer{i + 1}.{j}")
            cin = width
    return finish(b, [classifier(b, x, cin, num_classes)]), sample


def basic_block(b: EagerBuilder, x: str, cin: int, width: int, stride: int, name: str) -> str:
    """The BasicBlock of torchvision: 3x3 (with the stride) -> 3x3, projection shortcut."""
    y = conv_bn(b, x, cin, width, 3, stride, names=(f"{name}.conv1", f"{name}.bn1"))
    y = conv_bn(b, y, width, width, 3, act=None, gamma=GAMMA_RESIDUAL,
                names=(f"{name}.conv2", f"{name}.bn2"))
    if stride != 1 or cin != width:
        x = conv_bn(b, x, cin, width, 1, stride, act=None, pad=0,
                    names=(f"{name}.downsample.0", f"{name}.downsample.1"))
    return b.relu(b.add(y, x))
