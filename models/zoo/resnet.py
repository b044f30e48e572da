"""ResNet-50 (torchvision v1.5 topology) with seeded weights and fitted BatchNorm statistics."""

from __future__ import annotations

import numpy as np
import onnx

from models.zoo.blocks import bottleneck, classifier, conv_bn, finish, start
from models.zoo.eager import EagerBuilder

#: (width, blocks, stride) of layer1..layer4; each block outputs 4 * width channels.
RESNET50_LAYERS = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))


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
    b, x, sample = start("resnet50", seed, batch, image_size)
    x, cin = resnet_stem(b, x), 64
    for i, (width, blocks, stride) in enumerate(RESNET50_LAYERS):
        x, cin = resnet_layer(b, x, cin, width, blocks, stride, f"layer{i + 1}")
    return finish(b, [classifier(b, x, cin, num_classes)]), sample
