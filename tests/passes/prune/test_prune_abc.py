"""ABC rate search: budget respected, seeded, parallel workers, fitness history."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.core.errors import ConfigError
from passes.prune import prune_model
from tests.passes.prune.test_prune_recon import _images, small_resnet


@pytest.mark.slow
def test_abc_search_respects_budget_and_records_history():
    model = small_resnet()
    calib = {"x": _images(48, 0)}
    opts = dict(search="abc", target_macs=0.6, calib=calib, reconstruct=True, abc_cycles=2,
                abc_sources=3, abc_limit=1, workers=2, seed=1, round_to=1)
    pruned, report = prune_model(model, **opts)
    info = report["search"]
    assert report["macs"]["ratio"] <= 0.6 + 1e-9
    assert info["workers"] == 2 and len(info["history"]) == 2
    assert info["history"] == sorted(info["history"])  # best-so-far never decreases
    assert all(1 <= lv <= 10 for lv in info["best_levels"])
    assert 0.5 < info["best_fitness"] <= 1.0  # cosine to the teacher on held-out data
    assert info["evaluations"] >= 3
    _, again = prune_model(model, **opts)
    assert again["search"]["best_levels"] == info["best_levels"]  # seeded


def test_abc_needs_budget():
    with pytest.raises(ConfigError, match="needs --target-macs"):
        prune_model(small_resnet(), search="abc", ratio=0.3, calib={"x": _images(8, 0)},
                    reconstruct=False, round_to=1)
    assert np.isfinite(0.0)


@pytest.mark.slow
def test_abc_same_answer_on_ray_and_any_worker_count(ray_cluster):
    """Seeded search: local 1 worker, local 2 workers and 2 Ray actors agree exactly."""
    from compiler.core.executor import ExecutorOptions

    model = small_resnet()
    opts = dict(search="abc", target_macs=0.6, calib={"x": _images(32, 0)}, reconstruct=True,
                abc_cycles=2, abc_sources=3, abc_limit=1, seed=3, round_to=1)
    runs = [prune_model(model, executor=ExecutorOptions(kind=kind), workers=n, **opts)[1]
            for kind, n in (("local", 1), ("local", 2), ("ray", 2))]
    first = runs[0]["search"]
    for report in runs[1:]:
        info = report["search"]
        assert info["best_levels"] == first["best_levels"]
        assert info["history"] == first["history"]  # every fitness value, bit for bit
        assert report["groups"] == runs[0]["groups"]
    assert [r["search"]["executor"] for r in runs] == ["local", "local", "ray"]
    assert [r["search"]["workers"] for r in runs] == [1, 2, 2]
