"""Builds the optional native kernels; everything else is in pyproject.toml.

Each is plain C loaded through ctypes (no Python or numpy headers; compiler/core/native.py).
`optional=True`: without a C compiler the install still succeeds and the numpy paths run,
which give the same results, slower.
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

KERNELS = {
    "targets.npusim._npusim_native": "targets/npusim/native.c",  # the simulator
    "passes.quantize._histogram_native": "passes/quantize/histogram.c",  # calibration
}


def digest(source: str) -> str:
    """As `compiler.core.native.source_digest`: the loader rejects a stale library."""
    return hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16]


setup(ext_modules=[Extension(name, [source], optional=True, extra_compile_args=["-O3"],
                             define_macros=[("NPUC_SOURCE_DIGEST", f'"{digest(source)}"')])
                   for name, source in KERNELS.items()])
