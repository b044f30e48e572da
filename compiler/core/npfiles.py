"""`.npy` / `.npz` files read with their sizes checked before anything is allocated.

A 128-byte `.npy` header can claim terabytes, and an `.npz` member is a zip entry that may
inflate a thousandfold. Both formats state each array's shape and dtype up front, so the
reader checks the claim against the bytes really present and against `MAX_ARRAY_BYTES`, then
reads only the first `limit` samples (axis 0): calibration with `--calib-limit 64` on a large
file costs 64 samples of memory, not the file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from compiler.core.errors import DataError

MAX_ARRAY_BYTES = 8 << 30  # 8 GiB in memory per array read; a third of a 24 GiB machine


def read_npy(path: Path, limit: int | None = None) -> np.ndarray:
    """The array in an `.npy` file, at most `limit` samples along axis 0."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        return _read(fh, size, str(path), limit)


def read_npz(path: Path, limit: int | None = None) -> dict[str, np.ndarray]:
    """Every array of an `.npz` file by name, each cut to `limit` samples along axis 0."""
    try:
        with zipfile.ZipFile(path) as zf:
            arrays = {}
            for info in zf.infolist():
                name = info.filename.removesuffix(".npy")
                with zf.open(info) as fh:
                    arrays[name] = _read(fh, info.file_size, f"{path}:{info.filename}", limit)
            return arrays
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz ({e})") from e


def _read(fh: IO[bytes], available: int, label: str, limit: int | None) -> np.ndarray:
    shape, fortran, dtype, header = _header(fh, label)
    if dtype.hasobject:
        raise DataError(f"{label}: holds Python objects (dtype {dtype}); only numeric arrays "
                        "are read")
    total = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if header + total > available:
        raise DataError(f"{label}: header claims {total:,} bytes of data, the file holds "
                        f"{max(available - header, 0):,}")
    rows = shape[0] if shape else 1
    keep = rows if limit is None or fortran or not shape else min(rows, limit)
    nbytes = total // rows * keep if rows else 0
    if nbytes > MAX_ARRAY_BYTES:
        raise DataError(f"{label}: {nbytes:,} bytes to read; the limit is "
                        f"{MAX_ARRAY_BYTES:,} (use fewer samples)")
    raw = bytearray(nbytes)  # writeable, so the array needs no second copy
    got = _read_into(fh, memoryview(raw))
    if got != nbytes:
        raise DataError(f"{label}: truncated ({got:,} of {nbytes:,} bytes)")
    out_shape = ((keep,) + tuple(shape[1:])) if shape else ()
    arr = np.frombuffer(raw, dtype=dtype).reshape(out_shape, order="F" if fortran else "C")
    return arr[:limit] if fortran and limit is not None and shape else arr


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
