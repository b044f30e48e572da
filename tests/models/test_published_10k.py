"""The published Fashion-MNIST figures, on the full 10,000-image test split.

Needs the Debian package dataset-fashion-mnist (installed by .ci/run); skips without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler.core.errors import DataError
from models.datasets import load_dataset

pytestmark = pytest.mark.slow
ACCURACY = Path(__file__).resolve().parents[2] / "models" / "trained" / "accuracy.json"


@pytest.fixture(scope="module")
def test_split():
    try:
        return load_dataset("fmnist-test")
    except DataError as exc:
        pytest.skip(str(exc))


def test_default_compile_on_10k(test_split, tmp_path):
    """Float top-1 as published; int8 (the built binary, default options) within 0.5 points."""
    from compiler.driver.pipeline import compile_model

    published = json.loads(ACCURACY.read_text())
    result = compile_model("fmnist_resnet", {"eval.data": "fmnist-test"}, tmp_path)
    scores = result.report["eval"]
    assert scores["float"]["top1"] == published["models"]["resnet"]["onnx_top1_test10k"]
    assert scores["int8"]["top1"] >= scores["float"]["top1"] - 0.005
    assert scores["int8"]["agreement"] >= 0.98


# The published step figures (docs/sparsity.md, docs/results.md; issue #22's "now" column):
# the CLI step commands with --reconstruct and the bundled fmnist-calib images, float models.
STEP_DROPS = {
    "prune": (["prune", "--target-macs", "0.7"], 0.5),
    "sparsify": (["sparsify", "--block", "4", "--sparsity", "0.5", "--reorder"], 1.0),
}


@pytest.mark.parametrize("step", sorted(STEP_DROPS))
def test_step_drop_on_10k(test_split, tmp_path, step):
    """fmnist_resnet pruned to 70 % MACs / 1x4 at 50 %: top-1 drop within the published bound."""
    from compiler.cli import main
    from compiler.driver.evaluate import evaluate

    args, max_drop = STEP_DROPS[step]
    out = tmp_path / f"{step}.onnx"
    assert main([args[0], "fmnist_resnet", "-o", str(out), *args[1:],
                 "--calib", "fmnist-calib", "--reconstruct"]) == 0
    float_top1 = evaluate("fmnist_resnet", test_split).metrics["top1"]
    top1 = evaluate(out, test_split).metrics["top1"]
    assert float_top1 - top1 <= max_drop / 100
    if step == "prune":  # the scored model is the compressed one
        from compiler.core.cost import model_cost
        from compiler.core.io import load_model
        from compiler.driver.sources import resolve_model

        macs = model_cost(load_model(out, bind=True)).macs
        assert macs <= 0.72 * model_cost(load_model(resolve_model("fmnist_resnet"), bind=True)).macs
