"""Scale curves: `npuc quantize` and the npusim simulator against model size and data size.

1. Model size: ResNet-18 / 50 / 101 (zoo builders, torchvision parameter counts) at 224 with
   32 calibration images; `npuc quantize` (the user's command, CLI defaults) against
   onnxruntime `quantize_static` (MinMax, per-channel, QDQ) in the same run.
2. Calibration-set size: ResNet-50 with 8 / 32 / 128 / 512 images (`--calib-limit N`, so
   all of them are used; the default limit is 256). The bundled photos give fewer crops,
   so they are repeated deterministically (odd copies flipped left-right, each copy rolled
   by 8 pixels per repeat: `bench_quantize.calibration_images`). onnxruntime runs up to
   `--ort-max-calib` images.
3. Simulation: one frame of each model's `model.quant.onnx` (from step 1) in the npusim
   simulator, best of `--frames`, with onnxruntime on the same model's `model.qdq.onnx`.

Every measurement is a fresh process (time from spawn to exit, the in-process part, VmHWM);
the load average is printed with each table, since the machine may be shared.

    python benchmarks/scale_curves.py [--models resnet18,resnet50,resnet101]
        [--calib-sizes 8,32,128,512] [--ort-max-calib 128] [--repeat 1] [--frames 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_quantize import (  # noqa: E402
    ROOT,
    best,
    build_model,
    calibration_images,
    load_average,
    run_npuc_cli,
    run_ort_process,
    vm_hwm_mb,
)


def write_model(work: Path, name: str, size: int) -> Path:
    """The zoo model `name` (ResNet-18/50/101) as an ONNX file."""
    import onnx

    path = work / f"{name}.onnx"
    if not path.exists():
        onnx.save(build_model_any(name, size), str(path))
    return path


def build_model_any(name: str, size: int):
    """A ModelProto from `models.zoo.RESNETS` (ResNet-18/50/101) or `ARCHITECTURES`."""
    from models.zoo import RESNETS

    if name in RESNETS:
        return RESNETS[name](image_size=size)[0]
    return build_model(name, size)


def write_calib(work: Path, n: int, size: int) -> Path:
    """`n` calibration images as .npy."""
    path = work / f"calib{n}.npy"
    if not path.exists():
        np.save(path, calibration_images(n, size))
    return path


def measure(model: Path, calib: Path, out: Path, n: int, repeat: int, ort: bool) -> dict:
    """npuc (and onnxruntime) on one model and calibration set; best of `repeat`."""
    ours, theirs = [], []
    for _ in range(repeat):
        ours.append(run_npuc_cli(model, calib, out, ["--calib-limit", str(n)]))
        if ort:
            theirs.append(run_ort_process(model, calib, out.parent / "ort"))
    row = {"npuc": best(ours)}
    if ort:
        row["onnxruntime"] = best(theirs)
        row["ratio_process"] = row["npuc"]["process_s"] / row["onnxruntime"]["process_s"]
        row["ratio_work"] = row["npuc"]["work_s"] / row["onnxruntime"]["work_s"]
        row["ratio_rss"] = row["npuc"]["peak_rss_mb"] / row["onnxruntime"]["peak_rss_mb"]
    return row


def simulate_child(quant_dir: str, frames: str) -> None:
    """Subprocess body: build model.bin, time one frame in the simulator and in onnxruntime."""
    from compiler.core.io import load_model
    from compiler.core.numerics import session
    from targets.npusim import Simulator, build_binary

    quant = load_model(str(Path(quant_dir) / "model.quant.onnx"))
    start = time.perf_counter()
    sim = Simulator(build_binary(quant).data)
    build_s = time.perf_counter() - start
    name = quant.graph.inputs[0].name
    shape = [1, *quant.graph.inputs[0].shape[1:]]
    frame = {name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    ort = session(load_model(str(Path(quant_dir) / "model.qdq.onnx")))
    sim_s, ort_s = _best(lambda: sim.run(frame), int(frames)), \
        _best(lambda: ort.run(None, frame), int(frames))
    print(json.dumps({"build_s": build_s, "frame_s": sim_s, "ort_qdq_frame_s": ort_s,
                      "peak_rss_mb": vm_hwm_mb()}))


def _best(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def simulate(quant_dir: Path, frames: int) -> dict:
    """`simulate_child` in a fresh interpreter."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--simulate-child", str(quant_dir),
           str(frames)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"simulate failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def model_curve(work: Path, args: argparse.Namespace) -> dict:
    """Quantize and simulate against model size."""
    calib = write_calib(work, args.calib, args.size)
    rows = {}
    for name in args.models.split(","):
        model = write_model(work, name, args.size)
        out = work / name / "npuc"
        rows[name] = measure(model, calib, out, args.calib, args.repeat, ort=True)
        rows[name]["params_m"] = _params(name, args.size) / 1e6
        if args.frames:
            rows[name]["simulate"] = simulate(out, args.frames)
    return {"load": load_average(), "rows": rows}


def _params(name: str, size: int) -> int:
    from models.zoo.stats import count_params

    return count_params(build_model_any(name, size))


def calib_curve(work: Path, args: argparse.Namespace) -> dict:
    """Quantize ResNet-50 (or `--calib-model`) against the number of calibration images."""
    model = write_model(work, args.calib_model, args.size)
    rows = {}
    for n in (int(x) for x in args.calib_sizes.split(",")):
        calib = write_calib(work, n, args.size)
        out = work / f"calib-{n}" / "npuc"
        rows[n] = measure(model, calib, out, n, args.repeat, ort=n <= args.ort_max_calib)
        rows[n]["calib_file_mb"] = calib.stat().st_size / 2**20
    return {"load": load_average(), "rows": rows}


def print_models(curve: dict) -> None:
    """Table of the model-size curve."""
    print(f"quantize and simulate vs model size (load {curve['load']})")
    print(f"  {'model':10s} {'params M':>8s} {'npuc s':>7s} {'ort s':>7s} {'ratio':>6s} "
          f"{'npuc MB':>8s} {'ort MB':>7s} {'ratio':>6s} {'sim ms/frame':>12s} "
          f"{'ort qdq ms':>10s} {'sim MB':>7s}")
    for name, r in curve["rows"].items():
        sim = r.get("simulate", {})
        print(f"  {name:10s} {r['params_m']:8.1f} {r['npuc']['process_s']:7.2f} "
              f"{r['onnxruntime']['process_s']:7.2f} {r['ratio_process']:6.2f} "
              f"{r['npuc']['peak_rss_mb']:8.0f} {r['onnxruntime']['peak_rss_mb']:7.0f} "
              f"{r['ratio_rss']:6.2f} {1e3 * sim.get('frame_s', float('nan')):12.0f} "
              f"{1e3 * sim.get('ort_qdq_frame_s', float('nan')):10.1f} "
              f"{sim.get('peak_rss_mb', float('nan')):7.0f}")


def print_calib(curve: dict) -> None:
    """Table of the calibration-size curve."""
    print(f"quantize vs calibration images (load {curve['load']})")
    print(f"  {'images':>6s} {'file MB':>7s} {'npuc s':>7s} {'forward':>7s} {'stats':>6s} "
          f"{'npuc MB':>8s} {'ort s':>7s} {'ort MB':>7s}")
    for n, r in curve["rows"].items():
        t = r["npuc"]["time_s"]
        ort = r.get("onnxruntime")
        ort_cells = (f"{ort['process_s']:7.2f} {ort['peak_rss_mb']:7.0f}" if ort
                     else f"{'-':>7s} {'-':>7s}")
        print(f"  {n:6d} {r['calib_file_mb']:7.0f} {r['npuc']['process_s']:7.2f} "
              f"{t.get('calibrate.forward', 0):7.2f} {t.get('calibrate.statistics', 0):6.2f} "
              f"{r['npuc']['peak_rss_mb']:8.0f} {ort_cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,resnet50,resnet101")
    parser.add_argument("--calib-model", default="resnet50")
    parser.add_argument("--calib-sizes", default="8,32,128,512")
    parser.add_argument("--ort-max-calib", type=int, default=128)
    parser.add_argument("--calib", type=int, default=32, help="images for the model curve")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--frames", type=int, default=3, help="simulated frames (0: skip)")
    parser.add_argument("--skip", default="", help="'models' and/or 'calib' to leave out")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--simulate-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.simulate_child:
        simulate_child(*args.simulate_child)
        return
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "models" not in args.skip:
            report["models"] = model_curve(work, args)
            if not args.json:
                print_models(report["models"])
        if "calib" not in args.skip:
            report["calibration"] = calib_curve(work, args)
            if not args.json:
                print_calib(report["calibration"])
    if args.json:
        print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
