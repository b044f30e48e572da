"""Folders of images as model inputs: read on demand, labelled by class folder, sampled fairly.

A folder whose images all sit one level down, in two or more sub-folders, is a
class-per-folder dataset (torchvision's `ImageFolder`, ImageNet's `val/<wnid>/*.JPEG`):
each sub-folder is a class, numbered in sorted name order, or by its own number when every
sub-folder name is an integer (`0/`, `1/`, ... `10/`). Any other layout has no labels.

A sample limit takes the same number of images from every class (round robin, each class
in a fixed shuffled order, seed 0), so 32 calibration images of a 10-class set are 3–4 per
class rather than the first 32 files of class 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compiler.core import limits
from compiler.core.errors import DataError
from compiler.core.options import from_mapping, option, positive_ints

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
SAMPLE_SEED = 0


def _hw_or_side(v: Any) -> str | None:
    return positive_ints(v) or (None if len(v) in (1, 2) else "must be [height, width] or [side]")


def _hw(v: Any) -> str | None:
    return positive_ints(v) or (None if len(v) == 2 else "must be [height, width]")


@dataclass(frozen=True)
class Preprocess:
    """How image files become model inputs: config keys `input.*` and the preprocessing flags.

    Order: decode -> colour (RGB, BGR or GRAY) -> resize -> centre crop -> x * scale ->
    (x - mean) / std -> layout. Each field is declared once with `option(...)`; the config
    schema, the CLI flags and docs/config.md are generated from these declarations.
    """

    size: tuple[int, ...] | None = option(
        None, "image folders: resize to [height, width], or the shorter side to [side] keeping "
        "the aspect (null: to the crop, else to the model's input size)",
        types=(list, tuple), key="resize", flag="--resize", item=int, list_sep="x",
        check=_hw_or_side, metavar="HxW|S")
    crop: tuple[int, int] | None = option(
        None, "image folders: centre crop [height, width] after the resize (null: none)",
        types=(list, tuple), item=int, list_sep="x", check=_hw, metavar="HxW")
    scale: float = option(1 / 255, "image folders: factor applied to the 0-255 pixel values "
                          "before mean/std (default 1/255: [0, 1])", types=(int, float),
                          check=lambda v: None if v > 0 else "must be positive", metavar="F")
    mean: tuple[float, ...] = option((0.0,), "image folders: per-channel mean subtracted after "
                                     "scaling", item=float, list_sep=",", metavar="M[,M,M]")
    std: tuple[float, ...] = option((1.0,), "image folders: per-channel std divided by",
                                    item=float, list_sep=",", metavar="S[,S,S]",
                                    check=lambda v: None if all(x > 0 for x in v)
                                    else "must be positive")
    layout: str = option("NCHW", "image folders: NCHW or NHWC", choices=("NCHW", "NHWC"))
    color: str = option("RGB", "image folders: channel order, or GRAY for one channel",
                        choices=("RGB", "BGR", "GRAY"))

    def output_size(self, model_hw: Sequence[Any] | None, where: Path) -> tuple[int, int]:
        """(height, width) of the preprocessed images: the crop, a full resize, the model's.

        Raises:
            DataError: None of them is known (a symbolic model size and no flags).
        """
        if self.crop:
            return int(self.crop[0]), int(self.crop[1])
        if self.size and len(self.size) == 2:
            return int(self.size[0]), int(self.size[1])
        hw = list(model_hw or [])
        if len(hw) != 2 or any(not isinstance(d, (int, np.integer)) or d <= 0 for d in hw):
            raise DataError(f"{where}: the model's input size is dynamic; give the image size "
                            "(--resize HxW or --crop HxW)")
        if self.size:  # a shorter-side resize must be followed by a crop to a fixed size
            raise DataError(f"{where}: --resize {self.size[0]} keeps the aspect, so the images "
                            f"differ in size; add --crop {hw[0]}x{hw[1]}")
        return int(hw[0]), int(hw[1])

    @classmethod
    def from_record(cls, record: dict[str, Any], label: str = "preprocess") -> Preprocess:
        """The inverse of `record` (e.g. from a binary's metadata), every value checked.

        Raises:
            ConfigError: A value the option would refuse, named with `label`.
        """
        return from_mapping(cls, {k: v for k, v in record.items() if v is not None},
                            label=label)

    def record(self) -> dict[str, Any]:
        """The preprocessing as plain data (report, binary metadata)."""
        return {"resize": list(self.size) if self.size else None,
                "crop": list(self.crop) if self.crop else None, "scale": self.scale,
                "mean": list(self.mean), "std": list(self.std), "layout": self.layout,
                "color": self.color}


@dataclass
class ImageFolder:
    """The images of a folder as a lazily read batch `[N, ...]` with optional labels.

    Slicing (`folder[a:b]`) reads and preprocesses only those files, so evaluating a large
    folder holds one batch of images at a time.

    Attributes:
        root: The folder.
        files: The chosen image files, in sample order.
        labels: Class index per file (class-per-folder layout), else None.
        classes: Class folder names by index (empty without labels).
        size: (height, width) every image is resized to.
        pre: The preprocessing.
    """

    root: Path
    files: list[Path]
    labels: np.ndarray | None
    classes: list[str]
    size: tuple[int, int]
    pre: Preprocess
    shape: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        channels = 1 if self.pre.color == "GRAY" else 3
        h, w = self.size
        sample = (channels, h, w) if self.pre.layout == "NCHW" else (h, w, channels)
        self.shape = (len(self.files), *sample)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice):
            raise TypeError("ImageFolder supports slices only")
        chosen = self.files[index]
        if not chosen:
            return np.zeros((0, *self.shape[1:]), np.float32)
        return np.stack([read_image(p, self.size, self.pre) for p in chosen])

    def read_all(self) -> np.ndarray:
        """Every chosen image as one array."""
        return self[:]


def open_folder(folder: Path, size: tuple[int, int], pre: Preprocess,
                limit: int | None = None) -> ImageFolder:
    """List a folder's images (nothing decoded yet) and pick at most `limit`, class-balanced.

    Raises:
        DataError: No image files.
    """
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                   and p.is_file())
    if not files:
        raise DataError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    by_class = class_layout(folder, files)
    if by_class is None:
        return ImageFolder(folder, spread(files, limit), None, [], size, pre)
    numbered = all(n.isdigit() for n in by_class)  # `0/`, `1/`, ... `10/`: their own labels
    names = sorted(by_class, key=int if numbered else None)
    index = {name: int(name) if numbered else i for i, name in enumerate(names)}
    chosen = balanced([by_class[n] for n in names], limit)
    labels = np.array([index[p.parent.name] for p in chosen], np.int64)
    return ImageFolder(folder, chosen, labels, names, size, pre)


def class_layout(folder: Path, files: Sequence[Path]) -> dict[str, list[Path]] | None:
    """Class folder name -> its files, when every image is one level down in >= 2 folders."""
    by_class: dict[str, list[Path]] = {}
    for p in files:
        if p.parent.parent != folder:
            return None
        by_class.setdefault(p.parent.name, []).append(p)
    return by_class if len(by_class) >= 2 else None


def balanced(classes: Sequence[Sequence[Path]], limit: int | None) -> list[Path]:
    """Round robin over the classes, each in a fixed shuffled order, until `limit` files."""
    if limit is None or limit >= sum(len(c) for c in classes):
        return [p for c in classes for p in c]
    rng = np.random.default_rng(SAMPLE_SEED)
    queues = [[c[i] for i in rng.permutation(len(c))] for c in classes]
    out: list[Path] = []
    depth = 0
    while len(out) < limit:
        for q in queues:
            if depth < len(q) and len(out) < limit:
                out.append(q[depth])
        depth += 1
    return out


def spread(files: list[Path], limit: int | None) -> list[Path]:
    """At most `limit` of the sorted `files`, evenly spaced (folders without classes)."""
    if limit is None or limit >= len(files):
        return files
    picks = np.linspace(0, len(files) - 1, num=max(limit, 1)).round().astype(int)
    return [files[i] for i in picks]


def read_image(path: Path, size: tuple[int, int], pre: Preprocess) -> np.ndarray:
    """Read one image file into a float32 array of `size` laid out as `pre.layout`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings(), Image.open(path) as img:
            # Pillow only warns between its limit and twice it; refuse the whole range.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            cap = limits.limit("IMAGE_PIXELS")  # 64 MP: camera photos pass, bombs do not
            if img.width * img.height > cap:
                raise DataError(f"{path}: {img.width}x{img.height} pixels; the limit is "
                                f"{cap:,} (NPUC_LIMIT_IMAGE_PIXELS raises it)")
            img = img.convert("L" if pre.color == "GRAY" else "RGB")
            img = img.resize(_resized(img.width, img.height, size, pre), Image.BILINEAR)
            if pre.crop:
                left, top = (img.width - size[1]) // 2, (img.height - size[0]) // 2
                img = img.crop((left, top, left + size[1], top + size[0]))
            arr = np.asarray(img, dtype=np.float32) * np.float32(pre.scale)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError,
            Image.DecompressionBombWarning, ValueError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from e
    arr = arr[..., None] if arr.ndim == 2 else arr
    if pre.color == "BGR":
        arr = arr[..., ::-1]
    arr = (arr - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1) if pre.layout == "NCHW" else arr)


def _resized(width: int, height: int, size: tuple[int, int], pre: Preprocess
             ) -> tuple[int, int]:
    """(width, height) after the resize step; a crop then cuts `size` out of the centre."""
    if pre.size and len(pre.size) == 2:
        return int(pre.size[1]), int(pre.size[0])
    if pre.size or pre.crop:  # shorter side to S (or to cover the crop), aspect kept
        side = int(pre.size[0]) if pre.size else max(size)
        k = side / min(width, height)
        w, h = max(side, round(width * k)), max(side, round(height * k))
        return (max(w, size[1]), max(h, size[0])) if pre.crop else (w, h)  # the crop fits
    return size[1], size[0]
