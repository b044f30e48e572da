"""npuc: post-training compression compiler for ONNX CNNs on int8 accelerators."""

__version__ = "0.1.0"
