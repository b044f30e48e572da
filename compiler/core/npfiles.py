"""`.npy` / `.npz` files read with their sizes checked before anything is allocated.

A 128-byte `.npy` header can claim terabytes, and an `.npz` member is a zip entry that may
inflate a thousandfold. Both formats state each array's shape and dtype up front, so the
reader checks the claim against the bytes present and against `limits.ARRAY_BYTES`, then
reads only the first `limit` samples (axis 0): calibration with `--calib-limit 64` on a large
file costs 64 samples of memory, not the file.

A large C-order `.npy` file (at least `MAP_MIN_BYTES` to read) is memory-mapped copy-on-write
instead of read: samples are paged in when a batch uses them, and `release_rows` hands the
pages of consumed samples back, so streaming calibration over 512 images holds about one
batch of them, not the file (the file must not be truncated while it is mapped).
"""

from __future__ import annotations

import mmap
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np

from compiler.core import limits
from compiler.core.errors import DataError

MAP_MIN_BYTES = 64 << 20


def read_npy(path: Path, limit: int | None = None) -> np.ndarray:
    """The array in an `.npy` file, at most `limit` samples along axis 0."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        return _read(fh, size, str(path), limit, path=path)


def read_npz(path: Path, limit: int | None = None) -> dict[str, np.ndarray]:
    """Every array of an `.npz` file by name, each cut to `limit` samples along axis 0."""
    try:
        with zipfile.ZipFile(path) as zf:
            arrays = {}
            for info in zf.infolist():
                name = info.filename.removesuffix(".npy")
                ratio = info.file_size / max(info.compress_size, 1)
                with zf.open(info) as fh:
                    arrays[name] = _read(fh, info.file_size, f"{path}:{info.filename}", limit,
                                         ratio)
            return arrays
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error,
            NotImplementedError, RuntimeError) as e:  # encrypted / unknown compression
        raise DataError(f"{path}: not a readable .npz ({e})") from e


def array_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Shape of each array in an `.npy` ("" names it) or `.npz` file, from headers only.

    Unreadable files give {}: the shapes are a hint; reading the data reports the error.
    """
    try:
        if path.suffix == ".npy":
            with open(path, "rb") as fh:
                return {"": _header(fh, str(path))[0]}
        with zipfile.ZipFile(path) as zf:
            out = {}
            for info in zf.infolist():
                with zf.open(info) as fh:
                    out[info.filename.removesuffix(".npy")] = _header(fh, str(path))[0]
            return out
    except (OSError, DataError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error,
            NotImplementedError, RuntimeError, ValueError):
        return {}


def _read(fh: IO[bytes], available: int, label: str, limit: int | None,
          ratio: float = 1.0, path: Path | None = None) -> np.ndarray:
    shape, fortran, dtype, header = _header(fh, label)
    if dtype.hasobject:
        raise DataError(f"{label}: holds Python objects (dtype {dtype}); only numeric arrays "
                        "are read")
    if any(d < 0 for d in shape):
        raise DataError(f"{label}: header has a negative dimension {shape}")
    total = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if header + total > available:
        raise DataError(f"{label}: header claims {total:,} bytes of data, the file holds "
                        f"{max(available - header, 0):,}")
    rows = shape[0] if shape else 1
    keep = rows if limit is None or fortran or not shape else min(rows, limit)
    nbytes = total // rows * keep if rows else 0
    cap = limits.limit("ARRAY_BYTES")
    if nbytes > cap:
        raise DataError(f"{label}: {nbytes:,} bytes to read; the limit is {cap:,} (use fewer "
                        "samples, or raise NPUC_LIMIT_ARRAY_BYTES)")
    # Real arrays deflate a few times at most; reading over 64 MiB of a member that inflates
    # more than ZIP_RATIO times is inflating a zip bomb (zeros), whatever sizes it declares.
    if nbytes > 64 << 20 and ratio > limits.limit("ZIP_RATIO"):
        raise DataError(f"{label}: inflates {ratio:,.0f}x; refusing to read {nbytes:,} bytes "
                        "of a zip bomb (NPUC_LIMIT_ZIP_RATIO raises the ratio)")
    out_shape = ((keep,) + tuple(shape[1:])) if shape else ()
    if path is not None and not fortran and shape and nbytes >= MAP_MIN_BYTES:
        try:
            return np.memmap(path, dtype=dtype, mode="c", offset=header, shape=out_shape)
        except (OSError, ValueError):  # a file system without mmap: read it instead
            pass
    raw = bytearray(nbytes)  # writeable, so the array needs no second copy
    got = _read_into(fh, memoryview(raw))
    if got != nbytes:
        raise DataError(f"{label}: truncated ({got:,} of {nbytes:,} bytes)")
    arr = np.frombuffer(raw, dtype=dtype).reshape(out_shape, order="F" if fortran else "C")
    return arr[:limit] if fortran and limit is not None and shape else arr


def release_rows(array: np.ndarray, stop: int) -> None:
    """Drop the pages of rows [0, stop) of a memory-mapped array from this process's memory.

    They are read from the file again if used again, so this never changes a value; arrays
    that are not views of a `np.memmap` are left alone.
    """
    base = array
    while isinstance(base, np.ndarray) and not isinstance(base, np.memmap):
        base = base.base  # views of views; an array over other memory ends the walk
    mm = getattr(base, "_mmap", None) if isinstance(base, np.memmap) else None
    if mm is None or stop <= 0 or array.size == 0 or not array.flags.c_contiguous:
        return
    start = base.ctypes.data - (base.offset % mmap.ALLOCATIONGRANULARITY)  # the map's address
    end = array.ctypes.data + min(stop, len(array)) * array.strides[0] - start
    length = end - end % mmap.PAGESIZE
    if length > 0:
        mm.madvise(mmap.MADV_DONTNEED, 0, length)


def _read_into(fh: IO[bytes], view: memoryview) -> int:
    done = 0
    while done < len(view):
        n = fh.readinto(view[done:])
        if not n:
            break
        done += n
    return done


def _header(fh: IO[bytes], label: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    except (ValueError, OSError, SyntaxError, TypeError) as e:
        raise DataError(f"{label}: not a .npy array ({str(e).splitlines()[0][:120]})") from e
    return tuple(int(d) for d in shape), bool(fortran), np.dtype(dtype), fh.tell()
