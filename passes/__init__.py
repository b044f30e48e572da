"""Importing the foundation first turns onnxruntime's telemetry off (compiler/core)."""

import compiler.core  # noqa: F401
