"""Loading the project's optional native kernels (plain C libraries, through ctypes).

`pip install` compiles each kernel file as an optional extension (setup.py) where a C
compiler is present; without one the install still succeeds and every caller keeps its numpy
path, which computes the same results. The libraries have no Python API (no Python or numpy
headers): they are found next to their package's modules under the interpreter's extension
suffix and loaded with ctypes, whose foreign calls release the GIL.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

def load_library(package_dir: str | os.PathLike, name: str) -> ctypes.CDLL | None:
    """The library `name` built into `package_dir`, or None (not built, or unloadable).

    Args:
        package_dir: The directory of the package that owns the kernels.
        name: The extension's module name (its last component).
    """
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = Path(package_dir) / f"{name}{suffix}"
        if path.is_file():
            try:
                return ctypes.CDLL(str(path))
            except OSError as e:
                log.info("native kernels %s not loaded (%s): numpy path", name, e)
                return None
    log.info("native kernels %s not built: numpy path", name)
    return None


def address(a: np.ndarray) -> int:
    """The address of `a`'s first element (for a ctypes call)."""
    return a.ctypes.data
