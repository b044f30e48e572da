"""Simulator speed against onnxruntime, measured in the same run.

One ResNet-50 int8 frame in the npusim simulator vs onnxruntime on `model.qdq.onnx` (the
same quantized model as QuantizeLinear/DequantizeLinear, which onnxruntime fuses into its
int8 kernels). Target: ratio <= 3.

    /work/venv/bin/python benchmarks/bench_simulator.py [--model resnet50] [--repeat 5]

With `--perf-table MODEL...` it instead prints the perf-model table of docs/perf-model.md:
dense, 30%-MACs pruned, 1x4 50% sparse and both, latency (1 core, 1 thread) and FPS
(2 cores, 8 threads), each variant built and verified bit-exact first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compiler.core.io import load_model  # noqa: E402
from compiler.core.numerics import session  # noqa: E402
from models.zoo import ARCHITECTURES  # noqa: E402
from passes.quantize.api import quantize_model  # noqa: E402
from targets.npusim import Simulator, build_binary  # noqa: E402


def best_of(fn, repeat: int) -> float:
    """Smallest wall time of `repeat` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def variants(model):
    """Dense, pruned (MACs to 70%, 16-channel aligned), 1x4 50% sparse, pruned + sparse."""
    from passes.canonicalize import canonicalize
    from passes.prune import prune_model
    from passes.sparsify import sparsify_model

    dense = canonicalize(model).model
    pruned = canonicalize(prune_model(dense, target_macs=0.7, round_to=16,
                                      reconstruct=False)[0]).model
    return {"dense": dense, "pruned 30% MACs": pruned,
            "1x4 sparse 50%": sparsify_model(dense, block=4, sparsity=0.5, criterion="l1",
                                             reconstruct=False)[0],
            "pruned + 1x4 50%": sparsify_model(pruned, block=4, sparsity=0.5, criterion="l1",
                                               reconstruct=False)[0]}


def perf_table(names: list[str]) -> int:
    from compiler.core.cost import model_cost
    from models.registry import get_model
    from targets.npusim import estimate_perf, verify

    print("| model | variant | GMACs | binary MB | latency ms (1 core, 1 thread) "
          "| FPS (2 cores, 8 threads) | verify |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        if name in ARCHITECTURES:
            proto, _ = ARCHITECTURES[name](seed=0, batch=1)
        else:
            proto = get_model(name)[0]
        model = load_model(proto, fix_batch=True)
        inp = model.graph.inputs[0]
        rng = np.random.default_rng(0)
        calib = {inp.name: rng.standard_normal([4] + list(inp.shape[1:])).astype(np.float32)}
        check = {inp.name: rng.standard_normal([1] + list(inp.shape[1:])).astype(np.float32)}
        for label, m in variants(model).items():
            quant = quantize_model(m, calib).quant_model
            data = build_binary(quant).data
            ok = verify(quant, data, check).consistent
            one, two = estimate_perf(data), estimate_perf(data, cores=2, threads=8)
            print(f"| {name} | {label} | {model_cost(m).macs / 1e9:.2f} | "
                  f"{len(data) / 1e6:.1f} | {one.latency_ms:.2f} | {two.fps:.0f} | "
                  f"{'0 mismatches' if ok else 'MISMATCH'} |", flush=True)
    return 0


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--perf-table":
        return perf_table(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet50", choices=sorted(ARCHITECTURES))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--calib", type=int, default=4, help="calibration images")
    args = parser.parse_args()
    proto, samples = ARCHITECTURES[args.model](seed=0, batch=1)
    model = load_model(proto, fix_batch=True)
    rng = np.random.default_rng(0)
    name = model.graph.inputs[0].name
    shape = [args.calib] + list(model.graph.inputs[0].shape[1:])
    quant = quantize_model(model, {name: rng.standard_normal(shape).astype(np.float32)})
    sim = Simulator(build_binary(quant.quant_model).data)
    frame = {name: rng.standard_normal([1] + shape[1:]).astype(np.float32)}
    ort_sess = session(quant.qdq_model)
    t_sim = best_of(lambda: sim.run(frame), args.repeat)
    t_ort = best_of(lambda: ort_sess.run(None, frame), args.repeat)
    result = {"model": args.model, "simulator_ms": round(t_sim * 1e3, 1),
              "onnxruntime_qdq_ms": round(t_ort * 1e3, 1), "ratio": round(t_sim / t_ort, 2),
              "target_ratio": 3.0}
    print(json.dumps(result))
    return 0 if result["ratio"] <= 3.0 else 1


if __name__ == "__main__":
    sys.exit(main())
