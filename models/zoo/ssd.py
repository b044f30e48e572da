"""SSD300 with a ResNet-50 backbone (NVIDIA DeepLearningExamples / MLPerf layout).

Backbone: torchvision ResNet-50 up to layer3, whose first block has stride 1 so layer3 keeps
the 38x38 map at 300x300. Five extra blocks (1x1 reduce + 3x3) give 19, 10, 5, 3 and 1 maps.
Every map feeds a 3x3 box head (4*A channels) and class head (num_classes*A channels).
Post-processing (decode, NMS) lives in `models.zoo.ssd_postprocess`, outside the graph.
"""

from __future__ import annotations

import numpy as np
import onnx

from compiler.core.builder import he_normal
from models.zoo.blocks import conv_bn, finish, start
from models.zoo.eager import EagerBuilder
from models.zoo.resnet import RESNET50_LAYERS, resnet_layer, resnet_stem
from models.zoo.ssd_postprocess import ANCHORS_PER_LOCATION, feature_sizes

#: Output channels of the six feature maps, and the reduced width inside each extra block.
FEATURE_CHANNELS = (1024, 512, 512, 256, 256, 256)
EXTRA_MID_CHANNELS = (256, 256, 128, 128, 128)


def ssd_backbone(b: EagerBuilder, x: str) -> str:
    """ResNet-50 stem + layer1..layer3, layer3 with stride 1 (1024 channels at 1/8 scale)."""
    x, cin = resnet_stem(b, x), 64
    for i, (width, blocks, stride) in enumerate(RESNET50_LAYERS[:3]):
        x, cin = resnet_layer(b, x, cin, width, blocks, stride if i < 2 else 1, f"layer{i + 1}")
    return x


def ssd_extras(b: EagerBuilder, x: str) -> list[str]:
    """The six feature maps: the backbone output, then 3 stride-2 and 2 unpadded extra blocks."""
    feats = [x]
    for i, mid in enumerate(EXTRA_MID_CHANNELS):
        cin, cout = FEATURE_CHANNELS[i], FEATURE_CHANNELS[i + 1]
        name = f"additional_blocks.{i}"
        y = conv_bn(b, feats[-1], cin, mid, 1, names=(f"{name}.0", f"{name}.1"))
        stride, pad = (2, 1) if i < 3 else (1, 0)
        feats.append(conv_bn(b, y, mid, cout, 3, stride, pad=pad,
                             names=(f"{name}.3", f"{name}.4")))
    return feats


def ssd_head(b: EagerBuilder, feats: list[str], per_anchor: int, name: str) -> str:
    """3x3 conv per map, each reshaped [N, per_anchor, A*H*W] and concatenated on anchors.

    Xavier-scale weights (He / sqrt 2) keep raw offsets small enough for exp() in decode.
    """
    outs = []
    for i, (feat, anchors) in enumerate(zip(feats, ANCHORS_PER_LOCATION, strict=True)):
        cout = per_anchor * anchors
        w = he_normal(b.rng, (cout, FEATURE_CHANNELS[i], 3, 3)) / np.sqrt(2.0)
        y = b.conv(feat, w, np.zeros(cout, np.float32), name=f"{name}.{i}")
        outs.append(b.reshape(y, [0, per_anchor, -1]))
    return b.concat(outs, axis=2)


def ssd_resnet50(seed: int = 0, batch: int | str = 1, image_size: int = 300,
                 num_classes: int = 81) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """SSD300-ResNet50 producing raw `boxes` [N, 8732, 4] and `scores` [N, 8732, classes].

    Args:
        seed: Seed of weights and sample images.
        batch: Batch dimension of `input` (a string makes it symbolic).
        image_size: Input height and width (>= 257 so the last map is not empty).
        num_classes: Classes including background (index 0); 81 is COCO.

    Returns:
        The model and sample inputs. Anchors order matches
        `ssd_postprocess.default_boxes(image_size)`.
    """
    feature_sizes(image_size)  # validates the size before spending time on the backbone
    b, x, sample = start("ssd_resnet50", seed, batch, image_size)
    feats = ssd_extras(b, ssd_backbone(b, x))
    loc = ssd_head(b, feats, 4, "loc")
    conf = ssd_head(b, feats, num_classes, "conf")
    boxes = b.node("Transpose", [loc], name="boxes", perm=[0, 2, 1])
    scores = b.node("Transpose", [conf], name="scores", perm=[0, 2, 1])
    return finish(b, [boxes, scores]), sample
