"""Data files inside installed packages, found without importing those packages.

rapidocr-onnxruntime ships the PP-OCR ONNX models and, in the recogniser's metadata, its
character dictionary. The datasets (text lines must be spellable by the recogniser) and the
pretrained loaders both read them from here, so neither imports the other for it.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import onnx

from compiler.core.errors import ModelLoadError

DET_FILE = "ch_PP-OCRv4_det_infer.onnx"
REC_FILE = "ch_PP-OCRv4_rec_infer.onnx"
CLS_FILE = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
DET_SHAPE = (1, 3, 640, 640)
REC_SHAPE = (1, 3, 48, 320)
CLS_SHAPE = (1, 3, 48, 192)
BLANK = "blank"


def models_dir() -> Path:
    """Return rapidocr_onnxruntime's ``models`` folder without importing the package.

    Importing it would pull in OpenCV; only its data files are needed.

    Raises:
        ModelLoadError: If the package is not installed.
    """
    try:
        spec = importlib.util.find_spec("rapidocr_onnxruntime")
    except (ImportError, ValueError):  # ValueError: blocked/half-imported module entry
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("rapidocr-onnxruntime is not installed: "
                             "install with pip install -e .[zoo]")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def model_file(name: str) -> Path:
    """Path of one bundled PP-OCR ``.onnx`` file (`DET_FILE`, `REC_FILE` or `CLS_FILE`)."""
    path = models_dir() / name
    if not path.is_file():
        raise ModelLoadError(f"{path}: PP-OCR model missing from the rapidocr-onnxruntime install")
    return path



@functools.lru_cache(maxsize=1)
def _charset() -> tuple[str, ...]:
    path = model_file(REC_FILE)
    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if "character" not in meta:
        raise ModelLoadError(f"{path}: no 'character' metadata (rec dictionary)")
    return (BLANK, *meta["character"].splitlines(), " ")


def ocr_charset() -> list[str]:
    """The rec model's output alphabet: ``["blank", <dictionary>..., " "]`` (6625 entries)."""
    return list(_charset())
