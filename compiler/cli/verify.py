"""`npuc verify QUANT.onnx model.bin`: bit-exact consistency of the binary and the model."""

from __future__ import annotations

import argparse

from compiler.cli.common import format_table, print_json


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `verify` sub-command."""
    p = sub.add_parser("verify", help="check model.bin against model.quant.onnx bit for bit",
                       description="Run the binary in the simulator and model.quant.onnx in "
                                   "onnxruntime on the same inputs; report mismatches per "
                                   "output (exit code 1 on any mismatch).")
    p.add_argument("model", help="DIR/model.quant.onnx")
    p.add_argument("binary", help="model.bin built from it")
    p.add_argument("--inputs", help="input data: .npy/.npz, image folder or dataset name "
                                    "(default: seeded random inputs)")
    p.add_argument("--samples", type=int, default=8, help="number of inputs (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Verify and print the per-output table; 1 when anything differs."""
    from compiler.core.errors import ConfigError
    from compiler.driver.data import load_data
    from targets.npusim import load_binary, verify
    from targets.npusim.interface import feeds_for, interface_model

    if args.samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {args.samples}")
    program = load_binary(args.binary)
    data = load_data(args.inputs, interface_model(program), limit=args.samples) \
        if args.inputs is not None else None
    feeds, source = feeds_for(program, data, args.samples, args.seed, label=args.inputs)
    report = verify(args.model, program, feeds)
    if args.json:
        print_json({"inputs": source, **report.to_dict()})
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

