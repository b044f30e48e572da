"""Rendered text lines with ground-truth strings, for OCR recogniser accuracy (exact match).

Lines are drawn black on white with Pillow in the DejaVu fonts bundled under
``models/data/fonts`` (no system font needed), then preprocessed like PP-OCR's recogniser:
height 48, width scaled by the aspect ratio (at most 320), ``(x/255 - 0.5) / 0.5``, right-padded
with zeros to width 320.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from compiler.core.errors import DataError, NpucError

FONT_DIR = Path(__file__).resolve().parent.parent / "data" / "fonts"
FONTS = ("DejaVuSans.ttf", "DejaVuSansMono.ttf")
REC_HEIGHT, REC_WIDTH = 48, 320

WORDS = (
    "invoice", "total", "price", "date", "order", "amount", "receipt", "station", "coffee",
    "ticket", "market", "street", "garden", "number", "voltage", "battery", "sensor", "camera",
    "engine", "speed", "limit", "parking", "exit", "north", "south", "window", "paper",
    "model", "layer", "kernel", "shift", "scale", "bridge", "river", "city", "tower",
)


def _font(name: str, size: int):
    path = FONT_DIR / name
    if not path.is_file():
        raise DataError(f"{path}: bundled font missing")
    return _cached_font(str(path), size)


@functools.lru_cache(maxsize=32)
def _cached_font(path: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(path, size)


def render_line(text: str, font: str = FONTS[0], size: int = 32, margin: int = 8) -> np.ndarray:
    """Draw one line of black text on white, tightly cropped plus `margin` pixels.

    Returns:
        uint8 grayscale image ``[H, W]``.
    """
    from PIL import Image, ImageDraw

    face = _font(font, size)
    left, top, right, bottom = face.getbbox(text)
    width, height = right - left + 2 * margin, bottom - top + 2 * margin
    img = Image.new("L", (width, height), 255)
    ImageDraw.Draw(img).text((margin - left, margin - top), text, fill=0, font=face)
    return np.asarray(img)


def render_page(lines: list[str], height: int, width: int, size: int = 28) -> np.ndarray:
    """Draw several lines on a white ``[height, width]`` page (sample input for detection)."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(img)
    face = _font(FONTS[0], size)
    for i, line in enumerate(lines):
        draw.text((size, size + i * 2 * size), line, fill=0, font=face)
    return np.asarray(img)


def to_ocr_input(image: np.ndarray, height: int = REC_HEIGHT, width: int = REC_WIDTH) -> np.ndarray:
    """PP-OCR rec preprocessing of a grayscale or RGB uint8 line image.

    The aspect ratio is kept up to `width`; the padding is zero *after* normalisation,
    i.e. mid-grey, exactly as PaddleOCR's `resize_norm_img`.

    Returns:
        float32 ``[1, 3, height, width]``.
    """
    from PIL import Image

    pil = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    resized_w = min(width, math.ceil(height * pil.width / pil.height))
    pil = pil.resize((resized_w, height), Image.BILINEAR)
    x = (np.asarray(pil, np.float32).transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    out = np.zeros((1, 3, height, width), np.float32)
    out[0, :, :, :resized_w] = x
    return out


def _word(rng: np.random.Generator) -> str:
    word = WORDS[rng.integers(len(WORDS))]
    style = rng.integers(3)
    return word.upper() if style == 0 else word.capitalize() if style == 1 else word


def _digits(rng: np.random.Generator) -> str:
    return "".join(str(d) for d in rng.integers(0, 10, size=rng.integers(4, 11)))


def _price(rng: np.random.Generator) -> str:
    value = f"{rng.integers(0, 1000)}.{rng.integers(0, 100):02d}"
    form = rng.integers(3)
    return f"${value}" if form == 0 else f"{value} EUR" if form == 1 else f"Total {value}"


def _date(rng: np.random.Generator) -> str:
    y, m, d = rng.integers(1990, 2031), rng.integers(1, 13), rng.integers(1, 29)
    form = rng.integers(3)
    return f"{y}-{m:02d}-{d:02d}" if form == 0 else f"{d:02d}/{m:02d}/{y}" if form == 1 \
        else f"{d:02d}.{m:02d}.{y}"


def _code(rng: np.random.Generator) -> str:
    letters = "".join(chr(ord("A") + i) for i in rng.integers(0, 26, size=2))
    return f"{letters}-{rng.integers(100, 10000)}"


def _phrase(rng: np.random.Generator) -> str:
    return f"{_word(rng)} {rng.integers(1, 100)}"


GENERATORS: tuple[Callable[[np.random.Generator], str], ...] = (
    _word, _digits, _price, _date, _code, _phrase)


def random_text(rng: np.random.Generator, allowed: set[str] | None = None) -> str:
    """One random short string (word, digits, price, date, code or phrase) within `allowed`."""
    for _ in range(100):
        text = GENERATORS[rng.integers(len(GENERATORS))](rng)
        if allowed is None or set(text) <= allowed:
            return text
    raise DataError("cannot generate text lines within the OCR charset")


def _allowed_chars() -> set[str] | None:
    """The rec charset when the zoo extra is installed (labels must be spellable by the model)."""
    try:
        from models.packaged import ocr_charset
        return set(ocr_charset()[1:])
    except NpucError:  # the charset is only a filter; without the zoo extra, render anyway
        return None


def text_line_set(n: int = 200, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Render `n` labelled text lines, preprocessed for the PP-OCR recogniser.

    Font (Sans or Mono) and size (28..36 px) vary per line, deterministically from `seed`.

    Returns:
        ``(images, labels)``: float32 ``[n, 3, 48, 320]`` and the `n` ground-truth strings.
    """
    if n < 1:
        raise DataError(f"text_line_set: n must be positive, got {n}")
    rng = np.random.default_rng(seed)
    allowed = _allowed_chars()
    labels: list[str] = []
    images = np.empty((n, 3, REC_HEIGHT, REC_WIDTH), np.float32)
    for i in range(n):  # one rng sequence per line keeps the set prefix-stable in n
        labels.append(random_text(rng, allowed))
        font, size = FONTS[rng.integers(len(FONTS))], int(rng.integers(28, 37))
        images[i] = to_ocr_input(render_line(labels[-1], font, size))[0]
    return images, labels
