"""Loading the project's optional native kernels (plain C libraries, through ctypes).

`pip install` compiles each kernel file as an optional extension (setup.py) where a C
compiler is present; without one the install still succeeds and every caller keeps its numpy
path, which computes the same results. The libraries have no Python API (no Python or numpy
headers): they are found next to their package's modules under the interpreter's extension
suffix and loaded with ctypes, whose foreign calls release the GIL. Each exports
`npuc_source_digest()`, the digest of the C file it was built from (`load_library`).
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.machinery
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DIGEST_CHARS = 16


def source_digest(path: str | os.PathLike) -> str:
    """The digest setup.py compiles into a kernel library (`npuc_source_digest()`)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:DIGEST_CHARS]


def load_library(package_dir: str | os.PathLike, name: str,
                 source: str) -> ctypes.CDLL | None:
    """The library `name` built into `package_dir`, or None (not built, stale or unloadable).

    A library built from another version of its C source (a checkout updated without
    reinstalling) would be called with the wrong arguments: where the source is present
    (a checkout), the digest compiled into the library must match it.

    Args:
        package_dir: The directory of the package that owns the kernels.
        name: The extension's module name (its last component).
        source: Its C file's name in `package_dir`.
    """
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = Path(package_dir) / f"{name}{suffix}"
        if path.is_file():
            try:
                lib = ctypes.CDLL(str(path))
                lib.npuc_source_digest.restype = ctypes.c_char_p
                built = lib.npuc_source_digest().decode()
            except (OSError, AttributeError) as e:
                log.info("native kernels %s not loaded (%s): numpy path", name, e)
                return None
            code = Path(package_dir) / source
            if code.is_file() and built != source_digest(code):
                log.warning("native kernels %s were built from another version of %s; "
                            "using the numpy path (rebuild: pip install -e .)", name, source)
                return None
            return lib
    log.info("native kernels %s not built: numpy path", name)
    return None


def address(a: np.ndarray) -> int:
    """The address of `a`'s first element (for a ctypes call)."""
    return a.ctypes.data
