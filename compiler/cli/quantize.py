"""`npuc quantize MODEL -o DIR --calib DATA`: symmetric int8 post-training quantization.

Writes DIR/model.quant.onnx (integer ONNX, QGraph embedded), DIR/model.qdq.onnx and
DIR/calibration.json. Everything is computed in memory first and the three files are moved
into DIR only when all of them are written, so a failure leaves no half-written output.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from compiler.cli.common import (
    add_input_shape_flag,
    add_step_data_flags,
    format_table,
    input_shapes,
    print_json,
)
from compiler.cli.options import add_flags, from_args
from compiler.core.errors import ConfigError
from compiler.core.feeds import Preprocess
from compiler.core.io import load_model
from compiler.core.options import options_of
from compiler.core.outpaths import check_output_dir, input_files
from compiler.core.progress import collect_timings
from compiler.core.shapes import ShapeSpec
from compiler.driver.outputs import QUANT_OUTPUTS, write_quantized
from compiler.driver.sources import resolve_model
from passes.quantize.options import CalibrationOptions, QuantizeOptions

EXAMPLES = (
    ('quantize model.onnx -o q --calib photos/ --resize 256 --crop 224x224 '
     '--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225',
     'int8 with ImageNet preprocessing of a folder of images'),
    ('quantize model.onnx -o q --calib calib.npz --calibrator percentile --no-bias-correction',
     'clip outliers at the 99.99th percentile, biases as given'),
    ('quantize model.onnx -o q --calib calib.npz --keep-float /head/Conv',
     'keep one node in float on the CPU'),
    ('quantize model.onnx -o q --calib calib/ --max-drop 0.5 --budget-data val/',
     'at most 0.5 pt top-1 drop on a labelled folder: sensitive layers leave int8'),
    ('quantize model.onnx -o q --calib calib.npz --min-cosine 0.995',
     'worst-output cosine with float at least 0.995 (no labels needed)'),
)

def register(sub: argparse._SubParsersAction) -> None:
    """Add the `quantize` sub-command (flags from `CalibrationOptions`, `QuantizeOptions`)."""
    p = sub.add_parser("quantize", help="int8 post-training quantization (integer + QDQ ONNX)",
                       description="Calibrate activations, quantize weights per channel and "
                                   "write model.quant.onnx, model.qdq.onnx and "
                                   "calibration.json into DIR (docs/quantization.md).")
    p.add_argument("model", help="float .onnx model or bundled model name")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    add_step_data_flags(p, calib=[d.name for d in options_of(CalibrationOptions)])
    add_flags(p, QuantizeOptions)
    add_input_shape_flag(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Quantize and write the three outputs."""
    from passes.quantize.api import quantize_kwargs, quantize_model
    from passes.quantize.budget import Budget

    calib, quant = from_args(args, CalibrationOptions), from_args(args, QuantizeOptions)
    if calib.data is None and calib.table is None:
        raise ConfigError("--calib DATA is required (or --calib-table FILE)")
    out_dir = check_output_dir(args.output, QUANT_OUTPUTS,
                               input_files(args.model, calib.data, calib.table))
    shapes = input_shapes(args)
    source = resolve_model(args.model)
    pre = from_args(args, Preprocess)
    feeds = _calib_feeds(source, shapes, calib, pre)
    budget = Budget.from_options(quant)
    if budget.active:
        result, budget_report = _within_budget(source, feeds, shapes, calib, quant, pre)
    else:
        # the model goes in as a path: quantize_model loads it lean (no PassManager copy)
        # and binds its inputs (--input-shape, else a symbolic batch becomes 1)
        result = quantize_model(source, feeds, input_shapes=shapes,
                                **quantize_kwargs(calib, quant))
        budget_report = None
    with collect_timings() as write_times:
        written = write_quantized(out_dir, result)
    summary = {k: v for k, v in result.report.items() if k != "nodes"}
    summary["time_s"] = summary["time_s"] | {k: round(v, 3) for k, v in write_times.items()}
    summary["time_s"]["write"] = round(sum(write_times.values()), 3)
    if budget_report is not None:
        summary["budget"] = budget_report
    if args.json:
        print_json({"model": args.model, "outputs": [str(p) for p in written], **summary})
        return 0
    _print(summary, written)
    return 0


def _within_budget(source: Any, feeds: Any, shapes: ShapeSpec, calib: CalibrationOptions,
                   quant: QuantizeOptions, pre: Preprocess) -> tuple[Any, dict[str, Any]]:
    """The budget loop (`passes.quantize.budget`), priced on the default target."""
    from compiler.driver.budget import budget_costs, budget_feeds, correct_for
    from passes.quantize.api import quantize_kwargs
    from passes.quantize.budget import Budget, quantize_within_budget

    data = None if quant.budget_data is None else budget_feeds(
        quant, load_model(source, input_shapes=shapes, bind=True), pre)
    out = quantize_within_budget(source, feeds, Budget.from_options(quant), data,
                                 correct=correct_for(data), input_shapes=shapes,
                                 **quantize_kwargs(calib, quant))
    return out.result, {**out.report, "costs": budget_costs(out.baseline, out.result)}


def _calib_feeds(source: Any, shapes: ShapeSpec, calib: CalibrationOptions,
                 preprocess: Preprocess) -> Any:
    """The calibration source for `quantize_model` (which loads the model itself).

    Image preprocessing needs the model's bound input shape, so only then is it loaded here.
    """
    from compiler.driver.data import load_data, resolve_source

    if calib.data is None or preprocess == Preprocess():
        return resolve_source(calib.data, calib.limit)
    model = load_model(source, input_shapes=shapes, bind=True)
    return load_data(calib.data, model, limit=calib.limit, preprocess=preprocess)


def _print(summary: dict, written: list[Path]) -> None:
    rows = sorted(summary["op_counts"].items(), key=lambda kv: -kv[1])
    print(format_table(rows, ["op", "count"]))
    print(f"\n{summary['int8_nodes']} of {summary['float_nodes']} float nodes run in int8; "
          f"{summary['cpu_nodes']} stay float on the CPU")
    for node, reason in list(summary["cpu_reasons"].items())[:20]:
        print(f"  cpu: {node}: {reason}")
    if len(summary["cpu_reasons"]) > 20:
        print(f"  ... and {len(summary['cpu_reasons']) - 20} more (--json lists all)")
    if "weight_rounding" in summary:
        print(rounding_line(summary["weight_rounding"]))
    if "budget" in summary:
        from compiler.driver.budget import budget_lines

        print("\n".join(budget_lines(summary["budget"])))
    times = ", ".join(f"{k} {v:.2f}s" for k, v in summary["time_s"].items() if "." not in k)
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
