"""`npuc demo`: the seed's comparison table (methods × models, int8, built and timed)."""

from __future__ import annotations

import argparse
import sys

from compiler.cli.common import print_json

EXAMPLES = (
    ('demo',
     "the seed article's table on the bundled models"),
    ('demo --json',
     'the same as JSON'),
)

def register(sub: argparse._SubParsersAction) -> None:
    """Add the `demo` sub-command."""
    p = sub.add_parser("demo", help="the seed's table: baseline, HRank, ABC, 1xN, CHEX-style "
                                    "on the trained models; MACs/latency/FPS of ResNet-50, "
                                    "MobileNetV2, SSD-ResNet50-300")
    p.add_argument("--models", default="fmnist_resnet,fmnist_mobilenetv2",
                   help="comma-separated trained models (every method runs on each)")
    p.add_argument("--architectures", default="resnet50,mobilenetv2,ssd_resnet50",
                   help="comma-separated architectures (random weights: baseline, pruned, 1x4 "
                        "sparse); '' for none")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compute and print the table (Markdown, or JSON rows)."""
    from compiler.driver.demo import markdown, seed_table

    rows = seed_table(_names(args.models), _names(args.architectures),
                      progress=None if args.json else
                      (lambda s: print(f"npuc demo: {s} ...", file=sys.stderr, flush=True)))
    if args.json:
        print_json(rows)
    else:
        print(markdown(rows))
    return 0


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())
