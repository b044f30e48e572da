"""MobileNetV2 (torchvision topology) with seeded weights and fitted BatchNorm statistics."""

from __future__ import annotations

import numpy as np
import onnx

from compiler.core.errors import ConfigError
from models.zoo.blocks import GAMMA, GAMMA_RESIDUAL, classifier, conv_bn, finish, start
from models.zoo.eager import EagerBuilder

#: (expand ratio t, channels c, repeats n, first stride s), as in the paper and torchvision.
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round `v` to a multiple of `divisor`, never losing > 10% (torchvision `_make_divisible`)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def inverted_residual(b: EagerBuilder, x: str, cin: int, cout: int, stride: int, t: int,
                      name: str) -> str:
    """Expand 1x1 (if t > 1) -> depthwise 3x3 -> linear 1x1 projection, + identity if shapes match.

    Names follow torchvision's `features.<i>.conv.<j>` module paths.
    """
    hidden = int(round(cin * t))
    residual = stride == 1 and cin == cout
    y, j = x, 0
    if t != 1:
        y = conv_bn(b, y, cin, hidden, 1, act="relu6", names=(f"{name}.0.0", f"{name}.0.1"))
        j = 1
    y = conv_bn(b, y, hidden, hidden, 3, stride, group=hidden, act="relu6",
                names=(f"{name}.{j}.0", f"{name}.{j}.1"))
    y = conv_bn(b, y, hidden, cout, 1, act=None, gamma=GAMMA_RESIDUAL if residual else GAMMA,
                names=(f"{name}.{j + 1}", f"{name}.{j + 2}"))
    return b.add(x, y) if residual else y


def mobilenetv2(seed: int = 0, batch: int | str = 1, image_size: int = 224,
                num_classes: int = 1000, width: float = 1.0,
                ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """MobileNetV2 as torchvision (3,504,872 parameters at width 1.0; dropout omitted).

    ReLU6 is Clip(0, 6).

    Args:
        seed: Seed of weights and sample images.
        batch: Batch dimension of `input` (a string makes it symbolic).
        image_size: Input height and width.
        num_classes: Output classes.
        width: Width multiplier applied to every layer (the last conv never shrinks below 1280).

    Returns:
        The model (input `input` [batch, 3, S, S], output `logits`) and sample inputs.
    """
    if width <= 0:
        raise ConfigError(f"width must be > 0, got {width}")
    b, x, sample = start("mobilenetv2", seed, batch, image_size)
    cin = make_divisible(32 * width)
    x = conv_bn(b, x, 3, cin, 3, 2, act="relu6", names=("features.0.0", "features.0.1"))
    i = 1
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        cout = make_divisible(c * width)
        for k in range(n):
            x = inverted_residual(b, x, cin, cout, s if k == 0 else 1, t, f"features.{i}.conv")
            cin, i = cout, i + 1
    last = make_divisible(1280 * max(1.0, width))
    x = conv_bn(b, x, cin, last, 1, act="relu6", names=(f"features.{i}.0", f"features.{i}.1"))
    return finish(b, [classifier(b, x, last, num_classes, name="classifier.1")]), sample
