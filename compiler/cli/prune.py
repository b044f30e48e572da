"""`npuc prune MODEL -o OUT.onnx`: post-training channel pruning."""

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
from compiler.core.executor import ExecutorOptions
from compiler.core.outpaths import check_output, input_files
from compiler.core.pass_manager import PassManager
from compiler.driver.data import load_data
from passes.prune.pipeline import ChannelPrune, PruneOptions, calib_missing, needs_calib

EXAMPLES = (
    ('prune model.onnx -o pruned.onnx --ratio 0.3 --calib photos/',
     "remove 30% of every group's channels, re-fit on a folder of images"),
    ('prune model.onnx -o pruned.onnx --target-macs 0.6 --no-reconstruct',
     'prune globally to 60% of the MACs without data'),
    ('prune model.onnx -o pruned.onnx --target-macs 0.5 --search abc --calib calib.npz',
     'search per-group rates (ABC) under a 50% MACs budget'),
    ('prune model.onnx -o pruned.onnx --target-macs 0.5 --search abc --calib calib.npz '
     '--executor ray --ray-address auto', 'score the ABC candidates on a running Ray cluster'),
)

def register(sub: argparse._SubParsersAction) -> None:
    """Add the `prune` sub-command (flags generated from `PruneOptions`)."""
    p = sub.add_parser("prune", help="remove channels (structured pruning), post-training",
                       description="Remove whole channels using shortcut-aware dependency "
                                   "groups; choose rates uniformly, per group, by a global "
                                   "MACs target or by an ABC search; re-fit the affected "
                                   "layers against the original model (on by default: needs "
                                   "--calib, or --no-reconstruct).")
    p.add_argument("model", help="an .onnx model")
    p.add_argument("-o", "--output", required=True, help="pruned .onnx to write")
    add_flags(p.add_argument_group("how much (one of)"), PruneOptions, only=RATE_FIELDS)
    add_flags(p, PruneOptions, skip=(*RATE_FIELDS, "calib_limit"))
    add_step_data_flags(p)
    add_flags(p.add_argument_group("where the ABC search runs"), ExecutorOptions,
              only=EXECUTOR_FIELDS)
    add_input_shape_flag(p)
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=run)


RATE_FIELDS = ("ratio", "rates", "target_macs")
EXECUTOR_FIELDS = ("kind", "address")  # --workers is prune.workers here


def run(args: argparse.Namespace) -> int:
    """Prune, save, print the report."""
    options = from_args(args, PruneOptions)
    source, limit, preprocess = step_data(args)
    if source is None and needs_calib(options):
        raise ConfigError(calib_missing(options))
    check_output(args.output, input_files(args.model, source, options.rates))
    model = load_bound(args.model, args, keep_batch=True)
    calib = load_data(source, model, limit=limit, preprocess=preprocess) if source else None
    executor = from_args(args, ExecutorOptions)
    result = PassManager([ChannelPrune(options, calib=calib, executor=executor)])(model)
    pruned, report = result.model, result.info["ChannelPrune"]
    save_checked(pruned, args.output)
    report["model"], report["output"] = args.model, args.output
    if args.json:
        print_json(report)
        return 0
    print_report(report)
    return 0


def print_report(report: dict) -> None:
    """The per-group table and totals."""
    rows = [(r["id"], r["kind"], r["before"], r["after"], ", ".join(r["members"][:2]))
            for r in report["groups"] if r["prunable"] and r["after"] < r["before"]]
    print(format_table(rows, ["group", "kind", "before", "after", "members"]))
    macs, params = report["macs"], report["params"]
    target = report.get("target")
    aim = f", target {100 * target['macs_ratio']:.1f}%" if target else ""
    print(f"\nMACs   {human(macs['before'])} -> {human(macs['after'])} "
          f"({100 * macs['ratio']:.1f}%{aim})")
    print(f"params {human(params['before'])} -> {human(params['after'])} "
          f"({100 * params['ratio']:.1f}%)")
    recon = report.get("reconstruction")
    if recon and recon["layers"]:
        errs = [(r["err_before"], r["err_after"]) for r in recon["layers"]]
        print(f"reconstruction ({recon['method']}): {len(errs)} layers, mean rel. error "
              f"{sum(e[0] for e in errs) / len(errs):.4f} -> "
              f"{sum(e[1] for e in errs) / len(errs):.4f} in {recon['time_s']:.1f}s")
    blocks = [b for b in (recon or {}).get("blocks", []) if "error_before" in b]
    if blocks:
        kept = [b for b in blocks if b["kept"]]
        print(f"block reconstruction: {len(kept)} of {len(blocks)} blocks improved, mean "
              f"held-out rel. error {sum(b['error_before'] for b in blocks) / len(blocks):.4f}"
              f" -> {sum(b['error_after'] for b in blocks) / len(blocks):.4f}")
    search = report.get("search")
    if search:
        print(f"ABC search: best fitness {search['best_fitness']:.4f} after "
              f"{search['evaluations']} evaluations in {search['time_s']:.1f}s")
    print(f"time: {report['time_s']['total']:.2f}s -> {report['output']}")
