"""Session fixtures of the hostile-input suite: the fork server and the valid artefacts."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from tests.hostile import models
from tests.hostile.harness import ROOT, Artefacts, Server

PRESET = ROOT / "targets" / "npusim" / "presets" / "default.yaml"


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """One fork server per test process (xdist worker)."""
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def work() -> Iterator[Path]:
    """Where the cases run; kept when a case failed (its folder shows what happened)."""
    path = Path(tempfile.mkdtemp(prefix="npuc-hostile-"))
    os.chmod(path, 0o755)
    yield path
    if not any(p.is_dir() and p.name != "base" for p in path.iterdir()):
        shutil.rmtree(path, ignore_errors=True)


def _png(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _write_data(base: Path) -> None:
    calib = models.calib_array()
    np.save(base / "calib.npy", calib)
    np.savez(base / "calib.npz", x=calib)
    rng = np.random.default_rng(5)
    np.savez(base / "eval.npz", images=models.calib_array(8, seed=6),
             labels=rng.integers(0, 10, 8))
    for i in range(4):
        folder = base / "images" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.png").write_bytes(_png(rng))
    shutil.copy(PRESET, base / "arch.yaml")


def _cli(server: Server, base: Path, *argv: str) -> None:
    log = base / "setup.log"
    reply = server.request({"op": "cli", "argv": list(argv), "cwd": str(base),
                            "out": str(log), "err": str(log), "timeout": 300})
    if reply["rc"] != 0:
        raise RuntimeError(f"hostile setup: npuc {' '.join(argv)} failed:\n{log.read_text()}")


@pytest.fixture(scope="session")
def artefacts(server: Server, work: Path) -> Artefacts:
    """Tiny valid models, data, quantized models and binaries every case starts from."""
    base = work / "base"
    (base / "models").mkdir(parents=True)
    for name, build in models.BUILDERS.items():
        onnx.save(build(), base / "models" / f"{name}.onnx")
    _write_data(base)
    for name in ("conv", "cpu"):
        _cli(server, base, "quantize", f"models/{name}.onnx", "-o", f"quant/{name}",
             "--calib", "calib.npy")
        _cli(server, base, "build", f"quant/{name}/model.quant.onnx", "-o", f"bin/{name}.bin")
    return Artefacts(base)
