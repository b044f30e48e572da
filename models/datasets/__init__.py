"""Dataset readers for the model zoo (numpy only, no torch).

`load_dataset` resolves a bundled dataset name or an ``.npz`` file into a `Dataset`:

==============  ======================================================  ==============
name            contents                                                kind
==============  ======================================================  ==============
fmnist-eval     2,000 Fashion-MNIST test images (committed npz)         classification
fmnist-calib    256 Fashion-MNIST train images (committed npz)          classification
fmnist-test     the full 10,000-image test split (Debian package)       classification
fmnist-train    the 60,000-image training split (Debian package)        classification
photos          320 crops of bundled real photos, ImageNet-normalised   unlabelled
text-lines      200 rendered text lines with their strings              ocr
==============  ======================================================  ==============
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from compiler.core.errors import DataError
from compiler.core.npfiles import read_npz

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
ACCURACY_JSON = Path(__file__).resolve().parent.parent / "trained" / "accuracy.json"
Kind = Literal["classification", "ocr", "unlabelled"]


@dataclass(frozen=True)
class Dataset:
    """Model inputs with optional labels.

    Attributes:
        inputs: float32 batch ``[N, C, H, W]`` ready for the model.
        labels: int class ids ``[N]``, strings (OCR), or None.
        name: Dataset name or file path, for messages and reports.
        kind: How `labels` are scored.
    """

    inputs: np.ndarray
    labels: np.ndarray | list[str] | None
    name: str
    kind: Kind

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


def load_npz(path: str | Path, name: str | None = None, limit: int | None = None) -> Dataset:
    """Read ``images`` (and optional integer ``labels``) from an ``.npz`` file.

    Sizes are checked before anything is allocated (`compiler.core.npfiles`); with `limit`
    only the first `limit` samples are read.

    Raises:
        DataError: If the file is missing/unreadable, lacks ``images``, or the label count
            differs from the image count.
    """
    path = Path(path)
    if limit is not None and limit < 1:
        raise DataError(f"{path}: limit must be positive, got {limit}")
    try:
        arrays = {k: v for k, v in read_npz(path, limit).items() if k in ("images", "labels")}
    except OSError as exc:
        raise DataError(f"{path}: cannot read npz file ({exc.strerror or exc})") from exc
    if "images" not in arrays:
        raise DataError(f"{path}: no 'images' array in the npz file")
    images, labels = arrays["images"], arrays.get("labels")
    if not len(images):
        raise DataError(f"{path}: 'images' holds no samples")
    if images.dtype.kind not in "fiu":
        raise DataError(f"{path}: 'images' has dtype {images.dtype}, expected numbers")
    if images.ndim != 4:
        raise DataError(f"{path}: 'images' must be [N, C, H, W], got shape {list(images.shape)}")
    if labels is not None:
        labels = _check_labels(path, labels, len(images))
    kind: Kind = "classification" if labels is not None else "unlabelled"
    return Dataset(images.astype(np.float32, copy=False), labels, name or str(path), kind)


def _check_labels(path: Path, labels: np.ndarray, n: int) -> np.ndarray:
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: 'labels' must be a 1-D integer array, got "
                        f"{labels.dtype} {list(labels.shape)}")
    if len(labels) != n:
        raise DataError(f"{path}: {len(labels)} labels for {n} images")
    if labels.size and labels.min() < 0:
        raise DataError(f"{path}: negative class label {int(labels.min())}")
    return labels.astype(np.int64)


def _fmnist_norm() -> tuple[float, float]:
    """Mean/std the trained models expect: ``accuracy.json`` if present, else the defaults."""
    if ACCURACY_JSON.is_file():
        try:
            prep = json.loads(ACCURACY_JSON.read_text())["preprocessing"]
            return float(prep["mean"]), float(prep["std"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{ACCURACY_JSON}: bad 'preprocessing' record ({exc})") from exc
    from models.datasets.fmnist_idx import MEAN, STD

    return float(MEAN), float(STD)


def _fmnist(split: str, limit: int | None = None) -> Dataset:
    """One Fashion-MNIST split, normalised as the trained models expect.

    Only the first `limit` images are converted to float (the training split is 188 MB in
    float32; a calibration set takes a few thousand of its images).
    """
    from models.datasets.fmnist_idx import load_fmnist

    images, labels = load_fmnist(split)
    images, labels = images[:limit], labels[:limit]
    mean, std = _fmnist_norm()
    x = ((images.astype(np.float32) / 255.0 - mean) / std)[:, None]
    return Dataset(x.astype(np.float32), labels.astype(np.int64), f"fmnist-{split}",
                   "classification")


def _photos() -> Dataset:
    from models.datasets.photos import photo_set

    return Dataset(photo_set(), None, "photos", "unlabelled")


def _text_lines() -> Dataset:
    from models.datasets.text_lines import text_line_set

    images, labels = text_line_set()
    return Dataset(images, labels, "text-lines", "ocr")


DATASETS: dict[str, Callable[[int | None], Dataset]] = {
    "fmnist-eval": lambda limit: load_npz(DATA_DIR / "fmnist_eval.npz", "fmnist-eval", limit),
    "fmnist-calib": lambda limit: load_npz(DATA_DIR / "fmnist_calib.npz", "fmnist-calib", limit),
    "fmnist-test": lambda limit: _fmnist("test", limit),
    "fmnist-train": lambda limit: _fmnist("train", limit),
    "photos": lambda _limit: _photos(),
    "text-lines": lambda _limit: _text_lines(),
}
"""Bundled datasets by name; each loader takes the sample limit (None: all)."""


def load_dataset(name: str | Path, limit: int | None = None) -> Dataset:
    """Load a bundled dataset by name, or an ``.npz`` file by path.

    Args:
        name: One of `DATASETS`, or a path ending in ``.npz``.
        limit: Keep only the first `limit` samples.

    Raises:
        DataError: Unknown name (the message lists the known ones) or unreadable data.
    """
    key = str(name)
    if key.endswith(".npz"):
        data = load_npz(key, limit=limit)
    elif key in DATASETS:
        if limit is not None and limit < 1:
            raise DataError(f"dataset {key}: limit must be positive, got {limit}")
        data = DATASETS[key](limit)
    else:
        raise DataError(f"unknown dataset {key!r}: expected one of {', '.join(DATASETS)} "
                        "or an .npz file")
    return data if limit is None else _head(data, limit)


def _head(data: Dataset, limit: int) -> Dataset:
    if limit < 1:
        raise DataError(f"dataset {data.name}: limit must be positive, got {limit}")
    labels = None if data.labels is None else data.labels[:limit]
    return Dataset(data.inputs[:limit], labels, data.name, data.kind)
