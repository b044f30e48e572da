"""Post-training recovery on the committed Fashion-MNIST models, 10,000 test images (issue #22).

Each test runs one row of `benchmarks/recovery.py` through the API with the step commands'
defaults (`--reconstruct`, `fmnist-calib`) and bounds the top-1 drop against the float model.
Rows whose issue goal is not reached yet are held at the measured figure plus a few images
(docs/results.md, "Post-training recovery", explains the gap). Needs the Debian package
dataset-fashion-mnist; skips without it.

CI runs two rows, one per default path: channel pruning with block reconstruction (ResNet
70 %) and 1x4 sparsity with block re-fit (MobileNetV2); each costs 4-5 minutes of one core
with the default 800 Adam steps per block. `python benchmarks/recovery.py` measures every
row (the other ones held here before: ResNet 50 % <= 0.84, MobileNetV2 70 % <= 0.62,
ResNet 1x4 <= 0.88).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compiler.core.errors import DataError
from compiler.core.io import load_model
from compiler.core.numerics import run, session
from compiler.driver.data import load_data
from passes.canonicalize import canonicalize
from passes.prune import prune_model
from passes.sparsify.sparsify import sparsify_model

pytestmark = [pytest.mark.slow, pytest.mark.full_recon]
TRAINED = Path(__file__).resolve().parents[2] / "models" / "trained"
FLOAT_TOP1 = {"resnet": 0.9434, "mobilenetv2": 0.9361}  # models/trained/accuracy.json


@pytest.fixture(scope="module")
def data():
    model = load_model(TRAINED / "fmnist_resnet.onnx")
    try:
        test = load_data("fmnist-test", model)
    except DataError as exc:
        pytest.skip(str(exc))
    return test, load_data("fmnist-calib", model)


def _drop_pt(arch: str, model, test) -> float:
    sess = session(model)
    name = sess.get_outputs()[0].name
    preds = np.concatenate([run(sess, b)[name].argmax(-1) for b in test.batches(500)])
    return 100 * (FLOAT_TOP1[arch] - float(np.mean(preds == np.asarray(test.labels))))


@pytest.mark.parametrize(("arch", "target", "bound"), [
    ("resnet", 0.7, 0.25),      # goal 0.3: measured 0.15 (act 0.19, stream 0.25, lsq 0.46)
])
def test_prune_recovery(data, arch, target, bound):
    test, calib = data
    model = load_model(TRAINED / f"fmnist_{arch}.onnx")
    pruned, report = prune_model(model, target_macs=target, calib=calib, reconstruct=True)
    assert report["reconstruction"]["method"] == "block"
    assert any(b.get("kept") for b in report["reconstruction"]["blocks"])
    assert report["macs"]["ratio"] <= target + 0.01
    assert _drop_pt(arch, pruned, test) <= bound


@pytest.mark.parametrize(("arch", "bound"), [("mobilenetv2", 0.97)])
def test_sparsify_recovery(data, arch, bound):
    # goal 0.5: measured 0.93 with block training (act alone 0.90, pre-activation fit 0.96);
    # docs/results.md
    test, calib = data
    model = canonicalize(load_model(TRAINED / f"fmnist_{arch}.onnx")).model
    sparse, report = sparsify_model(model, 4, 0.5, reorder=True, criterion="obs", calib=calib)
    assert any(b.get("kept") for b in report["refit_block"]["blocks"])
    assert _drop_pt(arch, sparse, test) <= bound
