"""`npuc groups MODEL`: channel dependency groups, what they tie together, prunable or why not."""

from __future__ import annotations

import argparse

from compiler.cli.common import add_input_shape_flag, format_table, load_bound, print_json
from passes.canonicalize import canonicalize
from passes.prune.groups import build_groups

EXAMPLES = (
    ('groups model.onnx',
     'the channel groups pruning keeps consistent, and why some are blocked'),
    ('groups model.onnx --json --members 0',
     'the same as JSON'),
)

def register(sub: argparse._SubParsersAction) -> None:
    """Add the `groups` sub-command."""
    p = sub.add_parser("groups", help="channel dependency groups for pruning",
                       description="List the groups of channels that must be removed "
                                   "together (residual stages, concat inputs, grouped convs), "
                                   "with their members and whether they can be pruned.")
    p.add_argument("model", help="an .onnx model")
    p.add_argument("--members", type=int, default=3, metavar="N",
                   help="members shown per group in the table (default 3; all in --json)")
    add_input_shape_flag(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the groups."""
    model = canonicalize(load_bound(args.model, args), in_place=True).model
    groups = build_groups(model)
    prunable = sum(g.prunable for g in groups)
    if args.json:
        print_json({"model": args.model, "groups": [g.to_dict() for g in groups],
                    "total": len(groups), "prunable": prunable})
        return 0
    rows = [(g.id, g.kind, g.channels, "yes" if g.prunable else "no",
             _members(g.members, args.members), g.reason or "") for g in groups]
    print(format_table(rows, ["id", "kind", "channels", "prunable", "members", "reason"]))
    print(f"\n{len(groups)} groups, {prunable} prunable, {len(groups) - prunable} not prunable")
    return 0


def _members(members: list[str], limit: int) -> str:
    shown = ", ".join(members[:limit])
    return shown + (f" (+{len(members) - limit})" if len(members) > limit else "")
