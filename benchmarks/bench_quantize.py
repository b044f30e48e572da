"""`npuc quantize` (the user's command) vs onnxruntime `quantize_static`, same model and data.

npuc runs as the user runs it: `python -m compiler.cli quantize MODEL -o DIR --calib FILE
--json` with the CLI's default options (calibrator `mse`; `--calibrators default,max` adds a
`--calibrator max` row; a `+nobc` suffix adds `--no-bias-correction`). onnxruntime runs
`quantize_static` with MinMax, per-channel weights,
QDQ, int8 activations and weights. Both read the same model (zoo ResNet-50 at 224, seeded
weights) and the same calibration images (the first N crops of the bundled `photos` dataset,
repeated when N is larger; `benchmarks/scale_curves.py` varies them).

Every run is a fresh process; the tools alternate (npuc, ort, npuc, ort, ...) so both see the
same machine load, and the best of `--repeat` runs counts. Per tool:

- `process_s`: wall time from spawning the interpreter to its exit (imports included);
- `work_s`: the in-process part (npuc: `quantize_model` + writing the files, from the
  command's own `time_s`; ort: model path in to file written);
- `peak_rss_mb`: VmHWM of the process (benchmarks/peak_rss.py explains why not ru_maxrss).

npuc's `time_s` breakdown (load, canonicalize, calibration session / forward / statistics /
thresholds, build, emission, writing each file) and onnxruntime's calibration forward (the
time between the data reader's `get_next` calls: its inference runs) are printed with them.

    python benchmarks/bench_quantize.py [--model resnet50] [--size 224] [--calib 32]
        [--repeat 3] [--calibrators default,max] [--baseline CHECKOUT] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # this checkout's packages, not an installed copy


def prepare(workdir: Path, model: str, size: int, n: int) -> tuple[Path, Path]:
    """Write the float model and `n` calibration images (npy) into `workdir`."""
    import onnx

    proto = build_model(model, size)
    model_path = workdir / f"{model}.onnx"
    onnx.save(proto, str(model_path))
    calib_path = workdir / f"calib{n}.npy"
    np.save(calib_path, calibration_images(n, size))
    return model_path, calib_path


def build_model(model: str, size: int):
    """The float ModelProto of a zoo architecture (seeded weights)."""
    from models.zoo import ARCHITECTURES

    return ARCHITECTURES[model](image_size=size)[0]


def calibration_images(n: int, size: int) -> np.ndarray:
    """`n` float32 NCHW images: the bundled photos' crops, repeated deterministically.

    The photos dataset has fewer crops than the largest calibration sets measured; copy k
    of a crop is flipped left-right when k is odd and rolled by 8k pixels, so repeats are
    not identical tensors (their statistics are close to the originals').
    """
    from models.datasets import load_dataset

    base = load_dataset("photos").inputs
    if base.shape[2:] != (size, size):
        base = _resize(base, size)
    out = np.empty((n, *base.shape[1:]), np.float32)
    for i in range(n):
        k, img = divmod(i, len(base))
        x = base[img]
        if k:
            x = np.roll(x[:, :, ::-1] if k % 2 else x, 8 * k, axis=2)
        out[i] = x
    return out


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    h, w = images.shape[2:]
    rows = (np.arange(size) * h // size)
    cols = (np.arange(size) * w // size)
    return images[:, :, rows][:, :, :, cols]


def run_ort(model: Path, calib: Path, out: Path) -> dict:
    """onnxruntime quantize_static with MinMax, per-channel weights, QDQ format.

    onnxruntime.quantization is imported by `ort_child` before the clock starts, as npuc's
    imports are outside its `time_s`.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    images = np.load(calib, mmap_mode="r")  # paged in batch by batch, as npuc reads it
    forward = [0.0, None]  # seconds between get_next calls (the calibrator's runs), last call

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(np.array(images[i:i + 1]) for i in range(len(images)))

        def get_next(self):
            now = time.perf_counter()
            if forward[1] is not None:
                forward[0] += now - forward[1]
            batch = next(self.it, None)
            forward[1] = None if batch is None else time.perf_counter()
            return None if batch is None else {"input": batch}

    out.mkdir(parents=True, exist_ok=True)
    quantize_static(str(model), str(out / "model.qdq.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return {"forward": forward[0]}


def ort_child(model: str, calib: str, out: str) -> None:
    """Subprocess body for onnxruntime: print {"work_s", "peak_rss_mb", "time_s"}."""
    import onnxruntime.quantization  # noqa: F401 - imports are startup, not work

    start = time.perf_counter()
    phases = run_ort(Path(model), Path(calib), Path(out))
    wall = time.perf_counter() - start
    print(json.dumps({"work_s": wall, "peak_rss_mb": vm_hwm_mb(), "time_s": phases}))


def vm_hwm_mb() -> float:
    """This process image's peak RSS (VmHWM), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise OSError("no VmHWM in /proc/self/status (not Linux?)")


def run_npuc_cli(model: Path, calib: Path, out: Path, extra: list[str],
                 root: Path = ROOT) -> dict:
    """`python -m compiler.cli quantize MODEL -o OUT --calib CALIB --json [extra]`, fresh.

    `root`: the checkout whose code runs (another one measures a baseline).
    """
    with tempfile.NamedTemporaryFile(suffix=".hwm") as report:
        cmd = [sys.executable, str(HERE / "peak_rss.py"), report.name, "compiler.cli",
               "quantize", str(model), "-o", str(out), "--calib", str(calib), "--json", *extra]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=root)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"npuc failed:\n{proc.stderr[-2000:]}")
        hwm = int(Path(report.name).read_text()) / 2**20
    doc = json.loads(proc.stdout)
    times = doc["time_s"]
    work = times["total"] + times.get("write", 0.0)  # a baseline may not time its writing
    return {"process_s": wall, "work_s": work, "peak_rss_mb": hwm, "time_s": times}


def run_ort_process(model: Path, calib: Path, out: Path) -> dict:
    """`ort_child` in a fresh interpreter, with its process wall time."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(model), str(calib),
           str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"onnxruntime failed:\n{proc.stderr[-2000:]}")
    return {"process_s": wall, **json.loads(proc.stdout.strip().splitlines()[-1])}


def best(runs: list[dict]) -> dict:
    """The fastest run (by process wall), with the range of every run and the worst RSS."""
    fastest = min(runs, key=lambda r: r["process_s"])
    return {**fastest, "process_s_all": [round(r["process_s"], 2) for r in runs],
            "work_s_all": [round(r["work_s"], 2) for r in runs],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}


def compare(model: Path, calib: Path, work: Path, repeat: int,
            calibrators: list[str], baseline: Path | None = None) -> dict:
    """Interleaved runs of every npuc configuration and onnxruntime; best of `repeat`.

    With `baseline` (another checkout), each configuration also runs from there, as
    "<calibrator>@baseline".
    """
    configs = [(c, c, ROOT) for c in calibrators]
    if baseline is not None:
        configs += [(f"{c}@baseline", c, baseline) for c in calibrators]
    runs: dict[str, list[dict]] = {key: [] for key, _, _ in configs} | {"ort": []}
    for _ in range(repeat):
        for key, c, root in configs:
            runs[key].append(run_npuc_cli(model, calib, work / f"npuc-{c}", npuc_flags(c), root))
        runs["ort"].append(run_ort_process(model, calib, work / "ort"))
    ort = best(runs["ort"])
    rows = {}
    for c, _, _ in configs:
        ours = best(runs[c])
        rows[c] = {**ours, "ratio_process": ours["process_s"] / ort["process_s"],
                   "ratio_work": ours["work_s"] / ort["work_s"],
                   "ratio_rss": ours["peak_rss_mb"] / ort["peak_rss_mb"]}
    return {"npuc": rows, "onnxruntime": ort}


def npuc_flags(config: str) -> list[str]:
    """A row's CLI flags: 'default' or a calibrator name, '+nobc' adds --no-bias-correction."""
    calibrator, _, suffix = config.partition("+")
    if suffix not in ("", "nobc"):
        raise SystemExit(f"unknown row suffix {suffix!r} in {config!r} (valid: +nobc)")
    flags = [] if calibrator == "default" else ["--calibrator", calibrator]
    return flags + (["--no-bias-correction"] if suffix else [])


def load_average() -> str:
    """`uptime`'s load averages (1, 5, 15 min)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def print_report(report: dict) -> None:
    """The human-readable table and breakdown."""
    ort = report["onnxruntime"]
    print(f"{report['model']} @ {report['size']}, {report['calib_images']} calibration images, "
          f"best of {report['repeat']}; load before {report['load_before']}, "
          f"after {report['load_after']}")
    print(f"  {'tool':26s} {'process s':>9s} {'work s':>7s} {'peak MB':>8s}   runs (process s)")
    print(f"  {'onnxruntime quantize_static':26s} {ort['process_s']:9.2f} {ort['work_s']:7.2f} "
          f"{ort['peak_rss_mb']:8.1f}   {ort['process_s_all']}")
    for c, r in report["npuc"].items():
        config, _, where = c.partition("@")
        name = " ".join(["npuc quantize", *npuc_flags(config)])
        name += f" ({where})" if where else ""
        print(f"  {name:26s} {r['process_s']:9.2f} {r['work_s']:7.2f} {r['peak_rss_mb']:8.1f}"
              f"   {r['process_s_all']}")
        print(f"    ratio npuc/ort: process {r['ratio_process']:.2f}x  work "
              f"{r['ratio_work']:.2f}x  RSS {r['ratio_rss']:.2f}x")
        startup = r["process_s"] - r["work_s"]
        phases = ", ".join(f"{k} {v:.2f}" for k, v in r["time_s"].items() if k != "total")
        print(f"    npuc phases (s): startup {startup:.2f}, {phases}")
    print(f"    onnxruntime: calibration forward {ort['time_s']['forward']:.2f} s, "
          f"startup {ort['process_s'] - ort['work_s']:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--calibrators", default="default,max",
                        help="npuc rows: 'default' (the CLI's) and/or calibrator names, each "
                        "optionally with '+nobc' (--no-bias-correction)")
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                        help="also run npuc from this checkout (before/after in one run)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        ort_child(*args.child)
        return
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, calib = prepare(work, args.model, args.size, args.calib)
        result = compare(model, calib, work, args.repeat, args.calibrators.split(","),
                         args.baseline)
    report = {"model": args.model, "size": args.size, "calib_images": args.calib,
              "repeat": args.repeat, "load_before": load_before,
              "load_after": load_average(), **result}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
