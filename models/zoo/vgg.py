"""VGG-16 (torchvision configuration "D") with seeded weights, optionally with BatchNorm."""

from __future__ import annotations

import numpy as np
import onnx

from compiler.core.builder import he_normal
from compiler.core.errors import ConfigError
from models.zoo.blocks import centering_bias, conv_bn, dense, finish, start
from models.zoo.eager import EagerBuilder

#: Conv widths; "M" is a 2x2/2 max-pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
             512, 512, 512, "M")
BIAS_STD = 0.05


def vgg_features(b: EagerBuilder, x: str, bn: bool) -> str:
    """The conv/ReLU/max-pool stack, named `features.<i>` like torchvision's `nn.Sequential`."""
    cin, i = 3, 0
    for v in VGG16_CFG:
        if v == "M":
            x, i = b.maxpool(x, 2, 2), i + 1
        elif bn:
            x = conv_bn(b, x, cin, v, 3, names=(f"features.{i}", f"features.{i + 1}"), bias=True)
            cin, i = v, i + 3
        else:
            w, bias = he_normal(b.rng, (v, cin, 3, 3)), b.rng.normal(0, BIAS_STD, v)
            x = b.relu(b.conv(x, w, bias, name=f"features.{i}"))
            cin, i = v, i + 2
    return x


def he_normal_f32(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """He-normal drawn directly in float32: the 25088x4096 FC would need 1.6 GB in float64."""
    w = rng.standard_normal(shape, dtype=np.float32)
    w *= np.float32(np.sqrt(2.0 / shape[1]))
    return w


def vgg_classifier(b: EagerBuilder, x: str, flat: int, num_classes: int) -> str:
    """Flatten + FC-4096 + ReLU + FC-4096 + ReLU + FC (dropout omitted); output `logits`.

    The last bias is centered on the calibration images (as `blocks.classifier` does):
    otherwise every input gets the same argmax.
    """
    x = b.flatten(x)
    dims = (flat, 4096, 4096, num_classes)
    for j in range(2):
        w = he_normal_f32(b.rng, (dims[j + 1], dims[j]))
        x = b.relu(dense(b, x, w, b.rng.normal(0, BIAS_STD, dims[j + 1]), f"classifier.{3 * j}"))
    w = he_normal_f32(b.rng, (num_classes, 4096))
    return dense(b, x, w, centering_bias(b, x, w), "classifier.6", out="logits")


def vgg16(seed: int = 0, batch: int | str = 1, image_size: int = 224, num_classes: int = 1000,
          bn: bool = False) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """VGG-16 (138,357,544 parameters at 224 and 1000 classes; 138,365,992 with `bn`).

    torchvision's adaptive 7x7 average pool is omitted, so a smaller image shrinks the first
    FC layer instead of being upsampled (at 224 the pool is an identity anyway).

    Args:
        seed: Seed of weights and sample images.
        batch: Batch dimension of `input` (a string makes it symbolic).
        image_size: Input height and width (>= 32; five 2x2 pools floor it).
        num_classes: Output classes.
        bn: Insert BatchNormalization after every conv (torchvision's `vgg16_bn`), with
            statistics fitted on calibration images.

    Returns:
        The model (input `input` [batch, 3, S, S], output `logits`) and sample inputs.
    """
    if image_size < 32:
        raise ConfigError(f"vgg16 image_size must be >= 32, got {image_size}")
    b, x, sample = start("vgg16", seed, batch, image_size)
    x = vgg_features(b, x, bn)
    flat = 512 * (image_size // 32) ** 2
    return finish(b, [vgg_classifier(b, x, flat, num_classes)]), sample
