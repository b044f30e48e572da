"""`npuc verify QUANT.onnx model.bin`: bit-exact consistency of the binary and the model."""

from __future__ import annotations

import argparse

from compiler.cli.common import format_table, print_json
from compiler.cli.options import add_flags, from_args
from compiler.core.feeds import Preprocess
from targets.npusim.options import VerifyOptions

EXAMPLES = (
    ('verify q/model.quant.onnx model.bin --inputs calib.npz',
     'run both on real inputs and require bit-exact outputs'),
    ('verify q/model.quant.onnx model.bin --samples 16',
     'on 16 random inputs'),
)

def register(sub: argparse._SubParsersAction) -> None:
    """Add the `verify` sub-command."""
    p = sub.add_parser("verify", help="check model.bin against model.quant.onnx bit for bit",
                       description="Run the binary in the simulator and model.quant.onnx in "
                                   "onnxruntime on the same inputs; report mismatches per "
                                   "output (exit code 1 on any mismatch).")
    p.add_argument("model", help="DIR/model.quant.onnx")
    p.add_argument("binary", help="model.bin built from it")
    add_flags(p, VerifyOptions)
    add_flags(p.add_argument_group("image preprocessing (folders of images)"), Preprocess)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Verify and print the per-output table; 1 when anything differs."""
    from compiler.driver.data import load_data
    from targets.npusim import load_binary, verify
    from targets.npusim.interface import feeds_for, interface_model

    options = from_args(args, VerifyOptions)
    program = load_binary(args.binary)
    data = load_data(options.data, interface_model(program), limit=options.samples,
                     preprocess=from_args(args, Preprocess)) \
        if options.data is not None else None
    feeds, source = feeds_for(program, data, options.samples, options.seed, label=options.data)
    report = verify(args.model, program, feeds)
    if args.json:
        print_json({"model": args.model, "binary": args.binary, "inputs": source,
                    **report.to_dict()})
    else:
        rows = [(o["name"], o["elements"], o["mismatched"], o["max_abs"], o["max_rel"],
                 "yes" if o["consistent"] else "NO") for o in report.outputs]
        print(format_table(rows, ["output", "elements", "mismatched", "max abs err",
                                  "max rel err", "consistent"]))
        print(f"\n{report.samples} sample(s) from {source}: "
              f"{'consistent' if report.consistent else 'MISMATCH'}")
        for note in report.notes:
            print(f"note: {note}")
    return 0 if report.consistent else 1

