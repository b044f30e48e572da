"""Output files that belong together, written all or nothing."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from compiler.core.checked_save import check_model_out
from compiler.core.errors import ConfigError
from compiler.core.io import write_model
from compiler.core.onnxfile import check_replaceable
from compiler.core.outpaths import make_dir
from compiler.core.progress import timed

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
    for name, model in models.items():
        check_model_out(model, str(out_dir / name))
    make_dir(out_dir)
    try:
        stage = Path(tempfile.mkdtemp(prefix=".npuc-quantize-", dir=out_dir))
    except OSError as e:
        raise ConfigError(f"-o {out_dir}: cannot be written ({e.strerror or e})") from e
    try:
        written = []
        for name, model in models.items():
            with timed(f"write.{name}"):
                written += write_model(model, stage / name)
        with timed(f"write.{QUANT_OUTPUTS[2]}"):
            result.table.save(stage / QUANT_OUTPUTS[2])
        for path in written + [stage / QUANT_OUTPUTS[2]]:
            check_replaceable(out_dir / path.name)
        for path in written + [stage / QUANT_OUTPUTS[2]]:
            os.replace(path, out_dir / path.name)
        return [out_dir / name for name in QUANT_OUTPUTS]
    finally:
        shutil.rmtree(stage, ignore_errors=True)
