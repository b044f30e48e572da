"""``npuc eval MODEL --data NAME|PATH``: accuracy on labelled data, fidelity vs a reference."""

from __future__ import annotations

import argparse
import json

from compiler.cli.common import add_input_shape_flag, input_shapes
from compiler.cli.options import add_flags, from_args
from compiler.core.executor import ExecutorOptions
from compiler.core.feeds import Preprocess
from compiler.driver.evaluate import EvalOptions, EvalResult, evaluate

EXAMPLES = (
    ('eval q/model.quant.onnx --data val/ --resize 256 --crop 224x224 --mean 0.485,0.456,0.406 '
     '--std 0.229,0.224,0.225 --reference model.onnx',
     'top-1 on a class-per-folder image set, and agreement with the float model'),
    ('eval model.onnx --data fmnist-eval --limit 1000',
     'accuracy on a bundled dataset'),
    ('eval model.onnx --data val/ --executor ray --ray-address auto',
     'share the images out to a running Ray cluster (same metrics)'),
)

def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``eval`` sub-command to the CLI's subparsers."""
    p = sub.add_parser("eval", help="accuracy / fidelity of a model on a dataset",
                       description="Run MODEL with onnxruntime over a dataset and report top-1 "
                                   "accuracy (labelled images), OCR exact match (text-lines) "
                                   "and, with --reference, agreement/cosine/KL vs that model.")
    p.add_argument("model", metavar="MODEL", help=".onnx file or zoo model name")
    add_flags(p, EvalOptions)
    p.add_argument("--reference", metavar="FLOAT.onnx",
                   help="float model to compare outputs against")
    add_flags(p.add_argument_group("image preprocessing (folders of images)"), Preprocess)
    add_flags(p.add_argument_group("where it runs (default: this process)"), ExecutorOptions)
    add_input_shape_flag(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def format_table(result: EvalResult) -> str:
    """Two-column text table of the result."""
    rows = [("model", result.model), ("data", f"{result.data} ({result.kind})"),
            ("samples", str(result.samples))]
    if result.reference:
        rows.append(("reference", result.reference))
    rows += [(k, f"{v:.6f}" if k == "kl" else f"{v:.4f}") for k, v in result.metrics.items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def run(args: argparse.Namespace) -> int:
    """Execute ``npuc eval``; errors propagate as `NpucError` for the CLI to report."""
    o, executor = from_args(args, EvalOptions), from_args(args, ExecutorOptions)
    result = evaluate(args.model, o.data, reference=args.reference, batch=o.batch_size,
                      limit=o.limit, input_shapes=input_shapes(args),
                      preprocess=from_args(args, Preprocess),
                      executor=executor if executor.requested() else None)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_table(result))
    return 0
