"""`npuc build QUANT.onnx -o model.bin`: legalize, lower and write an accelerator binary."""

from __future__ import annotations

import argparse
from pathlib import Path

from compiler.cli.common import format_table, print_json
from compiler.cli.options import add_flags, from_args
from compiler.core.outpaths import check_output, input_files
from targets.npusim.options import BuildOptions

EXAMPLES = (
    ('build q/model.quant.onnx -o model.bin',
     'emit the accelerator binary'),
    ('build q/model.quant.onnx -o model.bin --arch arch.yaml',
     'for your own accelerator description'),
)

def register(sub: argparse._SubParsersAction) -> None:
    """Add the `build` sub-command."""
    p = sub.add_parser("build", help="build an accelerator binary from model.quant.onnx",
                       description="Check which nodes run on the NPU (printing the placement "
                                   "and CPU partitions), lower the quantized model and write "
                                   "the binary.")
    p.add_argument("model", help="DIR/model.quant.onnx written by `npuc quantize`")
    p.add_argument("-o", "--output", help="binary to write (default: model.bin next to MODEL)")
    add_flags(p, BuildOptions)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build, print the placement, write the binary."""
    options = from_args(args, BuildOptions)
    from targets.npusim import build_binary

    out = args.output if args.output is not None else Path(args.model).with_name("model.bin")
    out = check_output(out, input_files(args.model, options.arch))
    result = build_binary(args.model, options.arch, {"target": options.target,
                                                     "arch": options.arch})
    result.write(out)
    summary = {"model": args.model, "output": str(out), **result.summary()}
    if args.json:
        print_json({**summary, "placement": result.placement})
        return 0
    rows = [(p["node"], p["op"], p["unit"], p["reason"]) for p in result.placement]
    print(format_table(rows, ["node", "op", "unit", "reason"]))
    print(f"\n{summary['npu_nodes']} nodes on the NPU, {summary['cpu_nodes']} on the CPU, "
          f"{result.cpu_partitions} CPU partition(s); {summary['instructions']} instructions, "
          f"{summary['sparse_layers']} 1xN-sparse layer(s), arena {summary['arena_bytes']:,} B "
          f"(no reuse: {summary['arena_no_reuse_bytes']:,} B)")
    print(result.macs.line())
    print(f"wrote {out} ({summary['bytes']:,} bytes)")
    return 0
