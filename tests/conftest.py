"""Shared fixtures: tiny hand-built models and the ONNX light model zoo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(p.stem.removeprefix("light_") for p in LIGHT_DIR.glob("light_*.onnx"))


def light_path(name: str) -> Path:
    """Path of one onnx light model-zoo graph."""
    return LIGHT_DIR / f"light_{name}.onnx"


def conv_model(opset: int = 17, batch: int | str = 1) -> onnx.ModelProto:
    """Conv-BN-Relu-GAP-Flatten-Gemm, valid in every opset from 9 to 21."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "g"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "var"),
        numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "fw"),
        numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "fb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "beta", "mean", "var"], ["n"],
                         name="bn"),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "conv_model", [helper.make_tensor_value_info("x", 1, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("y", 1, [batch, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7 if opset <= 15 else 8
    return model


@pytest.fixture
def tiny_model() -> onnx.ModelProto:
    """A small valid opset-17 CNN."""
    return conv_model()


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray instance (2 CPUs) shared by the tests; skips without the ray extra."""
    ray = pytest.importorskip("ray")
    import logging

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


SHORT_BLOCK_STEPS = 40


def pytest_configure(config):
    """Block reconstruction (`passes.recon_block`) with 40 Adam steps per block.

    Prune / sparsify (and so every compile) default to it; outside the tests that bound the
    recovered accuracy (marked `full_recon`: the 10k recovery tests) the default 800 steps
    only cost time — a MobileNetV2 compile took 250 s with them. Set for the whole session,
    not per test, so module-scoped fixtures that compile see the same value as their tests.
    """
    import passes.recon_block

    config.default_block_steps = passes.recon_block.STEPS
    passes.recon_block.STEPS = SHORT_BLOCK_STEPS


@pytest.fixture(autouse=True)
def _default_block_training_when_marked(request, monkeypatch):
    """Tests marked `full_recon` train blocks with the library's default number of steps."""
    if request.node.get_closest_marker("full_recon") is not None:
        import passes.recon_block

        monkeypatch.setattr(passes.recon_block, "STEPS", request.config.default_block_steps)
