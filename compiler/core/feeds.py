"""Input and calibration data: `.npy`/`.npz` files, image folders, arrays, readers.

Every source becomes a `Feeds` object (a dict of input name -> array with the batch on axis
0) checked against the model's inputs, so shape mistakes are reported once, up front, with
the source and both shapes named.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from compiler.core.errors import DataError
from compiler.core.imagefolder import Preprocess, open_folder
from compiler.core.ir import Model
from compiler.core.npfiles import read_npy, read_npz, release_rows

log = logging.getLogger(__name__)



class CalibrationReader(Protocol):
    """onnxruntime's `CalibrationDataReader` shape: `get_next()` returns a feed dict or None."""

    def get_next(self) -> dict[str, np.ndarray] | None:
        """Next feed dict, or None when exhausted."""


@dataclass
class Feeds:
    """A set of inputs with the batch on axis 0.

    Attributes:
        arrays: Input name -> array [N, ...].
        source: Where the data came from (for messages).
        labels: Optional labels (classification ints or OCR strings).
    """

    arrays: dict[str, np.ndarray]
    source: str
    labels: Any = None

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def batches(self, batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
        """Yield feed dicts of at most `batch_size` samples, in order."""
        for start in range(0, len(self), batch_size):
            yield {k: v[start:start + batch_size] for k, v in self.arrays.items()}

    def take(self, n: int) -> Feeds:
        """The first `n` samples."""
        labels = self.labels[:n] if self.labels is not None else None
        return Feeds({k: v[:n] for k, v in self.arrays.items()}, self.source, labels)

    def split(self, fraction: float) -> tuple[Feeds, Feeds]:
        """Split into (first part, held-out rest); the held-out part gets `fraction`."""
        n_hold = max(1, int(round(len(self) * fraction)))
        cut = len(self) - n_hold
        if cut < 1:
            raise DataError(f"{self.source}: {len(self)} sample(s) cannot be split into a "
                            f"fitting part and a held-out part of {fraction:g}; give more "
                            "samples or a smaller hold-out fraction")
        head = Feeds({k: v[:cut] for k, v in self.arrays.items()}, self.source)
        tail = Feeds({k: v[cut:] for k, v in self.arrays.items()}, self.source + " (held out)")
        return head, tail


def input_specs(model: Model) -> dict[str, tuple[list, np.dtype]]:
    """Model input name -> (shape with symbolic dims as None, numpy dtype)."""
    specs = {}
    for t in model.graph.inputs:
        shape = [d if isinstance(d, (int, np.integer)) and d > 0 else None
                 for d in (t.shape or [])]
        specs[t.name] = (shape, np.dtype(t.dtype or np.float32))
    return specs


def load_feeds(source: Any, model: Model, *, limit: int | None = None,
               preprocess: Preprocess | None = None) -> Feeds:
    """Turn any supported data source into validated `Feeds` for `model`.

    Args:
        source: An `.npy`/`.npz` path, an image folder, a numpy array, a dict of arrays, a
            `Feeds`, or a `CalibrationReader` (bundled dataset names are resolved by the
            driver, `compiler.driver.data.load_data`).
        model: The model whose inputs the data must match.
        limit: Keep at most this many samples.
        preprocess: Image preprocessing for folders of images.

    Raises:
        DataError: Unreadable or empty source, or data that does not match the inputs.
    """
    feeds = _to_feeds(source, model, preprocess, limit)
    if limit is not None:
        feeds = feeds.take(limit)
    check_feeds(feeds, model)
    return feeds


def _to_feeds(source: Any, model: Model, preprocess: Preprocess | None,
              limit: int | None) -> Feeds:
    names = list(input_specs(model))
    if not names:
        raise DataError(f"{model.source or 'the model'}: has no inputs, so there is nothing "
                        "to feed it (a constant graph)")
    if isinstance(source, Feeds):
        return source
    if isinstance(source, np.ndarray):
        return Feeds({names[0]: source}, "<array>")
    if isinstance(source, Mapping):
        return Feeds({k: np.asarray(v) for k, v in source.items()}, "<dict>")
    if hasattr(source, "get_next"):
        return _from_reader(source)
    path = Path(source)
    if path.is_dir():
        return _from_images(path, model, preprocess or Preprocess(), limit)
    if path.suffix in (".npy", ".npz"):
        return _from_numpy(path, names, limit)
    raise DataError(f"{source}: not a folder of images, an .npy/.npz file or a dataset name")


def _from_reader(reader: CalibrationReader) -> Feeds:
    batches = []
    while (feed := reader.get_next()) is not None:
        batches.append(feed)
    if not batches:
        raise DataError("calibration reader returned no data")
    keys = list(batches[0])
    return Feeds({k: np.concatenate([b[k] for b in batches]) for k in keys}, "<reader>")


def _from_numpy(path: Path, names: list[str], limit: int | None) -> Feeds:
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else
                        f"{path}: not a regular file")
    try:
        arrays = ({names[0]: read_npy(path, limit)} if path.suffix == ".npy"
                  else read_npz(path, limit))
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    labels = arrays.pop("labels", None)
    scalars = [k for k, v in arrays.items() if v.ndim == 0]
    if scalars:
        raise DataError(f"{path}: {scalars[0]!r} is a single number, not an array of samples")
    if len(names) == 1 and names[0] not in arrays:
        key = "images" if "images" in arrays else next(iter(arrays), None)
        if key is None:
            raise DataError(f"{path}: holds no arrays")
        arrays = {names[0]: arrays[key]}
    return Feeds(arrays, str(path), labels)


def _from_images(folder: Path, model: Model, pre: Preprocess, limit: int | None) -> Feeds:
    name, (shape, _) = next(iter(input_specs(model).items()))
    size = pre.output_size(model_hw(shape, pre.layout), folder)
    images = open_folder(folder, size, pre, limit)
    return Feeds({name: images.read_all()}, str(folder), images.labels)


def model_hw(shape: Sequence, layout: str) -> list:
    """The (height, width) dims of an input shape in `layout` (symbolic ones as they are)."""
    return list(shape[2:4] if layout == "NCHW" else shape[1:3])


def check_feeds(feeds: Feeds, model: Model) -> None:
    """Check names, dtypes and shapes of `feeds` against the model's inputs.

    Raises:
        DataError: naming the source, the input and both shapes.
    """
    specs = input_specs(model)
    missing = sorted(set(specs) - set(feeds.arrays))
    if missing:
        raise DataError(f"{feeds.source}: no data for model input(s) {missing} "
                        f"(has {sorted(feeds.arrays)})")
    extra = sorted(set(feeds.arrays) - set(specs))
    if extra:
        raise DataError(f"{feeds.source}: array(s) {extra} are not inputs of the model "
                        f"(inputs: {sorted(specs)})")
    for name, (shape, dtype) in specs.items():
        feeds.arrays[name] = _check_array(feeds.arrays[name], name, shape, dtype, feeds.source)
    if len({len(a) for a in feeds.arrays.values()}) != 1:
        raise DataError(f"{feeds.source}: inputs have different sample counts")


def _check_array(arr: np.ndarray, name: str, shape: list, dtype: np.dtype,
                 source: str) -> np.ndarray:
    if arr.size == 0:
        raise DataError(f"{source}: input {name!r} is empty")
    if arr.dtype.kind not in "fiub" or (arr.dtype.kind == "f") != (dtype.kind == "f"):
        raise DataError(f"{source}: input {name!r} has dtype {arr.dtype}, model expects {dtype}")
    if arr.ndim == len(shape) - 1 and _matches(arr.shape, shape[1:]):
        arr = arr[None]  # a single sample without its batch axis
    if arr.ndim != len(shape) or not _matches(arr.shape[1:], shape[1:]):
        want = "x".join("?" if d is None else str(d) for d in shape)
        got = "x".join(str(d) for d in arr.shape)
        raise DataError(f"{source}: input {name!r} has shape {got}, model expects {want}")
    if arr.dtype.kind == "f" and not _all_finite(arr):
        raise DataError(f"{source}: input {name!r} contains NaN or Inf")
    return arr.astype(dtype, copy=False)


def _all_finite(arr: np.ndarray, chunk_bytes: int = 16 << 20) -> bool:
    """No NaN/Inf in `arr` [N, ...], checked a few MB of samples at a time.

    Bounded temporaries, and a memory-mapped file is not left resident by the check
    (`npfiles.release_rows`): calibration pages its samples in batch by batch.
    """
    step = max(1, chunk_bytes // max(arr[:1].nbytes, 1))
    for start in range(0, len(arr), step):
        finite = bool(np.isfinite(arr[start:start + step]).all())
        release_rows(arr, start + step)
        if not finite:
            return False
    return True


def _matches(got: tuple, want: list) -> bool:
    return len(got) == len(want) and all(w is None or g == w for g, w in zip(got, want,
                                                                              strict=True))


def model_batch(model: Model) -> int | None:
    """The model's fixed batch size, or None when the batch dimension is symbolic."""
    shape, _ = next(iter(input_specs(model).values()))
    return shape[0] if shape else None
