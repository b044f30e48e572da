"""Worst-output cosine of model.quant.onnx vs float on field-corpus graphs, per precision mode.

    .venv/bin/python benchmarks/precision_corpus.py [--corpus /work/corpus] [--graphs a,b,...]
        [--out DIR] [--json FILE]

For each graph: `quantize_model` with the corpus's own calibration views
(``CORPUS/_work/<name>/calib.npz``, first 32, as `coverage.py run` does) three times —
``int8``: all-int8 (`unsigned=False`); ``uint8-int8T``: uint8 for never-negative tensors
(docs/fixed-point.md §15) but with the thresholds calibrated for int8 (the int8 run's table,
saved and reloaded, so no histogram is left to re-derive them: the behaviour before
thresholds followed the precision); ``uint8``: the default, each uint8 tensor's threshold
re-derived for 255 levels — then the worst-output cosine over ``eval.npz`` exactly as
`coverage.py` computes it. Reads the corpus only; models are written under --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from coverage import input_flags, int8_cosine  # noqa: E402

GRAPHS = ("tv_mobilenet_v3_large_op17_dyn", "tv_mobilenet_v3_small_op13",
          "tv_efficientnet_b0_op13", "timm_lcnet_050_op17", "timm_mixnet_s_op13",
          "tv_mobilenet_v2_op11_dyn", "tv_mnasnet1_0_op13_dyn", "tv_shufflenet_v2_x1_0_op11",
          "tv_regnet_y_400mf_op17", "tv_resnet50_op13_dyn", "tv_googlenet_op11",
          "tv_resnet18_op11")
MODES = ("int8", "uint8-int8T", "uint8")


def main() -> None:
    """Both precision modes on every graph; prints a table, optionally writes JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="/work/corpus")
    ap.add_argument("--graphs", default=",".join(GRAPHS))
    ap.add_argument("--out", default="/tmp/npuc_precision_corpus")
    ap.add_argument("--json")
    args = ap.parse_args()
    from compiler.core.io import save_model
    from passes.quantize.api import quantize_model
    from passes.quantize.calibrate import CalibrationTable

    corpus, out = Path(args.corpus), Path(args.out)
    entries = {e["name"]: e for e in json.loads((corpus / "manifest.json").read_text())}
    results = {}
    for name in args.graphs.split(","):
        entry, work = entries[name], corpus / "_work" / name
        flags = input_flags(entry)
        shapes = flags[1] if flags else ""  # as the CLI: a symbolic batch binds to 1
        row, int8_table = {}, None
        for mode in MODES:
            t0 = time.perf_counter()
            table = int8_table if mode == "uint8-int8T" else None
            res = quantize_model(corpus / entry["file"], work / "calib.npz", calib_limit=32,
                                 unsigned=mode != "int8", input_shapes=shapes, table=table)
            if mode == "int8":  # without its histograms: thresholds stay int8-optimal
                int8_table = CalibrationTable.from_dict(res.table.to_dict())
            path = out / name / mode / "model.quant.onnx"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_model(res.quant_model, path)
            cos = int8_cosine(corpus / entry["file"], path, work / "eval.npz")
            u8 = sum(t.dtype == "uint8" for t in res.qgraph.tensors.values())
            row[mode] = {"worst": cos.get("worst"), "uint8_tensors": u8,
                         "seconds": round(time.perf_counter() - t0, 1)}
        results[name] = row
        cells = "  ".join(f"{mode} {row[mode]['worst']:.5f}" for mode in MODES)
        print(f"{name:40s} {cells}  ({row['uint8']['uint8_tensors']} uint8 tensors)",
              flush=True)
    for mode in MODES:
        vals = [r[mode]["worst"] for r in results.values() if r[mode]["worst"] is not None]
        print(f"median worst-output cosine {mode}: {statistics.median(vals):.5f} over {len(vals)}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
