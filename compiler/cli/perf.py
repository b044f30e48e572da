"""`npuc perf model.bin`: predicted latency, FPS and the per-layer cycle table."""

from __future__ import annotations

import argparse

from compiler.cli.common import format_table, human, print_json
from compiler.cli.options import add_flags, from_args
from targets.npusim.options import PerfOptions

EXAMPLES = (
    ('perf model.bin',
     'latency and FPS on the default accelerator'),
    ('perf model.bin --cores 2 --threads 8 --top 10 --json',
     'two cores, the 10 slowest layers, JSON'),
)

def register(sub: argparse._SubParsersAction) -> None:
    """Add the `perf` sub-command."""
    p = sub.add_parser("perf", help="latency / FPS from the analytical cycle model",
                       description="Estimate per-layer cycles, latency and throughput of a "
                                   "binary on an NPU architecture (docs/perf-model.md).")
    p.add_argument("binary", help="model.bin")
    add_flags(p, PerfOptions)
    p.add_argument("--top", type=int, default=0, metavar="N",
                   help="show only the N slowest layers (default 0: all)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Estimate and print."""
    from targets.npusim import estimate_perf

    o = from_args(args, PerfOptions)
    report = estimate_perf(args.binary, o.arch, o.cores, o.threads, o.frames)
    if args.json:
        print_json({"model": args.binary, **report.to_dict()})
        return 0
    layers = report.layers
    if args.top:
        layers = sorted(layers, key=lambda r: -r["cycles"])[:args.top]
    rows = [(r["name"], r["kind"], r["unit"], r["cycles"], r["macs"], r["utilisation"],
             r["ddr_bytes"], r["bound"] if r["unit"] == "NPU" else "host") for r in layers]
    print(format_table(rows, ["layer", "kind", "unit", "cycles", "MACs", "util", "DDR bytes",
                              "bound"]))
    t = report.totals
    print(f"\narch {report.arch}, {report.cores} core(s), {report.threads} thread(s), "
          f"{report.frames} frames: latency {report.latency_ms:.3f} ms, FPS {report.fps:.1f}")
    print(f"NPU {t['npu_ms']:.3f} ms + host {t['host_ms']:.3f} ms per frame; "
          f"{human(t['macs'])} MACs, utilisation {t['utilisation']:.1%}, "
          f"{human(t['ddr_bytes'])}B DDR per frame")
    print(report.macs.line())
    return 0
