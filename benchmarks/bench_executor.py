"""Scale-out: the ABC search, a fleet compile and Ray's per-task cost, local vs Ray.

    python benchmarks/bench_executor.py [--cycles 2] [--fleet 4] [--json]
    python benchmarks/bench_executor.py --resnet50-costs

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


def resnet50_costs(images: int = 32) -> dict:
    """Per-task costs behind docs/scaling.md's projection, in CPU seconds (load-proof).

    One ABC candidate of ResNet-50 (random weights, `images` calibration images at 224, the
    search's own worker functions) and one default `npuc compile` of ResNet-50 calibrated on
    the bundled photo crops.
    """
    import pickle
    import resource

    import numpy as np

    from compiler.core.feeds import load_feeds
    from compiler.core.io import load_model
    from models.zoo import resnet50
    from passes.canonicalize import canonicalize
    from passes.prune import abc, analyze
    from passes.prune.criteria import score_groups
    from passes.prune.pipeline import _split, make_config

    proto, _ = resnet50()
    model = canonicalize(load_model(proto, bind=True, keep_batch=True)).model
    name = model.graph.inputs[0].name
    x = np.random.default_rng(0).standard_normal((images, 3, 224, 224)).astype(np.float32)
    cfg = make_config(search="abc", target_macs=0.7, seed=0)
    fit, held = _split(load_feeds({name: x}, model), cfg)
    analysis = analyze(model)
    payload = abc._payload(model, score_groups(analysis, cfg.criterion, calib=fit, seed=0),
                           cfg, fit, held)
    out = {"payload_mb": round(len(pickle.dumps(payload, protocol=5)) / 1e6, 1)}
    t = time.process_time()
    abc._init_worker(payload)
    out["worker_start_cpu_s"] = round(time.process_time() - t, 2)
    gids = [g.id for g in analysis.groups if g.prunable]
    counts = abc.level_counts(analysis.groups, gids, np.full(len(gids), 7), cfg.round_to)
    t = time.process_time()
    abc._evaluate(counts)
    out["abc_candidate_cpu_s"] = round(time.process_time() - t, 1)
    from compiler.driver.pipeline import compile_model

    with tempfile.TemporaryDirectory() as tmp:
        before = resource.getrusage(resource.RUSAGE_SELF)
        t = time.perf_counter()
        compile_model("resnet50", {"calibration.data": "photos"}, tmp)
        after = resource.getrusage(resource.RUSAGE_SELF)
    out["compile_cpu_s"] = round(after.ru_utime + after.ru_stime - before.ru_utime
                                 - before.ru_stime, 1)
    out["compile_wall_s"] = round(time.perf_counter() - t, 1)
    return out


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
    parser.add_argument("--resnet50-costs", action="store_true",
                        help="only the per-task CPU costs of docs/scaling.md's projection")
    args = parser.parse_args()
    if args.resnet50_costs:
        print(json.dumps(resnet50_costs()))
        return 0
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
