"""Photo views and per-model preprocessing for the field corpus (numpy + Pillow only).

Both venvs import this: the corpus venv (torch, to re-estimate BatchNorm statistics before
export) and the npuc venv (calibration / evaluation feeds). The views themselves come from
the project's bundled photos (`models.datasets.photos`), written once by the npuc venv as
``DIR/photos.npz``: uint8 ``[N, 384, 384, 3]`` square crops.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

VIEW_SIDE = 384
N_VIEWS = 48
CALIB = slice(0, 32)
"""Views used for calibration (quantize) and BatchNorm re-estimation."""
EVAL = slice(32, 40)
"""Held-out views for verify and the int8-vs-float cosine."""

IMAGENET = {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
HALF = {"scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
UNIT = {"scale": 1 / 255, "mean": [0.0], "std": [1.0]}
RAW = {"scale": 1.0, "mean": [0.0], "std": [1.0]}
CAFFE = {"scale": 1.0, "mean": [103.939, 116.779, 123.68], "std": [1.0], "order": "BGR"}


def write_photos(out: Path) -> Path:
    """Write ``out/photos.npz`` from the bundled photos (needs the npuc venv)."""
    from PIL import Image

    from models.datasets.photos import all_views, source_photos

    views = all_views()
    chosen = np.random.default_rng(0).permutation(len(views))[:N_VIEWS]
    images = []
    for i in chosen:
        v = views[i]
        crop = source_photos()[v.photo][v.top:v.top + v.side, v.left:v.left + v.side]
        crop = crop[:, ::-1] if v.flip else crop
        pil = Image.fromarray(np.ascontiguousarray(crop)).resize((VIEW_SIDE, VIEW_SIDE),
                                                                 Image.BICUBIC)
        images.append(np.asarray(pil, np.uint8))
    path = out / "photos.npz"
    np.savez_compressed(path, images=np.stack(images))
    return path


def load_photos(corpus: Path) -> np.ndarray:
    """The uint8 views written by `write_photos`."""
    with np.load(corpus / "photos.npz") as data:
        return data["images"]


def _resize(img: np.ndarray, h: int, w: int, mode: str) -> np.ndarray:
    from PIL import Image

    pil = Image.fromarray(img)
    if mode == "crop" and h == w:  # ImageNet style: shorter side to size*256/224, centre crop
        side = round(h * 256 / 224)
        pil = pil.resize((side, side), Image.BICUBIC)
        off = (side - h) // 2
        pil = pil.crop((off, off, off + w, off + h))
    else:
        pil = pil.resize((w, h), Image.BILINEAR)
    return np.asarray(pil, np.float32)


def preprocess(images: np.ndarray, spec: dict) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` views to model inputs ``[N, ...]`` as `spec` describes.

    `spec` keys: ``shape`` (the model's bound input shape, batch first unless ``layout`` is
    CHW), ``layout`` NCHW|NHWC|CHW, ``scale``/``mean``/``std`` (x = (pixel*scale-mean)/std),
    ``order`` RGB|BGR, ``channels`` 3|1, ``resize`` crop|stretch.
    """
    layout = spec.get("layout", "NCHW")
    shape = spec["shape"]
    h, w = (shape[1], shape[2]) if layout == "NHWC" else (shape[-2], shape[-1])
    out = []
    for img in images:
        x = _resize(img, h, w, spec.get("resize", "crop"))
        if spec.get("order", "RGB") == "BGR":
            x = x[..., ::-1]
        if spec.get("channels", 3) == 1:
            x = x @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]
        x = (x * spec["scale"] - np.array(spec["mean"], np.float32)) / np.array(
            spec["std"], np.float32)
        out.append(x if layout == "NHWC" else x.transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)
