"""`npuc perf model.bin`: predicted latency, FPS and the per-layer cycle table."""

from __future__ import annotations

import argparse

from compiler.cli.common import format_table, human, print_json


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `perf` sub-command."""
    p = sub.add_parser("perf", help="latency / FPS from the analytical cycle model",
                       description="Estimate per-layer cycles, latency and throughput of a "
                                   "binary on an NPU architecture (docs/perf-model.md).")
    p.add_argument("binary", help="model.bin")
    p.add_argument("--cores", type=int, default=1, help="NPU cores used (default 1)")
    p.add_argument("--threads", type=int, default=1, help="host threads (default 1)")
    p.add_argument("--frames", type=int, default=1000, help="frames averaged (default 1000)")
    p.add_argument("--arch", default=None,
                   help="architecture preset or YAML file (default: the build's)")
    p.add_argument("--top", type=int, default=0, help="show only the N slowest layers")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Estimate and print."""
    from targets.npusim import estimate_perf

    report = estimate_perf(args.binary, args.arch, args.cores, args.threads, args.frames)
    if args.json:
        print_json(report.to_dict())
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
    return 0
