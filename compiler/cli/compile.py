"""`npuc compile [MODEL] [-c config.yaml] -o DIR`: the whole pipeline and its report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compiler.cli.common import format_table, print_json
from compiler.cli.options import add_flags, dest_of
from compiler.core.errors import ConfigError
from compiler.core.options import options_of
from compiler.core.outpaths import check_output_dir, input_files
from compiler.driver.config import STEPS, load_config, parse_override

# Shortcut flags: (step, field, flag spelling when it differs from the declaration). Their
# type, choices and help come from the declaration; everything else goes through --set.
SHORTCUTS = (("shape", "shape", None), ("calibration", "data", None),
             ("calibration", "calibrator", None),
             ("eval", "data", "--data"), ("compile", "seed", None), ("build", "arch", None),
             ("prune", "ratio", "--prune-ratio"), ("prune", "target_macs", None),
             ("prune", "criterion", None), ("prune", "search", None),
             ("sparsify", "block", None), ("sparsify", "sparsity", None),
             ("quantize", "max_drop", None), ("quantize", "min_cosine", None),
             ("quantize", "min_agreement", None), ("quantize", "budget_data", None),
             ("executor", "kind", None), ("executor", "address", None),
             ("executor", "workers", None))
# Giving one of these keys on the command line also enables its step.
ENABLES = {"prune.ratio": "prune.enabled", "prune.target_macs": "prune.enabled",
           "prune.search": "prune.enabled", "sparsify.sparsity": "sparsify.enabled"}


EXAMPLES = (
    ('compile',
     'the bundled model, end to end, report in npuc-out/'),
    ('compile model.onnx -o out --calib photos/ --target-macs 0.7 --sparsity 0.5',
     'prune to 70% of the MACs, 1x4 sparsity, int8, build, verify, report'),
    ('compile model.onnx -c config.yaml --set calibration.calibrator=mse',
     'a config file, with one key overridden'),
    ('compile model.onnx -o out --calib calib/ --max-drop 0.5 --budget-data val/',
     'int8 within 0.5 pt of float top-1 on val/: sensitive layers leave int8'),
    ('compile --models a.onnx b.onnx c.onnx -c config.yaml -o fleet --workers 2',
     'a fleet: each model into fleet/<name>/, one index page'),
)

def register(sub: argparse._SubParsersAction) -> None:
    """Add the `compile` sub-command."""
    p = sub.add_parser("compile", help="the whole pipeline: prune, sparsify, quantize, build, "
                                       "verify, perf, report",
                       description="Compile a float ONNX model into a verified accelerator "
                                   "binary with a report. With no MODEL and no config, the "
                                   "bundled Fashion-MNIST ResNet is compiled.")
    p.add_argument("model", nargs="?", help="ONNX file or bundled model name")
    fleet = p.add_argument_group("fleet: many models, one config (DIR/<name>/ each, "
                                 "DIR/index.html)")
    fleet.add_argument("--models", nargs="+", metavar="MODEL",
                       help="compile these models in parallel on the executor's workers")
    fleet.add_argument("--model-list", metavar="FILE",
                       help="a text file naming the models, one per line")
    p.add_argument("-c", "--config", help="YAML configuration (see docs/config.md)")
    p.add_argument("-o", "--output", default="npuc-out", help="output folder (npuc-out)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set prune.ratio=0.3 (repeatable)")
    shortcuts = p.add_argument_group("shortcuts for config keys (see docs/config.md)")
    for step, field, flag in SHORTCUTS:
        add_flags(shortcuts, STEPS[step][1], only=[field], shortcut=True,
                  flags={field: flag} if flag else None)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print report.json to stdout")
    p.set_defaults(func=run)


def shortcut_keys() -> dict[str, str]:
    """Shortcut flag -> config key (generated from the declarations)."""
    keys = {}
    for step, field, flag in SHORTCUTS:
        prefix, cls = STEPS[step]
        d = next(x for x in options_of(cls) if x.name == field)
        keys[flag or d.flag] = d.key(prefix)
    return keys


def overrides_from_args(args: argparse.Namespace) -> dict:
    """Config overrides from the shortcut flags and --set (which wins)."""
    overrides = {}
    if args.model:
        overrides["model"] = args.model
    for flag, key in shortcut_keys().items():
        value = getattr(args, dest_of(flag))
        if value is not None:
            overrides[key] = value
            if key in ENABLES:
                overrides[ENABLES[key]] = True
    overrides.update(parse_override(text) for text in args.set)
    return overrides


def run(args: argparse.Namespace) -> int:
    """Run the pipeline and print the summary (or the JSON report)."""
    from compiler.driver.pipeline import COMPILE_OUTPUTS, compile_model

    if args.models or args.model_list:
        return run_fleet(args)
    config = load_config(args.config, overrides_from_args(args))
    # compile_model checks the files the config names; the config file itself is ours to check
    check_output_dir(args.output, COMPILE_OUTPUTS, input_files(args.config))
    show = not args.quiet and not args.json

    def announce(stage: str) -> None:
        if show:
            print(f"npuc: {stage} ...", file=sys.stderr, flush=True)

    result = compile_model(config=config, out_dir=args.output, progress=announce)
    if args.json:
        print_json(result.report)
        return 0
    print(summary_text(result.report))
    if "budget" in result.report.get("prune", {}):
        from compiler.driver.budget import prune_budget_lines

        print("\n" + "\n".join(prune_budget_lines(result.report["prune"]["budget"])))
    if "budget" in result.report:
        from compiler.driver.budget import budget_lines

        print("\n" + "\n".join(budget_lines(result.report["budget"])))
    if "build" in result.report:
        print(result.report["build"]["macs_on_npu"])
    note = (result.report.get("latency") or {}).get("note")
    if note:  # the host, not the NPU, decides much of the latency: say so
        print(note)
    slowest = slowest_layers_text(result.report, config["report.top_layers"])
    if slowest:
        print("\n" + slowest)
    print(f"\nreport: {result.files['report_html']}  ({result.files['report_json']})")
    return 0


def run_fleet(args: argparse.Namespace) -> int:
    """`--models` / `--model-list`: compile each model, print one line per model.

    Exit status 1 when any model failed (each failure is named on its line).
    """
    from compiler.driver.config import step_options
    from compiler.driver.fleet import compile_fleet, read_model_list

    if args.model:
        raise ConfigError("give either MODEL or --models/--model-list, not both")
    models = list(args.models or []) + (read_model_list(args.model_list)
                                        if args.model_list else [])
    config = load_config(args.config, overrides_from_args(args))
    entries = compile_fleet(models, config, args.output, step_options(config, "executor"))
    if args.json:
        print_json([vars(e) for e in entries])
    else:
        for e in entries:
            print(f"{'ok    ' if e.ok else 'FAILED'} {e.model} -> {e.folder}"
                  f"{'' if e.ok else ': ' + e.error} ({e.time_s:.1f} s)")
        print(f"\nindex: {Path(args.output) / 'index.html'}")
    return 0 if all(e.ok for e in entries) else 1


def summary_text(report: dict) -> str:
    """The before -> after summary table printed by `npuc compile`."""
    rows = []
    for key, value in report.get("summary", {}).items():
        rows.append((key, _cell(value.get("before")), _cell(value.get("after"))))
    return format_table(rows, ["metric", "before", "after"])


def slowest_layers_text(report: dict, top: int) -> str:
    """The `top` binary steps that take longest (1 core, 1 thread), or "" when none.

    Every executed step counts (NPU layers, Add, LUT, quantize, CPU partitions), so a host
    partition that dominates the latency is listed like any layer.
    """
    # by time, not NPU cycles: a CPU partition has no NPU cycles but can dominate
    rows = sorted(report.get("steps", []), key=lambda r: -r["us"])[:top]
    if not rows:
        return ""
    return format_table([(r["step"], r["op"], r["unit"], f"{r['cycles']:,}", f"{r['us']:.1f}",
                          r["bound"]) for r in rows],
                        ["slowest steps", "op", "unit", "cycles", "us", "bound"])


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)
