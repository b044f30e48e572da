"""npuc quantize vs onnxruntime `quantize_static` (MinMax, per-channel, QDQ, int8/int8).

Same model (zoo ResNet-50 at 224, seeded weights) and the same calibration images (the first
N crops of the bundled `photos` dataset). Each tool runs in its own fresh subprocess, which
reports its wall time (model load to files written) and its peak RSS (VmHWM of the fresh
interpreter, imports included), so neither sees the other's (or the parent's) memory.

    python benchmarks/bench_quantize.py [--model resnet50] [--size 224] [--calib 32] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def prepare(workdir: Path, model: str, size: int, n: int) -> tuple[Path, Path]:
    """Write the float model and the calibration images (npy) into `workdir`."""
    import onnx

    from models.datasets import load_dataset
    from models.zoo import ARCHITECTURES

    proto, sample = ARCHITECTURES[model](image_size=size)
    model_path = workdir / f"{model}.onnx"
    onnx.save(proto, str(model_path))
    images = load_dataset("photos").inputs[:n]
    if images.shape[2:] != (size, size):
        images = _resize(images, size)
    calib_path = workdir / "calib.npy"
    np.save(calib_path, images.astype(np.float32))
    return model_path, calib_path


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    h, w = images.shape[2:]
    rows = (np.arange(size) * h // size)
    cols = (np.arange(size) * w // size)
    return images[:, :, rows][:, :, :, cols]


def run_npuc(model: Path, calib: Path, out: Path) -> None:
    """npuc: quantize_model + write model.quant.onnx, model.qdq.onnx, calibration.json."""
    from compiler.driver.outputs import write_quantized
    from passes.quantize.api import quantize_model

    result = quantize_model(str(model), str(calib), "max")
    write_quantized(out, result)


def run_ort(model: Path, calib: Path, out: Path) -> None:
    """onnxruntime quantize_static with MinMax, per-channel weights, QDQ format."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    images = np.load(calib)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(images[i:i + 1] for i in range(len(images)))

        def get_next(self):
            batch = next(self.it, None)
            return None if batch is None else {"input": batch}

    out.mkdir(parents=True, exist_ok=True)
    quantize_static(str(model), str(out / "model.qdq.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)


def child(tool: str, model: str, calib: str, out: str) -> None:
    """Subprocess body: run one tool, print {"wall_s", "peak_rss_mb"} as JSON."""
    start = time.perf_counter()
    (run_npuc if tool == "npuc" else run_ort)(Path(model), Path(calib), Path(out))
    wall = time.perf_counter() - start
    print(json.dumps({"tool": tool, "wall_s": wall, "peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """VmHWM: this process image's peak RSS (ru_maxrss would include the parent's peak,
    which Linux carries across fork+exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(tool: str, model: Path, calib: Path, out: Path) -> dict:
    """Run `child` in a fresh interpreter."""
    cmd = [sys.executable, __file__, "--child", tool, str(model), str(calib), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{tool} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, calib = prepare(work, args.model, args.size, args.calib)
        ours = measure("npuc", model, calib, work / "npuc")
        theirs = measure("ort", model, calib, work / "ort")
    ratios = {"wall_ratio": ours["wall_s"] / theirs["wall_s"],
              "rss_ratio": ours["peak_rss_mb"] / theirs["peak_rss_mb"]}
    report = {"model": args.model, "size": args.size, "calib_images": args.calib,
              "npuc": ours, "onnxruntime": theirs, **ratios}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{args.model} @ {args.size}, {args.calib} calibration images")
    for r in (ours, theirs):
        print(f"  {r['tool']:5s} wall {r['wall_s']:7.2f} s   peak RSS {r['peak_rss_mb']:8.1f} MB")
    print(f"  ratio npuc/ort: wall {ratios['wall_ratio']:.3f}x   RSS {ratios['rss_ratio']:.3f}x")


if __name__ == "__main__":
    main()
