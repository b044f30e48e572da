"""The native-kernel loader: a library built from another version of its source is refused."""

from __future__ import annotations

import importlib.machinery
import shutil
from pathlib import Path

import pytest

import targets.npusim.native as sim_native
from compiler.core.native import load_library, source_digest

HERE = Path(sim_native.__file__).parent
BUILT = [p for s in importlib.machinery.EXTENSION_SUFFIXES
         for p in [HERE / f"_npusim_native{s}"] if p.is_file()]


@pytest.mark.skipif(not BUILT, reason="the native kernels were not built (no C compiler)")
def test_a_stale_library_is_refused(tmp_path):
    shutil.copy(BUILT[0], tmp_path / BUILT[0].name)
    shutil.copy(HERE / "native.c", tmp_path / "native.c")
    lib = load_library(tmp_path, "_npusim_native", "native.c")
    assert lib is not None
    assert lib.npuc_source_digest().decode() == source_digest(HERE / "native.c")
    (tmp_path / "native.c").write_text((HERE / "native.c").read_text() + "\n/* edited */\n")
    assert load_library(tmp_path, "_npusim_native", "native.c") is None
    (tmp_path / "native.c").unlink()  # an installed wheel ships no source: nothing to check
    assert load_library(tmp_path, "_npusim_native", "native.c") is not None


def test_no_library_means_the_numpy_path(tmp_path):
    assert load_library(tmp_path, "_npusim_native", "native.c") is None
