"""Pruning rate chosen by an accuracy budget (passes/prune/budget.py)."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.core.errors import ConfigError
from compiler.core.io import load_model
from passes.prune.budget import grid, prune_within_budget
from passes.prune.pipeline import PruneOptions
from passes.quantize.budget import Budget


def test_grid_runs_from_the_floor_to_one():
    assert grid(0.5) == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0]
    assert grid(0.93) == [0.93, 0.98, 1.0]
    assert grid(1.0) == [1.0]


@pytest.fixture(scope="module")
def model_and_data():
    from models.zoo import mobilenetv2

    proto, _ = mobilenetv2(image_size=32)
    rng = np.random.default_rng(0)
    return (load_model(proto), rng.standard_normal((16, 3, 32, 32)).astype(np.float32),
            rng.standard_normal((24, 3, 32, 32)).astype(np.float32))


OPTIONS = PruneOptions(target_macs=0.6, reconstruct=False)


@pytest.mark.slow
def test_a_loose_budget_takes_the_floor_in_one_try(model_and_data):
    model, calib, data = model_and_data
    pruned, report = prune_within_budget(model, calib, Budget(min_cosine=0.0), OPTIONS, data)
    b = report["budget"]
    assert b["chosen"] == 0.6 and b["met"] and len(b["tries"]) == 1
    assert report["macs"]["ratio"] == pytest.approx(b["tries"][0]["macs"])
    assert report["macs"]["ratio"] <= 0.62


@pytest.mark.slow
def test_a_tight_budget_keeps_more_macs_and_meets_it(model_and_data):
    model, calib, data = model_and_data
    loose = prune_within_budget(model, calib, Budget(min_cosine=0.0), OPTIONS, data)[1]
    goal = loose["budget"]["tries"][0]["cosine"] + 0.5 * (
        1 - loose["budget"]["tries"][0]["cosine"])  # halfway from the floor's to float
    _, report = prune_within_budget(model, calib, Budget(min_cosine=goal), OPTIONS, data)
    b = report["budget"]
    tries = {t["fraction"]: t for t in b["tries"]}
    assert b["chosen"] > 0.6 and tries[b["chosen"]]["met"]
    assert tries[b["chosen"]]["cosine"] >= goal
    below = [f for f in tries if f < b["chosen"]]
    assert below and not any(tries[f]["met"] for f in below)  # the next lower try missed
    assert len(tries) <= 1 + 4  # the floor, then a bisection of the 9-point grid
    assert report["macs"]["ratio"] > loose["macs"]["ratio"]


def test_needs_a_floor_and_a_budget(model_and_data):
    model, calib, _ = model_and_data
    with pytest.raises(ConfigError, match="--target-macs"):
        prune_within_budget(model, calib, Budget(min_cosine=0.9), PruneOptions(ratio=0.3))
    with pytest.raises(ConfigError, match="--target-macs"):
        prune_within_budget(model, calib, Budget(), OPTIONS)
