"""`npuc sparsify MODEL -o OUT.onnx --block N --sparsity S`: 1xN block sparsification."""

from __future__ import annotations

import argparse

from compiler.cli.common import (
    add_input_shape_flag,
    add_step_data_flags,
    format_table,
    human,
    load_bound,
    print_json,
    step_data,
)
from compiler.cli.options import add_flags, from_args
from compiler.core.checked_save import save_checked
from compiler.core.errors import ConfigError
from compiler.core.outpaths import check_output, input_files
from compiler.core.pass_manager import PassManager
from compiler.driver.data import load_data
from passes.canonicalize import Canonicalize
from passes.sparsify import BlockSparsify, SparsifyOptions
from passes.sparsify.sparsify import calib_missing, needs_calib

EXAMPLES = (
    ('sparsify model.onnx -o sparse.onnx --block 4 --sparsity 0.5 --calib calib.npz',
     'zero 50% of the 1x4 weight blocks, re-fit the rest'),
    ('sparsify model.onnx -o sparse.onnx --criterion l1 --no-reconstruct',
     'magnitude-only, without data'),
)

def register(sub: argparse._SubParsersAction) -> None:
    """Add the `sparsify` sub-command (flags generated from `SparsifyOptions`)."""
    p = sub.add_parser(
        "sparsify", help="1xN block sparsification (zero blocks, shapes kept)",
        description="Zero blocks of N consecutive output channels x 1 input channel (whole "
                    "kernel) of Conv/Gemm/MatMul weights; shapes are kept and the block masks "
                    "are stored in the model metadata (npuc.sparsity). The defaults (criterion "
                    "obs with reconstruction) need --calib; without data use --criterion l1 "
                    "--no-reconstruct.")
    p.add_argument("model", help="float .onnx model")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="output model")
    add_flags(p, SparsifyOptions)
    add_step_data_flags(p)
    add_input_shape_flag(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> SparsifyOptions:
    """Validated `SparsifyOptions` from the parsed arguments (calibration data checked)."""
    opts = from_args(args, SparsifyOptions)
    if args.calib is None and needs_calib(opts):
        raise ConfigError(calib_missing(opts))
    return opts


def run(args: argparse.Namespace) -> int:
    """Sparsify, save, print the per-layer report."""
    opts = options_from_args(args)
    source, limit, preprocess = step_data(args)
    check_output(args.output, input_files(args.model, source))
    model = load_bound(args.model, args, keep_batch=True)
    calib = load_data(source, model, limit=limit, preprocess=preprocess) if source else None
    result = PassManager([Canonicalize(), BlockSparsify.from_options(opts, calib)])(model)
    report = result.info["BlockSparsify"]
    path = save_checked(result.model, args.output)
    if args.json:
        print_json({"model": args.model, "output": str(path), **report})
        return 0
    print(format_report(report))
    print(f"\nwrote {path}")
    return 0


def format_report(report: dict) -> str:
    """Per-layer table, skipped layers and totals as text."""
    rows = [(r["node"], r["op"], f"{r['cout']}x{r['cin']}", r["block"], r["blocks"],
             r["zero_blocks"], f"{r['sparsity']:.3f}", human(r["macs"]),
             human(r["effective_macs"]), r["reorder"] or "-", _recon(r["recon"]))
            for r in report["layers"]]
    lines = [format_table(rows, ["node", "op", "CoutxCin", "N", "blocks", "zero", "sparsity",
                                 "MACs", "eff. MACs", "reorder", "recon err"])]
    if report["skipped"]:
        lines.append("\nleft dense:")
        lines += [f"  {name}: {reason}" for name, reason in report["skipped"].items()]
    if report.get("refit_dense"):
        lines.append("\ndense layers re-fitted after the sparse ones (recon err):")
        lines += [f"  {name}: {_recon(recon)}" for name, recon in report["refit_dense"].items()]
    lines.append(f"\n{report['zero_blocks']:,}/{report['blocks']:,} blocks zero "
                 f"({report['zero_block_fraction']:.1%}); MACs {human(report['macs'])} -> "
                 f"{human(report['effective_macs'])} effective "
                 f"({1 - report['effective_macs'] / max(report['macs'], 1):.1%} skipped)")
    return "\n".join(lines)


def _recon(recon: dict) -> str:
    if not recon:
        return "-"
    if "skipped" in recon:
        return "skipped"
    return f"{recon['error_before']:.3f}->{recon['error_after']:.3f}"
