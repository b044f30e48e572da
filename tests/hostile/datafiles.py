"""Hostile calibration and evaluation data: `.npy` / `.npz` files and image folders.

`DATA[name] = (path the command is given, producer of its bytes or None, setup or None,
degenerate)`; `degenerate` marks data whose calibration statistics must draw a warning
naming the tensor (or an error) from `quantize`.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tests.hostile.harness import Artefacts, Producer

SHAPE = (4, 3, 8, 8)
DATA: dict[str, tuple[str, Producer | None, Callable | None, bool]] = {}


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _npz(compress: bool = False, **arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **arrays)
    return buf.getvalue()


def _header(descr: str, shape: tuple, fortran: bool = False, version: tuple = (1, 0)) -> bytes:
    text = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape!r}, }}"
    body = text.encode("latin1")
    pad = 64 - (10 + len(body) + 1) % 64
    body = body + b" " * pad + b"\n"
    if version == (1, 0):
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body
    return b"\x93NUMPY" + bytes(version) + struct.pack("<I", len(body)) + body


def _const(data: bytes) -> Producer:
    return lambda art: data


def _lazy(fn: Callable[[], bytes]) -> Producer:
    cache: list[bytes] = []

    def produce(art: Artefacts) -> bytes:
        if not cache:
            cache.append(fn())
        return cache[0]
    return produce


def npy(name: str, data: Callable[[], bytes] | bytes, degenerate: bool = False) -> None:
    """Register an .npy case."""
    DATA[name] = ("data.npy", _const(data) if isinstance(data, bytes) else _lazy(data), None,
                  degenerate)


def npz(name: str, data: Callable[[], bytes], degenerate: bool = False) -> None:
    """Register an .npz case."""
    DATA[name] = ("data.npz", _lazy(data), None, degenerate)


def rng_data(shape: tuple = SHAPE, dtype=np.float32) -> np.ndarray:
    """Seeded normal data."""
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


# -- .npy header lies and odd arrays ---------------------------------------------------------

npy("lie_shape_huge", _header("<f4", (10 ** 12, 3, 8, 8)) + rng_data().tobytes())
npy("lie_shape_2_85_tib", _header("<f4", (1, 3, 500000, 500000)) + b"\0" * 1024)
npy("lie_shape_one_sample_huge", _header("<f4", (1, 3, 2 ** 20, 2 ** 20)) + b"\0" * 4096)
npy("lie_truncated", _header("<f4", SHAPE) + rng_data().tobytes()[:100])
npy("lie_negative_dim", _header("<f4", (-4, 3, 8, 8)) + rng_data().tobytes())
npy("lie_v2_header_len", b"\x93NUMPY\x02\x00" + struct.pack("<I", 2 ** 31) + b"{")
npy("lie_v3_utf8", _header("<f4", SHAPE, version=(3, 0)) + rng_data().tobytes())
npy("lie_header_code", b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) +
    b"{'descr': __import__('os').system('touch pwned'), 'fortran_order': False, "
    b"'shape': (4,), }".ljust(117) + b"\n")
npy("lie_bad_magic", b"\x93NUMPZ\x01\x00" + rng_data().tobytes())
npy("lie_descr_garbage", _header("<q9", SHAPE) + rng_data().tobytes())
npy("lie_descr_structured", b"\x93NUMPY\x01\x00" + struct.pack("<H", 118) +
    b"{'descr': [('a', '<f4'), ('b', '<i8')], 'fortran_order': False, 'shape': (4,), }"
    .ljust(117) + b"\n" + b"\0" * 48)
npy("lie_text", b"1 2 3 4\n5 6 7 8\n")
npy("lie_empty_file", b"")
npy("object_array", lambda: _npy(np.array([{"a": 1}, [1, 2]], dtype=object)))
npy("object_pickle_reduce", _header("|O", (1,)) + b"\x80\x04cposix\nsystem\n(S'touch pwned'\ntR.")
npy("dtype_float16", lambda: _npy(rng_data(dtype=np.float16)))
npy("dtype_float64", lambda: _npy(rng_data(dtype=np.float64)))
npy("dtype_int8", lambda: _npy((rng_data() * 40).astype(np.int8)))
npy("dtype_uint8", lambda: _npy(np.random.default_rng(0).integers(0, 255, SHAPE, np.uint8)))
npy("dtype_bool", lambda: _npy(rng_data() > 0))
npy("dtype_complex", lambda: _npy(rng_data().astype(np.complex64)))
npy("dtype_string", lambda: _npy(np.full(SHAPE, "abc")))
npy("dtype_void", lambda: _npy(np.zeros(4, dtype="V16")))
npy("dtype_datetime", lambda: _npy(np.zeros(SHAPE, dtype="datetime64[s]")))
npy("dtype_big_endian", lambda: _npy(rng_data().astype(">f4")))
npy("fortran_order", lambda: _npy(np.asfortranarray(rng_data())))
npy("shape_scalar", lambda: _npy(np.float32(1.0)))
npy("shape_empty", lambda: _npy(np.zeros((0, 3, 8, 8), np.float32)))
npy("shape_rank3", lambda: _npy(rng_data((4, 3, 8))))
npy("shape_rank5", lambda: _npy(rng_data((4, 1, 3, 8, 8))))
npy("shape_spatial", lambda: _npy(rng_data((4, 3, 16, 16))))
npy("shape_channels", lambda: _npy(rng_data((4, 1, 8, 8))))
npy("shape_one_sample_no_batch", lambda: _npy(rng_data((3, 8, 8))))
npy("shape_many_samples", lambda: _npy(rng_data((5000, 3, 8, 8))))
npy("values_all_nan", lambda: _npy(np.full(SHAPE, np.nan, np.float32)))
npy("values_some_nan", lambda: _npy(np.where(rng_data() > 2, np.nan, rng_data())
                                    .astype(np.float32)))
npy("values_inf", lambda: _npy(np.where(rng_data() > 2, np.inf, rng_data()).astype(np.float32)))
npy("values_1e30", lambda: _npy(np.full(SHAPE, 1e30, np.float32)), degenerate=True)
npy("values_3e38", lambda: _npy(_overflowing()))
def _overflowing() -> np.ndarray:
    with np.errstate(over="ignore"):  # some values become inf: the point of the case
        return (rng_data() * 3e38).astype(np.float32)


npy("values_denormal", lambda: _npy(np.full(SHAPE, 1e-42, np.float32)), degenerate=True)
npy("values_constant_zero", lambda: _npy(np.zeros(SHAPE, np.float32)), degenerate=True)
npy("values_constant_five", lambda: _npy(np.full(SHAPE, 5.0, np.float32)), degenerate=True)
npy("values_one_sample", lambda: _npy(rng_data((1, 3, 8, 8))))
npy("values_negative_zero", lambda: _npy(np.full(SHAPE, -0.0, np.float32)), degenerate=True)
npy("npz_named_npy", lambda: _npz(x=rng_data()))


# -- .npz ------------------------------------------------------------------------------------

def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _bomb_member(nbytes: int, shape: tuple) -> tuple[bytes, bytes, int]:
    """A deflated .npy of zeros: `nbytes` of data in about nbytes/1000 bytes (+ its CRC)."""
    header = _header("<f4", shape)
    comp = zlib.compressobj(1, zlib.DEFLATED, -15)
    chunk = b"\0" * (1 << 20)
    parts = [comp.compress(header)]
    crc = zlib.crc32(header)
    for _ in range(nbytes >> 20):
        parts.append(comp.compress(chunk))
        crc = zlib.crc32(chunk, crc)
    parts.append(comp.flush())
    return header, b"".join(parts), crc


def _zip_bomb(nbytes: int, shape: tuple, lie: bool = False) -> bytes:
    header, deflated, crc = _bomb_member(nbytes, shape)
    return _raw_zip("x.npy", deflated, len(header) + nbytes, crc, lie)


def _raw_zip(name: str, deflated: bytes, size: int, crc: int, lie: bool) -> bytes:
    """A one-member zip written by hand (sizes and CRC as given)."""
    claimed = 3200 if lie else size
    fname = name.encode()
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(deflated),
                        claimed, len(fname), 0) + fname
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc,
                          len(deflated), claimed, len(fname), 0, 0, 0, 0, 0, 0) + fname
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central),
                      len(local) + len(deflated), 0)
    return local + deflated + central + end


npz("zip_bomb_1gib_one_sample", lambda: _zip_bomb(1 << 30, (1, 2 ** 28)))
npz("zip_bomb_many_rows", lambda: _zip_bomb(1 << 30, (2 ** 22, 3, 8, 8)))
npz("zip_bomb_lying_size", lambda: _zip_bomb(256 << 20, (4, 3, 8, 8), lie=True))
npz("zip_bomb_16gib_claim", lambda: _zip_bomb(64 << 20, (16, 2 ** 28)))
npz("zip_many_members", lambda: _zip({f"x{i}.npy": _npy(rng_data((1, 3, 8, 8)))
                                      for i in range(3000)}))
npz("zip_nested", lambda: _zip({"x.npy": _npz(x=rng_data())}))
npz("zip_traversal_name", lambda: _zip({"../../../tmp/evil.npy": _npy(rng_data())}))
npz("zip_absolute_name", lambda: _zip({"/tmp/evil.npy": _npy(rng_data())}))
npz("zip_duplicate_names", lambda: _dup_zip())
npz("zip_not_npy_member", lambda: _zip({"x.txt": b"hello"}))
npz("zip_truncated", lambda: _npz(x=rng_data())[:200])
npz("zip_empty", lambda: _zip({}))
npz("zip_object", lambda: _npz(x=np.array([None, 1], dtype=object)))
npz("zip_wrong_key", lambda: _npz(y=rng_data()))
npz("zip_two_keys", lambda: _npz(x=rng_data(), z=rng_data()))
npz("zip_mismatched_lengths", lambda: _npz(x=rng_data(), labels=np.arange(9)))
npz("zip_compressed_ok", lambda: _npz(True, x=rng_data()))
npz("zip_encrypted_flag", lambda: _encrypted_flag(_npz(x=rng_data())))
npz("zip_member_bad_crc", lambda: _bad_crc(_npz(x=rng_data())))


def _dup_zip() -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as zf:
        warnings.simplefilter("ignore")  # the duplicate name is the point
        zf.writestr("x.npy", _npy(rng_data()))
        zf.writestr("x.npy", _npy(rng_data((2, 3, 8, 8))))
    return buf.getvalue()


def _encrypted_flag(data: bytes) -> bytes:
    raw = bytearray(data)
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):
        i = raw.find(sig)
        off = 6 if sig == b"PK\x03\x04" else 8
        raw[i + off] |= 1
    return bytes(raw)


def _bad_crc(data: bytes) -> bytes:
    raw = bytearray(data)
    i = raw.find(b"PK\x03\x04")
    raw[i + 14] ^= 0xFF
    j = raw.find(b"PK\x01\x02")
    raw[j + 16] ^= 0xFF
    return bytes(raw)


# -- eval data (.npz with images and labels) ---------------------------------------------------

def _eval(name: str, fn: Callable[[], bytes]) -> None:
    DATA[f"eval_{name}"] = ("data.npz", _lazy(fn), None, False)


_IMAGES = (8, 3, 8, 8)
_eval("labels_out_of_range", lambda: _npz(images=rng_data(_IMAGES), labels=np.full(8, 10 ** 9)))
_eval("labels_negative", lambda: _npz(images=rng_data(_IMAGES), labels=np.full(8, -1)))
_eval("labels_float_nan", lambda: _npz(images=rng_data(_IMAGES), labels=np.full(8, np.nan)))
_eval("labels_strings", lambda: _npz(images=rng_data(_IMAGES), labels=np.array(["a"] * 8)))
_eval("labels_short", lambda: _npz(images=rng_data(_IMAGES), labels=np.arange(3)))
_eval("labels_2d", lambda: _npz(images=rng_data(_IMAGES), labels=np.zeros((8, 2), int)))
_eval("labels_object", lambda: _npz(images=rng_data(_IMAGES),
                                    labels=np.array([None] * 8, dtype=object)))
_eval("no_images", lambda: _npz(labels=np.arange(8)))
_eval("images_uint8_nhwc", lambda: _npz(images=np.zeros((8, 8, 8, 3), np.uint8),
                                        labels=np.arange(8) % 4))
_eval("images_nan", lambda: _npz(images=np.full(_IMAGES, np.nan, np.float32),
                                 labels=np.arange(8) % 4))
_eval("images_empty", lambda: _npz(images=np.zeros((0, 3, 8, 8), np.float32),
                                   labels=np.zeros(0, int)))
_eval("images_bomb", lambda: _zip_bomb(1 << 30, (2 ** 22, 3, 8, 8)))
_eval("images_lie", lambda: _zip({"images.npy": _header("<f4", (10 ** 9, 3, 8, 8))}))


# -- image folders ---------------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_header_only(width: int, height: int, depth: int = 8, color: int = 2) -> bytes:
    """A PNG whose IHDR claims width x height, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))


def png_bomb(width: int, height: int) -> bytes:
    """A real 1-bit PNG of width x height zeros (decompression bomb), written row by row."""
    row = b"\0" + b"\0" * ((width + 7) // 8)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", b"".join(parts)) + _png_chunk(b"IEND", b""))


def _image_bytes(mode: str, size: tuple[int, int], fmt: str = "PNG", **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    arr = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 4), np.uint8)
    img = Image.fromarray(arr, "RGBA").convert(mode)
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def folder(name: str, files: dict[str, Callable[[], bytes]] | None = None,
           setup: Callable[[Path], None] | None = None, degenerate: bool = False) -> None:
    """Register an image-folder case: `files` relative to the folder, then `setup`."""
    made = {k: _lazy(v) for k, v in (files or {}).items()}

    def prepare(case_dir: Path, art: Artefacts) -> None:
        root = case_dir / "imgs"
        root.mkdir(exist_ok=True)
        for rel, produce in made.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(produce(art))
        if setup:
            setup(root)
    DATA[name] = ("imgs", None, prepare, degenerate)


def _ok(i: int = 0) -> Callable[[], bytes]:
    return lambda: _image_bytes("RGB", (8, 8))


folder("bomb_png_header_100k", {"a.png": lambda: png_header_only(100000, 100000)})
folder("bomb_png_real_400mp", {"a.png": lambda: png_bomb(20000, 20000)})
folder("bomb_png_60mp_truncated", {"a.png": lambda: png_header_only(7700, 7700)})
folder("bomb_gif_frames", {"a.gif": lambda: _gif_frames(3000)})
folder("bomb_tiff_header", {"a.tif": lambda: _tiff_header(60000, 60000)})
folder("bomb_bmp_header", {"a.bmp": lambda: _bmp_header(50000, 50000)})
folder("img_truncated_png", {"a.png": lambda: _image_bytes("RGB", (8, 8))[:40]})
folder("img_zero_bytes", {"a.png": lambda: b""})
folder("img_text_as_png", {"a.png": lambda: b"not an image"})
folder("img_npy_as_png", {"a.png": lambda: _npy(rng_data())})
folder("img_empty_folder", {})
folder("img_only_other_files", {"readme.txt": lambda: b"hi", "x.json": lambda: b"{}"})
folder("img_16bit", {"a.png": lambda: _image_bytes("I;16", (8, 8))})
folder("img_palette", {"a.png": lambda: _image_bytes("P", (8, 8))})
folder("img_rgba", {"a.png": lambda: _image_bytes("RGBA", (8, 8))})
folder("img_cmyk_jpeg", {"a.jpg": lambda: _image_bytes("CMYK", (8, 8), "JPEG")})
folder("img_gray", {"a.png": lambda: _image_bytes("L", (8, 8))})
folder("img_1x1", {"a.png": lambda: _image_bytes("RGB", (1, 1))})
folder("img_thin_strip", {"a.png": lambda: _image_bytes("RGB", (20000, 1))})
folder("img_constant_black", {"a.png": lambda: _solid(0), "b.png": lambda: _solid(0)},
       degenerate=True)
folder("img_mixed_sizes", {"a.png": _ok(), "b/c.png": lambda: _image_bytes("RGB", (30, 5))})
folder("img_deep_nesting", {"/".join(["d"] * 200) + "/a.png": _ok()})
folder("img_many_files", {f"c{i % 10}/{i}.png": _ok(i) for i in range(400)})
folder("fifo_image", {"b.png": _ok()}, setup=lambda root: os.mkfifo(root / "a.png"))
folder("dev_zero_image", {"b.png": _ok()},
       setup=lambda root: os.symlink("/dev/zero", root / "a.png"))
folder("dev_symlink_escape", {},
       setup=lambda root: os.symlink("/etc", root / "etc"))
folder("img_symlink_loop", {"b.png": _ok()},
       setup=lambda root: os.symlink(".", root / "loop"))


def _solid(value: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (value, value, value)).save(buf, "PNG")
    return buf.getvalue()


def _gif_frames(n: int) -> bytes:
    from PIL import Image

    frames = [Image.new("P", (8, 8), i % 256) for i in range(n)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _tiff_header(width: int, height: int) -> bytes:
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1),
               (262, 3, 1, 1), (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, height),
               (279, 4, 1, 16)]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, typ, count, value) for tag, typ, count, value in entries)
    return b"II*\x00" + struct.pack("<I", 8 + 16) + b"\0" * 16 + ifd + b"\0\0\0\0"


def _bmp_header(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + 64, 0, 0, 54) + info + b"\0" * 64
