"""Field-corpus graphs from TensorFlow: genuine tf2onnx exports of keras.applications models.

Runs in its own venv (tensorflow-cpu + tf2onnx), invoked by ``coverage.py generate`` as
``TF_PYTHON benchmarks/coverage_tf.py CORPUS``; writes its manifest entries to
``CORPUS/_tf_entries.json``. Weights
are keras' random init (``weights=None``); BatchNorm moving statistics are set from one
training-mode pass over photos (momentum 0), so activations have realistic ranges. One model
also goes keras -> TFLite -> tf2onnx, the path of TFLite-converted graphs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from coverage_photos import CAFFE, CALIB, IMAGENET, RAW, load_photos, preprocess  # noqa: E402

logger = logging.getLogger("coverage")
MINUS_ONE_ONE = {"scale": 1 / 127.5, "mean": [1.0], "std": [1.0]}

# (name, keras.applications constructor, size, preprocessing, opset, dynamic batch, tflite)
MODELS = [
    ("tf2onnx_keras_mobilenet_v2_op13_dyn", "MobileNetV2", 224, MINUS_ONE_ONE, 13, True, False),
    ("tf2onnx_keras_resnet50_op13", "ResNet50", 224, CAFFE, 13, False, False),
    ("tf2onnx_keras_efficientnet_b0_op15", "EfficientNetB0", 224, RAW, 15, False, False),
    ("tf2onnx_keras_mobilenet_v3_small_op15", "MobileNetV3Small", 224, RAW, 15, False, False),
    ("tf2onnx_keras_densenet121_op13", "DenseNet121", 224, IMAGENET, 13, False, False),
    ("tf2onnx_tflite_mobilenet_v2_035_op13", "MobileNetV2", 224, MINUS_ONE_ONE, 13, False, True),
]


def _keras_model(ctor: str, size: int, tflite: bool):
    import keras

    keras.utils.set_random_seed(0)
    kwargs = {"alpha": 0.35} if tflite else {}
    return getattr(keras.applications, ctor)(weights=None, input_shape=(size, size, 3),
                                             **kwargs)


def recalibrate_bn(model, x: np.ndarray) -> None:
    """Moving mean/var := batch statistics of one training-mode pass (momentum 0)."""
    import keras

    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0
    model(x, training=True)


def export(corpus: Path, row: tuple) -> dict:
    """Build, recalibrate and convert one `MODELS` row; return its manifest entry."""
    import tensorflow as tf
    import tf2onnx

    name, ctor, size, pre, opset, dynamic, tflite = row
    spec = {"shape": [1, size, size, 3], "layout": "NHWC", "resize": "crop", **pre}
    path = corpus / f"{name}.onnx"
    route = "keras -> TFLite -> tf2onnx.convert.from_tflite" if tflite else \
        "tf2onnx.convert.from_keras"
    entry = {"name": name, "file": path.name, "input": spec, "origin": "keras.applications",
             "exporter": f"tf2onnx {tf2onnx.__version__} (tensorflow {tf.__version__}), {route}"}
    if path.exists():
        return entry
    model = _keras_model(ctor, size, tflite)
    recalibrate_bn(model, preprocess(load_photos(corpus)[CALIB], spec))
    if tflite:
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        tfl = corpus / f"_{name}.tflite"
        tfl.write_bytes(conv.convert())
        proto, _ = tf2onnx.convert.from_tflite(str(tfl), opset=opset)
    else:
        sig = (tf.TensorSpec((None if dynamic else 1, size, size, 3), tf.float32,
                             name="input"),)
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=sig, opset=opset)
    import onnx

    onnx.save(proto, str(path))
    return entry


def main(corpus: Path) -> list[dict]:
    entries = []
    for row in MODELS:
        try:
            entries.append(export(corpus, row))
        except Exception as e:  # noqa: BLE001 - one graph failing must not lose the others
            logger.exception("generating %s failed", row[0])
            entries.append({"name": row[0], "file": f"{row[0]}.onnx", "origin":
                            "keras.applications", "exporter": "tf2onnx",
                            "generate_error": f"{type(e).__name__}: {str(e)[:300]}"})
    return entries


def tiny_keras(out: Path, corpus: Path) -> None:
    """A small MobileNetV2-like keras model through tf2onnx (tests/data/field)."""
    import keras
    import tensorflow as tf
    import tf2onnx
    from keras import layers

    keras.utils.set_random_seed(0)
    inp = keras.Input((64, 64, 3))
    x = layers.ZeroPadding2D(((0, 1), (0, 1)))(inp)
    x = layers.Conv2D(16, 3, strides=2, use_bias=False)(x)
    x = layers.ReLU(6.0)(layers.BatchNormalization()(x))
    for cout, stride in ((16, 1), (24, 2), (24, 1)):
        y = layers.ReLU(6.0)(layers.BatchNormalization()(layers.Conv2D(cout * 4, 1)(x)))
        y = layers.DepthwiseConv2D(3, strides=stride, padding="same")(y)
        y = layers.ReLU(6.0)(layers.BatchNormalization()(y))
        y = layers.BatchNormalization()(layers.Conv2D(cout, 1)(y))
        x = layers.Add()([x, y]) if stride == 1 and x.shape[-1] == cout else y
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, layers.Dense(10, activation="softmax")(x))
    spec = {"shape": [1, 64, 64, 3], "layout": "NHWC", "resize": "crop", **MINUS_ONE_ONE}
    recalibrate_bn(model, preprocess(load_photos(corpus)[CALIB], spec))
    sig = (tf.TensorSpec((None, 64, 64, 3), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=sig, opset=13)
    import onnx

    onnx.save(proto, str(out / "tf2onnx_keras_tiny_mobilenet_op13_dyn.onnx"))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if sys.argv[1] == "testdata":
        tiny_keras(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        out = Path(sys.argv[1])
        (out / "_tf_entries.json").write_text(json.dumps(main(out), indent=1))

