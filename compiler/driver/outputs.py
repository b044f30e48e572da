"""Output files that belong together, written all or nothing."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from compiler.core.io import write_model
from compiler.core.onnxfile import check_replaceable

if TYPE_CHECKING:
    from passes.quantize.api import QuantResult

QUANT_OUTPUTS = ("model.quant.onnx", "model.qdq.onnx", "calibration.json")


def write_quantized(out_dir: Path, result: QuantResult) -> list[Path]:
    """Write model.quant.onnx, model.qdq.onnx and calibration.json of `result` into DIR.

    The files are written to a staging folder inside DIR and moved into place only when all
    three exist, so a failure leaves no half-written set. The weights are streamed from the
    IR into each file (`compiler.core.io.write_model`), never serialized in memory; a model
    above 2 GB keeps them in `<name>.data` next to it, moved along with it.

    Returns:
        model.quant.onnx, model.qdq.onnx, calibration.json (external data files not listed).
    """
    models = {QUANT_OUTPUTS[0]: result.quant_model, QUANT_OUTPUTS[1]: result.qdq_model}
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".npuc-quantize-", dir=out_dir))
    try:
        written = [f for name, model in models.items() for f in write_model(model, stage / name)]
        result.table.save(stage / QUANT_OUTPUTS[2])
        for path in written + [stage / QUANT_OUTPUTS[2]]:
            check_replaceable(out_dir / path.name)
        for path in written + [stage / QUANT_OUTPUTS[2]]:
            os.replace(path, out_dir / path.name)
        return [out_dir / name for name in QUANT_OUTPUTS]
    finally:
        shutil.rmtree(stage, ignore_errors=True)
