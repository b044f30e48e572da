"""``npuc sensitivity MODEL --calib DATA [--data LABELLED]``: per-layer sensitivity, worst first."""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path

from compiler.cli.common import (
    add_input_shape_flag,
    format_table,
    load_bound,
    print_json,
)
from compiler.cli.options import add_flags, from_args
from compiler.core.errors import ConfigError
from compiler.core.executor import ExecutorOptions
from compiler.core.feeds import Preprocess
from compiler.core.onnxfile import write_atomic
from compiler.core.outpaths import check_output, input_files
from compiler.driver.data import load_data
from passes.quantize.options import CalibrationOptions, SensitivityOptions

EXAMPLES = (
    ("sensitivity model.onnx --calib calib.npz",
     "each int8 layer alone vs float: output cosine and arg-max agreement, worst first"),
    ("sensitivity model.onnx --calib fmnist-calib --data fmnist-eval --plot sens.png",
     "ranked by labelled accuracy, with a plot of the per-layer error"),
    ("sensitivity model.onnx --calib calib.npz --mode prune --ratio 0.5 --json",
     "each dependency group pruned alone at 50 %, as JSON"),
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``sensitivity`` sub-command to the CLI's subparsers."""
    p = sub.add_parser(
        "sensitivity", help="per-layer (or per-group) sensitivity, worst first",
        description="Quantize (or prune) one layer (dependency group) at a time, everything "
                    "else float, and rank the layers by what that costs at the model's "
                    "outputs: worst-output cosine and arg-max agreement with the float model, "
                    "top-1 accuracy on labelled --data. Layers whose activation range is "
                    "dominated by outliers, and heads feeding decoding, are flagged "
                    "(docs/quantization.md, 'Sensitivity analysis').")
    p.add_argument("model", metavar="MODEL", help="float .onnx model")
    add_flags(p, SensitivityOptions)
    calib = p.add_argument_group("data")
    add_flags(calib, CalibrationOptions, only=("data", "limit", "calibrator"))
    calib.add_argument("--data", metavar="LABELLED",
                       help="data to measure on (default: the calibration data); labelled "
                            "data (bundled dataset, class-per-folder images, .npz with "
                            "'labels') adds top-1 accuracy")
    calib.add_argument("--limit", type=int, default=None, metavar="N",
                       help="use only the first N samples of --data")
    add_flags(p.add_argument_group("image preprocessing (folders of images)"), Preprocess)
    add_flags(p.add_argument_group("where the sweep runs (default: this process)"),
              ExecutorOptions)
    add_input_shape_flag(p)
    p.add_argument("--top", type=int, default=20, metavar="K",
                   help="rows shown in the table, worst first (0: all; default 20)")
    p.add_argument("-o", "--output", metavar="FILE.json", help="also write the JSON here")
    p.add_argument("--plot", metavar="FILE.png", help="write a per-layer error plot")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Execute ``npuc sensitivity``; errors propagate as `NpucError` for the CLI to report."""
    o = from_args(args, SensitivityOptions)
    calib = from_args(args, CalibrationOptions)
    if calib.data is None:
        raise ConfigError("--calib DATA is required (calibration data)")
    for flag, value in (("--limit", args.limit), ("--top", args.top)):
        if value is not None and value < (0 if flag == "--top" else 1):
            raise ConfigError(f"{flag} {value}: must be a positive number")
    pre = from_args(args, Preprocess)
    _check_outputs(args, calib.data)
    model = load_bound(args.model, args, keep_batch=True)
    feeds = load_data(calib.data, model, limit=calib.limit, preprocess=pre)
    evals = None if args.data is None else load_data(args.data, model, limit=args.limit,
                                                      preprocess=pre)
    executor = from_args(args, ExecutorOptions)
    report = _sweep(model, feeds, evals, o, calib.calibrator,
                    executor if executor.requested() else None)
    doc = {"model": args.model, "mode": o.mode, **report.to_dict()}
    if args.output:
        _write(Path(args.output), (json.dumps(doc, indent=2, default=float) + "\n").encode(),
               "-o")
    if args.plot:
        _write_plot(doc, args.plot)
    if args.json:
        print_json(doc)
    else:
        print(summary(doc, args.top))
    return 0


def _check_outputs(args: argparse.Namespace, calib: str) -> None:
    """Refuse outputs that are inputs (or each other) before any work is done."""
    inputs = input_files(args.model, calib, args.data)
    if args.output:
        check_output(args.output, inputs)
    if args.plot:
        check_output(args.plot, [*inputs, *input_files(args.output)], flag="--plot")
        if args.output and Path(args.plot).resolve() == Path(args.output).resolve():
            raise ConfigError(f"--plot {args.plot}: is also the -o file; choose another")


def _write(path: Path, data: bytes, flag: str) -> None:
    try:
        write_atomic(path, data)  # never a half-written file
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot write ({e.strerror or e})") from e


def _sweep(model, feeds, evals, o: SensitivityOptions, calibrator: str,
           executor: ExecutorOptions | None):
    if o.mode == "prune":
        from passes.prune.sensitivity import prune_sensitivity

        return prune_sensitivity(model, evals if evals is not None else feeds, ratio=o.ratio,
                                 rank_by=o.rank_by, batch_size=o.batch_size)
    from passes.quantize.sensitivity import quantize_sensitivity

    return quantize_sensitivity(model, feeds, evals, method=o.method, calibrator=calibrator,
                                rank_by=o.rank_by, batch_size=o.batch_size,
                                outlier_threshold=o.outlier_threshold, executor=executor)


def _write_plot(doc: dict, path: str) -> None:
    from compiler.driver.report_plots import sensitivity_plot

    png = sensitivity_plot(doc)
    if png is None:
        raise ConfigError("--plot: nothing to plot (no layer was measured)")
    _write(Path(path), base64.b64decode(png), "--plot")


def _headers(prune: bool, labelled: bool) -> tuple[str, ...]:
    first = ("group", "kind", "channels", "MACs removed") if prune else (
        "layer", "op", "MACs")
    return (*first, "cosine", "agreement", "flips",
            *(("accuracy",) if labelled else ()), *(() if prune else ("flags",)))


def _row(r: dict, prune: bool, labelled: bool) -> tuple:
    first = (r["name"], r["kind"], f'{r["channels"]}->{r["kept"]}', r["macs_removed"]) \
        if prune else (r["name"], r["op"], r["macs"])
    flags = [f'outlier x{r["outlier_ratio"]:.0f}' if f == "outlier_range" else "head"
             for f in r.get("flags", [])]
    return (*first, f'{r["cosine"]:.6f}', f'{r["agreement"]:.4f}', r["flips"],
            *((f'{r["accuracy"]:.4f}',) if labelled else ()),
            *(() if prune else (", ".join(flags),)))


def summary(doc: dict, top: int = 20) -> str:
    """The text report: context line, baseline, ranked table."""
    prune, labelled = doc["mode"] == "prune", doc["float_accuracy"] is not None
    what = f'pruned alone at ratio {doc["info"]["ratio"]:g}' if prune else \
        f'quantized {"alone" if doc["method"] == "single" else "all but this one"}'
    lines = [f'{doc["samples"]} samples; each {"group" if prune else "layer"} {what}; '
             f'ranked by {doc["rank_by"]}, worst first']
    base = doc["baseline"]
    if base:
        acc = f', accuracy {base["accuracy"]:.4f} (float {doc["float_accuracy"]:.4f})' \
            if labelled else ""
        lines.append(f'all {"groups pruned" if prune else "layers int8"}: cosine '
                     f'{base["cosine"]:.6f}, agreement {base["agreement"]:.4f}{acc}')
    rows = doc["layers"] if top <= 0 else doc["layers"][:top]
    lines.append(f'\n{"groups" if prune else "layers"}, worst first ({len(rows)} of '
                 f'{len(doc["layers"])})')
    lines.append(format_table([_row(r, prune, labelled) for r in rows],
                              _headers(prune, labelled)))
    return "\n".join(lines)
