"""PP-OCR models shipped inside the `rapidocr-onnxruntime` wheel.

- ``ppocr_det``: PP-OCRv4 text detector (DBNet), a probability map the size of its input;
- ``ppocr_rec``: PP-OCRv4 recogniser (SVTR-LCNet, CTC head), ``[N, T, 6625]`` softmax scores;
- ``ppocr_cls``: PP-OCR mobile v2.0 text-direction classifier (0 vs 180 degrees).

Their weights are Constant nodes (Paddle2ONNX export); canonicalization folds them, so they are
returned untouched apart from a concrete input shape. The rec character dictionary is embedded
in the rec model's ``character`` metadata; index 0 is the CTC blank and the last index a space,
as in rapidocr's `CTCLabelDecode`.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from compiler.core.errors import DataError, ModelLoadError
from models.packaged import (  # noqa: F401 - re-exported: the PP-OCR model facts
    BLANK,
    CLS_FILE,
    CLS_SHAPE,
    DET_FILE,
    DET_SHAPE,
    REC_FILE,
    REC_SHAPE,
    model_file,
    models_dir,
    ocr_charset,
)

logger = logging.getLogger(__name__)

def _load_with_shape(name: str, shape: tuple[int, ...]) -> onnx.ModelProto:
    """Load a bundled model and pin its single image input to `shape`."""
    path = model_file(name)
    model = onnx.load(str(path))
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != len(shape):
        raise ModelLoadError(f"{path}: expected one 4-D image input")
    for dim, value in zip(inputs[0].type.tensor_type.shape.dim, shape, strict=True):
        dim.Clear()
        dim.dim_value = value
    return model


def _sample(shape: tuple[int, ...], text: str) -> np.ndarray:
    """A rendered text line, normalised like PP-OCR, resized into `shape`."""
    from models.datasets.text_lines import render_line, to_ocr_input

    image = render_line(text)
    return np.repeat(to_ocr_input(image, shape[2], shape[3]), shape[0], axis=0)


def ppocr_det(height: int = DET_SHAPE[2], width: int = DET_SHAPE[3]
              ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """PP-OCRv4 detector with input ``[1, 3, height, width]`` (multiples of 32).

    The sample input is a white page with a few rendered text lines, normalised with
    mean = std = 0.5 as rapidocr does for detection.
    """
    if height % 32 or width % 32:
        raise ModelLoadError(f"PP-OCR det input {height}x{width}: sides must be multiples of 32")
    from models.datasets.text_lines import render_page

    page = render_page(["PP-OCRv4 det 2024", "total 12.50 EUR", "npuc int8"], height, width)
    x = (page.astype(np.float32) / 255.0 - 0.5) / 0.5
    sample = np.repeat(x[None, None], 3, axis=1)
    return _load_with_shape(DET_FILE, (1, 3, height, width)), {"x": sample}


def ppocr_rec() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """PP-OCRv4 recogniser, input ``[1, 3, 48, 320]``; sample: a rendered "Invoice 2024-05-17"."""
    return _load_with_shape(REC_FILE, REC_SHAPE), {"x": _sample(REC_SHAPE, "Invoice 2024-05-17")}


def ppocr_cls() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """PP-OCR mobile v2.0 direction classifier, input ``[1, 3, 48, 192]`` (classes 0°, 180°)."""
    return _load_with_shape(CLS_FILE, CLS_SHAPE), {"x": _sample(CLS_SHAPE, "Total 12.50")}


def ctc_greedy_decode(logits: np.ndarray, charset: list[str]) -> list[str]:
    """Best-path CTC decoding: argmax per step, merge repeats, drop blanks (index 0).

    Args:
        logits: Scores ``[N, T, C]`` (probabilities or logits; only the argmax matters).
        charset: ``C`` symbols, index 0 being the blank.

    Returns:
        One string per batch item.

    Raises:
        DataError: If the scores are not ``[N, T, len(charset)]``.
    """
    logits = np.asarray(logits)
    if logits.ndim != 3 or logits.shape[2] != len(charset):
        raise DataError(f"CTC scores of shape {logits.shape} do not match a charset of "
                         f"{len(charset)} symbols")
    best = logits.argmax(axis=2)
    keep = np.ones_like(best, dtype=bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]
    keep &= best != 0
    return ["".join(charset[i] for i in row[mask]) for row, mask in zip(best, keep, strict=True)]
