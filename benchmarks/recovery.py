"""Post-training recovery table of issue #22: top-1 drop per compression step on 10k images.

    python benchmarks/recovery.py [--rows r70 r50 r1x4 rpipe m70 m1x4] [--extra-prune ARGS]
        [--extra-sparsify ARGS] [--calib fmnist-train --calib-limit 2048] [--json OUT.json]

Each row is a chain of `npuc` step commands (`prune`, `sparsify`, `quantize`) on a committed
Fashion-MNIST model with the bundled `fmnist-calib` calibration images, exactly as a user
would type them; every step runs in a fresh interpreter through `benchmarks/peak_rss.py`, so
its wall time and peak RSS (VmHWM) are the step's own. The final model is evaluated on the
10,000-image test split (`fmnist-test`, Debian package `dataset-fashion-mnist`) and the drop
is against the float model on the same images. `--extra-prune` / `--extra-sparsify` append
flags to every prune / sparsify step (e.g. `--extra-prune "--reconstruct stream"
--extra-sparsify --no-refit-activation` for the former defaults). `--calib` / `--calib-limit`
replace the calibration set of every step (e.g. the first 2,048 images of the training split,
`fmnist-train`, instead of the 256 bundled ones).
Float training time of each model (`models/trained/*.train.json`) is printed as the anchor.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRAINED = ROOT / "models" / "trained"
MODELS = {"resnet": TRAINED / "fmnist_resnet.onnx",
          "mobilenetv2": TRAINED / "fmnist_mobilenetv2.onnx"}
CALIB = ["{CALIB}"]  # becomes --calib DATA [--calib-limit N] (flags of this script)
PRUNE70 = ["prune", "--target-macs", "0.7", *CALIB, "--reconstruct"]
PRUNE50 = ["prune", "--target-macs", "0.5", *CALIB, "--reconstruct"]
SPARSE = ["sparsify", "--block", "4", "--sparsity", "0.5", "--reorder", "--criterion", "obs",
          *CALIB, "--reconstruct"]
# The pipeline's sparsify step matches the unpruned float model (what `npuc compile` does).
SPARSE_FLOAT = [*SPARSE, "--teacher", "{MODEL}"]
QUANT = ["quantize", *CALIB]
# row id -> (model, label, steps, goal in points)
ROWS: dict[str, tuple[str, str, list[list[str]], float]] = {
    "r70": ("resnet", "prune to 70% MACs", [PRUNE70], 0.3),
    "r50": ("resnet", "prune to 50% MACs", [PRUNE50], 0.5),
    "r1x4": ("resnet", "1x4 @ 50%, reorder, obs", [SPARSE], 0.5),
    "rpipe": ("resnet", "prune 70% -> 1x4 @ 50% -> int8", [PRUNE70, SPARSE_FLOAT, QUANT], 0.5),
    "m70": ("mobilenetv2", "prune to 70% MACs", [PRUNE70], 0.5),
    "m1x4": ("mobilenetv2", "1x4 @ 50%, reorder, obs", [SPARSE], 0.5),
}


def run_step(step: list[str], src: Path, work: Path, index: int,
             extra: dict[str, list[str]], model: Path) -> tuple[Path, float, int]:
    """Run one step command on `src`; returns (output model, wall seconds, peak RSS bytes).

    `{MODEL}` in the step's flags stands for the row's float model; `{CALIB}` for the
    calibration flags (`extra["calib"]`).
    """
    cmd, rest = step[0], _expand(step[1:], model, extra["calib"])
    out = work / (f"step{index}" if cmd == "quantize" else f"step{index}.onnx")
    rss = work / f"step{index}.rss"
    argv = [sys.executable, str(ROOT / "benchmarks" / "peak_rss.py"), str(rss), "compiler.cli",
            cmd, str(src), "-o", str(out), *rest, *extra.get(cmd, [])]
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{shlex.join(argv[3:])} failed:\n{proc.stderr[-2000:]}")
    final = out / "model.quant.onnx" if cmd == "quantize" else out
    return final, wall, int(rss.read_text())


def _expand(flags: list[str], model: Path, calib: list[str]) -> list[str]:
    out: list[str] = []
    for flag in flags:
        out.extend(calib if flag == "{CALIB}" else [flag.replace("{MODEL}", str(model))])
    return out


def top1(path: Path, data) -> float:
    """Top-1 accuracy of the ONNX model at `path` on labelled feeds."""
    from compiler.core.io import load_model
    from compiler.core.numerics import run, session
    from passes.recon import effective_batch

    model = load_model(path)
    sess = session(model)
    name = sess.get_outputs()[0].name
    batch = effective_batch(model, 500)  # model.quant.onnx has a fixed batch of 1
    preds = [run(sess, b)[name].argmax(axis=-1) for b in data.batches(batch)]
    return float(np.mean(np.concatenate(preds) == np.asarray(data.labels)))


def measure(row: str, extra: dict[str, list[str]], data, base: dict[str, float]) -> dict[str, Any]:
    """Run one row's chain of steps and evaluate its final model."""
    model, label, steps, goal = ROWS[row]
    walls, peaks = [], []
    with tempfile.TemporaryDirectory(prefix="npuc-recovery-") as tmp:
        src = MODELS[model]
        for i, step in enumerate(steps):
            src, wall, peak = run_step(step, src, Path(tmp), i, extra, MODELS[model])
            walls.append(wall)
            peaks.append(peak)
        acc = top1(src, data[model])
    train = json.loads((TRAINED / f"fmnist_{model}.train.json").read_text())["train_seconds"]
    commands = [" ".join(["npuc", s[0], "MODEL", "-o", "OUT",
                          *_expand(s[1:], Path("MODEL"), extra["calib"]),
                          *extra.get(s[0], [])]) for s in steps]
    return {"row": row, "model": model, "step": label, "top1": acc,
            "drop_pt": round(100 * (base[model] - acc), 2), "goal_pt": goal,
            "wall_s": round(sum(walls), 1), "peak_rss_mb": round(max(peaks) / 2**20),
            "train_s": train, "commands": commands}


def main(argv: list[str] | None = None) -> int:
    """Print the table (and optionally write it as JSON)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--extra-prune", default="", help="flags appended to every prune step")
    p.add_argument("--extra-sparsify", default="", help="flags appended to every sparsify step")
    p.add_argument("--calib", default="fmnist-calib", help="calibration set of every step")
    p.add_argument("--calib-limit", type=int, help="its sample limit (--calib-limit of npuc)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from compiler.core.io import load_model
    from compiler.driver.data import load_data

    extra = {"prune": shlex.split(args.extra_prune), "sparsify": shlex.split(args.extra_sparsify),
             "calib": ["--calib", args.calib]
             + (["--calib-limit", str(args.calib_limit)] if args.calib_limit else [])}
    needed = {ROWS[r][0] for r in args.rows}
    data = {m: load_data("fmnist-test", load_model(MODELS[m])) for m in needed}
    base = {m: top1(MODELS[m], data[m]) for m in needed}
    rows = []
    for row in args.rows:
        rows.append(measure(row, extra, data, base))
        r = rows[-1]
        print(f"{r['model']:<12} {r['step']:<32} drop {r['drop_pt']:5.2f} pt (goal "
              f"<= {r['goal_pt']}) top1 {100 * r['top1']:.2f}  {r['wall_s']:6.1f} s  "
              f"{r['peak_rss_mb']:4d} MB  (float training {r['train_s']:.0f} s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"float_top1": base, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
