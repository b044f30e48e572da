"""Scale-out: the ABC search, a fleet compile and Ray's per-task cost, local vs Ray.

    python benchmarks/bench_executor.py [--cycles 2] [--fleet 4] [--json]

All in one run on this machine:
- ABC search of `fmnist_resnet` (prune to 70 % MACs, reconstruction, `fmnist-calib`, fixed
  cycles) with 1 and 2 workers, local processes and Ray actors; the searches must agree.
- A fleet compile of `--fleet` models (the two committed Fashion-MNIST models, repeated)
  with 1 and 2 workers, local and Ray.
- Ray overhead: wall time per no-op task on 2 actors (round trip, scheduling), and the cost
  of starting the private Ray instance.
Needs the ray extra. Results and the projection to a cluster: docs/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compiler.core.executor import ExecutorOptions, open_pool  # noqa: E402


def _noop(i: int) -> int:
    return i


def ray_overhead(tasks: int = 400) -> dict:
    """Seconds to start Ray, and per no-op task on 2 actors (after warm-up)."""
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    started = time.perf_counter() - start
    with open_pool(ExecutorOptions(kind="ray", workers=2)) as pool:
        pool.map(_noop, range(20))
        t = time.perf_counter()
        pool.map(_noop, range(tasks))
        per_task = (time.perf_counter() - t) / tasks
    return {"ray_start_s": round(started, 2), "ray_ms_per_task": round(per_task * 1e3, 3)}


def abc_runs(cycles: int) -> list[dict]:
    from compiler.core.io import load_model
    from compiler.driver.sources import resolve_model
    from models.datasets import load_dataset
    from passes.prune import prune_model

    model = load_model(resolve_model("fmnist_resnet"), bind=True, keep_batch=True)
    calib = load_dataset("fmnist-calib").inputs
    rows, first = [], None
    for kind in ("local", "ray"):
        for workers in (1, 2):
            start = time.perf_counter()
            _, report = prune_model(model, calib={"input": calib}, search="abc",
                                    target_macs=0.7, abc_cycles=cycles, workers=workers,
                                    executor=ExecutorOptions(kind=kind), seed=0)
            wall = time.perf_counter() - start
            info = report["search"]
            first = first or info["best_levels"]
            rows.append({"task": f"ABC {cycles} cycles", "executor": kind, "workers": workers,
                         "wall_s": round(wall, 1), "evaluations": info["evaluations"],
                         "same_result": info["best_levels"] == first})
    return rows


def fleet_runs(count: int) -> list[dict]:
    from compiler.driver.config import load_config
    from compiler.driver.fleet import compile_fleet

    names = ["fmnist_resnet", "fmnist_mobilenetv2"]
    models = [names[i % 2] for i in range(count)]
    config = load_config(overrides={"calibration.data": "fmnist-calib",
                                    "eval.data": "fmnist-eval", "eval.limit": 500})
    rows = []
    for kind in ("local", "ray"):
        for workers in (1, 2):
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                entries = compile_fleet(models, config, out,
                                        ExecutorOptions(kind=kind, workers=workers))
                rows.append({"task": f"fleet of {count}", "executor": kind,
                             "workers": workers,
                             "wall_s": round(time.perf_counter() - start, 1),
                             "compiled": sum(e.ok for e in entries)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--fleet", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    overhead = ray_overhead()  # starts the Ray instance the later Ray runs reuse
    rows = abc_runs(args.cycles) + fleet_runs(args.fleet)
    if args.json:
        print(json.dumps({"overhead": overhead, "rows": rows}, indent=2))
        return 0
    print(f"ray start {overhead['ray_start_s']} s, "
          f"{overhead['ray_ms_per_task']} ms per no-op task (2 actors)")
    print("| task | executor | workers | wall s | note |\n|---|---|---|---|---|")
    for r in rows:
        note = (f"{r['evaluations']} evaluations, same result: {r['same_result']}"
                if "evaluations" in r else f"{r['compiled']} compiled")
        print(f"| {r['task']} | {r['executor']} | {r['workers']} | {r['wall_s']} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
