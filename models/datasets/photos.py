"""Real photographs for ImageNet-style fidelity checks, available offline.

Sources: the colour photographs bundled with scikit-image (astronaut, chelsea, coffee, rocket,
hubble_deep_field, immunohistochemistry, retina, the stereo motorcycle pair) and scikit-learn's
two sample images (china, flower). Synthetic graphics (colorwheel, logo) are left out, and only
bundled files are read, so nothing is ever downloaded.

Eleven photos are too few for calibration or fidelity statistics, so each is expanded into
square crops at several scales and positions, plus their mirror images; `photo_set` draws `n`
of these views deterministically and preprocesses them with `preprocess_imagenet`.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np

from compiler.core.errors import DataError, NpucError

logger = logging.getLogger(__name__)

IMAGE_SIZE = 224
# EfficientNet-Lite0's TF Lite checkpoints were trained on (x - 127) / 128 inputs, i.e.
# mean = std = 0.5 on [0, 1] pixels; ImageNet mean/std input lowers confidence on every
# sample image we tried.
MEAN = np.array([0.5, 0.5, 0.5], np.float32)
STD = np.array([0.5, 0.5, 0.5], np.float32)

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                  "immunohistochemistry", "retina")
SCALES = (1.0, 0.85, 0.7, 0.55, 0.4)
POSITIONS = (0.0, 0.5, 1.0)
"""Where a crop sits in the free space along each axis (0 = top/left, 1 = bottom/right)."""


@dataclass(frozen=True)
class View:
    """One square crop of one photo, optionally mirrored."""

    photo: int
    top: int
    left: int
    side: int
    flip: bool


def _skimage_photos() -> list[np.ndarray]:
    import skimage.data as skdata

    images = []
    for name in SKIMAGE_PHOTOS:
        try:
            images.append(getattr(skdata, name)())
        except Exception as exc:  # noqa: BLE001 - a photo that needs a download is skipped
            logger.info("skipping skimage.data.%s: %s", name, exc)
    try:
        left, right, _ = skdata.stereo_motorcycle()
        images += [left, right]
    except Exception as exc:  # noqa: BLE001
        logger.info("skipping skimage.data.stereo_motorcycle: %s", exc)
    return images


@functools.lru_cache(maxsize=1)
def source_photos() -> tuple[np.ndarray, ...]:
    """All source photos as uint8 RGB ``[H, W, 3]`` arrays (loaded once per process).

    Raises:
        NpucError: If scikit-image / scikit-learn (the zoo extra) are not installed.
    """
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as exc:
        raise NpucError("the photos dataset needs scikit-image and scikit-learn: "
                        "install with pip install -e .[zoo]") from exc
    photos = _skimage_photos() + list(load_sample_images().images)
    return tuple(np.ascontiguousarray(p[..., :3], dtype=np.uint8) for p in photos)


def _views_of(index: int, shape: tuple[int, ...]) -> list[View]:
    h, w = shape[:2]
    boxes = set()
    for scale in SCALES:
        side = int(min(h, w) * scale)
        for fy in POSITIONS:
            for fx in POSITIONS:
                boxes.add((round((h - side) * fy), round((w - side) * fx), side))
    return [View(index, t, lf, s, flip) for t, lf, s in sorted(boxes) for flip in (False, True)]


def all_views() -> list[View]:
    """Every candidate view, in a fixed order."""
    return [v for i, p in enumerate(source_photos()) for v in _views_of(i, p.shape)]


def preprocess_imagenet(img: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Resize the shorter side to size*256/224 (bicubic), center-crop, normalise to ±1.

    Args:
        img: uint8 image ``[H, W, 3]`` (RGB); grayscale ``[H, W]`` and RGBA are converted.
        size: Output height and width.

    Returns:
        float32 ``[1, 3, size, size]``.
    """
    from PIL import Image

    pil = Image.fromarray(np.asarray(img, np.uint8)).convert("RGB")
    scale = round(size * 256 / 224) / min(pil.size)
    w, h = max(size, round(pil.width * scale)), max(size, round(pil.height * scale))
    pil = pil.resize((w, h), Image.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    pil = pil.crop((left, top, left + size, top + size))
    x = (np.asarray(pil, np.float32) / 255.0 - MEAN) / STD
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def render_view(view: View) -> np.ndarray:
    """Crop (and mirror) one view and preprocess it: float32 ``[3, 224, 224]``."""
    photo = source_photos()[view.photo]
    crop = photo[view.top:view.top + view.side, view.left:view.left + view.side]
    if view.flip:
        crop = crop[:, ::-1]
    return preprocess_imagenet(crop)[0]


def photo_set(n: int = 320, seed: int = 0) -> np.ndarray:
    """`n` distinct preprocessed photo views, chosen deterministically from `seed`.

    Returns:
        float32 ``[n, 3, 224, 224]``, normalised for EfficientNet-Lite0 (mean = std = 0.5).

    Raises:
        DataError: If `n` exceeds the number of distinct views.
    """
    views = all_views()
    if not 1 <= n <= len(views):
        raise DataError(f"photo_set: n must be in 1..{len(views)}, got {n}")
    chosen = np.random.default_rng(seed).permutation(len(views))[:n]  # prefix-stable in n
    return np.stack([render_view(views[i]) for i in chosen])
