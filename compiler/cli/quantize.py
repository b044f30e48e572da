"""`npuc quantize MODEL -o DIR --calib DATA`: symmetric int8 post-training quantization.

Writes DIR/model.quant.onnx (integer ONNX, QGraph embedded), DIR/model.qdq.onnx and
DIR/calibration.json. Everything is computed in memory first and the three files are moved
into DIR only when all of them are written, so a failure leaves no half-written output.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from compiler.cli.common import format_table, print_json
from compiler.core.errors import ConfigError
from compiler.core.io import to_proto, write_atomic

OUTPUTS = ("model.quant.onnx", "model.qdq.onnx", "calibration.json")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `quantize` sub-command."""
    p = sub.add_parser("quantize", help="int8 post-training quantization (integer + QDQ ONNX)",
                       description="Calibrate activations, quantize weights per channel and "
                                   "write model.quant.onnx, model.qdq.onnx and "
                                   "calibration.json into DIR (docs/quantization.md).")
    p.add_argument("model", help="float .onnx model")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--calib", metavar="DATA",
                   help="calibration data: .npy/.npz, image folder or bundled dataset name")
    p.add_argument("--calibrator", default="max", help="max | percentile | kl | mse")
    p.add_argument("--percentile", type=float, help="percentile for --calibrator percentile")
    p.add_argument("--calib-limit", type=int, metavar="N", help="use at most N samples")
    p.add_argument("--batch-size", type=int, default=8, help="calibration batch size")
    p.add_argument("--cle", action="store_true", help="cross-layer equalization first")
    p.add_argument("--bias-correction", action="store_true",
                   help="correct biases for the weight quantization error")
    p.add_argument("--rounding", default="nearest", choices=("nearest", "gptq"),
                   help="weight rounding: nearest, or gptq (error-compensating on the "
                        "calibration data; slower, usually more accurate)")
    p.add_argument("--keep-float", default="", metavar="NODES",
                   help="comma-separated node names to leave in float on the CPU "
                        "(mixed precision, e.g. the classifier)")
    p.add_argument("--calib-table", metavar="FILE",
                   help="reuse a saved calibration.json instead of calibrating")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Quantize and write the three outputs."""
    from compiler.driver.data import resolve_source
    from passes.quantize.api import quantize_model

    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"-o {out_dir}: exists and is not a folder")
    if args.calib is None and args.calib_table is None:
        raise ConfigError("--calib DATA is required (or --calib-table FILE)")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be ≥ 1, got {args.batch_size}")
    result = quantize_model(args.model, resolve_source(args.calib, args.calib_limit),
                            args.calibrator, percentile=args.percentile,
                            cle=args.cle, bias_correction=args.bias_correction,
                            rounding=args.rounding, table=args.calib_table,
                            keep_float=[x.strip() for x in args.keep_float.split(",")
                                        if x.strip()],
                            batch_size=args.batch_size, calib_limit=args.calib_limit)
    written = write_outputs(out_dir, result_blobs(result), result.table)
    summary = {k: v for k, v in result.report.items() if k != "nodes"}
    if args.json:
        print_json({"model": args.model, "outputs": [str(p) for p in written], **summary})
        return 0
    _print(summary, written)
    return 0


def result_blobs(result) -> dict[str, Callable[[], bytes]]:
    """The two ONNX files of a `QuantResult`, serialized only when written (one at a time)."""
    return {OUTPUTS[0]: lambda: to_proto(result.quant_model).SerializeToString(),
            OUTPUTS[1]: lambda: to_proto(result.qdq_model).SerializeToString()}


def write_outputs(out_dir: Path, blobs: dict[str, Callable[[], bytes]], table) -> list[Path]:
    """Write everything to a staging folder inside DIR, then move the files into place.

    Each blob is produced right before it is written, so only one serialized model is in
    memory at a time.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".npuc-quantize-", dir=out_dir))
    try:
        for name, make in blobs.items():
            write_atomic(stage / name, make())
        table.save(stage / OUTPUTS[2])
        written = []
        for name in OUTPUTS:
            os.replace(stage / name, out_dir / name)
            written.append(out_dir / name)
        return written
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _print(summary: dict, written: list[Path]) -> None:
    rows = sorted(summary["ops"].items(), key=lambda kv: -kv[1])
    print(format_table(rows, ["op", "count"]))
    print(f"\n{summary['int8_nodes']} of {summary['float_nodes']} float nodes run in int8; "
          f"{summary['cpu_nodes']} stay float on the CPU")
    for node, reason in list(summary["cpu_reasons"].items())[:20]:
        print(f"  cpu: {node}: {reason}")
    if len(summary["cpu_reasons"]) > 20:
        print(f"  ... and {len(summary['cpu_reasons']) - 20} more (--json lists all)")
    if "weight_rounding" in summary:
        print(rounding_line(summary["weight_rounding"]))
    times = ", ".join(f"{k[:-2]} {v:.2f}s" for k, v in summary["timings"].items())
    print(f"time: {times}")
    for path in written:
        print(f"wrote {path}")


def rounding_line(errors: dict[str, dict[str, float]]) -> str:
    """One line on GPTQ rounding: layers rounded and how much output error it removed."""
    ratios = [e["gptq_mse"] / e["nearest_mse"] for e in errors.values() if e["nearest_mse"] > 0]
    if not ratios:
        return f"gptq rounding: {len(errors)} layers (no output error to reduce)"
    return (f"gptq rounding: {len(errors)} layers; layer output error vs round-to-nearest: "
            f"median x{float(np.median(ratios)):.2f}, worst x{max(ratios):.2f}")
