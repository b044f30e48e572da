"""Simulator speed against onnxruntime, measured in the same run, on the files a user has.

For each model: quantize with bundled photos (`write_quantized`, what `npuc quantize` writes),
build `model.bin`, check the simulator bit-exact against `model.quant.onnx` on the timed
frames, then time one frame at a time, interleaved, on real photos:

- simulator: `Simulator("model.bin").run(frame)` with its defaults (what `npuc run` does),
  and the same with its native kernels off (the numpy path a machine without a C compiler
  at install time runs);
- onnxruntime: a plain `onnxruntime.InferenceSession("model.qdq.onnx")`, default
  SessionOptions (all graph optimizations, default threads), as a user would run it;
- the integer model `model.quant.onnx` in the same kind of session (what `npuc eval`,
  `compare` and the accuracy budget run; docs/fixed-point.md §3, §11 for its fast exact forms).

Prints ms/frame (best and median of the rounds), the ratio, the machine load, and the
simulator's per-kind and slowest-instruction breakdown (`Simulator.profile`).

    .venv/bin/python benchmarks/bench_simulator.py [--models resnet50 mobilenetv2
        efficientnet_lite0] [--repeat 10] [--frames 4] [--threads T] [--top 8] [--json]

With `--perf-table MODEL...` it instead prints the perf-model table of docs/perf-model.md:
dense, 30%-MACs pruned, 1x4 50% sparse and both, latency (1 core, 1 thread) and FPS
(2 cores, 8 threads), each variant built and verified bit-exact first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compiler.core.io import load_model  # noqa: E402
from models.zoo import ARCHITECTURES  # noqa: E402
from passes.quantize.api import quantize_model  # noqa: E402
from targets.npusim import Simulator, build_binary  # noqa: E402

MODELS = ("resnet50", "mobilenetv2", "efficientnet_lite0")


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


def build_files(name: str, out: Path, calib: np.ndarray) -> tuple[Path, Path, object]:
    """Quantize and build `name` into `out` as `npuc quantize` + `npuc build` would."""
    from compiler.driver.outputs import write_quantized
    from models.registry import get_model

    model = load_model(get_model(name)[0], fix_batch=True)
    result = quantize_model(model, {model.graph.inputs[0].name: calib})
    write_quantized(out, result)
    binary = out / "model.bin"
    binary.write_bytes(build_binary(result.quant_model).data)
    return out / "model.qdq.onnx", binary, result.quant_model


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(name: str, args: argparse.Namespace, photos: np.ndarray) -> dict:
    """Build, verify, then time simulator and onnxruntime interleaved on the same frames."""
    import onnxruntime as ort

    from targets.npusim import verify

    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        qdq, binary, quant = build_files(name, Path(tmp), photos[:args.calib])
        frames = photos[args.calib:args.calib + args.frames]
        engine = False if args.no_engine else None
        load_sim = timed(lambda: Simulator(str(binary), threads=args.threads,
                                           int8_gemm=engine))
        sim = Simulator(str(binary), threads=args.threads, int8_gemm=engine)
        sim_np = Simulator(str(binary), threads=args.threads, int8_gemm=engine,
                           native_kernels=False)
        load_ort = timed(lambda: ort.InferenceSession(str(qdq)))
        sess = ort.InferenceSession(str(qdq))
        int_sess = ort.InferenceSession(str(qdq.with_name("model.quant.onnx")))
        feed = sim.input_names[0]
        report = verify(quant, binary.read_bytes(), {feed: frames})
        sim_t, ort_t, int_t, np_t = [], [], [], []
        for _ in range(args.repeat):
            for f in range(len(frames)):
                one = {feed: frames[f:f + 1]}
                sim_t.append(timed(lambda: sim.run(one)))  # noqa: B023 - called at once
                ort_t.append(timed(lambda: sess.run(None, one)))  # noqa: B023
                int_t.append(timed(lambda: int_sess.run(None, one)))  # noqa: B023
                np_t.append(timed(lambda: sim_np.run(one)))  # noqa: B023
        profile = min((sim.profile({feed: frames[:1]}) for _ in range(3)),
                      key=lambda p: p.total_seconds)
    return row(name, sim_t, ort_t, report, profile, args.top) | {
        "simulator_load_s": round(load_sim, 2), "onnxruntime_load_s": round(load_ort, 2),
        "quant_onnx_ms": round(min(int_t) * 1e3, 1),
        "numpy_path_ms": round(min(np_t) * 1e3, 1),
        "quant_onnx_ratio": round(min(int_t) / min(ort_t), 2)}


def row(name: str, sim_t: list[float], ort_t: list[float], report, profile, top: int) -> dict:
    """One model's numbers (ms per frame) and the simulator's breakdown."""
    sim_best, ort_best = min(sim_t) * 1e3, min(ort_t) * 1e3
    sim_med, ort_med = statistics.median(sim_t) * 1e3, statistics.median(ort_t) * 1e3
    total = sum(s.seconds for s in profile.steps) or 1.0
    mismatches = sum(o["mismatched"] for o in report.outputs)
    return {"model": name, "frames_timed": len(sim_t), "mismatches": mismatches,
            "simulator_ms": round(sim_best, 1), "onnxruntime_qdq_ms": round(ort_best, 1),
            "ratio": round(sim_best / ort_best, 2),
            "simulator_median_ms": round(sim_med, 1), "onnxruntime_median_ms": round(ort_med, 1),
            "ratio_median": round(sim_med / ort_med, 2),
            "int8_gemm": profile.int8_gemm, "native_kernels": profile.native_kernels,
            "by_kind_ms": {k: round(v * 1e3, 2) for k, v in profile.by_kind().items()},
            "slowest": [{"index": s.index, "name": s.name, "op": s.kind, "unit": s.unit,
                         "ms": round(s.seconds * 1e3, 2),
                         "share": round(s.seconds / total, 3)}
                        for s in profile.slowest(top)]}


def print_rows(rows: list[dict], load: tuple[float, float]) -> None:
    print(f"load average before / after: {load[0]:.2f} / {load[1]:.2f} "
          f"({os.cpu_count()} cores)\n")
    print("| model | simulator ms | onnxruntime QDQ ms | ratio | median ratio | mismatches "
          "| model.quant.onnx ms (ratio) | numpy path ms | engine / native |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['simulator_ms']} | {r['onnxruntime_qdq_ms']} | "
              f"{r['ratio']}x | {r['ratio_median']}x | {r['mismatches']} | "
              f"{r['quant_onnx_ms']} ({r['quant_onnx_ratio']}x) | {r['numpy_path_ms']} | "
              f"{'on' if r['int8_gemm'] else 'off'} / {'on' if r['native_kernels'] else 'off'} |")
    for r in rows:
        kinds = ", ".join(f"{k} {v:.1f}" for k, v in r["by_kind_ms"].items())
        print(f"\n{r['model']}: simulator ms by op: {kinds}")
        print("| # | instruction | op | unit | ms | share |")
        print("|---|---|---|---|---|---|")
        for s in r["slowest"]:
            print(f"| {s['index']} | {s['name']} | {s['op']} | {s['unit']} | {s['ms']} | "
                  f"{s['share']:.1%} |")


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--perf-table":
        return perf_table(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--repeat", type=int, default=10, help="rounds over the frames")
    parser.add_argument("--frames", type=int, default=4, help="photos timed per round")
    parser.add_argument("--calib", type=int, default=8, help="calibration photos")
    parser.add_argument("--threads", type=int, default=None,
                        help="simulator worker threads (default: one per core)")
    parser.add_argument("--top", type=int, default=8, help="slowest instructions shown")
    parser.add_argument("--json", action="store_true", help="one JSON object per model")
    parser.add_argument("--no-engine", action="store_true",
                        help="float BLAS instead of the int8 GEMM engine (a CPU without VNNI)")
    args = parser.parse_args()
    from models.datasets import load_dataset

    photos = load_dataset("photos", limit=args.calib + args.frames).inputs
    before = os.getloadavg()[0]
    rows = [measure(name, args, photos) for name in args.models]
    load = (before, os.getloadavg()[0])
    if args.json:
        for r in rows:
            print(json.dumps(r | {"load_average": load}))
    else:
        print_rows(rows, load)
    return 0 if all(r["mismatches"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
