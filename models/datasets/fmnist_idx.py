"""Torch-free reader for the Fashion-MNIST idx files shipped by the Debian package.

The Debian package ``dataset-fashion-mnist`` installs the four gzipped idx files under
``/usr/share/datasets/fashion-mnist``. The environment variable ``NPUC_FMNIST_DIR`` can point
at another directory holding the same files (gzipped or not).
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import numpy as np

from compiler.core.errors import DataError

logger = logging.getLogger(__name__)

SEARCH_DIRS: tuple[Path, ...] = (
    Path("/usr/share/datasets/fashion-mnist"),
    Path("/usr/share/fashion-mnist"),
    Path("/usr/local/share/datasets/fashion-mnist"),
)
"""Directories searched, in order, after ``$NPUC_FMNIST_DIR``."""

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

_PREFIX = {"train": "train", "test": "t10k"}
_NOT_FOUND = "Fashion-MNIST not found: install the Debian package dataset-fashion-mnist"


def _candidate_dirs() -> list[Path]:
    env = os.environ.get("NPUC_FMNIST_DIR")
    return ([Path(env)] if env else []) + list(SEARCH_DIRS)


def _find(name: str) -> Path:
    """Return the path of idx file ``name`` (plain or ``.gz``) in the first directory with it."""
    for directory in _candidate_dirs():
        for candidate in (directory / f"{name}.gz", directory / name):
            if candidate.is_file():
                return candidate
    raise DataError(_NOT_FOUND)


def read_idx(path: str | Path) -> np.ndarray:
    """Read one idx file (optionally gzipped) into a numpy array.

    Args:
        path: The idx file, e.g. ``train-images-idx3-ubyte.gz``.

    Returns:
        The array with the dtype and shape stored in the idx header.

    Raises:
        DataError: If the file is not a well-formed unsigned-byte idx file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise DataError(f"cannot read idx file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) if shape else 1
    if len(data) - header != expected:
        raise DataError(f"{path}: header says {expected} bytes, file has {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def load_fmnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one Fashion-MNIST split.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).

    Returns:
        ``(images, labels)``: images uint8 ``[N, 28, 28]``, labels int64 ``[N]`` in 0..9.

    Raises:
        DataError: If the split name is unknown, the files are absent or inconsistent.
    """
    if split not in _PREFIX:
        raise DataError(f"unknown Fashion-MNIST split {split!r}: expected 'train' or 'test'")
    prefix = _PREFIX[split]
    images_path = _find(f"{prefix}-images-idx3-ubyte")
    labels_path = _find(f"{prefix}-labels-idx1-ubyte")
    logger.debug("reading Fashion-MNIST %s from %s", split, images_path.parent)
    images = read_idx(images_path)
    labels = read_idx(labels_path).astype(np.int64)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
        raise DataError(
            f"Fashion-MNIST {split}: unexpected shapes {images.shape} and {labels.shape}"
        )
    return images, labels


MEAN: float = 0.2860
"""Mean of the training pixels after scaling to [0, 1] (rounded)."""
STD: float = 0.3530
"""Standard deviation of the training pixels after scaling to [0, 1] (rounded)."""


def preprocess(images: np.ndarray) -> np.ndarray:
    """Turn uint8 images into the float input the trained Fashion-MNIST models expect.

    Args:
        images: uint8 ``[N, 28, 28]``.

    Returns:
        float32 ``[N, 1, 28, 28]`` equal to ``(images / 255 - MEAN) / STD``.
    """
    x = images.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return x[:, None, :, :].astype(np.float32)


def stratified_indices(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Pick ``per_class`` indices of every class at random, deterministically.

    Args:
        labels: int labels ``[N]``.
        per_class: How many samples to take from each class.
        seed: Seed for ``numpy.random.default_rng``.

    Returns:
        Sorted int64 indices, ``per_class * n_classes`` of them.

    Raises:
        DataError: If a class has fewer than ``per_class`` samples.
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if members.size < per_class:
            raise DataError(f"class {cls} has {members.size} samples, need {per_class}")
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)
