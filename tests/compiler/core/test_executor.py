"""The executor: local process pool and Ray actors give the same ordered results."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from compiler.core.errors import ConfigError, NpucError
from compiler.core.executor import ExecutorOptions, open_pool

_STATE: dict = {}


def _init(payload: dict) -> None:
    _STATE["table"] = np.asarray(payload["table"])


def _lookup(i: int) -> float:
    """Reads the per-worker state filled by `_init` (the payload is not re-sent per task)."""
    return float(_STATE["table"][i] * 2)


def test_local_pool_keeps_order_and_state():
    table = np.arange(10, dtype=np.float64) ** 2
    with open_pool(ExecutorOptions(workers=2), init=_init, payload={"table": table}) as pool:
        assert pool.kind == "local" and pool.workers == 2
        assert pool.map(_lookup, [9, 0, 3, 3]) == [162.0, 0.0, 18.0, 18.0]
        assert pool.map(_lookup, []) == []


def test_ray_without_the_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r"executor ray needs the ray extra \(pip install"):
        open_pool(ExecutorOptions(kind="ray", workers=1))


def test_unknown_kind_and_too_many_workers():
    with pytest.raises(ConfigError, match="executor.kind = 'mpi'"):
        open_pool(ExecutorOptions(kind="mpi"))
    with pytest.raises(ConfigError, match="at most 256"):
        ExecutorOptions(workers=1000).worker_count()


@pytest.mark.slow
def test_ray_pool_matches_local(ray_cluster):
    table = np.arange(50, dtype=np.float64) * 1.5
    items = list(range(49, -1, -3))
    with open_pool(ExecutorOptions(workers=1), init=_init, payload={"table": table}) as pool:
        local = pool.map(_lookup, items)
    with open_pool(ExecutorOptions(kind="ray", workers=2), init=_init,
                   payload={"table": table}) as pool:
        assert pool.kind == "ray" and pool.workers == 2
        assert pool.map(_lookup, items) == local


def test_shard_spans_cover_every_sample_in_whole_chunks():
    from compiler.driver.evaluate import shard_spans

    spans = shard_spans(1000, 64, 8)
    assert spans[0] == (0, 128) and spans[-1][1] == 1000 and len(spans) == 8
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert all(start % 64 == 0 for start, _ in spans)
    assert shard_spans(5, 64, 8) == [(0, 5)]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "ray"])
def test_sharded_eval_is_identical(kind, request):
    """fmnist_resnet on 600 images: the same top-1/agreement/cosine with 2 workers."""
    from compiler.driver.evaluate import evaluate

    if kind == "ray":
        request.getfixturevalue("ray_cluster")
    args = ("fmnist_mobilenetv2", "fmnist-eval")
    kw = dict(reference="fmnist_resnet", limit=600, batch=64)
    here = evaluate(*args, **kw)
    there = evaluate(*args, **kw, executor=ExecutorOptions(kind=kind, workers=2))
    assert there.metrics == here.metrics and there.samples == 600
    assert 0.85 < here.metrics["top1"] < 1.0


def _die_once(item: tuple[str, int]) -> int:
    """Kills its worker process the first time it runs (a lost node), then answers."""
    import os
    from pathlib import Path

    marker, value = Path(item[0]), item[1]
    if value == 3 and not marker.exists():
        marker.write_text("died")
        os._exit(1)
    return value * 10


@pytest.mark.slow
def test_ray_reruns_tasks_whose_worker_died(ray_cluster, tmp_path):
    marker = str(tmp_path / "died")
    with open_pool(ExecutorOptions(kind="ray", workers=2)) as pool:
        assert pool.map(_die_once, [(marker, i) for i in range(6)]) == [0, 10, 20, 30, 40, 50]
        assert pool.retried >= 1


@pytest.mark.slow
def test_ray_task_error_is_one_line(ray_cluster):
    with open_pool(ExecutorOptions(kind="ray", workers=1)) as pool:
        with pytest.raises(NpucError, match=r"^ray task 1 failed: .*ZeroDivisionError"):
            pool.map(_inverse, [1, 0])


def _inverse(x: int) -> float:
    return 1 / x


def _data_error(x: int) -> int:
    from compiler.core.errors import DataError

    raise DataError(f"sample {x}: bad shape")


@pytest.mark.slow
def test_ray_passes_project_errors_through(ray_cluster):
    from compiler.core.errors import DataError

    with open_pool(ExecutorOptions(kind="ray", workers=1)) as pool:
        with pytest.raises(DataError, match=r"^sample 7: bad shape$"):
            pool.map(_data_error, [7])
