"""Builds the simulator's optional native kernels; everything else is in pyproject.toml.

`targets/npusim/native.c` is plain C loaded through ctypes (no Python or numpy headers).
`optional=True`: without a C compiler the install still succeeds and the simulator runs its
numpy path, which gives the same results, slower (targets/npusim/native.py).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "targets.npusim._npusim_native", ["targets/npusim/native.c"], optional=True,
    extra_compile_args=["-O3"])])
