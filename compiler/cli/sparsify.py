"""`npuc sparsify MODEL -o OUT.onnx --block N --sparsity S`: 1xN block sparsification."""

from __future__ import annotations

import argparse

from compiler.cli.common import format_table, human, print_json
from compiler.core.errors import ConfigError
from compiler.core.io import load_model, save_model
from compiler.driver.data import load_data
from passes.canonicalize import canonicalize
from passes.sparsify import SparsifyOptions, sparsify_model
from passes.sparsify.criteria import NEEDS_DATA


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `sparsify` sub-command."""
    p = sub.add_parser(
        "sparsify", help="1xN block sparsification (zero blocks, shapes kept)",
        description="Zero blocks of N consecutive output channels x 1 input channel (whole "
                    "kernel) of Conv/Gemm/MatMul weights, chosen by block norm; shapes are "
                    "kept and the block masks are stored in the model metadata "
                    "(npuc.sparsity).")
    p.add_argument("model", help="float .onnx model")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="output model")
    p.add_argument("--block", type=int, default=4, metavar="N",
                   help="output channels per block: 2, 4, 8, 16 or 32 (default 4)")
    p.add_argument("--sparsity", type=float, required=True, metavar="S",
                   help="fraction of blocks zeroed per layer, in [0, 1) (with --global: "
                        "fraction of the eligible layers' MACs)")
    p.add_argument("--criterion", default="l1", metavar="l1|l2|act|obs|css",
                   help="block L1 or L2 norm; act: block L1 x input-channel RMS on --calib; "
                        "obs: output error of removing the block, chosen during "
                        "--reconstruct (most accurate); css: CHEX-style column subset "
                        "selection zeroing whole filters (default l1)")
    p.add_argument("--global", dest="global_budget", action="store_true",
                   help="one MACs-weighted budget across layers instead of per-layer sparsity")
    p.add_argument("--exclude", default="", metavar="NAMES",
                   help="comma-separated node names or glob patterns to keep dense")
    p.add_argument("--include-first-last", action="store_true",
                   help="also sparsify the first conv and the last classifier")
    p.add_argument("--reorder", action="store_true",
                   help="reorder filters by L1 norm before forming blocks")
    p.add_argument("--calib", metavar="DATA", help="calibration data for --reconstruct")
    p.add_argument("--calib-limit", type=int, default=256, metavar="K",
                   help="calibration samples used (default 256)")
    p.add_argument("--reconstruct", action="store_true",
                   help="re-fit surviving weights by least squares to the float model's "
                        "layer outputs on --calib")
    p.add_argument("--no-refit-dense", dest="refit_dense", action="store_false",
                   help="with --reconstruct, leave the dense layers after sparsified ones "
                        "(classifier, depthwise) as they are")
    p.add_argument("--rows", type=int, default=8192, metavar="R",
                   help="regression rows sampled per layer by --reconstruct (default 8192)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> SparsifyOptions:
    """Validated `SparsifyOptions` from the parsed arguments."""
    opts = SparsifyOptions(
        block=args.block, sparsity=args.sparsity, criterion=args.criterion,
        global_budget=args.global_budget,
        exclude=tuple(x.strip() for x in args.exclude.split(",") if x.strip()),
        include_first_last=args.include_first_last, reorder=args.reorder,
        reconstruct=args.reconstruct, refit_dense=args.refit_dense, rows=args.rows)
    opts.validate()
    if args.reconstruct and not args.calib:
        raise ConfigError("--reconstruct needs calibration data (--calib DATA)")
    if opts.criterion in NEEDS_DATA and not args.calib:
        raise ConfigError(f"--criterion {opts.criterion} needs calibration data (--calib DATA)")
    return opts


def run(args: argparse.Namespace) -> int:
    """Sparsify, save, print the per-layer report."""
    opts = options_from_args(args)
    model = canonicalize(load_model(args.model)).model
    calib = load_data(args.calib, model, limit=args.calib_limit) if args.calib else None
    options = {k: v for k, v in vars(opts).items() if k not in ("block", "sparsity")}
    sparse, report = sparsify_model(model, opts.block, opts.sparsity, calib=calib, **options)
    path = save_model(sparse, args.output)
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
