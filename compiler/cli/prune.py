"""`npuc prune MODEL -o OUT.onnx`: post-training channel pruning."""

from __future__ import annotations

import argparse

from compiler.cli.common import format_table, human, print_json
from compiler.core.io import load_model, save_model
from compiler.driver.data import load_data
from passes.prune.criteria import CRITERIA
from passes.prune.pipeline import prune_model


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `prune` sub-command."""
    p = sub.add_parser("prune", help="remove channels (structured pruning), post-training",
                       description="Remove whole channels using shortcut-aware dependency "
                                   "groups; choose rates uniformly, per group, by a global "
                                   "MACs target or by an ABC search; optionally re-fit "
                                   "the affected layers against the original model.")
    p.add_argument("model", help="an .onnx model")
    p.add_argument("-o", "--output", required=True, help="pruned .onnx to write")
    rate = p.add_argument_group("how much (one of)")
    rate.add_argument("--ratio", type=float, help="fraction of channels removed per group")
    rate.add_argument("--rates", help="per-group rates: list '[0.1,0.2,...]' (group order of "
                                      "`npuc groups`), map '{3: 0.5, conv1.out: 0.2}', YAML "
                                      "file, or an HRankPlus ResNet compress_rate expression")
    rate.add_argument("--target-macs", type=float, metavar="F",
                      help="prune globally until MACs fall to F of the original")
    p.add_argument("--criterion", default="l1", choices=CRITERIA,
                   help="channel importance (default l1; hrank needs --calib)")
    p.add_argument("--round-to", type=int, default=1, metavar="N",
                   help="keep channel counts a multiple of N (default 1)")
    p.add_argument("--search", choices=["abc"], help="search per-group rates (ABCPruner) "
                                                     "under the --target-macs budget")
    p.add_argument("--abc-cycles", type=int, default=5, metavar="T", help="ABC cycles")
    p.add_argument("--abc-sources", type=int, default=6, metavar="N", help="ABC food sources")
    p.add_argument("--abc-limit", type=int, default=3, metavar="M", help="ABC trial limit")
    p.add_argument("--workers", type=int, help="ABC worker processes (default: all cores)")
    p.add_argument("--calib", metavar="DATA", help="calibration data: .npy/.npz, image "
                                                   "folder or bundled dataset name")
    p.add_argument("--calib-limit", type=int, default=256, help="samples used at most")
    p.add_argument("--reconstruct", nargs="?", const="lsq", choices=["lsq", "bias"],
                   help="re-fit affected layers against the original model (needs --calib)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Prune, save, print the report."""
    model = load_model(args.model)
    options = {"ratio": args.ratio, "rates": args.rates, "target_macs": args.target_macs,
               "criterion": args.criterion, "round_to": args.round_to, "search": args.search,
               "abc_cycles": args.abc_cycles, "abc_sources": args.abc_sources,
               "abc_limit": args.abc_limit, "workers": args.workers, "seed": args.seed,
               "calib_limit": args.calib_limit, "reconstruct": args.reconstruct or False}
    calib = load_data(args.calib, model, limit=args.calib_limit) if args.calib else None
    pruned, report = prune_model(model, calib=calib, **options)
    save_model(pruned, args.output)
    report["output"] = args.output
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
    print(f"\nMACs   {human(macs['before'])} -> {human(macs['after'])} "
          f"({100 * macs['ratio']:.1f}%)")
    print(f"params {human(params['before'])} -> {human(params['after'])} "
          f"({100 * params['ratio']:.1f}%)")
    recon = report.get("reconstruction")
    if recon and recon["layers"]:
        errs = [(r["err_before"], r["err_after"]) for r in recon["layers"]]
        print(f"reconstruction ({recon['method']}): {len(errs)} layers, mean rel. error "
              f"{sum(e[0] for e in errs) / len(errs):.4f} -> "
              f"{sum(e[1] for e in errs) / len(errs):.4f} in {recon['time_s']:.1f}s")
    search = report.get("search")
    if search:
        print(f"ABC search: best fitness {search['best_fitness']:.4f} after "
              f"{search['evaluations']} evaluations in {search['time_s']:.1f}s")
    print(f"time: {report['time_s']['total']:.2f}s -> {report['output']}")
