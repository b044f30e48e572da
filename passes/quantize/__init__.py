"""Symmetric int8 post-training quantization (docs/fixed-point.md, docs/quantization.md).

Modules: `qgraph` (the typed quantized graph), `fixedpoint` (multipliers, requantization,
lookup tables), `build` (float model + thresholds -> QGraph), `reference` (numpy executor),
`emit_int` / `emit_qdq` (ONNX emission), `calibrate` (thresholds), `api` (`quantize_model`).
"""
