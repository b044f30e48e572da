"""Reference CNN architectures written directly as ONNX with seeded, BN-calibrated weights.

Every builder returns `(model, sample_inputs)`: an opset-17 `onnx.ModelProto` with one
input named `input` ([batch, 3, S, S] float32) and a dict of seeded N(0, 1) sample images.
"""

from models.zoo.mobilenet import mobilenetv2
from models.zoo.resnet import resnet18, resnet50, resnet101
from models.zoo.ssd import ssd_resnet50
from models.zoo.vgg import vgg16

ARCHITECTURES = {"resnet50": resnet50, "mobilenetv2": mobilenetv2, "vgg16": vgg16,
                 "ssd_resnet50": ssd_resnet50}

#: Depth variants, for scale measurements (benchmarks/scale_curves.py); not in ARCHITECTURES,
#: which the zoo tests and evaluations sweep.
RESNETS = {"resnet18": resnet18, "resnet50": resnet50, "resnet101": resnet101}

__all__ = ["ARCHITECTURES", "RESNETS", "mobilenetv2", "resnet18", "resnet50", "resnet101",
           "ssd_resnet50", "vgg16"]
