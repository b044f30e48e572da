"""`npuc compile [MODEL] [-c config.yaml] -o DIR`: the whole pipeline and its report."""

from __future__ import annotations

import argparse
import sys

from compiler.cli.common import format_table, print_json
from compiler.driver.config import load_config, parse_override

# Shortcut flags -> config keys (everything else goes through --set KEY=VALUE).
FLAG_KEYS = {
    "calib": "calibration.data", "calibrator": "calibration.calibrator",
    "data": "eval.data", "seed": "seed", "arch": "target.arch",
    "prune_ratio": "prune.ratio", "target_macs": "prune.target_macs",
    "criterion": "prune.criterion", "search": "prune.search",
    "block": "sparsify.block", "sparsity": "sparsify.sparsity",
}
ENABLE_FLAGS = {"prune_ratio": "prune.enabled", "target_macs": "prune.enabled",
                "search": "prune.enabled", "sparsity": "sparsify.enabled"}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `compile` sub-command."""
    p = sub.add_parser("compile", help="the whole pipeline: prune, sparsify, quantize, build, "
                                       "verify, perf, report",
                       description="Compile a float ONNX model into a verified accelerator "
                                   "binary with a report. With no MODEL and no config, the "
                                   "bundled Fashion-MNIST ResNet is compiled.")
    p.add_argument("model", nargs="?", help="ONNX file or bundled model name")
    p.add_argument("-c", "--config", help="YAML configuration (see docs/config.md)")
    p.add_argument("-o", "--output", default="npuc-out", help="output folder (npuc-out)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set prune.ratio=0.3 (repeatable)")
    p.add_argument("--calib", help="calibration data")
    p.add_argument("--calibrator", help="max, percentile, kl or mse")
    p.add_argument("--data", help="labelled evaluation data")
    p.add_argument("--prune-ratio", type=float, help="enable pruning with this uniform ratio")
    p.add_argument("--target-macs", type=float, help="enable pruning to this MACs fraction")
    p.add_argument("--criterion", help="pruning criterion")
    p.add_argument("--search", help="pruning rate search (abc)")
    p.add_argument("--block", type=int, help="1xN block size")
    p.add_argument("--sparsity", type=float, help="enable 1xN sparsity at this block ratio")
    p.add_argument("--arch", help="target architecture preset or YAML")
    p.add_argument("--seed", type=int, help="seed")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print report.json to stdout")
    p.set_defaults(func=run)


def overrides_from_args(args: argparse.Namespace) -> dict:
    """Config overrides from the shortcut flags and --set (which wins)."""
    overrides = {}
    if args.model:
        overrides["model"] = args.model
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
            if flag in ENABLE_FLAGS:
                overrides[ENABLE_FLAGS[flag]] = True
    overrides.update(parse_override(text) for text in args.set)
    return overrides


def run(args: argparse.Namespace) -> int:
    """Run the pipeline and print the summary (or the JSON report)."""
    from compiler.core.progress import progress_output
    from compiler.driver.pipeline import compile_model

    config = load_config(args.config, overrides_from_args(args))
    show = not args.quiet and not args.json

    def announce(stage: str) -> None:
        if show:
            print(f"npuc: {stage} ...", file=sys.stderr, flush=True)

    with progress_output(show):
        result = compile_model(config=config, out_dir=args.output, progress=announce)
    if args.json:
        print_json(result.report)
        return 0
    print(summary_text(result.report))
    slowest = slowest_layers_text(result.report, config["report.top_layers"])
    if slowest:
        print("\n" + slowest)
    print(f"\nreport: {result.files['report_html']}  ({result.files['report_json']})")
    return 0


def summary_text(report: dict) -> str:
    """The before -> after summary table printed by `npuc compile`."""
    rows = []
    for key, value in report.get("summary", {}).items():
        rows.append((key, _cell(value.get("before")), _cell(value.get("after"))))
    return format_table(rows, ["metric", "before", "after"])


def slowest_layers_text(report: dict, top: int) -> str:
    """The `top` layers with the most cycles (1 core, 1 thread), or "" when there are none."""
    timed = [r for r in report.get("layers", []) if r.get("cycles") is not None]
    rows = sorted(timed, key=lambda r: -r["cycles"])[:top]
    if not rows:
        return ""
    return format_table([(r["layer"], r["op"], f"{r['cycles']:,}", r.get("unit") or "-")
                         for r in rows], ["slowest layers", "op", "cycles", "unit"])


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)
