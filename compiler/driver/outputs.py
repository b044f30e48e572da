"""Output files that belong together, written all or nothing."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from compiler.core.io import to_proto, write_atomic

if TYPE_CHECKING:
    from passes.quantize.api import QuantResult

QUANT_OUTPUTS = ("model.quant.onnx", "model.qdq.onnx", "calibration.json")


def write_quantized(out_dir: Path, result: QuantResult) -> list[Path]:
    """Write model.quant.onnx, model.qdq.onnx and calibration.json of `result` into DIR.

    The files are written to a staging folder inside DIR and moved into place only when all
    three exist, so a failure leaves no half-written set. Each model is serialized right
    before it is written: one serialized model in memory at a time.
    """
    blobs: dict[str, Callable[[], bytes]] = {
        QUANT_OUTPUTS[0]: lambda: to_proto(result.quant_model).SerializeToString(),
        QUANT_OUTPUTS[1]: lambda: to_proto(result.qdq_model).SerializeToString()}
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".npuc-quantize-", dir=out_dir))
    try:
        for name, make in blobs.items():
            write_atomic(stage / name, make())
        result.table.save(stage / QUANT_OUTPUTS[2])
        for name in QUANT_OUTPUTS:
            os.replace(stage / name, out_dir / name)
        return [out_dir / name for name in QUANT_OUTPUTS]
    finally:
        shutil.rmtree(stage, ignore_errors=True)
