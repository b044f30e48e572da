"""Quantization options on field-corpus graphs: worst-output cosine int8 vs float per option set.

Uses the per-graph feeds the coverage runner wrote (``CORPUS/_work/<name>/calib.npz``, 32
views, and ``eval.npz``, 8 held-out views) and the same cosine as ``coverage.py run``
(worst output, ``model.quant.onnx`` vs the float graph in onnxruntime). One process, graphs
and option sets in turn; results are appended to a JSON file after each run:

    nice -n 10 .venv/bin/python benchmarks/quant_study.py --graphs tv_resnet18_op11 \
        --configs max,mse,max+bc --out /tmp/quant_study.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from coverage import input_flags, int8_cosine  # noqa: E402

logger = logging.getLogger("quant_study")
CORPUS = Path("/work/corpus")


def parse_config(text: str) -> dict:
    """`mse+cle+bc` -> quantize_model keyword arguments."""
    calibrator, *flags = text.split("+")
    unknown = set(flags) - {"cle", "bc"}
    if unknown:
        raise SystemExit(f"unknown flag(s) {sorted(unknown)} in {text!r}")
    return {"calibrator": calibrator, "cle": "cle" in flags, "bias_correction": "bc" in flags}


def shapes_of(entry: dict) -> str | None:
    flags = input_flags(entry)
    return flags[1] if flags else None


def run_one(entry: dict, config: str) -> dict:
    """Quantize one graph with one option set; the worst-output cosine on eval.npz."""
    from compiler.core.io import write_model
    from passes.quantize.api import quantize_model

    model = CORPUS / entry["file"]
    work = CORPUS / "_work" / entry["name"]
    t0 = time.monotonic()
    res = quantize_model(model, str(work / "calib.npz"), calib_limit=32,
                         input_shapes=shapes_of(entry), **parse_config(config))
    seconds = time.monotonic() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.quant.onnx"
        write_model(res.quant_model, path)
        cos = int8_cosine(model, path, work / "eval.npz")
    return {"cosine": cos.get("worst"), "per_output": cos.get("per_output"),
            "error": cos.get("error"), "seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graphs", required=True, help="comma-separated corpus graph names")
    ap.add_argument("--configs", default="max", help="comma-separated, e.g. max,mse+bc,kl+cle")
    ap.add_argument("--out", default="/tmp/quant_study.json")
    ap.add_argument("--force", action="store_true", help="re-run entries already in --out")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("passes", "compiler"):
        logging.getLogger(name).setLevel(logging.WARNING)
    manifest = {e["name"]: e for e in json.loads((CORPUS / "manifest.json").read_text())}
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.exists() else {}
    for graph in args.graphs.split(","):
        for config in args.configs.split(","):
            if not args.force and data.get(graph, {}).get(config, {}).get("cosine"):
                continue
            try:
                r = run_one(manifest[graph], config)
            except Exception as e:  # noqa: BLE001 - a study: record and go on
                r = {"cosine": None, "error": f"{type(e).__name__}: {str(e)[:200]}"}
            data.setdefault(graph, {})[config] = r
            out.write_text(json.dumps(data, indent=1))
            logger.info("%-40s %-16s %s %s", graph, config, r["cosine"], r.get("error") or "")


if __name__ == "__main__":
    main()
