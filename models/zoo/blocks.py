"""Layers shared by the zoo architectures: fitted conv-BN-activation, bottleneck, classifier.

Weights are He-normal; every BatchNorm gets its running mean/var from the activations the
`EagerBuilder` computed on the calibration images, so each BN output has a per-channel
standard deviation close to its gamma at every depth.
"""

from __future__ import annotations

import numpy as np
import onnx

from compiler.core.builder import he_normal
from compiler.core.errors import ConfigError
from models.zoo.eager import EagerBuilder

#: Calibration images used to fit BN statistics (a few suffice: stats are per channel).
N_CALIB = 2
#: gamma range for ordinary BNs and for the last BN of a residual branch, which stays small
#: so that identity + branch sums do not grow block after block.
GAMMA = (0.5, 1.5)
GAMMA_RESIDUAL = (0.1, 0.3)
#: Per-channel variance floor, relative to the layer mean: with few calibration pixels (1x1
#: maps) a channel's sample variance can be tiny and its BN would then amplify noise.
VAR_FLOOR = 0.1


def sample_images(seed: int, n: int, size: int) -> np.ndarray:
    """Seeded N(0, 1) float32 images of shape [n, 3, size, size]."""
    rng = np.random.default_rng([seed, 1])  # independent of the weight stream
    return rng.standard_normal((n, 3, size, size), dtype=np.float32)


def start(name: str, seed: int, batch: int | str, size: int,
          ) -> tuple[EagerBuilder, str, dict[str, np.ndarray]]:
    """Create an eager builder with the image input `input` declared.

    Args:
        name: Graph name.
        seed: Seed of the weights and of the sample/calibration images.
        batch: Batch dimension of `input`; a string makes it symbolic.
        size: Image height and width.

    Returns:
        The builder, the input tensor name and the sample inputs (batch 1 when symbolic).
    """
    if isinstance(batch, int) and batch < 1:
        raise ConfigError(f"batch must be >= 1 or a symbolic name, got {batch}")
    n_sample = batch if isinstance(batch, int) else 1
    images = sample_images(seed, max(n_sample, N_CALIB), size)
    b = EagerBuilder(name, seed, {"input": images[:N_CALIB]})
    x = b.input("input", [batch, 3, size, size])
    return b, x, {"input": images[:n_sample]}


def finish(b: EagerBuilder, outputs: list[str]) -> onnx.ModelProto:
    """Declare graph outputs, free calibration values and emit the checked model.

    `build_lean` checks a weight-free skeleton: same result, without serializing hundreds
    of MB (VGG) three times.
    """
    for out in outputs:
        b.output(out)
    b.release()
    return b.build_lean()


def fitted_bn(b: EagerBuilder, x: str, gamma: tuple[float, float] = GAMMA,
              name: str = "bn") -> str:
    """BatchNormalization whose running stats are fitted to `x` on the calibration images."""
    act = b.activation(x).astype(np.float64)
    mean = act.mean(axis=(0, 2, 3))
    var = act.var(axis=(0, 2, 3))
    var = np.maximum(var, VAR_FLOOR * var.mean())
    scale = b.rng.uniform(*gamma, size=mean.shape)
    bias = b.rng.uniform(-0.1, 0.1, size=mean.shape) * scale
    return b.batchnorm(x, scale, bias, mean, var, eps=1e-5, name=name)


def conv_bn(b: EagerBuilder, x: str, cin: int, cout: int, k: int, stride: int = 1,
            group: int = 1, act: str | None = "relu", pad: int | None = None,
            gamma: tuple[float, float] = GAMMA, names: tuple[str, str] = ("conv", "bn"),
            bias: bool = False) -> str:
    """Conv (He-normal, bias-free unless `bias`) + fitted BN + optional relu/relu6.

    Args:
        b: Eager builder.
        x: Input tensor.
        cin: Input channels.
        cout: Output channels.
        k: Square kernel size.
        stride: Conv stride.
        group: Conv groups (`group == cin == cout` is depthwise).
        act: "relu", "relu6" or None.
        pad: Conv padding; None is 'same' padding.
        gamma: Range of the BN scale.
        names: Conv and BN node names (torchvision module paths).
        bias: Give the conv a bias (VGG-BN style).

    Returns:
        The output tensor name.
    """
    w = he_normal(b.rng, (cout, cin // group, k, k))
    cb = b.rng.normal(0.0, 0.05, cout).astype(np.float32) if bias else None
    y = b.conv(x, w, cb, stride=stride, pad=pad, group=group, name=names[0])
    y = fitted_bn(b, y, gamma, name=names[1])
    return activate(b, y, act)


def activate(b: EagerBuilder, x: str, act: str | None) -> str:
    """Apply "relu", "relu6" or nothing (None)."""
    if act is None:
        return x
    if act == "relu":
        return b.relu(x)
    if act == "relu6":
        return b.relu6(x)
    raise ConfigError(f"unknown activation {act!r}")


def bottleneck(b: EagerBuilder, x: str, cin: int, width: int, stride: int, name: str) -> str:
    """ResNet v1.5 Bottleneck (torchvision): 1x1 -> 3x3 (carries the stride) -> 1x1, x4 out.

    A 1x1 conv + BN projection shortcut is used when the stride or channel count changes.
    """
    cout = 4 * width
    y = conv_bn(b, x, cin, width, 1, names=(f"{name}.conv1", f"{name}.bn1"))
    y = conv_bn(b, y, width, width, 3, stride, names=(f"{name}.conv2", f"{name}.bn2"))
    y = conv_bn(b, y, width, cout, 1, act=None, gamma=GAMMA_RESIDUAL,
                names=(f"{name}.conv3", f"{name}.bn3"))
    if stride != 1 or cin != cout:
        x = conv_bn(b, x, cin, cout, 1, stride, act=None, pad=0,
                    names=(f"{name}.downsample.0", f"{name}.downsample.1"))
    return b.relu(b.add(y, x))


def classifier(b: EagerBuilder, x: str, cin: int, num_classes: int,
               name: str = "fc") -> str:
    """GAP + Flatten + Gemm whose output tensor is named `logits`.

    With random weights the mean feature vector dominates every image's logits, so the argmax
    would be the same class for all inputs; the bias cancels the calibration mean instead,
    leaving logits driven by what differs between images (see `centering_bias`).
    """
    feats = b.flatten(b.global_avgpool(x))
    w = he_normal(b.rng, (num_classes, cin))
    return dense(b, feats, w, centering_bias(b, feats, w), name, out="logits")


def centering_bias(b: EagerBuilder, x: str, w: np.ndarray) -> np.ndarray:
    """Bias making `x @ w.T + bias` zero-mean per output over the calibration images."""
    return -(w.astype(np.float64) @ b.activation(x).astype(np.float64).mean(axis=0))


def dense(b: EagerBuilder, x: str, w: np.ndarray, bias: np.ndarray, name: str,
          out: str | None = None) -> str:
    """Gemm with torchvision-style parameter names `<name>.weight/.bias`.

    Args:
        b: Builder.
        x: Input tensor [N, in].
        w: Weight [out, in].
        bias: Bias [out].
        name: Module path used for the parameter names.
        out: Output tensor name (defaults to `name`).

    Returns:
        The output tensor name.
    """
    ins = [x, b.const(w.astype(np.float32, copy=False), f"{name}.weight"),
           b.const(np.asarray(bias, np.float32), f"{name}.bias")]
    return b.node("Gemm", ins, name=out or name, transB=1)
